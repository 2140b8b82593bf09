// The stream's room, shared by the watch page and the go-live page: the stream's title, state,
// viewers and likes, the live chat and gifts over the websocket hub (protocol livecore.v1),
// and the login. A classic script (like session.js, which it needs): its top-level names are
// the page's globals, used by the page's own script (watch.js, golive.js) loaded after it.
// It tells the page what changed with window events: "livecore:state" (detail: the stream's
// state) and "livecore:token" (the login changed).
// Every text from the server goes through textContent, never innerHTML: it is all user input.
"use strict";

const SUBPROTOCOL = "livecore.v1";
const CLOSE_UNSUPPORTED_VERSION = 4000;
const CLOSE_FLOODING = 4029;
const FLOODING_BACKOFF_MS = 10000;
const RECONNECT_FIRST_MS = 500;
const RECONNECT_MAX_MS = 30000;
const MAX_MESSAGES_SHOWN = 300;
const LIKE_FLUSH_MS = 300;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const STATE_LABELS = { live: "Live", created: "Not started yet", ended: "Ended" };

const el = (id) => document.getElementById(id);
const titleEl = el("title");
const creatorEl = el("creator");
const stateEl = el("state");
const viewersEl = el("viewers");
const likesEl = el("likes");
const connectionEl = el("connection");
const messagesEl = el("messages");
const chatForm = el("chat-form");
const chatInput = el("chat-input");
const chatError = el("chat-error");
const likeButton = el("like");
const accountEl = el("account");
const meEl = el("me");
const logoutButton = el("logout");
const loginForm = el("login-form");
const loginError = el("login-error");

// The stream's id is the path's second segment: /watch/{id} or /live/{id}.
const rawId = (() => {
  try {
    return decodeURIComponent(location.pathname.split("/")[2] || "");
  } catch {
    return "";
  }
})();
const streamId = UUID_RE.test(rawId) ? rawId.toLowerCase() : null;

// -- state ------------------------------------------------------------------------------------

let token = LivecoreSession.read();
let me = null; // {id, username} once the hub has accepted our token
let limits = {};
let creatorId = null;

let socket = null;
let generation = 0; // bumps with each new socket: callbacks of an old socket are ignored
let helloSeen = false;
let subscribed = false;
let syncing = false; // a (re)subscribe is in flight: room events wait for its answer
let kicked = false; // unsubscribed by the server (banned): do not resubscribe on our own
let position = null; // {epoch, seq} of the last room event applied
let reconnectTimer = null;
let reconnectAttempts = 0;
let serverSaysReconnect = true;
let nextId = 0;
const pending = new Map(); // request id -> {onAck, onError}
let pendingLikes = 0;
let likeTimer = null;

// -- small helpers ----------------------------------------------------------------------------

function storeToken(value) {
  token = value;
  LivecoreSession.write(value);
  tokenChanged();
}

function tokenChanged() {
  window.dispatchEvent(new CustomEvent("livecore:token"));
}

function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

