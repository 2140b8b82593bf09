// The watch page: the stream's room (room.js: details, chat, gifts, login), the gift panel
// (gifts.js: sending gifts, the wallet) and its video.
// The video comes over WHEP (webrtc.js) while the stream is live: before that (409
// stream_not_live) the page waits, trying again now and then and as soon as the room says the
// stream went live. If WebRTC fails otherwise (422 unsupported_codec: this browser cannot take
// the stream's codec; or the connection keeps failing), it falls back to HLS: the browser's own player,
// or hls.js (window.Hls, loaded from /static/vendor/hls.min.js when the page needs it).
"use strict";

const HLS_TYPE = "application/vnd.apple.mpegurl";
const HLS_JS_URL = "/static/vendor/hls.min.js";
const WHEP_RETRY_FIRST_MS = 2000;
const WHEP_RETRY_MAX_MS = 15000;
const MAX_WHEP_FAILURES = 3; // connections failing in a row before trying HLS instead

const playerEl = el("player");
const playerNote = el("player-note");

let viewer = null; // the WHEP session: {pc, session}
let hls = null; // the hls.js player, when HLS plays through it
let playback = "idle"; // idle, connecting, waiting, playing, hls, ended, failed
let streamState = null;
let whepRetryTimer = null;
let whepWaits = 0; // 409 stream_not_live in a row: the retry backs off
let whepFailures = 0;
let nativeHlsFailed = false; // the browser's own HLS player could not play the stream

function setPlayback(state, text) {
  playback = state;
  playerEl.dataset.state = state;
  playerNote.dataset.state = state;
  playerNote.textContent = text;
  playerEl.setAttribute("aria-label", state === "playing" || state === "hls" ? "Live video"
    : `Live video (${text})`);
}

function closeViewer() {
  clearTimeout(whepRetryTimer);
  whepRetryTimer = null;
  const current = viewer;
  viewer = null;
  if (!current) return;
  LivecoreWebRTC.hangUp(current.session);
  current.pc.close();
}

function stopHls() {
  if (hls) hls.destroy();
  hls = null;
  if (playerEl.getAttribute("src")) {
    playerEl.removeAttribute("src");
    playerEl.load();
  }
}

function retryWhepLater(delay) {
  clearTimeout(whepRetryTimer);
  whepRetryTimer = setTimeout(playWhep, delay);
}

function showEnded() {
  closeViewer();
  stopHls();
  playerEl.srcObject = null;
  setPlayback("ended", "The stream has ended.");
}

// Offer only these video codecs (MIME types) when window.livecoreVideoCodecs names some: how a
// test plays a browser without the stream's codec (the server then answers 422
// unsupported_codec, and the page falls back to HLS).
function preferVideoCodecs(transceiver) {
  const wanted = window.livecoreVideoCodecs;
  if (!Array.isArray(wanted) || !transceiver.setCodecPreferences) return;
  const capabilities = RTCRtpReceiver.getCapabilities("video");
  const codecs = capabilities ? capabilities.codecs : [];
  const chosen = codecs.filter((c) => wanted.includes(c.mimeType) || c.mimeType === "video/rtx");
  if (chosen.length) transceiver.setCodecPreferences(chosen);
}

async function playWhep() {
  clearTimeout(whepRetryTimer);
  whepRetryTimer = null;
  if (streamState === "ended") {
    showEnded();
    return;
  }
  if (viewer || hls) return;
  const pc = new RTCPeerConnection();
  const mine = { pc, session: null };
  viewer = mine;
  if (playback !== "waiting") setPlayback("connecting", "Connecting to the video…");
  const video = pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  preferVideoCodecs(video);
  const remote = new MediaStream();
  pc.addEventListener("track", (event) => {
    if (viewer !== mine) return;
    remote.addTrack(event.track);
    if (playerEl.srcObject !== remote) playerEl.srcObject = remote;
    playerEl.play().catch(() => {}); // muted autoplay; the controls can start it otherwise
  });
  pc.addEventListener("connectionstatechange", () => {
    if (viewer !== mine) return;
    if (pc.connectionState === "connected") {
      whepFailures = 0;
      if (!playerEl.paused && playerEl.readyState >= 2) setPlayback("playing", "Live.");
    } else if (pc.connectionState === "disconnected") {
      setPlayback("connecting", "The video connection is interrupted; reconnecting…");
    } else if (pc.connectionState === "failed") {
      closeViewer();
      whepFailures += 1;
      if (streamState === "ended") showEnded();
      else if (whepFailures < MAX_WHEP_FAILURES) retryWhepLater(WHEP_RETRY_FIRST_MS);
      else playHls("The WebRTC connection keeps failing.");
    }
  });
  try {
    mine.session = await LivecoreWebRTC.negotiate(pc, `/whep/${encodeURIComponent(streamId)}`);
  } catch (error) {
    if (viewer !== mine) return; // stopped meanwhile
    closeViewer();
    if (error.code === "stream_not_live" && streamState !== "ended") {
      const delay = Math.min(WHEP_RETRY_MAX_MS, WHEP_RETRY_FIRST_MS * 2 ** whepWaits);
      whepWaits += 1;
      setPlayback("waiting", "Waiting for the stream to start…");
      retryWhepLater(delay);
    } else if (error.code === "stream_not_live" || error.code === "stream_ended") {
      showEnded();
    } else if (error.code === "unsupported_codec") {
      playHls("This browser cannot play the stream's video codec over WebRTC.");
    } else {
      playHls(`WebRTC playback failed: ${error.message}`);
    }
    return;
  }
  if (viewer !== mine) {
    LivecoreWebRTC.hangUp(mine.session);
    return;
  }
  whepWaits = 0;
  if (playback !== "playing") setPlayback("connecting", "Connected; the video is starting…");
}

