// The watch page's gift panel: the catalogue as buttons, a quantity, the wallet's balance and
// a link to buy coins. A classic script loaded after money.js and room.js, whose globals it
// reads (LivecoreMoney; token, me, streamId, creatorId, el, plural, storeToken, renderAccount);
// its own names stay inside LivecoreGifts so that they cannot collide with watch.js's.
//
// A gift is sent with POST /api/v1/gifts under an id chosen here (crypto.randomUUID()): the
// server commits a gift id at most once and answers a repeat with the original outcome, so a
// network error or a 503 (ledger_unavailable) is retried once with the SAME id without any
// risk of paying twice. If that retry fails too, the gift's outcome is unknown: the same gift
// and quantity pressed again reuse its id (still no double payment); anything else starts a
// new gift. One gift is in flight at a time: the buttons are disabled meanwhile.
// The room's feed shows the gift (gift.sent over the websocket, rendered by room.js).
// Every text from the server goes through textContent: gift names are set by admins, but
// they are still data.
"use strict";

const LivecoreGifts = (() => {
  const MAX_QUANTITY = 99;
  const RETRY_DELAY_MS = 700;
  const MAX_RETRY_DELAY_MS = 3000;

  const panel = el("gift-panel");
  const buttonsEl = el("gift-buttons");
  const quantityEl = el("gift-quantity");
  const balanceEl = el("gift-balance");
  const errorEl = el("gift-error");
  const statusEl = el("gift-status");
  const buyLink = el("buy-coins-link");
  const testModeEl = el("gift-test-mode");

  let catalogue = []; // the active gifts, cheapest first
  let account = null; // GET /api/v1/me of the current token: {id, is_adult, ...}
  let wallet = null; // GET /api/v1/me/wallet, coins updated from each gift's balance
  let stateOfStream = null;
  let generation = 0; // bumps at each login and logout: answers for an older login are dropped
  let sending = false;
  let unresolved = null; // the body of a gift whose outcome is unknown (see above)

  // -- helpers --------------------------------------------------------------------------------

  const { showText } = LivecoreMoney;

  function showError(text, { buyCoins = false } = {}) {
    showText(errorEl, text);
    buyLink.classList.toggle("is-emphasised", buyCoins);
    if (text) showText(statusEl, "");
  }

  // "1 coin", "29,999 coins".
  function coinsText(count) {
    return LivecoreMoney.plural(count, "coin", "coins");
  }

  function authHeaders() {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  // A JSON request: {status, body, headers}; rejects only when the server cannot be reached.
  async function call(method, path, body) {
    const headers = { Accept: "application/json", ...authHeaders() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    return { status: response.status, body: data, headers: response.headers };
  }

  function loginExpired() {
    // Like golive.js: forget the token, and the room (room.js) shows the login form again.
    storeToken(null);
    me = null;
    renderAccount();
  }

  function retryAfterSeconds(reply) {
    const fromHeader = Number(reply.headers.get("Retry-After"));
    if (fromHeader > 0) return fromHeader;
    const error = reply.body.error || {};
    return Number(error.retry_after_s) || 0;
  }

  // -- rendering ------------------------------------------------------------------------------

  function showBalance() {
    if (!wallet) {
      balanceEl.dataset.value = "";
      balanceEl.textContent = "Checking your coins…";
      return;
    }
    balanceEl.dataset.value = String(wallet.coins);
    balanceEl.textContent = `You have ${coinsText(wallet.coins)}`;
  }

  function renderButtons() {
    const buttons = catalogue.map((gift) => {
      const button = document.createElement("button");
      button.type = "button";
      button.id = `gift-${gift.slug}`;
      button.className = "gift";
      button.dataset.slug = gift.slug;
      button.dataset.price = String(gift.price_coins);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = gift.name;
      const price = document.createElement("span");
      price.className = "price";
      price.textContent = coinsText(gift.price_coins);
      button.append(name, " ", price);
      button.addEventListener("click", () => send(gift.slug));
      return button;
    });
    buttonsEl.replaceChildren(...buttons);
    if (!catalogue.length) {
      const none = document.createElement("p");
      none.className = "gift-none";
      none.textContent = "No gifts are on offer right now.";
      buttonsEl.append(none);
    }
    renderControls();
  }

  function renderControls() {
    const minor = account !== null && account.is_adult === false;
    for (const button of buttonsEl.querySelectorAll("button")) {
      button.disabled = sending || minor;
    }
    quantityEl.disabled = sending || minor;
  }

  // Why the panel is hidden (data-state), or "ready": tests and styles can tell them apart.
  function panelState() {
    if (!streamId || token === null) return "logged-out";
    if (account === null) return "checking";
    if (stateOfStream !== "live") return "not-live";
    if (creatorId && account.id === creatorId) return "own-stream";
    return sending ? "sending" : "ready";
  }

  function render() {
    const state = panelState();
    panel.dataset.state = state;
    panel.hidden = !(state === "ready" || state === "sending");
    renderControls();
  }

  // -- loading ---------------------------------------------------------------------------------

  async function loadCatalogue() {
    try {
      const reply = await call("GET", "/api/v1/gifts/catalogue");
      if (reply.status !== 200) throw new Error(`status ${reply.status}`);
      catalogue = (reply.body.gifts || []).filter((gift) => gift.is_active !== false);
      renderButtons();
    } catch (error) {
      showError(`Could not load the gifts (${error.message}). Reload the page to try again.`);
    }
  }

  async function loadTestMode() {
    try {
      const reply = await call("GET", "/api/v1/coins/packages");
      testModeEl.hidden = !(reply.status === 200 && reply.body.test_mode === true);
    } catch {
      // Only a label: without it the link still works.
    }
  }

  function explainAccount() {
    if (account && account.is_adult === false) {
      showError("Sending gifts needs an adult (18+) account.");
    } else if (wallet && Number(wallet.debt_coins) > 0) {
      showError(debtMessage(Number(wallet.debt_coins)), { buyCoins: true });
    }
  }

  // Who is logged in, and their wallet; called at start and whenever the login changes.
  async function loadAccount() {
    const mine = ++generation;
    unresolved = null;
    account = null;
    wallet = null;
    showError("");
    showText(statusEl, "");
    showBalance();
    render();
    if (token === null) return;
    try {
      const reply = await call("GET", "/api/v1/me");
      if (mine !== generation) return;
      if (reply.status === 401) {
        loginExpired(); // fires livecore:token, which calls us again
        return;
      }
      if (reply.status !== 200) throw new Error(reply.body.error?.message || `status ${reply.status}`);
      account = reply.body;
      await refreshWallet(mine);
      if (mine !== generation) return;
      explainAccount();
    } catch (error) {
      if (mine !== generation) return;
      showError(`Could not load your account: ${error.message}`);
    } finally {
      if (mine === generation) render();
    }
  }

  async function refreshWallet(mine = generation) {
    try {
      const reply = await call("GET", "/api/v1/me/wallet");
      if (mine !== generation) return;
      if (reply.status === 401) {
        loginExpired();
        return;
      }
      if (reply.status === 200) wallet = reply.body;
    } catch {
      // The balance stays as it was; the next gift's answer brings it.
    }
    if (mine === generation) showBalance();
  }

  // -- sending ----------------------------------------------------------------------------------

  function debtMessage(owed) {
    return `You owe ${coinsText(owed)} after a refund or chargeback: buy coins ` +
      "(or pay it from your wallet on the coins page) before sending gifts.";
  }

  function wait(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function readQuantity() {
    const raw = quantityEl.value.trim();
    const quantity = Number(raw);
    if (!/^\d+$/.test(raw) || quantity < 1 || quantity > MAX_QUANTITY) return null;
    return quantity;
  }

  // POST the gift; once more with the same gift_id after a network error or a 503.
  // Resolves to the last reply, or rejects with the last network error.
  async function post(body) {
    let reply = null;
    try {
      reply = await call("POST", "/api/v1/gifts", body);
      if (reply.status !== 503) return reply;
    } catch {
      // The request may or may not have reached the server: the retry settles it.
    }
    const delay = reply ? Math.min(MAX_RETRY_DELAY_MS, retryAfterSeconds(reply) * 1000) : 0;
    await wait(delay || RETRY_DELAY_MS);
    return call("POST", "/api/v1/gifts", body);
  }

  async function explainFailure(reply, gift) {
    const error = reply.body.error || {};
    switch (error.code) {
      case "insufficient_coins":
        showError("Not enough coins for this gift.", { buyCoins: true });
        await refreshWallet();
        return;
      case "wallet_in_debt": {
        await refreshWallet();
        const owed = Number(wallet?.debt_coins) || 0;
        showError(owed > 0 ? debtMessage(owed)
          : "You owe coins after a refund or chargeback: buy coins (or pay it from your " +
            "wallet on the coins page) before sending gifts.", { buyCoins: true });
        return;
      }
      case "not_adult":
        if (account) account.is_adult = false;
        showError("Sending gifts needs an adult (18+) account.");
        return;
      case "stream_not_live":
        showError("This stream is not live, so it cannot receive gifts right now.");
        return;
      case "cannot_gift_self":
        showError("Creators cannot send gifts to their own stream.");
        return;
      case "unknown_gift":
      case "gift_unavailable":
        showError(`${gift ? gift.name : "That gift"} is no longer offered.`);
        await loadCatalogue();
        return;
      case "ledger_unavailable":
        showError("The server could not confirm your gift right now. Press the same gift " +
          "again in a moment to retry it: it will not be sent twice.");
        return;
      default:
    }
    if (reply.status === 401) {
      loginExpired();
      return;
    }
    if (reply.status === 429) {
      const seconds = retryAfterSeconds(reply);
      showError(`You are sending gifts too fast.${seconds
        ? ` Try again in ${plural(seconds, "second", "seconds")}.` : ""}`);
      return;
    }
    if (reply.status === 503) {
      showError("The server could not confirm your gift right now. Press the same gift " +
        "again in a moment to retry it: it will not be sent twice.");
      return;
    }
    showError(error.message || `The gift was not sent (the server answered ${reply.status}).`);
  }

  // Sends `quantity` (from the input) of the gift `slug`; the buttons call it.
  async function send(slug) {
    if (sending) return; // one gift in flight at a time
    const gift = catalogue.find((g) => g.slug === slug);
    const quantity = readQuantity();
    if (quantity === null) {
      showError(`Choose a quantity from 1 to ${MAX_QUANTITY}.`);
      quantityEl.focus();
      return;
    }
    const mine = generation;
    sending = true;
    showError("");
    showText(statusEl, `Sending ${gift ? gift.name : slug}…`);
    render();
    const retry = unresolved && unresolved.gift === slug && unresolved.quantity === quantity;
    const body = retry ? unresolved
      : { gift_id: crypto.randomUUID(), stream_id: streamId, gift: slug, quantity };
    unresolved = null;
    try {
      const reply = await post(body);
      if (mine !== generation) return;
      if (reply.status === 503) unresolved = body;
      if (reply.status === 200 || reply.status === 201) {
        const sent = reply.body;
        if (typeof sent.balance === "number") {
          wallet = { ...(wallet || { diamonds: 0, debt_coins: 0 }), coins: sent.balance };
          showBalance();
        } else {
          await refreshWallet(mine);
        }
        const count = sent.quantity > 1 ? `${sent.quantity} × ` : "";
        showText(statusEl, `Sent ${count}${sent.name || sent.gift} ` +
          `(${coinsText(sent.coins)}).`);
      } else {
        showText(statusEl, "");
        await explainFailure(reply, gift);
      }
    } catch (error) {
      if (mine !== generation) return;
      showText(statusEl, "");
      unresolved = body;
      showError(`Could not reach the server (${error.message}): the gift may or may not have ` +
        "been sent. Press the same gift again to retry it: it will not be sent twice.");
      await refreshWallet(mine);
    } finally {
      sending = false;
      render();
    }
  }

  // -- events -----------------------------------------------------------------------------------

  quantityEl.max = String(MAX_QUANTITY);
  quantityEl.addEventListener("input", () => {
    if (errorEl.textContent.startsWith("Choose a quantity")) showError("");
  });

  window.addEventListener("livecore:token", loadAccount);
  window.addEventListener("livecore:state", (event) => {
    stateOfStream = event.detail;
    render();
  });

  showBalance();
  render();
  if (streamId) {
    loadCatalogue();
    loadTestMode();
    loadAccount();
  }

  return { send, refreshWallet };
})();