function clockTime(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function setConnection(state, text) {
  connectionEl.dataset.state = state;
  connectionEl.textContent = text;
}

function showError(target, text) {
  target.textContent = text;
  target.hidden = !text;
}

// -- rendering ----------------------------------------------------------------------------------

function showStream(stream) {
  if (typeof stream.title === "string") {
    titleEl.textContent = stream.title;
    document.title = `${stream.title} · Livecore`;
  }
  if (stream.creator) {
    creatorId = stream.creator.id;
    creatorEl.textContent = `@${stream.creator.username}`;
  } else if (stream.creator_username) {
    creatorId = stream.creator_id || creatorId;
    creatorEl.textContent = `@${stream.creator_username}`;
  }
  if (stream.state) showState(stream.state);
}

function showState(state) {
  stateEl.dataset.state = state;
  stateEl.textContent = STATE_LABELS[state] || state;
  window.dispatchEvent(new CustomEvent("livecore:state", { detail: state }));
}

function showViewers(count) {
  viewersEl.dataset.count = String(count);
  viewersEl.textContent = `${plural(count, "viewer", "viewers")} watching`;
}

function showLikes(total) {
  likesEl.dataset.count = String(total);
  likesEl.textContent = plural(total, "like", "likes");
}

function nearBottom() {
  return messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 48;
}

function appendToLog(node) {
  const stick = nearBottom();
  messagesEl.append(node);
  while (messagesEl.childElementCount > MAX_MESSAGES_SHOWN) messagesEl.firstElementChild.remove();
  if (stick) messagesEl.scrollTop = messagesEl.scrollHeight;
}

// A feed line's start: the time and who (shared by chat messages and gifts).
function feedItem(className, event, user) {
  const item = document.createElement("p");
  item.className = className;
  const time = document.createElement("time");
  time.className = "at";
  time.dateTime = new Date(event.ts * 1000).toISOString();
  time.textContent = clockTime(event.ts);
  const author = document.createElement("span");
  author.className = "author";
  if (user.id === creatorId) author.classList.add("is-creator");
  if (me && user.id === me.id) author.classList.add("is-me");
  author.textContent = user.username;
  return { item, time, author };
}

function chatItem(event) {
  const { message_id: messageId, user, text } = event.data;
  const { item, time, author } = feedItem("message", event, user);
  item.dataset.messageId = messageId;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(time, " ", author, ": ", body);
  return item;
}

function giftItem(event) {
  const { gift_id: giftId, sender, name, quantity, coins, combo } = event.data;
  const { item, time, author } = feedItem("gift", event, sender);
  item.dataset.giftId = giftId;
  const what = document.createElement("span");
  what.className = "what";
  const count = quantity > 1 ? `${quantity} × ` : "";
  what.textContent = `sent ${count}${name} (${plural(coins, "coin", "coins")})`;
  item.append(time, " ", author, " ", what);
  if (combo > 1) {
    const streak = document.createElement("span");
    streak.className = "combo";
    streak.textContent = `combo ×${combo}`;
    item.append(" ", streak);
  }
  return item;
}

function notice(text) {
  const item = document.createElement("p");
  item.className = "notice";
  item.textContent = text;
  appendToLog(item);
}

function removeMessage(messageId) {
  for (const item of messagesEl.querySelectorAll(".message")) {
    if (item.dataset.messageId === messageId) item.remove();
  }
}

function renderSnapshot(snapshot, { afterGap }) {
  showStream(snapshot.stream);
  showViewers(snapshot.viewers);
  showLikes(snapshot.likes);
  messagesEl.replaceChildren(...snapshot.recent_chat.map(chatItem));
  if (afterGap) notice("Reconnected. Some messages may have been missed; showing the latest.");
  if (snapshot.slow_mode_s) notice(`Slow mode is on: one message every ${snapshot.slow_mode_s} s.`);
  messagesEl.scrollTop = messagesEl.scrollHeight;
}

function renderAccount() {
  const loggedIn = me !== null;
  accountEl.hidden = !loggedIn && token === null;
  chatForm.hidden = !loggedIn;
  loginForm.hidden = loggedIn || token !== null;
  meEl.textContent = loggedIn ? me.username : "… (checking)";
  if (!loggedIn) showError(chatError, "");
}

function until(epochSeconds) {
  return epochSeconds == null ? "" : ` until ${new Date(epochSeconds * 1000).toLocaleString()}`;
}

function describeError(error) {
  const wait = error.retry_after_s ? ` Try again in ${plural(error.retry_after_s, "second", "seconds")}.` : "";
  switch (error.code) {
    case "rate_limited":
    case "too_many_requests":
      return `You are sending messages too fast.${wait}`;
    case "slow_mode":
      return `Slow mode is on: wait before sending another message.${wait}`;
    case "muted":
      return "You are muted in this room, so your messages are not shown.";
    case "banned":
      return "You are banned from this room.";
    case "message_blocked":
      return "Your message contains a word that is not allowed here, so it was not sent.";
    case "chat_too_long":
      return `Your message is too long (at most ${limits.chat_max_chars || "a few hundred"} characters).`;
    case "invalid_chat_text":
      return "That message cannot be sent: it is empty or contains control characters.";
    case "login_required":
    case "invalid_token":
      return "Please log in again to chat.";
    case "not_subscribed":
      return "Not connected to the chat yet; try again in a moment.";
    case "service_unavailable":
      return "The server is having trouble right now; try again shortly.";
    default:
      return error.message || "Something went wrong.";
  }
}

// -- the socket -----------------------------------------------------------------------------------

function socketUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}

