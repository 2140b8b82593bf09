// The creator dashboard (/creator): diamonds available, being paid out and paid out (with
// their money value), a chart of diamonds earned per day (inline SVG, drawn like the finance
// page's chart), the Stripe connected account that payouts go to, a payout request and the
// payout history.
//
// A payout request carries a payout id chosen here; it is kept in sessionStorage (with the
// amount) until the server answers, so a retry after a dropped connection or a 5xx sends the
// same id and the server does not pay twice (docs/payments.md, "Creator payouts").
// Every text from the server goes through textContent, never innerHTML.
"use strict";

const PAYOUT_KEY = "livecore.payout";
const SVG_NS = "http://www.w3.org/2000/svg";
const DAY_MS = 86400000;
const MAX_DAYS_CHARTED = 366;
const PAYOUT_LABELS = { pending: "Pending", paid: "Paid", failed: "Failed" };

const el = (id) => document.getElementById(id);
const accountEl = el("account");
const meEl = el("me");
const loginForm = el("login-form");
const loginError = el("login-error");
const accessError = el("access-error");
const dashboard = el("dashboard");
const accountForm = el("account-form");
const accountInput = el("account-input");
const payoutForm = el("payout-form");
const payoutInput = el("payout-diamonds");
const payoutError = el("payout-error");
const payoutResult = el("payout-result");

let token = LivecoreSession.read();
let generation = 0;
let earnings = null; // the latest GET /api/v1/me/earnings
let requesting = false;

// -- small helpers ----------------------------------------------------------------------------

function showText(target, text) {
  target.textContent = text;
  target.hidden = !text;
}

function count(value) {
  return Number(value).toLocaleString("en-US");
}

