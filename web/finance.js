// The finance page: reconciliation, balances, a stream's statement (with a per-minute chart
// drawn as inline SVG), the ledger journal, purchases (with refunds and disputes) and payouts
// (each with a CSV export), and the viewers in debt. For the finance role.
// Every text from the server goes through textContent, never innerHTML.
"use strict";

// Every account kind, shown even at 0 (see docs/ledger.md and docs/payments.md).
const KINDS = ["wallet", "earnings", "platform", "promotions", "sales", "debt",
  "payouts_pending", "payouts_paid"];
const JOURNAL_PAGE = 50;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const SVG_NS = "http://www.w3.org/2000/svg";

const el = (id) => document.getElementById(id);
const accountEl = el("account");
const logoutButton = el("logout");
const accessError = el("access-error");
const loginForm = el("login-form");
const loginError = el("login-error");
const mainEl = el("finance");
const statementForm = el("statement-form");
const statementInput = el("statement-stream");
const journalForm = el("journal-form");
const journalBody = document.querySelector("#journal tbody");
const journalMore = el("journal-more");
const csvButton = el("csv-button");
const csvLink = el("csv-link");

let token = LivecoreSession.read();
let journalCursor = null;
const csvUrls = new Map(); // CSV link -> the object URL it offers
let purchasesCursor = null;
let payoutsCursor = null;

// -- small helpers ----------------------------------------------------------------------------

function storeToken(value) {
  token = value;
  LivecoreSession.write(value);
}

function showText(target, text) {
  target.textContent = text;
  target.hidden = !text;
}

function coins(value) {
  return Number(value).toLocaleString("en-US");
}

function utcMinute(iso) {
  return iso ? new Date(iso).toISOString().slice(11, 16) : "";
}

function utcTime(iso) {
  return iso ? new Date(iso).toISOString().slice(0, 19).replace("T", " ") : "";
}