function connect() {
  clearTimeout(reconnectTimer);
  reconnectTimer = null;
  const mine = ++generation;
  helloSeen = false;
  subscribed = false;
  syncing = false;
  serverSaysReconnect = true;
  pending.clear();
  setConnection(reconnectAttempts ? "reconnecting" : "connecting",
    reconnectAttempts ? "Reconnecting to the chat…" : "Connecting to the chat…");
  let ws;
  try {
    ws = new WebSocket(socketUrl(), SUBPROTOCOL);
  } catch (error) {
    setConnection("error", `Cannot connect to the chat: ${error.message}`);
    return;
  }
  socket = ws;
  ws.addEventListener("message", (event) => {
    if (mine !== generation) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return; // not ours to understand
    }
    handleMessage(message);
  });
  ws.addEventListener("close", (event) => {
    if (mine === generation) handleClose(event);
  });
}

function reconnectNow() {
  const old = socket;
  generation += 1; // the old socket's close is not a disconnection to recover from
  socket = null;
  if (old) old.close(1000, "reconnecting");
  connect();
}

function handleClose(event) {
  socket = null;
  helloSeen = false;
  subscribed = false;
  syncing = false;
  for (const handlers of pending.values()) {
    if (handlers.onClosed) handlers.onClosed();
  }
  pending.clear();
  if (event.code === CLOSE_UNSUPPORTED_VERSION) {
    setConnection("error", "This page is out of date for the server. Reload the page to chat.");
    return;
  }
  if (!serverSaysReconnect) {
    setConnection("error", "The server closed the chat. Reload the page to try again.");
    return;
  }
  let delay = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** reconnectAttempts)
    * (0.5 + Math.random() / 2);
  if (event.code === CLOSE_FLOODING) delay = Math.max(delay, FLOODING_BACKOFF_MS);
  reconnectAttempts += 1;
  const seconds = Math.max(1, Math.round(delay / 1000));
  setConnection("reconnecting", `Disconnected from the chat. Reconnecting in ${plural(seconds, "second", "seconds")}…`);
  reconnectTimer = setTimeout(connect, delay);
}

function send(message) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return false;
  socket.send(JSON.stringify(message));
  return true;
}

function request(message, handlers) {
  const id = `w${++nextId}`;
  if (!send({ ...message, id })) return false;
  pending.set(id, handlers || {});
  return true;
}

function handleMessage(message) {
  switch (message.type) {
    case "hello":
      helloSeen = true;
      limits = message.limits || {};
      if (limits.chat_max_chars) chatInput.maxLength = limits.chat_max_chars;
      // A browser cannot send an Authorization header with the upgrade: log in by message,
      // on every new socket (`me` may still hold the user of the previous one).
      if (message.user) me = message.user;
      else if (token) authenticate();
      renderAccount();
      subscribe();
      return;
    case "ack":
    case "error": {
      const handlers = pending.get(message.id);
      pending.delete(message.id);
      if (message.type === "ack") {
        if (handlers && handlers.onAck) handlers.onAck(message.result);
      } else if (handlers && handlers.onError) {
        handlers.onError(message);
      } else {
        showError(chatError, describeError(message));
      }
      return;
    }
    case "presence":
      if (message.room === streamId) showViewers(message.viewers);
      return;
    case "closing":
      serverSaysReconnect = message.reconnect !== false;
      setConnection("reconnecting", "The server is restarting; reconnecting soon…");
      return;
    case "unsubscribed":
      if (message.room !== streamId) return;
      subscribed = false;
      kicked = true;
      if (message.reason === "banned") {
        notice("You have been banned from this room.");
        setConnection("ended", "You were removed from this chat.");
      } else {
        notice("The stream has ended.");
        setConnection("ended", "The chat is closed.");
      }
      return;
    case "pong":
      return;
    default:
      if (typeof message.seq === "number" && message.room === streamId) handleRoomEvent(message);
  }
}

