// The local test checkout (/pay/test/<purchase id>), used when no Stripe key is configured:
// it shows the order and offers "Pay" and "Decline". Either button asks the server
// (POST /api/v1/test-payments/<id>), which builds the event Stripe would send and processes it
// like a verified webhook; then the browser goes back to /coins?purchase=<id>, which shows
// what the server decided. Every text from the server goes through textContent.
"use strict";

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const el = (id) => document.getElementById(id);
const loginForm = el("login-form");
const loginError = el("login-error");
const statusEl = el("pay-status");
const payButton = el("pay");
const declineButton = el("decline");
const payError = el("pay-error");

// The purchase id is the path's third segment: /pay/test/{id}.
const purchaseId = (() => {
  try {
    const raw = decodeURIComponent(location.pathname.split("/")[3] || "").toLowerCase();
    return UUID_RE.test(raw) ? raw : null;
  } catch {
    return null;
  }
})();
const returnUrl = purchaseId ? `/coins?purchase=${encodeURIComponent(purchaseId)}` : "/coins";

let token = LivecoreSession.read();
let busy = false;

function showText(target, text) {
  target.textContent = text;
  target.hidden = !text;
}

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
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
    return { status: 0, error: { message: `Could not reach the server: ${error.message}` } };
  }
  const data = await response.json().catch(() => ({}));
  return response.ok ? { status: response.status, data }
    : { status: response.status, error: data.error || {} };
}

function setButtons(enabled) {
  payButton.disabled = !enabled;
  declineButton.disabled = !enabled;
}

function expired() {
  LivecoreSession.write(null);
  token = null;
  loginForm.hidden = false;
  setButtons(false);
  showText(loginError, "Your login has expired. Please log in again.");
  setStatus("login", "Log in to finish this test payment.");
}

async function load() {
  setButtons(false);
  el("back").href = returnUrl;
  if (purchaseId === null) {
    setStatus("error", "This link does not name a purchase.");
    return;
  }
  if (token === null) {
    loginForm.hidden = false;
    setStatus("login", "Log in to finish this test payment.");
    return;
  }
  loginForm.hidden = true;
  const answer = await api("GET", `/api/v1/purchases/${encodeURIComponent(purchaseId)}`);
  if (answer.status === 401) {
    expired();
    return;
  }
  if (answer.error) {
    setStatus("error", answer.status === 404 ? "There is no such purchase on this account."
      : answer.error.message || `Could not load the purchase (${answer.status}).`);
    return;
  }
  const purchase = answer.data;
  el("pay-package").textContent = purchase.package;
  el("pay-coins").textContent = Number(purchase.coins).toLocaleString("en-US");
  el("pay-amount").textContent = money(purchase.amount_minor, purchase.currency);
  el("pay-amount").dataset.minor = String(purchase.amount_minor);
  el("order").hidden = false;
  if (purchase.status !== "pending") {
    setStatus(purchase.status, `This purchase is already ${purchase.status}; nothing to pay.`);
    return;
  }
  if (purchase.test_mode === false) {
    setStatus("error", "This purchase is paid through the real payment provider, not here.");
    return;
  }
  setStatus("pending", "Choose how this test payment ends.");
  setButtons(true);
}

async function settle(outcome) {
  if (busy) return;
  busy = true;
  setButtons(false);
  showText(payError, "");
  setStatus("working", outcome === "pay" ? "Paying…" : "Declining…");
  const answer = await api("POST", `/api/v1/test-payments/${encodeURIComponent(purchaseId)}`,
    { outcome });
  busy = false;
  if (answer.status === 401) {
    expired();
    return;
  }
  if (answer.error && answer.status !== 409) {
    // 409: decided already (another tab, say): /coins shows how.
    setStatus("error", "The test payment was not completed.");
    showText(payError, answer.error.message || `The request failed (${answer.status}).`);
    setButtons(answer.status === 0 || answer.status >= 500);
    return;
  }
  setStatus("done", "Done; going back to your coins…");
  location.assign(returnUrl);
}

payButton.addEventListener("click", () => settle("pay"));
declineButton.addEventListener("click", () => settle("decline"));

loginForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(loginForm);
  const submit = el("login-submit");
  submit.disabled = true;
  showText(loginError, "");
  try {
    token = await LivecoreSession.logIn(form.get("username"), form.get("password"));
    el("login-password").value = "";
    await load();
  } catch (error) {
    showText(loginError, error.message);
  } finally {
    submit.disabled = false;
  }
});

// Back here with the browser's back button (restored from the back-forward cache): ask
// the server again rather than show the state from before the page left.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) load();
});

load();