function shortId(value) {
  return value ? value.slice(0, 8) : "";
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function describe(error) {
  if (!(error instanceof ApiError)) return `Could not reach the server: ${error.message}`;
  if (error.status === 403 && error.code === "forbidden_role") {
    return "Your account does not have the finance role, so it cannot see this page.";
  }
  switch (error.status) {
    case 401:
      return "Your login has expired. Please log in again.";
    case 403:
      return "You are not allowed to see this.";
    case 404:
      return "There is no such stream.";
    case 429:
      return "Too many requests; wait a moment and try again.";
    default:
      if (error.status >= 500) return "The server is having trouble right now; try again shortly.";
      return error.message || `The request failed (${error.status}).`;
  }
}

async function request(path, { accept = "application/json" } = {}) {
  const response = await fetch(path, {
    headers: { Accept: accept, Authorization: `Bearer ${token}` },
    cache: "no-store",
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const error = body.error || {};
    throw new ApiError(response.status, error.code || "", error.message || "");
  }
  return response;
}

async function getJson(path) {
  return (await request(path)).json();
}

// An error that means "this account cannot use the page at all" replaces the whole page.
function handleAccessError(error) {
  if (!(error instanceof ApiError)) return false;
  if (error.status === 401) {
    storeToken(null);
    render();
    showText(loginError, describe(error));
    return true;
  }
  if (error.status === 403) {
    mainEl.hidden = true;
    showText(accessError, describe(error));
    return true;
  }
  return false;
}

function failed(statusEl, error) {
  if (handleAccessError(error)) return;
  statusEl.dataset.state = "error";
  statusEl.textContent = describe(error);
}

// -- reconciliation ---------------------------------------------------------------------------

async function loadReconciliation() {
  const status = el("recon-status");
  const list = el("recon-checks");
  status.dataset.state = "loading";
  status.textContent = "Checking…";
  let body;
  try {
    body = await getJson("/api/v1/finance/reconciliation");
  } catch (error) {
    list.replaceChildren();
    failed(status, error);
    return false;
  }
  status.dataset.state = body.ok ? "ok" : "failed";
  status.textContent = body.ok ? "All checks pass." : "Some checks FAILED.";
  showLastPass(body.last_pass);
  list.replaceChildren(...body.checks.map((check) => {
    const item = document.createElement("li");
    item.className = "check";
    item.dataset.name = check.name;
    item.dataset.ok = String(check.ok);
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = check.ok ? "ok" : "FAILED";
    const name = document.createElement("strong");
    name.textContent = check.name;
    const description = document.createElement("span");
    description.className = "description";
    description.textContent = check.description;
    item.append(badge, " ", name, " ", description);
    if (!check.ok) {
      const detail = document.createElement("p");
      detail.className = "failures";
      const examples = (check.examples || []).slice(0, 5).map((e) =>
        typeof e === "string" ? e : JSON.stringify(e));
      detail.textContent = `${check.failures} failure(s)${examples.length ? `, e.g. ${examples.join("; ")}` : ""}`;
      item.append(detail);
    }
    return item;
  }));
  return true;
}

// The worker's last periodic pass (Redis against the ledger, repaired where it differed).
function showLastPass(pass) {
  const last = el("recon-last");
  if (!pass) {
    last.dataset.state = "";
    last.textContent = "No reconciliation pass has run yet (the worker runs one periodically).";
    return;
  }
  const at = new Date(pass.finished_at).toLocaleString();
  last.dataset.state = pass.differences_found ? "failed" : "ok";
  last.textContent = `Last reconciliation pass: ${at}, ${pass.streams_checked} stream(s) ` +
    `checked, ${pass.differences_found} difference(s) found, ` +
    `${pass.differences_repaired} repaired.`;
}

// -- balances ---------------------------------------------------------------------------------

async function loadBalances() {
  const status = el("balances-status");
  const tbody = document.querySelector("#balances tbody");
  status.textContent = "Loading…";
  let body;
  try {
    body = await getJson("/api/v1/finance/balances?limit=1");
  } catch (error) {
    failed(status, error);
    return;
  }
  status.textContent = "";
  const kinds = [...KINDS, ...Object.keys(body.totals).filter((k) => !KINDS.includes(k))];
  let sum = 0;
  const rows = kinds.map((kind) => {
    const total = Number(body.totals[kind] || 0);
    sum += total;
    return totalRow(kind, total);
  });
  const sumRow = totalRow("sum of all accounts", sum);
  sumRow.className = "sum";
  tbody.replaceChildren(...rows, sumRow);
}

function totalRow(label, total) {
  const row = document.createElement("tr");
  row.dataset.kind = label;
  const name = document.createElement("th");
  name.scope = "row";
  name.textContent = label;
  const value = document.createElement("td");
  value.className = "num";
  value.dataset.value = String(total);
  value.textContent = coins(total);
  row.append(name, value);
  return row;
}

// -- stream statement -------------------------------------------------------------------------

async function loadStatement(streamId) {
  const status = el("statement-status");
  const box = el("statement");
  status.dataset.state = "";
  if (!UUID_RE.test(streamId)) {
    box.hidden = true;
    status.dataset.state = "error";
    status.textContent = "A stream id looks like 8-4-4-4-12 hexadecimal digits.";
    return;
  }
  status.textContent = "Loading…";
  let body;
  try {
    body = await getJson(`/api/v1/finance/streams/${encodeURIComponent(streamId)}/statement`);
  } catch (error) {
    box.hidden = true;
    failed(status, error);
    return;
  }
  const range = body.first_gift_at
    ? `Gifts from ${utcTime(body.first_gift_at)} to ${utcTime(body.last_gift_at)} UTC.`
    : "No gifts yet.";
  status.textContent = range;
  el("statement-title").textContent = body.title || "(untitled stream)";
  for (const [id, value] of [["st-gifts", body.gifts], ["st-senders", body.senders],
    ["st-gross", body.gross_coins], ["st-share", body.creator_share],
    ["st-cut", body.platform_cut]]) {
    el(id).dataset.value = String(value ?? 0);
    el(id).textContent = coins(value ?? 0);
  }
  el("chart").replaceChildren(chart(body.per_minute || []));
  box.hidden = false;
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

function chart(minutes) {
  const width = 640;
  const height = 240;
  const margin = { top: 12, right: 12, bottom: 44, left: 52 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const top = niceMax(Math.max(0, ...minutes.map((m) => m.coins)));
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, class: "bars", role: "img",
    "aria-label": `Coins per minute: ${minutes.length} minute(s) with gifts`,
  });
  root.append(svg("title", {}, "Coins per minute"));

  // The y axis: gridlines and labels at 0, ½ and the top.
  for (const fraction of [0, 0.5, 1]) {
    const y = margin.top + plotH * (1 - fraction);
    root.append(svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y, y2: y }));
    root.append(svg("text", { class: "tick", x: margin.left - 6, y: y + 4, "text-anchor": "end" },
      coins(Math.round(top * fraction * 100) / 100)));
  }
  root.append(svg("text", {
    class: "axis-label", transform: `translate(14 ${margin.top + plotH / 2}) rotate(-90)`,
    "text-anchor": "middle",
  }, "coins"));
  root.append(svg("text", {
    class: "axis-label", x: margin.left + plotW / 2, y: height - 6, "text-anchor": "middle",
  }, "minute (UTC)"));

  if (minutes.length === 0) {
    root.append(svg("text", {
      class: "empty", x: margin.left + plotW / 2, y: margin.top + plotH / 2, "text-anchor": "middle",
    }, "No gifts yet"));
    return root;
  }
  const slot = plotW / minutes.length;
  const barW = Math.max(1, Math.min(48, slot * 0.8));
  const labelEvery = Math.max(1, Math.ceil(minutes.length / 8));
  minutes.forEach((minute, index) => {
    const barH = (minute.coins / top) * plotH;
    const x = margin.left + slot * index + (slot - barW) / 2;
    const rect = svg("rect", {
      class: "bar", x: x.toFixed(1), y: (margin.top + plotH - barH).toFixed(1),
      width: barW.toFixed(1), height: barH.toFixed(1),
      "data-minute": minute.minute, "data-coins": minute.coins,
    });
    rect.append(svg("title", {},
      `${utcMinute(minute.minute)} UTC: ${coins(minute.coins)} coins from ${minute.gifts} gift(s)`));
    root.append(rect);
    if (index % labelEvery === 0 || index === minutes.length - 1) {
      root.append(svg("text", {
        class: "tick", x: (margin.left + slot * index + slot / 2).toFixed(1),
        y: margin.top + plotH + 16, "text-anchor": "middle",
      }, utcMinute(minute.minute)));
    }
  });
  root.append(svg("line", {
    class: "axis", x1: margin.left, x2: width - margin.right,
    y1: margin.top + plotH, y2: margin.top + plotH,
  }));
  return root;
}

