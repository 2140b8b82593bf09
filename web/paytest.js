// The local test checkout (/pay/test/<purchase id>), used when no Stripe key is configured:
// it shows the order and offers "Pay" and "Decline". Either button asks the server
// (POST /api/v1/test-payments/<id>), which builds the event Stripe would send and processes it
// like a verified webhook; then the browser goes back to /coins?purchase=<id>, which shows
// what the server decided. Every text from the server goes through textContent.
"use strict";

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const { api, showText, count, money } = LivecoreMoney;
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
LivecoreMoney.useToken(() => token);
let busy = false;

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
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
  let purchase;
  try {
    purchase = await api("GET", `/api/v1/purchases/${encodeURIComponent(purchaseId)}`);
  } catch (error) {
    if (error.status === 401) {
      expired();
      return;
    }
    setStatus("error", error.status === 404 ? "There is no such purchase on this account."
      : error.message || `Could not load the purchase (${error.status}).`);
    return;
  }
  el("pay-package").textContent = purchase.package;
  el("pay-coins").textContent = count(purchase.coins);
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
  let failure = null;
  try {
    await api("POST", `/api/v1/test-payments/${encodeURIComponent(purchaseId)}`, { outcome });
  } catch (error) {
    failure = error;
  }
  busy = false;
  if (failure && failure.status === 401) {
    expired();
    return;
  }
  if (failure && failure.status !== 409) {
    // 409: decided already (another tab, say): /coins shows how.
    setStatus("error", "The test payment was not completed.");
    showText(payError, failure.message || `The request failed (${failure.status}).`);
    setButtons(failure.status === 0 || failure.status >= 500);
    return;
  }
  setStatus("done", "Done; going back to your coins…");
  location.assign(returnUrl);
}

payButton.addEventListener("click", () => settle("pay"));
declineButton.addEventListener("click", () => settle("decline"));

LivecoreMoney.wireLogin(loginForm, async (value) => {
  token = value;
  await load();
});

// Back here with the browser's back button (restored from the back-forward cache): ask
// the server again rather than show the state from before the page left.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) load();
});

load();
