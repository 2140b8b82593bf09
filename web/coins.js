// The "Buy coins" page (/coins): the wallet (and any debt), the coin packages, the return
// from checkout (/coins?purchase=<id>), the viewer's own spending limit and their purchases.
//
// Buying. A Buy button creates a purchase (POST /api/v1/purchases, method "checkout") with a
// purchase id chosen here. The id is kept in sessionStorage until the server has answered, so a
// double click, a reload or a retry after a dropped connection sends the same id, and the
// server answers with the same purchase instead of creating a second one. The browser is then
// sent to the checkout page (Stripe's, or the local test page).
//
// Coming back. Checkout sends the browser back to /coins?purchase=<id>. Nothing about that
// redirect says the payment went through: coins are credited only by the server, from the
// provider's verified webhook (docs/payments.md). So this page only polls the purchase
// (GET /api/v1/purchases/<id>, every second for up to 30 s) and shows what the server says,
// then reloads the wallet.
//
// Every text from the server goes through textContent, never innerHTML.
"use strict";

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const POLL_INTERVAL_MS = 1000;
const POLL_FOR_MS = 30000;
const PURCHASE_KEY = "livecore.purchase."; // + package slug -> the purchase id in flight
const STATUS_LABELS = {
  pending: "Pending",
  paid: "Paid",
  failed: "Failed",
  refunded: "Refunded",
  partially_refunded: "Partly refunded",
  disputed: "Disputed",
};

const { ApiError, api, showText, count, plural, money, minorDigits, when, newUuid } = LivecoreMoney;
const el = (id) => document.getElementById(id);
const accountEl = el("account");
const meEl = el("me");
const loginForm = el("login-form");
const loginError = el("login-error");
const testModeEl = el("test-mode");
const buyError = el("buy-error");
const limitForm = el("limit-form");
const limitInput = el("limit-input");
const limitError = el("limit-error");
const limitResult = el("limit-result");

const returnId = (() => {
  const raw = new URLSearchParams(location.search).get("purchase");
  return raw === null ? null : raw.trim().toLowerCase();
})();

let token = LivecoreSession.read();
LivecoreMoney.useToken(() => token);
let generation = 0; // bumps at each login and logout: answers for an older login are dropped
let buying = false;
let spending = null; // the latest GET/PUT /api/v1/me/spending

// -- small helpers ----------------------------------------------------------------------------

const session = {
  get(key) {
    try {
      return sessionStorage.getItem(key);
    } catch {
      return null;
    }
  },
  set(key, value) {
    try {
      sessionStorage.setItem(key, value);
    } catch {
      // Storage is disabled: a retry after a reload then makes a new purchase id.
    }
  },
  remove(key) {
    try {
      sessionStorage.removeItem(key);
    } catch {
      // See above.
    }
  },
  clearPurchases() {
    try {
      for (const key of Object.keys(sessionStorage)) {
        if (key.startsWith(PURCHASE_KEY)) sessionStorage.removeItem(key);
      }
    } catch {
      // See above.
    }
  },
};

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

function describe(error) {
  if (!(error instanceof ApiError)) return error.message || "Something went wrong.";
  const detail = error.detail;
  switch (error.code) {
    case "network":
      return `${error.message} Nothing was lost: try again.`;
    case "not_adult":
      return error.message || "Buying coins needs an adult account (18 or over).";
    case "spending_cap_reached": {
      const currency = spending ? spending.currency : null;
      const parts = [error.message || "This purchase would go over your daily spending limit."];
      if (currency && detail.cap_minor != null) {
        parts.push(`Your limit is ${money(detail.cap_minor, currency)} a day and you have spent ` +
          `${money(detail.spent_minor, currency)} in the last 24 hours.`);
      }
      if (detail.resets_at) parts.push(`More can be spent after ${when(detail.resets_at)}.`);
      return parts.join(" ");
    }
    case "spending_cooldown": {
      const wait = detail.retry_after_s || error.retryAfter;
      return `${error.message || "That is a lot of purchases in a short time."}` +
        `${wait ? ` Try again in ${plural(Math.ceil(wait), "second", "seconds")}.` : ""}`;
    }
    default:
      return LivecoreMoney.describe(error);
  }
}

// A 401 anywhere: the token is dead; back to the login form.
function expired(error) {
  if (!(error instanceof ApiError) || error.status !== 401) return false;
  LivecoreSession.write(null);
  token = null;
  generation += 1;
  render();
  showText(loginError, "Your login has expired. Please log in again.");
  return true;
}

function showTestMode(isTest) {
  if (isTest) testModeEl.hidden = false;
}

// -- the account ----------------------------------------------------------------------------

