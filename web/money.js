// What the money pages share (coins.js, creator.js, finance.js, paytest.js, and gifts.js on the
// watch page): the authorised JSON API call and its error, number, money and time formatting,
// the login form's wiring, and the inline-SVG bar chart. Loaded (deferred) after session.js and
// before the page's own script; everything sits in the one global LivecoreMoney.
// Every text from the server goes through textContent, never innerHTML.
"use strict";

const LivecoreMoney = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";

  // -- the API ----------------------------------------------------------------------------------

  // The token sent: by default the one LivecoreSession keeps; a page that holds its own (so
  // that a login lasts while storage is disabled) hands a getter to useToken.
  let tokenOf = () => LivecoreSession.read();

  function useToken(getter) {
    tokenOf = getter;
  }

  // An API call that did not succeed. status 0 (code "network"): the server was not reached,
  // so the outcome is unknown. detail is the body's `error` object, retryAfter the header's
  // seconds (0 without one).
  class ApiError extends Error {
    constructor(status, error = {}, retryAfter = 0) {
      super(error.message || "");
      this.status = status;
      this.code = error.code || "";
      this.detail = error;
      this.retryAfter = retryAfter;
    }
  }

  // One authorised request; resolves to the Response when it is 2xx, else rejects with an
  // ApiError. `body` (any JSON value) is sent as JSON; `accept` asks for another type (CSV).
  async function request(method, path, { body, accept = "application/json" } = {}) {
    const headers = { Accept: accept };
    const token = tokenOf();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new ApiError(0, { code: "network", message: `Could not reach the server: ${error.message}` });
    }
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new ApiError(response.status, data.error || {}, Number(response.headers.get("Retry-After")));
    }
    return response;
  }

  // A JSON API call: resolves to the decoded body ({} when it is not JSON).
  async function api(method, path, body) {
    const response = await request(method, path, { body });
    return response.json().catch(() => ({}));
  }

  // The wording for what every page says alike; pages handle their own codes first.
  function describe(error) {
    if (!(error instanceof ApiError)) return error.message || "Something went wrong.";
    if (error.status === 401) return "Your login has expired. Please log in again.";
    if (error.status >= 500) return "The server is having trouble right now; try again shortly.";
    return error.message || `The request failed (${error.status}).`;
  }

  // -- text -------------------------------------------------------------------------------------

  // Sets an element's text, hiding it while there is none.
  function showText(target, text) {
    target.textContent = text;
    target.hidden = !text;
  }

  // "29,999".
  function count(value) {
    return Number(value).toLocaleString("en-US");
  }

  // "1 coin", "29,999 coins".
  function plural(value, one, many) {
    return `${count(value)} ${Number(value) === 1 ? one : many}`;
  }

  const formats = new Map();

  // Intl's currency format (null for a code this browser does not know); its
  // maximumFractionDigits is the currency's minor-unit exponent (2 for USD and EUR, 0 for JPY),
  // which turns minor units into major ones.
  function currencyFormat(currency) {
    const code = String(currency || "").toUpperCase();
    if (!formats.has(code)) {
      let format = null;
      try {
        format = new Intl.NumberFormat("en-US", { style: "currency", currency: code });
      } catch {
        // Not a currency: money() falls back to minor units.
      }
      formats.set(code, format);
    }
    return formats.get(code);
  }

  function minorDigits(currency) {
    const format = currencyFormat(currency);
    return format ? format.resolvedOptions().maximumFractionDigits : 0;
  }

  // "$4.99" from 499 and "usd".
  function money(minor, currency) {
    const format = currencyFormat(currency);
    if (!format) return `${minor} ${String(currency || "").toUpperCase()} (minor units)`;
    return format.format(Number(minor) / 10 ** minorDigits(currency));
  }

  // The browser's local date and time.
  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  // "2024-05-01 12:34:56" (UTC).
  function utcTime(iso) {
    return iso ? new Date(iso).toISOString().slice(0, 19).replace("T", " ") : "";
  }

  // "12:34" (UTC).
  function utcMinute(iso) {
    return iso ? new Date(iso).toISOString().slice(11, 16) : "";
  }

  // A UUID's first 8 digits.
  function shortId(value) {
    return value ? value.slice(0, 8) : "";
  }

  // crypto.randomUUID exists only in secure contexts (https, localhost); a self-hosted server
  // on plain http gets a version-4 UUID from getRandomValues, which works everywhere.
  function newUuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  // Appends a <td> to the table row `row` for each [text, className, title] of `cells` (the
  // class and the title only when given); returns the row.
  function cellsRow(row, cells) {
    for (const [text, className, full] of cells) {
      const cell = document.createElement("td");
      if (className) cell.className = className;
      if (full) cell.title = full;
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }

  // -- the login form ---------------------------------------------------------------------------

  // The form #login-form (with #login-submit, #login-password and #login-error): logs in
  // through LivecoreSession, then awaits onLogin(token); a failure of either is shown in
  // #login-error.
  function wireLogin(form, onLogin) {
    const submit = document.getElementById("login-submit");
    const errorEl = document.getElementById("login-error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const fields = new FormData(form);
      submit.disabled = true;
      showText(errorEl, "");
      try {
        const token = await LivecoreSession.logIn(fields.get("username"), fields.get("password"));
        document.getElementById("login-password").value = "";
        await onLogin(token);
      } catch (error) {
        showText(errorEl, error.message);
      } finally {
        submit.disabled = false;
      }
    });
  }

  // -- the bar chart ----------------------------------------------------------------------------

  function svg(name, attributes = {}, text = null) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (text !== null) node.textContent = text;
    return node;
  }

  // The axis's top: 1, 2, 2.5 or 5 times a power of ten, at least `value`.
  function niceMax(value) {
    if (value <= 0) return 1;
    const step = 10 ** Math.floor(Math.log10(value));
    for (const factor of [1, 2, 2.5, 5, 10]) {
      if (factor * step >= value) return factor * step;
    }
    return 10 * step;
  }

  // An <svg class="bars">: one <rect class="bar"> an item (its height valueOf(item), its
  // attributes barData(item), its tooltip barTitle(item)), gridlines and ticks at 0, ½ and the
  // top of the y axis, at most about 8 x ticks (tickOf(item)), and axis labels. When `empty`
  // (default: no items), the text emptyText stands in the plot instead of bars.
  function barChart({
    items, valueOf, title, ariaLabel, yLabel, xLabel, emptyText, barData, barTitle, tickOf,
    empty = items.length === 0, marginLeft = 52,
  }) {
    const width = 640;
    const height = 240;
    const margin = { top: 12, right: 12, bottom: 44, left: marginLeft };
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const top = niceMax(Math.max(0, ...items.map(valueOf)));
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, class: "bars", role: "img", "aria-label": ariaLabel,
    });
    root.append(svg("title", {}, title));

    // The y axis: gridlines and labels at 0, ½ and the top.
    for (const fraction of [0, 0.5, 1]) {
      const y = margin.top + plotH * (1 - fraction);
      root.append(svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y, y2: y }));
      root.append(svg("text", { class: "tick", x: margin.left - 6, y: y + 4, "text-anchor": "end" },
        count(Math.round(top * fraction * 100) / 100)));
    }
    root.append(svg("text", {
      class: "axis-label", transform: `translate(14 ${margin.top + plotH / 2}) rotate(-90)`,
      "text-anchor": "middle",
    }, yLabel));
    root.append(svg("text", {
      class: "axis-label", x: margin.left + plotW / 2, y: height - 6, "text-anchor": "middle",
    }, xLabel));

    if (empty) {
      root.append(svg("text", {
        class: "empty", x: margin.left + plotW / 2, y: margin.top + plotH / 2, "text-anchor": "middle",
      }, emptyText));
      return root;
    }
    const slot = plotW / items.length;
    const barW = Math.max(1, Math.min(48, slot * 0.8));
    const labelEvery = Math.max(1, Math.ceil(items.length / 8));
    items.forEach((item, index) => {
      const barH = (valueOf(item) / top) * plotH;
      const x = margin.left + slot * index + (slot - barW) / 2;
      const rect = svg("rect", {
        class: "bar", x: x.toFixed(1), y: (margin.top + plotH - barH).toFixed(1),
        width: barW.toFixed(1), height: barH.toFixed(1), ...barData(item),
      });
      rect.append(svg("title", {}, barTitle(item)));
      root.append(rect);
      if (index % labelEvery === 0 || index === items.length - 1) {
        root.append(svg("text", {
          class: "tick", x: (margin.left + slot * index + slot / 2).toFixed(1),
          y: margin.top + plotH + 16, "text-anchor": "middle",
        }, tickOf(item)));
      }
    });
    root.append(svg("line", {
      class: "axis", x1: margin.left, x2: width - margin.right,
      y1: margin.top + plotH, y2: margin.top + plotH,
    }));
    return root;
  }

  return {
    useToken, ApiError, request, api, describe,
    showText, count, plural, money, minorDigits, when, utcTime, utcMinute, shortId, newUuid,
    cellsRow, wireLogin, barChart,
  };
})();