// -- journal ----------------------------------------------------------------------------------

function journalFilters() {
  const params = new URLSearchParams();
  const kind = el("journal-kind").value;
  const stream = el("journal-stream").value.trim();
  const creator = el("journal-creator").value.trim();
  if (kind) params.set("account_kind", kind);
  if (stream) params.set("stream_id", stream);
  if (creator) params.set("creator_id", creator);
  return params;
}

function journalRow(entry) {
  const row = document.createElement("tr");
  row.className = "entry";
  row.dataset.entryId = String(entry.entry_id);
  row.dataset.accountKind = entry.account_kind;
  row.dataset.amount = String(entry.amount);
  row.dataset.transferKind = entry.transfer_kind;
  if (entry.gift_id) row.dataset.giftId = entry.gift_id;
  const cells = [
    [String(entry.entry_id), "num"],
    [utcTime(entry.created_at), "time"],
    [entry.transfer_kind, ""],
    [entry.account_kind, ""],
    [shortId(entry.owner_id), "id", entry.owner_id],
    [entry.amount > 0 ? `+${coins(entry.amount)}` : coins(entry.amount),
      `num ${entry.amount < 0 ? "debit" : "credit"}`],
    [entry.gift || "", ""],
    [shortId(entry.stream_id), "id", entry.stream_id],
    [entry.memo || "", "memo"],
  ];
  for (const [text, className, full] of cells) {
    const cell = document.createElement("td");
    if (className) cell.className = className;
    if (full) cell.title = full;
    cell.textContent = text;
    row.append(cell);
  }
  return row;
}

async function loadJournal({ more = false } = {}) {
  const status = el("journal-status");
  status.dataset.state = "";
  status.textContent = "Loading…";
  const params = journalFilters();
  params.set("limit", String(JOURNAL_PAGE));
  if (more && journalCursor) params.set("cursor", journalCursor);
  let body;
  try {
    body = await getJson(`/api/v1/finance/journal?${params}`);
  } catch (error) {
    failed(status, error);
    return;
  }
  const rows = body.entries.map(journalRow);
  if (more) journalBody.append(...rows);
  else journalBody.replaceChildren(...rows);
  journalCursor = body.next_cursor;
  journalMore.hidden = !journalCursor;
  const shown = journalBody.childElementCount;
  status.textContent = shown ? `Showing the latest ${shown} entries.` : "No entries match.";
}

