// The login token shared by the pages, kept in localStorage under "livecore.token".
// Storage may be disabled (private modes): then a login lasts as long as the page.
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
};