function render() {
  const loggedIn = token !== null;
  loginForm.hidden = loggedIn;
  accountEl.hidden = !loggedIn;
  for (const id of ["wallet-section", "spending-section", "history-section"]) {
    el(id).hidden = !loggedIn;
  }
  if (!loggedIn) meEl.textContent = "";
}

async function loadMe() {
  const mine = generation;
  try {
    const me = await api("GET", "/api/v1/me");
    if (mine === generation) meEl.textContent = me.username;
  } catch (error) {
    expired(error);
  }
}

// -- wallet -----------------------------------------------------------------------------------

async function loadWallet() {
  const mine = generation;
  const status = el("wallet-status");
  let wallet;
  try {
    wallet = await api("GET", "/api/v1/me/wallet");
  } catch (error) {
    if (!expired(error) && mine === generation) status.textContent = describe(error);
    return;
  }
  if (mine !== generation) return;
  status.textContent = "";
  const coinsEl = el("wallet-coins");
  coinsEl.dataset.value = String(wallet.coins);
  coinsEl.textContent = count(wallet.coins);
  const debt = Number(wallet.debt_coins || 0);
  const notice = el("debt-notice");
  notice.dataset.owed = String(debt);
  showText(notice, debt > 0
    ? `You owe ${plural(debt, "coin", "coins")}. A refund or chargeback took back coins that ` +
      "had already been spent. You cannot send gifts until this is paid; your next purchase " +
      "pays it first."
    : "");
  // Coins in the wallet (granted ones, say) can pay it at once.
  el("settle").hidden = !(debt > 0 && Number(wallet.coins) > 0);
}

async function settleDebt() {
  const status = el("settle-status");
  const button = el("settle-debt");
  button.disabled = true;
  try {
    const settled = await api("POST", "/api/v1/me/debt/settle");
    status.textContent = `Paid ${plural(settled.settled_coins, "coin", "coins")} of your debt.`;
  } catch (error) {
    if (!expired(error)) status.textContent = describe(error);
  } finally {
    button.disabled = false;
  }
  await loadWallet();
}

el("settle-debt").addEventListener("click", settleDebt);

// -- packages and buying ----------------------------------------------------------------------

async function loadPackages() {
  const status = el("packages-status");
  const list = el("packages");
  let body;
  try {
    body = await api("GET", "/api/v1/coins/packages");
  } catch (error) {
    status.dataset.state = "error";
    status.textContent = `Could not load the coin packages. ${describe(error)}`;
    return;
  }
  showTestMode(body.test_mode);
  const active = (body.packages || []).filter((p) => p.is_active !== false);
  status.dataset.state = "";
  status.textContent = active.length ? "" : "No coin packages are on sale right now.";
  list.replaceChildren(...active.map(packageItem));
}

function packageItem(pkg) {
  const item = document.createElement("li");
  item.className = "package";
  item.dataset.slug = pkg.slug;
  const amount = document.createElement("span");
  amount.className = "package-coins";
  amount.textContent = plural(pkg.coins, "coin", "coins");
  const price = document.createElement("span");
  price.className = "price";
  price.textContent = money(pkg.price_minor, pkg.currency);
  const button = document.createElement("button");
  button.type = "button";
  button.className = "buy";
  button.id = `buy-${pkg.slug}`;
  button.textContent = "Buy";
  button.setAttribute("aria-label", `Buy ${amount.textContent} for ${price.textContent}`);
  button.addEventListener("click", () => buy(pkg));
  item.append(amount, price, button);
  return item;
}

function setBuying(value) {
  buying = value;
  for (const button of document.querySelectorAll("#packages .buy")) button.disabled = value;
}

async function buy(pkg) {
  if (buying) return;
  if (token === null) {
    showText(buyError, "Log in to buy coins.");
    el("login-username").focus();
    return;
  }
  showText(buyError, "");
  setBuying(true);
  const key = PURCHASE_KEY + pkg.slug;
  let purchaseId = session.get(key);
  if (!purchaseId || !UUID_RE.test(purchaseId)) {
    purchaseId = newUuid();
    session.set(key, purchaseId);
  }
  let purchase;
  try {
    purchase = await api("POST", "/api/v1/purchases",
      { purchase_id: purchaseId, package: pkg.slug, method: "checkout" });
  } catch (error) {
    // An answer (4xx) means nothing was bought: the next click is a new purchase. Without
    // one (no connection, 5xx) the purchase may exist: a retry must send the same id.
    if (error.status >= 400 && error.status < 500) session.remove(key);
    if (!expired(error)) showText(buyError, describe(error));
    setBuying(false);
    return;
  }
  session.remove(key);
  showTestMode(purchase.test_mode);
  if (purchase.status === "pending" && purchase.checkout_url) {
    location.assign(purchase.checkout_url);
    return; // the buttons stay disabled while the browser leaves
  }
  // Answered with a purchase already decided (a replay after it was paid, say): show it.
  location.assign(`/coins?purchase=${encodeURIComponent(purchase.purchase_id)}`);
}

