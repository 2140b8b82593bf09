// The go-live page: the stream's owner logs in (room.js), sees the camera, and publishes it
// over WHIP (webrtc.js) with the stream key that the API shows only to the owner; the room's
// chat and gifts are alongside (room.js). Start sends one offer with every ICE candidate in it;
// Stop DELETEs the session (the server ends the stream a few seconds later unless it starts
// again). The status line (#broadcast-status, its data-state) tells where things stand:
// login, not-owner, camera, ready, connecting, live, stopping, stopped, ended or error.
"use strict";

const previewEl = el("preview");
const statusEl = el("broadcast-status");
const startButton = el("start");
const stopButton = el("stop");
const cameraButton = el("camera");

let owner = null; // {whipUrl, key} once the API says we own the stream
let ownerCheck = 0; // bumps with each check: answers of older checks are ignored
let camera = null; // the MediaStream of the camera and microphone
let cameraPending = null; // the getUserMedia in flight
let publisher = null; // the WHIP session: {pc, session, connected}
let stopping = false; // its DELETE is in flight
let streamState = null;

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

function renderControls() {
  startButton.disabled = owner === null || publisher !== null || stopping
    || streamState === "ended";
  stopButton.disabled = publisher === null;
  cameraButton.hidden = owner === null || camera !== null || streamState === "ended";
}

function authHeaders() {
  return owner ? { Authorization: `Bearer ${owner.key}` } : {};
}

function showEndedStatus() {
  setStatus("ended", "This stream has ended. Create a new stream to go live again.");
}

function mediaErrorText(error) {
  switch (error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "the browser was not allowed to use the camera and microphone.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "no camera or microphone was found.";
    case "NotReadableError":
      return "the camera or microphone is in use by another program.";
    default:
      return error.message || String(error);
  }
}

// -- the owner ----------------------------------------------------------------------------------

async function checkOwner() {
  const mine = ++ownerCheck;
  if (!token) {
    owner = null;
    if (!publisher) setStatus("login", "Log in as this stream's creator to go live.");
    renderControls();
    return;
  }
  let response;
  let body;
  try {
    response = await fetch(`/api/v1/streams/${encodeURIComponent(streamId)}`, {
      headers: { Accept: "application/json", Authorization: `Bearer ${token}` },
    });
    body = await response.json().catch(() => ({}));
  } catch (error) {
    if (mine === ownerCheck) setStatus("error", `Could not load the stream: ${error.message}`);
    return;
  }
  if (mine !== ownerCheck) return;
  if (response.status === 401) {
    storeToken(null); // the room (room.js) shows the login form again
    me = null;
    renderAccount();
    if (!publisher) setStatus("login", "Your login has expired. Log in again to go live.");
    return;
  }
  if (!response.ok) {
    const error = body.error || {};
    setStatus("error", `Could not load the stream: ${error.message || response.status}`);
    return;
  }
  showStream(body);
  if (!body.stream_key) {
    owner = null;
    if (!publisher) {
      setStatus("not-owner", "Only this stream's creator can go live here: log in as them.");
    }
    renderControls();
    return;
  }
  owner = { whipUrl: body.whip_url || `/whip/${encodeURIComponent(streamId)}`, key: body.stream_key };
  renderControls();
  if (body.state === "ended") {
    showEndedStatus();
  } else if (!publisher && (await startCamera())) {
    setStatus("ready", "Ready: press Start broadcasting to go live.");
  }
}

// -- the camera ---------------------------------------------------------------------------------

function startCamera() {
  if (camera) return Promise.resolve(true);
  if (!cameraPending) {
    cameraPending = openCamera().finally(() => {
      cameraPending = null;
    });
  }
  return cameraPending;
}