function authenticate() {
  request({ type: "auth", token }, {
    onAck(result) {
      me = result.user;
      showError(loginError, "");
      renderAccount();
    },
    onError(error) {
      if (error.code === "invalid_token") {
        storeToken(null);
        me = null;
        showError(loginError, "Your login has expired. Please log in again.");
      } else if (error.code === "already_authenticated") {
        reconnectNow();
        return;
      } else {
        showError(loginError, describeError(error));
      }
      renderAccount();
    },
  });
}

function subscribe() {
  const message = { type: "subscribe", room: streamId };
  if (position) message.since = { epoch: position.epoch, seq: position.seq };
  const wasResuming = position !== null;
  syncing = true;
  request(message, {
    onAck(result) {
      syncing = false;
      subscribed = true;
      kicked = false;
      reconnectAttempts = 0;
      setConnection("connected", "Connected to the chat.");
      if (!result.recovered) {
        // History could not be continued (or this is the first visit): start from the snapshot.
        position = { epoch: result.epoch, seq: result.seq };
        renderSnapshot(result.snapshot, { afterGap: wasResuming });
      }
      // When recovered, the missed events follow this ack, oldest first, from `position` on.
    },
    onError(error) {
      syncing = false;
      subscribed = false;
      if (error.code === "banned") {
        kicked = true;
        setConnection("ended", "You are banned from this room and cannot read its chat.");
      } else if (error.code === "stream_not_found") {
        setConnection("error", "This stream does not exist.");
      } else {
        const delay = (error.retry_after_s || 2) * 1000;
        setConnection("reconnecting", `${describeError(error)} Retrying…`);
        const mine = generation;
        setTimeout(() => {
          if (mine === generation && helloSeen && !subscribed && !syncing) subscribe();
        }, delay);
      }
    },
  });
}

function resync() {
  // A gap (or a new epoch): leave the room and come back asking for what was missed.
  if (syncing || !helloSeen) return;
  subscribed = false;
  syncing = true;
  request({ type: "unsubscribe", room: streamId }, { onError() {} }); // not_subscribed is fine
  subscribe();
}

function handleRoomEvent(event) {
  if (!subscribed || syncing) return; // a subscribe is in flight: its answer brings these
  if (position && position.epoch === event.epoch) {
    if (event.seq <= position.seq) return; // seen already
    if (event.seq > position.seq + 1) {
      resync();
      return;
    }
  } else if (!(position && position.epoch === "" && position.seq === 0 && event.seq === 1)) {
    // Another epoch: the room's history was lost (or we never had a position).
    resync();
    return;
  }
  position = { epoch: event.epoch, seq: event.seq };
  applyRoomEvent(event);
}

function applyRoomEvent(event) {
  const data = event.data;
  switch (event.type) {
    case "chat.message":
      appendToLog(chatItem(event));
      return;
    case "gift.sent":
      appendToLog(giftItem(event));
      return;
    case "chat.removed":
      removeMessage(data.message_id);
      return;
    case "user.muted":
      notice(`${data.user.username} was muted by ${data.by.username}${until(data.until)}.`);
      if (me && data.user.id === me.id) {
        showError(chatError, `You have been muted in this room${until(data.until)}.`);
      }
      return;
    case "user.banned":
      notice(`${data.user.username} was banned by ${data.by.username}${until(data.until)}.`);
      return;
    case "user.unsanctioned":
      notice(`${data.user.username} can chat again.`);
      if (me && data.user.id === me.id) showError(chatError, "");
      return;
    case "likes":
      // With several gateway nodes, totals may arrive out of order: keep the largest.
      showLikes(Math.max(data.total, Number(likesEl.dataset.count) || 0));
      return;
    case "stream.state":
      showState(data.state);
      if (data.state === "live") notice("The stream is live.");
      else if (data.state === "ended") notice("The stream has ended.");
      return;
    case "chat.settings":
      notice(data.slow_mode_s ? `Slow mode is on: one message every ${data.slow_mode_s} s.`
        : "Slow mode is off.");
      return;
    default:
      // An event type this page does not know yet: its seq still counted above.
  }
}