function plural(value, one, many) {
  return `${count(value)} ${value === 1 ? one : many}`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function money(minor, currency) {
  const code = String(currency || "").toUpperCase();
  try {
    const format = new Intl.NumberFormat("en-US", { style: "currency", currency: code });
    return format.format(Number(minor) / 10 ** format.resolvedOptions().maximumFractionDigits);
  } catch {
    return `${minor} ${code} (minor units)`;
  }
}

// What `diamonds` are worth, rounded down as the server does (docs/payments.md).
function diamondsValue(diamonds) {
  return Math.floor((diamonds * earnings.minor_per_100_diamonds) / 100);
}

function newUuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function stored() {
  try {
    return JSON.parse(sessionStorage.getItem(PAYOUT_KEY) || "null");
  } catch {
    return null;
  }
}

function store(value) {
  try {
    if (value) sessionStorage.setItem(PAYOUT_KEY, JSON.stringify(value));
    else sessionStorage.removeItem(PAYOUT_KEY);
  } catch {
    // Storage is disabled: a retry after a reload then sends a new payout id.
  }
}

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || "");
    this.status = status;
    this.code = error.code || "";
    this.detail = error;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${token}` };
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
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error || {});
  return data;
}

function describe(error) {
  if (!(error instanceof ApiError)) return error.message || "Something went wrong.";
  const min = earnings ? plural(earnings.min_payout_diamonds, "diamond", "diamonds") : null;
  switch (error.code) {
    case "network":
      return `${error.message} Try again: the same request is sent, so nothing is paid twice.`;
    case "below_minimum":
      return `${error.message || "That is below the minimum payout."}` +
        `${min ? ` The minimum is ${min}.` : ""}`;
    case "insufficient_diamonds":
      return `${error.message || "You do not have that many diamonds available."}` +
        `${earnings ? ` Available: ${plural(earnings.available_diamonds, "diamond", "diamonds")}.` : ""}`;
    case "no_payout_account":
      return `${error.message || "No payout account."} Save your Stripe connected account id ` +
        "above first.";
    case "forbidden_role":
      return "This account is not a creator account, so it has no earnings to show.";
    case "wrong_password":
      return "That is not your password, so the payout account was not changed.";
    default:
      if (error.status === 401) return "Your login has expired. Please log in again.";
      if (error.status >= 500) return "The server is having trouble right now; try again shortly.";
      return error.message || `The request failed (${error.status}).`;
  }
}

// Errors that mean this login cannot use the page: the login form, or a page-wide message.
function accessFailed(error) {
  if (!(error instanceof ApiError)) return false;
  if (error.status === 401) {
    LivecoreSession.write(null);
    token = null;
    generation += 1;
    render();
    showText(loginError, describe(error));
    return true;
  }
  if (error.status === 403 && error.code !== "wrong_password") {
    dashboard.hidden = true;
    showText(accessError, error.code === "forbidden_role" || !error.message
      ? "This account is not a creator account, so it has no earnings to show."
      : error.message);
    return true;
  }
  return false;
}

// -- earnings and the chart -------------------------------------------------------------------

function setFigure(id, value, text) {
  el(id).dataset.value = String(value);
  el(id).textContent = text;
}

function renderEarnings(body) {
  earnings = body;
  const currency = body.currency;
  setFigure("available-diamonds", body.available_diamonds,
    plural(body.available_diamonds, "diamond", "diamonds"));
  setFigure("pending-diamonds", body.pending_diamonds,
    plural(body.pending_diamonds, "diamond", "diamonds"));
  setFigure("paid-diamonds", body.paid_diamonds, plural(body.paid_diamonds, "diamond", "diamonds"));
  setFigure("earned-diamonds", body.earned_diamonds,
    plural(body.earned_diamonds, "diamond", "diamonds"));
  setFigure("available-money", body.available_minor, money(body.available_minor, currency));
  setFigure("pending-money", body.pending_minor, money(body.pending_minor, currency));
  setFigure("paid-money", body.paid_minor, money(body.paid_minor, currency));
  el("rate").textContent = `100 diamonds are worth ${money(body.minor_per_100_diamonds, currency)}` +
    " (rounded down).";
  el("test-mode").hidden = !body.test_mode;
  el("payout-account").textContent = body.payout_account
    ? `Payouts go to ${body.payout_account}.` : "No payout account saved yet.";
  el("payout-account").dataset.account = body.payout_account || "";
  if (body.payout_account && document.activeElement !== accountInput && !accountInput.value) {
    accountInput.value = body.payout_account;
  }
  el("payout-min").textContent =
    `The minimum payout is ${plural(body.min_payout_diamonds, "diamond", "diamonds")} ` +
    `(${money(diamondsValue(body.min_payout_diamonds), currency)}).`;
  payoutInput.min = String(body.min_payout_diamonds);
  payoutInput.max = String(Math.max(body.min_payout_diamonds, body.available_diamonds));
  if (document.activeElement !== payoutInput) payoutInput.value = String(body.available_diamonds);
  showPayoutValue();
  el("earnings-chart").replaceChildren(chart(everyDay(body.daily || [])));
}

function showPayoutValue() {
  const diamonds = Number(payoutInput.value);
  el("payout-value").textContent = earnings && Number.isInteger(diamonds) && diamonds > 0
    ? `${plural(diamonds, "diamond", "diamonds")} = ${money(diamondsValue(diamonds), earnings.currency)}`
    : "";
}

// The days from the first to the last one given, the missing ones with 0 diamonds: a day
// without gifts is a bar of height 0, not a day left out of the axis.
function everyDay(daily) {
  const known = new Map(daily.map((d) => [d.day, Number(d.diamonds) || 0]));
  const days = [...known.keys()].sort();
  if (days.length === 0) return [];
  const first = Date.parse(`${days[0]}T00:00:00Z`);
  const last = Date.parse(`${days[days.length - 1]}T00:00:00Z`);
  if (!Number.isFinite(first) || !Number.isFinite(last)) {
    return days.map((day) => ({ day, diamonds: known.get(day) }));
  }
  const start = Math.max(first, last - (MAX_DAYS_CHARTED - 1) * DAY_MS);
  const filled = [];
  for (let t = start; t <= last; t += DAY_MS) {
    const day = new Date(t).toISOString().slice(0, 10);
    filled.push({ day, diamonds: known.get(day) || 0 });
  }
  return filled;
}

function svg(name, attributes = {}, text = null) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const factor of [1, 2, 2.5, 5, 10]) {
    if (factor * step >= value) return factor * step;
  }
  return 10 * step;
}

function chart(days) {
  const width = 640;
  const height = 240;
  const margin = { top: 12, right: 12, bottom: 44, left: 56 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const total = days.reduce((sum, d) => sum + d.diamonds, 0);
  const top = niceMax(Math.max(0, ...days.map((d) => d.diamonds)));
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, class: "bars", role: "img",
    "aria-label": total
      ? `Diamonds earned per day: ${count(total)} over ${plural(days.length, "day", "days")}`
      : "Diamonds earned per day: no earnings yet",
  });
  root.append(svg("title", {}, "Diamonds earned per day"));

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
  }, "diamonds"));
  root.append(svg("text", {
    class: "axis-label", x: margin.left + plotW / 2, y: height - 6, "text-anchor": "middle",
  }, "day (UTC)"));

  if (total === 0) {
    root.append(svg("text", {
      class: "empty", x: margin.left + plotW / 2, y: margin.top + plotH / 2, "text-anchor": "middle",
    }, "No earnings yet"));
    return root;
  }
  const slot = plotW / days.length;
  const barW = Math.max(1, Math.min(48, slot * 0.8));
  const labelEvery = Math.max(1, Math.ceil(days.length / 8));
  days.forEach((day, index) => {
    const barH = (day.diamonds / top) * plotH;
    const x = margin.left + slot * index + (slot - barW) / 2;
    const rect = svg("rect", {
      class: "bar", x: x.toFixed(1), y: (margin.top + plotH - barH).toFixed(1),
      width: barW.toFixed(1), height: barH.toFixed(1),
      "data-day": day.day, "data-diamonds": day.diamonds,
    });
    rect.append(svg("title", {}, `${day.day}: ${plural(day.diamonds, "diamond", "diamonds")}`));
    root.append(rect);
    if (index % labelEvery === 0 || index === days.length - 1) {
      root.append(svg("text", {
        class: "tick", x: (margin.left + slot * index + slot / 2).toFixed(1),
        y: margin.top + plotH + 16, "text-anchor": "middle",
      }, day.day.slice(5)));
    }
  });
  root.append(svg("line", {
    class: "axis", x1: margin.left, x2: width - margin.right,
    y1: margin.top + plotH, y2: margin.top + plotH,
  }));
  return root;
}

async function loadEarnings() {
  const mine = generation;
  const status = el("earnings-status");
  let body;
  try {
    body = await api("GET", "/api/v1/me/earnings");
  } catch (error) {
    if (mine !== generation || accessFailed(error)) return false;
    status.dataset.state = "error";
    status.textContent = describe(error);
    return true;
  }
  if (mine !== generation) return false;
  status.dataset.state = "";
  status.textContent = "";
  renderEarnings(body);
  return true;
}

// -- payout account ---------------------------------------------------------------------------

accountForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = accountInput.value.trim();
  const errorEl = el("account-error");
  const result = el("account-result");
  showText(errorEl, "");
  result.textContent = "";
  if (!/^acct_[A-Za-z0-9]{1,64}$/.test(value)) {
    showText(errorEl, "A Stripe connected account id looks like acct_ followed by letters and digits.");
    return;
  }
  const password = el("account-password");
  if (!password.value) {
    showText(errorEl, "Type your password: changing where payouts go needs it.");
    return;
  }
  const button = el("account-save");
  button.disabled = true;
  try {
    const body = await api("PUT", "/api/v1/me/payout-account",
      { stripe_account_id: value, password: password.value });
    password.value = "";
    result.textContent = `Saved: payouts go to ${body.stripe_account_id}.`;
    await loadEarnings();
  } catch (error) {
    if (!accessFailed(error)) showText(errorEl, describe(error));
  } finally {
    button.disabled = false;
  }
});

// -- payouts ----------------------------------------------------------------------------------

function payoutRow(payout) {
  const row = document.createElement("tr");
  row.className = "payout";
  row.dataset.payoutId = payout.payout_id;
  row.dataset.status = payout.status;
  const cells = [
    [when(payout.created_at), "time"],
    [count(payout.diamonds), "num"],
    [money(payout.amount_minor, payout.currency), "num"],
    [PAYOUT_LABELS[payout.status] || payout.status, "status"],
    [payout.transfer_id || payout.failure || "", payout.transfer_id ? "id" : "notes"],
    [when(payout.resolved_at), "time"],
  ];
  for (const [text, className] of cells) {
    const cell = document.createElement("td");
    cell.className = className;
    cell.textContent = text;
    row.append(cell);
  }
  return row;
}

async function loadPayouts() {
  const mine = generation;
  const status = el("payouts-status");
  let body;
  try {
    body = await api("GET", "/api/v1/me/payouts");
  } catch (error) {
    if (mine === generation && !accessFailed(error)) status.textContent = describe(error);
    return;
  }
  if (mine !== generation) return;
  const payouts = body.payouts || [];
  status.textContent = payouts.length ? "" : "No payouts yet.";
  document.querySelector("#payouts tbody").replaceChildren(...payouts.map(payoutRow));
}

function setResult(state, text) {
  payoutResult.dataset.state = state;
  payoutResult.textContent = text;
}

function describePayout(payout) {
  const what = `${plural(payout.diamonds, "diamond", "diamonds")} ` +
    `(${money(payout.amount_minor, payout.currency)})`;
  switch (payout.status) {
    case "paid":
      return `Paid: ${what} transferred${payout.transfer_id ? ` (transfer ${payout.transfer_id})` : ""}.`;
    case "failed":
      return `The payout of ${what} failed${payout.failure ? `: ${payout.failure}` : ""}. ` +
        "The diamonds are back in your available balance.";
    default:
      return `The payout of ${what} is being processed. It is retried automatically; ` +
        "nothing is paid twice.";
  }
}

payoutForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (requesting || !earnings) return;
  showText(payoutError, "");
  const diamonds = Number(payoutInput.value);
  if (!Number.isInteger(diamonds) || diamonds <= 0) {
    showText(payoutError, "Enter a whole number of diamonds.");
    return;
  }
  if (diamonds < earnings.min_payout_diamonds) {
    showText(payoutError, `The minimum payout is ${plural(earnings.min_payout_diamonds, "diamond", "diamonds")}.`);
    return;
  }
  // A retry of the same request (same amount, not answered) reuses its payout id.
  let request = stored();
  if (!request || request.diamonds !== diamonds || typeof request.id !== "string") {
    request = { id: newUuid(), diamonds };
    store(request);
  }
  requesting = true;
  el("payout-submit").disabled = true;
  setResult("working", "Requesting the payout…");
  try {
    const payout = await api("POST", "/api/v1/me/payouts", { payout_id: request.id, diamonds });
    store(null);
    setResult(payout.status, describePayout(payout));
  } catch (error) {
    // An answer below 500 means nothing was reserved: the next request gets a new id. Without
    // one the payout may exist: a retry must send the same id.
    if (error.status >= 400 && error.status < 500) store(null);
    setResult("error", "");
    if (!accessFailed(error)) showText(payoutError, describe(error));
  } finally {
    requesting = false;
    el("payout-submit").disabled = false;
  }
  payoutInput.blur();
  await loadEarnings();
  loadPayouts();
});

payoutInput.addEventListener("input", showPayoutValue);

// -- account ----------------------------------------------------------------------------------

function render() {
  const loggedIn = token !== null;
  loginForm.hidden = loggedIn;
  accountEl.hidden = !loggedIn;
  if (!loggedIn) {
    dashboard.hidden = true;
    showText(accessError, "");
    meEl.textContent = "";
  }
}

async function start() {
  render();
  if (token === null) return;
  showText(accessError, "");
  showText(loginError, "");
  dashboard.hidden = false;
  const mine = generation;
  api("GET", "/api/v1/me").then((me) => {
    if (mine === generation) meEl.textContent = me.username;
  }, () => {});
  // The first call tells whether this account may use the page at all.
  if (!(await loadEarnings()) || dashboard.hidden) return;
  loadPayouts();
}

loginForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(loginForm);
  const submit = el("login-submit");
  submit.disabled = true;
  showText(loginError, "");
  try {
    token = await LivecoreSession.logIn(form.get("username"), form.get("password"));
    generation += 1;
    el("login-password").value = "";
    start();
  } catch (error) {
    showText(loginError, error.message);
  } finally {
    submit.disabled = false;
  }
});

el("logout").addEventListener("click", () => {
  LivecoreSession.logOut(token);
  token = null;
  generation += 1;
  earnings = null;
  store(null);
  render();
});

start();
