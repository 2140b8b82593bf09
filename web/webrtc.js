// WHIP and WHEP signalling, shared by the go-live page (publishing) and the watch page
// (playing): one SDP offer POSTed with every ICE candidate in it (no trickle), the answer
// applied, and the session URL (the answer's Location) kept to DELETE when done.
// A classic script like session.js: it defines the global LivecoreWebRTC.
"use strict";

class SignalingError extends Error {
  // `code` is the server's error code ("stream_not_live", ...), or "network_error" when the
  // server could not be reached, "http_error" when its answer was not a Livecore error.
  constructor(status, code, message) {
    super(message);
    this.name = "SignalingError";
    this.status = status;
    this.code = code;
  }
}

const LivecoreWebRTC = {
  ICE_GATHERING_TIMEOUT_MS: 5000,
  SignalingError,

  // Resolves once the connection has gathered its ICE candidates (or after a while anyway:
  // the host candidates come first and are usually all a server on the same network needs).
  iceGathered(pc, timeoutMs = this.ICE_GATHERING_TIMEOUT_MS) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      };
      const check = () => {
        if (pc.iceGatheringState === "complete") done();
      };
      const timer = setTimeout(done, timeoutMs);
      pc.addEventListener("icegatheringstatechange", check);
    });
  },

  // Offers `pc` (its transceivers already added) to a WHIP or WHEP endpoint; resolves to the
  // session URL once the answer is applied, or rejects with a SignalingError whose message is
  // the server's (meant for people).
  async negotiate(pc, endpoint, headers = {}) {
    await pc.setLocalDescription(await pc.createOffer());
    await this.iceGathered(pc);
    const url = new URL(endpoint, window.location.href).href;
    let response;
    let text;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: { ...headers, "Content-Type": "application/sdp" },
        body: pc.localDescription.sdp,
      });
      text = await response.text();
    } catch (error) {
      throw new SignalingError(0, "network_error", `The server cannot be reached (${error.message}).`);
    }
    if (response.status !== 201) {
      let error = {};
      try {
        error = JSON.parse(text).error || {};
      } catch {
        // Not a Livecore error: a proxy's page, say.
      }
      throw new SignalingError(response.status, error.code || "http_error",
        error.message || `The server answered ${response.status} ${response.statusText}.`);
    }
    const path = response.headers.get("Location");
    const session = path ? new URL(path, url).href : null;
    try {
      await pc.setRemoteDescription({ type: "answer", sdp: text });
    } catch (error) {
      this.hangUp(session, headers);
      throw new SignalingError(0, "bad_answer", `The server's answer cannot be used (${error.message}).`);
    }
    return session;
  },

  // Ends a session on the server (DELETE its URL); resolves to whether it is gone (a session
  // the server had already forgotten is gone too). `keepalive` lets it outlive the page.
  async hangUp(session, headers = {}, { keepalive = false } = {}) {
    if (!session) return true;
    try {
      const response = await fetch(session, { method: "DELETE", headers, keepalive });
      return response.ok || response.status === 404;
    } catch {
      return false;
    }
  },
};