// -- the return from checkout -----------------------------------------------------------------

function setReturn(state, text, detail = "") {
  const status = el("return-status");
  status.dataset.state = state;
  status.textContent = text;
  el("return-detail").textContent = detail;
}

function returnText(purchase) {
  const coins = plural(purchase.coins, "coin", "coins");
  switch (purchase.status) {
    case "paid":
      return `Payment received: ${coins} credited to your account.`;
    case "failed":
      return "The payment did not go through. No coins were added and you were not charged.";
    case "refunded":
      return `This purchase was refunded; its ${coins} were taken back.`;
    case "partially_refunded":
      return "This purchase was partly refunded; part of its coins were taken back.";
    case "disputed":
      return "This payment is disputed with the card issuer.";
    default:
      return `Status: ${purchase.status}.`;
  }
}

async function followPurchase(purchaseId) {
  const mine = generation;
  const section = el("return");
  section.hidden = false;
  if (!UUID_RE.test(purchaseId)) {
    setReturn("unknown", "This link does not name a purchase.");
    return;
  }
  if (token === null) {
    setReturn("login", "Log in to see how your purchase went.");
    return;
  }
  setReturn("pending", "Waiting for the payment to be confirmed…");
  const deadline = Date.now() + POLL_FOR_MS;
  for (;;) {
    let purchase = null;
    try {
      purchase = await api("GET", `/api/v1/purchases/${encodeURIComponent(purchaseId)}`);
    } catch (error) {
      if (mine !== generation) return;
      if (expired(error)) return;
      if (error.status === 404) {
        setReturn("unknown", "There is no such purchase on this account.");
        return;
      }
      // No answer or a 5xx: keep asking until the deadline.
    }
    if (mine !== generation) return;
    if (purchase) {
      showTestMode(purchase.test_mode);
      const detail = `${plural(purchase.coins, "coin", "coins")} for ` +
        `${money(purchase.amount_minor, purchase.currency)}`;
      if (purchase.status !== "pending") {
        setReturn(purchase.status, returnText(purchase), detail);
        loadWallet();
        loadHistory();
        loadSpending();
        return;
      }
      setReturn("pending", "Waiting for the payment to be confirmed…", detail);
    }
    if (Date.now() >= deadline) {
      setReturn("timeout", "The payment has not been confirmed yet. Your coins are added as " +
        "soon as the payment provider confirms it; check your purchases below later.",
      el("return-detail").textContent);
      loadHistory();
      return;
    }
    await sleep(POLL_INTERVAL_MS);
  }
}

// -- spending limit ---------------------------------------------------------------------------

function duration(seconds) {
  if (seconds >= 3600 && seconds % 3600 === 0) return plural(seconds / 3600, "hour", "hours");
  if (seconds >= 60 && seconds % 60 === 0) return plural(seconds / 60, "minute", "minutes");
  return plural(seconds, "second", "seconds");
}

function toMajor(minor, currency) {
  return (Number(minor) / 10 ** minorDigits(currency)).toFixed(minorDigits(currency));
}

function renderSpending(body) {
  spending = body;
  const currency = body.currency;
  const own = body.own_cap_minor;
  const cap = el("spend-cap");
  cap.dataset.value = String(body.cap_minor);
  const isOwn = own !== null && own !== undefined && own === body.cap_minor;
  cap.textContent = `${money(body.cap_minor, currency)} ${isOwn ? "(your own limit)" : "(the platform's limit)"}`;
  const spent = el("spend-spent");
  spent.dataset.value = String(body.spent_minor);
  spent.textContent = money(body.spent_minor, currency);
  const ownEl = el("spend-own");
  ownEl.dataset.value = own === null || own === undefined ? "" : String(own);
  ownEl.textContent = own === null || own === undefined
    ? `None (the platform's limit of ${money(body.platform_cap_minor, currency)} applies)`
    : money(own, currency);
  el("spend-resets").textContent = body.resets_at
    ? `The oldest purchase counted here stops counting at ${when(body.resets_at)}.` : "";
  const pending = body.pending_own_cap;
  const pendingEl = el("spend-pending");
  if (pending) {
    const to = pending.own_cap_minor === null || pending.own_cap_minor === undefined
      ? "be removed" : `rise to ${money(pending.own_cap_minor, currency)}`;
    pendingEl.dataset.effectiveAt = pending.effective_at;
    showText(pendingEl, `Your limit will ${to} on ${when(pending.effective_at)} ` +
      "(a raise waits 24 hours).");
  } else {
    delete pendingEl.dataset.effectiveAt;
    showText(pendingEl, "");
  }
  const cooldown = body.cooldown;
  el("spend-cooldown").textContent = cooldown && cooldown.max_purchases
    ? `At most ${plural(cooldown.max_purchases, "purchase", "purchases")} in ` +
      `${duration(cooldown.window_s)}; more than that waits a little.`
    : "";
  el("limit-currency").textContent = String(currency).toUpperCase();
  const digits = minorDigits(currency);
  limitInput.step = digits ? String(10 ** -digits) : "1";
  if (document.activeElement !== limitInput) {
    limitInput.value = own === null || own === undefined ? "" : toMajor(own, currency);
  }
  el("limit-remove").disabled = (own === null || own === undefined) && !pending;
}

