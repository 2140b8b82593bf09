// The login shared by the pages: the token, kept in localStorage under "livecore.token"
// (storage may be disabled, in private modes: then a login lasts as long as the page), and
// the log-in and log-out requests.
"use strict";

const LivecoreSession = {
  KEY: "livecore.token",

  read() {
    try {
      return localStorage.getItem(this.KEY);
    } catch {
      return null;
    }
  },

  write(value) {
    try {
      if (value) localStorage.setItem(this.KEY, value);
      else localStorage.removeItem(this.KEY);
    } catch {
      // Storage is disabled: nothing to keep.
    }
  },

  // POST /api/v1/auth/login; resolves to the new token (also stored), or rejects with an
  // Error whose message is meant for the person at the page.
  async logIn(username, password) {
    let response;
    try {
      response = await fetch("/api/v1/auth/login", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ username, password }),
      });
    } catch (error) {
      throw new Error(`Could not log in: ${error.message}`);
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = body.error || {};
      if (response.status === 429) {
        const wait = Number(response.headers.get("Retry-After"));
        const unit = wait === 1 ? "second" : "seconds";
        throw new Error(`Too many attempts.${wait ? ` Try again in ${wait} ${unit}.` : ""}`);
      }
      throw new Error(error.message || `Login failed (${response.status}).`);
    }
    this.write(body.token);
    return body.token;
  },

  // Forgets the token here and revokes it on the server (best effort).
  logOut(token) {
    this.write(null);
    if (token) {
      fetch("/api/v1/auth/logout", { method: "POST", headers: { Authorization: `Bearer ${token}` } })
        .catch(() => {});
    }
  },
};
