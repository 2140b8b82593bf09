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

const { ApiError, showText, utcTime, utcMinute, shortId, money, cellsRow } = LivecoreMoney;
const coins = LivecoreMoney.count;
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
LivecoreMoney.useToken(() => token);
let journalCursor = null;
const csvUrls = new Map(); // CSV link -> the object URL it offers
let purchasesCursor = null;
let payoutsCursor = null;

// -- small helpers ----------------------------------------------------------------------------

function storeToken(value) {
  token = value;
  LivecoreSession.write(value);
}

function describe(error) {
  if (!(error instanceof ApiError)) return `Could not reach the server: ${error.message}`;
  if (error.status === 403 && error.code === "forbidden_role") {
    return "Your account does not have the finance role, so it cannot see this page.";
  }
  switch (error.status) {
    case 403:
      return "You are not allowed to see this.";
    case 404:
      return "There is no such stream.";
    case 429:
      return "Too many requests; wait a moment and try again.";
    default:
      return LivecoreMoney.describe(error);
  }
}

async function getJson(path) {
  return (await LivecoreMoney.request("GET", path)).json();
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

function chart(minutes) {
  return LivecoreMoney.barChart({
    items: minutes,
    valueOf: (minute) => minute.coins,
    title: "Coins per minute",
    ariaLabel: `Coins per minute: ${minutes.length} minute(s) with gifts`,
    yLabel: "coins",
    xLabel: "minute (UTC)",
    emptyText: "No gifts yet",
    barData: (minute) => ({ "data-minute": minute.minute, "data-coins": minute.coins }),
    barTitle: (minute) =>
      `${utcMinute(minute.minute)} UTC: ${coins(minute.coins)} coins from ${minute.gifts} gift(s)`,
    tickOf: (minute) => utcMinute(minute.minute),
  });
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
  return cellsRow(row, cells);
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
    const response = await LivecoreMoney.request("GET", path, { accept: "text/csv" });
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

function statusFilter(selectId) {
  const params = new URLSearchParams();
  const value = el(selectId).value;
  if (value) params.set("status", value);
  return params;
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

LivecoreMoney.wireLogin(loginForm, (value) => {
  token = value;
  start();
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