// A CSV export, fetched with the token (a plain link could not send it) and handed to the
// browser as a blob download; `link` stays on the page to save it again. Shared by the
// journal, purchases and payouts sections.
async function downloadCsv({ path, filename, button, link, status }) {
  button.disabled = true;
  status.dataset.state = "";
  status.textContent = "Preparing the CSV…";
  try {
    const response = await request(path, { accept: "text/csv" });
    let blob;
    try {
      blob = await response.blob();
    } catch {
      // The server cut the export short (it ends without the chunked encoding's last
      // chunk when the database fails mid-way): nothing partial is offered for saving.
      status.dataset.state = "error";
      status.textContent = "The export was cut short by a server error; nothing was saved. " +
        "Try again.";
      return;
    }
    const previous = csvUrls.get(link);
    if (previous) URL.revokeObjectURL(previous);
    const url = URL.createObjectURL(blob);
    csvUrls.set(link, url);
    link.href = url;
    link.download = filename;
    link.textContent = `Save the CSV again (${coins(blob.size)} bytes)`;
    link.hidden = false;
    status.textContent = "The CSV is ready.";
    link.click();
  } catch (error) {
    failed(status, error);
  } finally {
    button.disabled = false;
  }
}

// -- purchases, payouts and debts (docs/payments.md) ------------------------------------------

const PAGE = 50;

function money(minor, currency) {
  const code = String(currency || "").toUpperCase();
  try {
    const format = new Intl.NumberFormat("en-US", { style: "currency", currency: code });
    return format.format(Number(minor) / 10 ** format.resolvedOptions().maximumFractionDigits);
  } catch {
    return `${minor} ${code} (minor units)`;
  }
}

function statusFilter(selectId) {
  const params = new URLSearchParams();
  const value = el(selectId).value;
  if (value) params.set("status", value);
  return params;
}

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

function purchaseRow(purchase) {
  const row = document.createElement("tr");
  row.className = "purchase";
  row.dataset.purchaseId = purchase.purchase_id;
  row.dataset.status = purchase.status;
  row.dataset.userId = purchase.user_id || "";
  return cellsRow(row, [
    [utcTime(purchase.created_at), "time"],
    [shortId(purchase.purchase_id), "id", purchase.purchase_id],
    [purchase.username || shortId(purchase.user_id), "", purchase.user_id],
    [purchase.package, ""],
    [coins(purchase.coins), "num"],
    [money(purchase.amount_minor, purchase.currency), "num"],
    [purchase.status, "status"],
    [purchase.refunded_minor ? money(purchase.refunded_minor, purchase.currency) : "", "num debit"],
    [purchase.dispute_status || "", ""],
    [purchase.coins_reversed ? coins(purchase.coins_reversed) : "", "num debit"],
    // Test-payments purchases moved no money: finance must tell them apart at a glance.
    [purchase.provider === "test" ? `${purchase.method} (test)` : purchase.method, ""],
  ]);
}

function payoutRow(payout) {
  const row = document.createElement("tr");
  row.className = "payout";
  row.dataset.payoutId = payout.payout_id;
  row.dataset.status = payout.status;
  row.dataset.creatorId = payout.creator_id || "";
  return cellsRow(row, [
    [utcTime(payout.created_at), "time"],
    [shortId(payout.payout_id), "id", payout.payout_id],
    [payout.username || shortId(payout.creator_id), "", payout.creator_id],
    [coins(payout.diamonds), "num"],
    [money(payout.amount_minor, payout.currency), "num"],
    [payout.status, "status"],
    [payout.transfer_id || payout.failure || "", "memo"],
    [utcTime(payout.resolved_at), "time"],
  ]);
}

// One paged list (purchases or payouts): `more` appends the next page after the cursor.
async function loadPaged({ path, key, filter, tbody, status, moreButton, rowOf, cursor, more,
  noun }) {
  status.dataset.state = "";
  status.textContent = "Loading…";
  const params = statusFilter(filter);
  params.set("limit", String(PAGE));
  if (more && cursor) params.set("cursor", cursor);
  let body;
  try {
    body = await getJson(`${path}?${params}`);
  } catch (error) {
    failed(status, error);
    return cursor;
  }
  const rows = (body[key] || []).map(rowOf);
  if (more) tbody.append(...rows);
  else tbody.replaceChildren(...rows);
  moreButton.hidden = !body.next_cursor;
  const shown = tbody.childElementCount;
  status.textContent = shown ? `Showing the latest ${shown} ${noun}.` : `No ${noun} match.`;
  return body.next_cursor;
}

async function loadPurchases({ more = false } = {}) {
  purchasesCursor = await loadPaged({
    path: "/api/v1/finance/purchases", key: "purchases", filter: "purchases-filter",
    tbody: document.querySelector("#purchases tbody"), status: el("purchases-status"),
    moreButton: el("purchases-more"), rowOf: purchaseRow, cursor: purchasesCursor, more,
    noun: "purchases",
  });
}