async function openCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus("error", "This page cannot use a camera: it needs HTTPS (or localhost).");
    return false;
  }
  setStatus("camera", "Asking for the camera and microphone…");
  try {
    camera = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 } },
      audio: true,
    });
  } catch (error) {
    setStatus("error", `No camera: ${mediaErrorText(error)}`);
    renderControls();
    return false;
  }
  previewEl.srcObject = camera;
  previewEl.play().catch(() => {});
  renderControls();
  return true;
}

// -- broadcasting -------------------------------------------------------------------------------

function showProgress() {
  if (!publisher) return;
  if (!publisher.connected) {
    setStatus("connecting", "Connecting to the server…");
  } else if (streamState === "live") {
    setStatus("live", "You are live.");
  } else {
    setStatus("connecting", "Connected: waiting for the server to start the stream…");
  }
}

async function startBroadcast() {
  if (publisher || !owner) return;
  const pc = new RTCPeerConnection();
  const mine = { pc, session: null, connected: false };
  publisher = mine;
  renderControls();
  if (!(await startCamera()) || publisher !== mine) {
    if (publisher === mine) publisher = null;
    pc.close();
    renderControls();
    return;
  }
  showProgress();
  for (const track of camera.getTracks()) {
    pc.addTransceiver(track, { direction: "sendonly", streams: [camera] });
  }
  pc.addEventListener("connectionstatechange", () => {
    if (publisher !== mine) return;
    if (pc.connectionState === "connected") {
      mine.connected = true;
      showProgress();
    } else if (pc.connectionState === "disconnected") {
      setStatus("connecting", "The connection to the server is interrupted; reconnecting…");
    } else if (pc.connectionState === "failed") {
      endBroadcast();
      setStatus("error", "The connection to the server failed. Press Start broadcasting to try again.");
    }
  });
  try {
    mine.session = await LivecoreWebRTC.negotiate(pc, owner.whipUrl, authHeaders());
  } catch (error) {
    if (publisher !== mine) return; // stopped meanwhile
    endBroadcast();
    if (error.code === "stream_ended") showEndedStatus();
    else setStatus("error", `Could not go live: ${error.message}`);
    return;
  }
  if (publisher !== mine) {
    LivecoreWebRTC.hangUp(mine.session, authHeaders()); // Stop came first
    return;
  }
  showProgress();
}

// Forgets the session here (the caller ends it on the server, if it should).
function endBroadcast() {
  const current = publisher;
  publisher = null;
  if (current) current.pc.close();
  renderControls();
  return current;
}

async function stopBroadcast() {
  const current = publisher;
  if (!current) return;
  publisher = null;
  stopping = true;
  renderControls();
  setStatus("stopping", "Stopping…");
  // DELETE before closing: then the server hears it from us rather than from the network.
  const gone = await LivecoreWebRTC.hangUp(current.session, authHeaders());
  current.pc.close();
  stopping = false;
  renderControls();
  if (streamState === "ended") {
    showEndedStatus();
  } else if (gone) {
    setStatus("stopped", "Stopped. The stream ends in a few seconds unless you start again.");
  } else {
    setStatus("error", "Stopped here, but the server could not be told: it ends the stream once it notices.");
  }
}

// -- events -------------------------------------------------------------------------------------

startButton.addEventListener("click", startBroadcast);
stopButton.addEventListener("click", stopBroadcast);
cameraButton.addEventListener("click", async () => {
  if ((await startCamera()) && !publisher) {
    setStatus("ready", "Ready: press Start broadcasting to go live.");
  }
});

window.addEventListener("livecore:token", checkOwner);

window.addEventListener("livecore:state", (event) => {
  streamState = event.detail;
  if (streamState === "ended") {
    endBroadcast();
    showEndedStatus();
  } else {
    showProgress();
  }
  renderControls();
});

window.addEventListener("pagehide", () => {
  if (publisher) LivecoreWebRTC.hangUp(publisher.session, authHeaders(), { keepalive: true });
});

el("watch-link").href = `/watch/${encodeURIComponent(streamId || "")}`;

startRoom().then((stream) => {
  if (stream !== null) checkOwner();
});
