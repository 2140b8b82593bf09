// The home page: streams that are live now, newest first, refreshed every 15 seconds.
// Every text from the server goes through textContent, never innerHTML: titles are user input.
"use strict";

const REFRESH_MS = 15000;
const list = document.getElementById("streams");
const statusLine = document.getElementById("status");
const moreButton = document.getElementById("more");
let nextCursor = null;

function streamItem(stream) {
  const item = document.createElement("li");
  item.className = "stream";
  item.dataset.streamId = stream.id;
  const title = document.createElement("a");
  title.className = "title";
  title.href = `/watch/${encodeURIComponent(stream.id)}`;
  title.textContent = stream.title;
  const creator = document.createElement("span");
  creator.className = "creator";
  creator.textContent = `@${stream.creator_username}`;
  const since = document.createElement("time");
  since.className = "since";
  if (stream.started_at) {
    since.dateTime = stream.started_at;
    since.textContent = `live since ${new Date(stream.started_at).toLocaleTimeString()}`;
  }
  item.append(title, " ", creator, " ", since);
  return item;
}

async function load(cursor) {
  const params = new URLSearchParams({ state: "live", limit: "24" });
  if (cursor) params.set("cursor", cursor);
  const response = await fetch(`/api/v1/streams?${params}`, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

async function refresh() {
  try {
    const page = await load(null);
    list.replaceChildren(...page.streams.map(streamItem));
    nextCursor = page.next_cursor;
    moreButton.hidden = !nextCursor;
    statusLine.textContent = page.streams.length ? "" : "Nobody is live right now.";
    statusLine.dataset.state = "loaded";
  } catch (error) {
    statusLine.textContent = `Could not load live streams: ${error.message}`;
    statusLine.dataset.state = "error";
  }
}

moreButton.addEventListener("click", async () => {
  const page = await load(nextCursor);
  list.append(...page.streams.map(streamItem));
  nextCursor = page.next_cursor;
  moreButton.hidden = !nextCursor;
});

refresh();
setInterval(refresh, REFRESH_MS);