async function loadPayouts({ more = false } = {}) {
  payoutsCursor = await loadPaged({
    path: "/api/v1/finance/payouts", key: "payouts", filter: "payouts-filter",
    tbody: document.querySelector("#payouts tbody"), status: el("payouts-status"),
    moreButton: el("payouts-more"), rowOf: payoutRow, cursor: payoutsCursor, more,
    noun: "payouts",
  });
}

async function loadDebts() {
  const status = el("debts-status");
  const total = el("debts-total");
  status.dataset.state = "";
  status.textContent = "Loading…";
  let body;
  try {
    body = await getJson("/api/v1/finance/debts");
  } catch (error) {
    failed(status, error);
    return;
  }
  const debts = body.debts || [];
  total.dataset.value = String(body.total_owed_coins);
  total.textContent = `${coins(body.total_owed_coins)} coins`;
  status.textContent = debts.length
    ? `${coins(debts.length)} viewer(s) owe coins after refunds or lost disputes; their gifts ` +
      "are refused until it is paid."
    : "No viewer owes coins.";
  document.querySelector("#debts tbody").replaceChildren(...debts.map((debt) => {
    const row = document.createElement("tr");
    row.className = "debt";
    row.dataset.userId = debt.user_id;
    row.dataset.owed = String(debt.owed_coins);
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = debt.username;
    row.append(name);
    return cellsRow(row, [[debt.user_id, "id"], [coins(debt.owed_coins), "num debit"]]);
  }));
}

// -- account ----------------------------------------------------------------------------------

function render() {
  const loggedIn = token !== null;
  loginForm.hidden = loggedIn;
  accountEl.hidden = !loggedIn;
  if (!loggedIn) {
    mainEl.hidden = true;
    showText(accessError, "");
  }
}

async function start() {
  render();
  if (token === null) return;
  showText(accessError, "");
  showText(loginError, "");
  mainEl.hidden = false;
  // The first call tells whether this account may use the page at all.
  await loadReconciliation();
  if (token === null || mainEl.hidden) return;
  const streamId = new URLSearchParams(location.search).get("stream");
  if (streamId) {
    statementInput.value = streamId.trim();
    loadStatement(statementInput.value);
  }
  loadBalances();
  loadJournal();
  loadPurchases();
  loadPayouts();
  loadDebts();
}

loginForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(loginForm);
  const submit = el("login-submit");
  submit.disabled = true;
  showText(loginError, "");
  try {
    token = await LivecoreSession.logIn(form.get("username"), form.get("password"));
    el("login-password").value = "";
    start();
  } catch (error) {
    showText(loginError, error.message);
  } finally {
    submit.disabled = false;
  }
});

logoutButton.addEventListener("click", () => {
  LivecoreSession.logOut(token);
  token = null;
  render();
});

el("recon-refresh").addEventListener("click", () => loadReconciliation());

statementForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const streamId = statementInput.value.trim();
  const url = new URL(location.href);
  url.searchParams.set("stream", streamId);
  history.replaceState(null, "", url);
  loadStatement(streamId);
});

journalForm.addEventListener("submit", (event) => {
  event.preventDefault();
  csvLink.hidden = true;
  loadJournal();
});

journalMore.addEventListener("click", () => loadJournal({ more: true }));
csvButton.addEventListener("click", () => downloadCsv({
  path: `/api/v1/finance/journal.csv?${journalFilters()}`, filename: "livecore-journal.csv",
  button: csvButton, link: csvLink, status: el("journal-status"),
}));

el("purchases-form").addEventListener("submit", (event) => {
  event.preventDefault();
  el("purchases-csv-link").hidden = true;
  loadPurchases();
});
el("purchases-more").addEventListener("click", () => loadPurchases({ more: true }));
el("purchases-csv").addEventListener("click", () => downloadCsv({
  path: `/api/v1/finance/purchases.csv?${statusFilter("purchases-filter")}`,
  filename: "livecore-purchases.csv", button: el("purchases-csv"),
  link: el("purchases-csv-link"), status: el("purchases-status"),
}));

el("payouts-form").addEventListener("submit", (event) => {
  event.preventDefault();
  el("payouts-csv-link").hidden = true;
  loadPayouts();
});
el("payouts-more").addEventListener("click", () => loadPayouts({ more: true }));
el("payouts-csv").addEventListener("click", () => downloadCsv({
  path: `/api/v1/finance/payouts.csv?${statusFilter("payouts-filter")}`,
  filename: "livecore-payouts.csv", button: el("payouts-csv"),
  link: el("payouts-csv-link"), status: el("payouts-status"),
}));

el("debts-refresh").addEventListener("click", () => loadDebts());

start();