async function loadSpending() {
  const mine = generation;
  const status = el("spending-status");
  try {
    const body = await api("GET", "/api/v1/me/spending");
    if (mine !== generation) return;
    status.textContent = "";
    renderSpending(body);
  } catch (error) {
    if (!expired(error) && mine === generation) status.textContent = describe(error);
  }
}

async function saveLimit(ownCapMinor) {
  showText(limitError, "");
  limitResult.textContent = "";
  for (const button of limitForm.querySelectorAll("button")) button.disabled = true;
  try {
    const body = await api("PUT", "/api/v1/me/spending", { own_cap_minor: ownCapMinor });
    renderSpending(body);
    const pending = body.pending_own_cap;
    if (pending) {
      limitResult.textContent = `Saved. The change takes effect on ${when(pending.effective_at)}.`;
    } else if (body.own_cap_minor === null || body.own_cap_minor === undefined) {
      limitResult.textContent = "Saved. You have no limit of your own.";
    } else {
      limitResult.textContent = `Saved. Your daily limit is now ${money(body.own_cap_minor, body.currency)}.`;
    }
  } catch (error) {
    if (!expired(error)) showText(limitError, describe(error));
  } finally {
    for (const button of limitForm.querySelectorAll("button")) button.disabled = false;
    if (spending) renderSpending(spending);
  }
}

// -- purchase history -------------------------------------------------------------------------

function purchaseRow(purchase) {
  const row = document.createElement("tr");
  row.className = "purchase";
  row.dataset.purchaseId = purchase.purchase_id;
  row.dataset.status = purchase.status;
  const notes = [];
  if (purchase.refunded_minor > 0) notes.push(`${money(purchase.refunded_minor, purchase.currency)} refunded`);
  if (purchase.dispute_status) notes.push(`dispute ${purchase.dispute_status}`);
  if (purchase.coins_reversed > 0) notes.push(`${plural(purchase.coins_reversed, "coin", "coins")} taken back`);
  const cells = [
    [when(purchase.created_at), "time"],
    [purchase.package, ""],
    [count(purchase.coins), "num"],
    [money(purchase.amount_minor, purchase.currency), "num"],
    [STATUS_LABELS[purchase.status] || purchase.status, "status"],
    [notes.join("; "), "notes"],
  ];
  return LivecoreMoney.cellsRow(row, cells);
}

async function loadHistory() {
  const mine = generation;
  const status = el("history-status");
  let body;
  try {
    body = await api("GET", "/api/v1/me/purchases");
  } catch (error) {
    if (!expired(error) && mine === generation) status.textContent = describe(error);
    return;
  }
  if (mine !== generation) return;
  const purchases = body.purchases || [];
  if (purchases.some((p) => p.test_mode)) showTestMode(true);
  status.textContent = purchases.length ? "" : "You have not bought any coins yet.";
  document.querySelector("#purchases tbody").replaceChildren(...purchases.map(purchaseRow));
}

// -- start ------------------------------------------------------------------------------------

function start() {
  render();
  if (token !== null) {
    showText(loginError, "");
    loadMe();
    loadWallet();
    loadSpending();
    loadHistory();
  }
  if (returnId !== null) followPurchase(returnId);
}

LivecoreMoney.wireLogin(loginForm, (value) => {
  token = value;
  generation += 1;
  showText(buyError, "");
  start();
});

el("logout").addEventListener("click", () => {
  LivecoreSession.logOut(token);
  token = null;
  generation += 1;
  session.clearPurchases(); // another account may log in in this tab
  render();
});

limitForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const currency = spending ? spending.currency : "usd";
  const value = Number(limitInput.value);
  if (limitInput.value.trim() === "" || !Number.isFinite(value) || value < 0) {
    showText(limitError, "Enter an amount of zero or more.");
    return;
  }
  saveLimit(Math.round(value * 10 ** minorDigits(currency)));
});

el("limit-remove").addEventListener("click", () => saveLimit(null));

// Back from checkout with the browser's back button: a page restored from the back-forward
// cache still has its Buy buttons disabled from before it left.
window.addEventListener("pageshow", (event) => {
  if (!event.persisted) return;
  setBuying(false);
  if (token !== null) {
    loadWallet();
    loadHistory();
  }
});

loadPackages();
start();