// -- user actions ---------------------------------------------------------------------------------

chatForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = chatInput.value;
  if (!text.trim()) return;
  if (!subscribed) {
    showError(chatError, kicked ? "You cannot chat in this room." : "Not connected to the chat yet; try again in a moment.");
    return;
  }
  const sent = request({ type: "chat", room: streamId, text }, {
    onAck() {
      if (chatInput.value === text) chatInput.value = "";
      showError(chatError, "");
    },
    onError(error) {
      showError(chatError, describeError(error));
    },
    onClosed() {
      showError(chatError, "The connection dropped; your message may not have been sent.");
    },
  });
  if (!sent) showError(chatError, "Not connected to the chat yet; try again in a moment.");
});

function flushLikes() {
  likeTimer = null;
  if (!pendingLikes) return;
  const count = Math.min(pendingLikes, limits.likes_per_message || 50);
  pendingLikes -= count;
  request({ type: "like", room: streamId, count }, {
    onError(error) {
      showError(chatError, describeError(error));
    },
  });
  if (pendingLikes) likeTimer = setTimeout(flushLikes, LIKE_FLUSH_MS);
}

// The go-live page has no like button.
likeButton?.addEventListener("click", () => {
  if (!subscribed) return;
  pendingLikes += 1;
  if (!likeTimer) likeTimer = setTimeout(flushLikes, LIKE_FLUSH_MS);
});

loginForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(loginForm);
  const submit = el("login-submit");
  submit.disabled = true;
  showError(loginError, "");
  try {
    token = await LivecoreSession.logIn(form.get("username"), form.get("password"));
    el("login-password").value = "";
    tokenChanged();
    if (me) {
      reconnectNow(); // this socket speaks for someone else
    } else if (helloSeen) {
      authenticate();
    }
    renderAccount();
  } catch (error) {
    showError(loginError, error.message);
  } finally {
    submit.disabled = false;
  }
});

logoutButton.addEventListener("click", () => {
  LivecoreSession.logOut(token);
  token = null;
  me = null;
  renderAccount();
  reconnectNow(); // the socket stays logged in until it is replaced
  tokenChanged();
});

window.addEventListener("online", () => {
  if (reconnectTimer) connect();
});

// -- start --------------------------------------------------------------------------------------

// The stream as the API shows it to anyone ({} if it could not be loaded: the chat's snapshot
// brings the same details), or null if there is no such stream.
async function loadStream() {
  try {
    const response = await fetch(`/api/v1/streams/${encodeURIComponent(streamId)}`,
      { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (response.status === 404) return null;
    if (response.ok) {
      showStream(body);
      return body;
    }
  } catch {
    // See above.
  }
  return {};
}

// Shows the stream and joins its room; resolves to the stream (see loadStream), or to null
// when there is no such stream (the page then says so, and has nothing else to do).
async function startRoom() {
  renderAccount();
  const stream = streamId ? await loadStream() : null;
  if (stream === null) {
    titleEl.textContent = "No such stream";
    document.title = "No such stream · Livecore";
    document.querySelector(".stream-meta").hidden = true;
    document.querySelector("main").hidden = true;
    const hint = document.createElement("p");
    const home = document.createElement("a");
    home.href = "/";
    home.textContent = "who is live now";
    hint.append("Check the link, or see ", home, ".");
    titleEl.after(hint);
    return null;
  }
  connect();
  return stream;
}