function loadHlsJs() {
  if (window.Hls) return Promise.resolve(window.Hls);
  return new Promise((resolve) => {
    const script = document.createElement("script");
    script.src = HLS_JS_URL;
    script.addEventListener("load", () => resolve(window.Hls || null));
    script.addEventListener("error", () => {
      script.remove();
      resolve(null);
    });
    document.head.append(script);
  });
}

async function playHls(reason) {
  closeViewer();
  if (hls || streamState === "ended") return;
  setPlayback("connecting", `${reason} Trying HLS…`);
  const url = `/hls/${encodeURIComponent(streamId)}/index.m3u8`;
  const unavailable = (why) => setPlayback("failed", `${reason} HLS cannot play either: ${why}`);
  try {
    const response = await fetch(url, { cache: "no-store" });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      unavailable((body.error && body.error.message) || `the server answered ${response.status}.`);
      return;
    }
  } catch (error) {
    unavailable(`the server cannot be reached (${error.message}).`);
    return;
  }
  if (playback === "ended") return;
  playerEl.srcObject = null;
  if (playerEl.canPlayType(HLS_TYPE) && !nativeHlsFailed) {
    playerEl.src = url;
    setPlayback("hls", "Playing over HLS (a few seconds behind).");
    playerEl.play().catch(() => {});
    return;
  }
  await playHlsJs(url, unavailable);
}

// hls.js (vendored) plays what the browser's own player cannot, or where it has none.
async function playHlsJs(url, unavailable) {
  const Hls = await loadHlsJs();
  if (!Hls || typeof Hls.isSupported !== "function" || !Hls.isSupported()) {
    unavailable("this browser has no HLS player.");
    return;
  }
  if (playback === "ended" || hls) return;
  hls = new Hls();
  hls.on(Hls.Events.ERROR, (_event, data) => {
    if (!data || !data.fatal) return;
    stopHls();
    unavailable(`${data.details || data.type || "a playback error"}.`);
  });
  hls.loadSource(url);
  hls.attachMedia(playerEl);
  setPlayback("hls", "Playing over HLS (a few seconds behind).");
  playerEl.play().catch(() => {});
}

playerEl.addEventListener("playing", () => {
  if (viewer) setPlayback("playing", "Live.");
});

// The browser's own HLS player failed (Chromium's, new, cannot parse some H.264 streams that
// hls.js plays: PipelineStatus::DEMUXER_ERROR_COULD_NOT_PARSE): hls.js gets one try.
playerEl.addEventListener("error", () => {
  if (playback === "hls" && !hls) {
    playerEl.removeAttribute("src");
    if (nativeHlsFailed) {
      setPlayback("failed", "The HLS video cannot be played.");
      return;
    }
    nativeHlsFailed = true;
    const url = `/hls/${encodeURIComponent(streamId)}/index.m3u8`;
    playHlsJs(url, (why) => setPlayback("failed", `The HLS video cannot be played: ${why}`));
  }
});

window.addEventListener("livecore:state", (event) => {
  const state = event.detail;
  const changed = state !== streamState;
  streamState = state;
  if (!changed) return;
  if (state === "ended") {
    showEnded();
  } else if (state === "live" && !viewer && !hls) {
    // Went live: try now rather than at the next retry (also after a failure).
    whepWaits = 0;
    whepFailures = 0;
    playWhep();
  }
});

window.addEventListener("pagehide", () => {
  if (viewer) LivecoreWebRTC.hangUp(viewer.session, {}, { keepalive: true });
});

startRoom().then((stream) => {
  if (stream === null) return;
  if (typeof RTCPeerConnection === "undefined") {
    playHls("This browser has no WebRTC.");
  } else if (!viewer && !hls && playback !== "ended") {
    playWhep();
  }
});
