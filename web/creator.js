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
const DAY_MS = 86400000;
const MAX_DAYS_CHARTED = 366;
const PAYOUT_LABELS = { pending: "Pending", paid: "Paid", failed: "Failed" };

const { ApiError, api, showText, count, plural, money, when, newUuid } = LivecoreMoney;
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
LivecoreMoney.useToken(() => token);
let generation = 0;
let earnings = null; // the latest GET /api/v1/me/earnings
let requesting = false;

// -- small helpers ----------------------------------------------------------------------------

// What `diamonds` are worth, rounded down as the server does (docs/payments.md).
function diamondsValue(diamonds) {
  return Math.floor((diamonds * earnings.minor_per_100_diamonds) / 100);
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
      return LivecoreMoney.describe(error);
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

function chart(days) {
  const total = days.reduce((sum, d) => sum + d.diamonds, 0);
  return LivecoreMoney.barChart({
    items: days,
    valueOf: (day) => day.diamonds,
    title: "Diamonds earned per day",
    ariaLabel: total
      ? `Diamonds earned per day: ${count(total)} over ${plural(days.length, "day", "days")}`
      : "Diamonds earned per day: no earnings yet",
    yLabel: "diamonds",
    xLabel: "day (UTC)",
    emptyText: "No earnings yet",
    empty: total === 0,
    marginLeft: 56,
    barData: (day) => ({ "data-day": day.day, "data-diamonds": day.diamonds }),
    barTitle: (day) => `${day.day}: ${plural(day.diamonds, "diamond", "diamonds")}`,
    tickOf: (day) => day.day.slice(5),
  });
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
  return LivecoreMoney.cellsRow(row, cells);
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

LivecoreMoney.wireLogin(loginForm, (value) => {
  token = value;
  generation += 1;
  start();
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
