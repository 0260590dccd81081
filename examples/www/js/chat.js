// The chat page. Browsers only subscribe (GET /chat/events/ROOM, an
// EventSource through connect()); a message is a POST to /chat/send/ROOM,
// which nginx proxies to the internal publisher location. A message shows
// up when it comes back through the stream, with the id the hub gave it,
// so every window shows the same list in the same order.
//
// The stream needs a signed token: connect()'s token provider logs in
// (POST /chat/token with the display name), which sets the cookie
// sse_token. When the token expires the server ends the stream with
// sse-error token_expired; connect() logs in again and resumes. The same
// stream carries the room's presence channel (chat:ROOM:presence), where
// the module publishes join/leave events: the "Online" list.

import { connect } from "../lib/index.js";
import { createPanel, PANEL_HTML } from "./panel.js";

const ROOMS = ["lobby", "random", "help"];
const ROOM_RE = /^[A-Za-z0-9_.~-]{1,64}$/;
const MAX_TEXT = 1000;

const $ = (id) => document.getElementById(id);

function store(key, value) {
  try {
    if (value === undefined) return localStorage.getItem(key);
    localStorage.setItem(key, value);
  } catch {
    /* storage may be off; names are then per page */
  }
  return null;
}

const params = new URLSearchParams(location.search);
const room = ROOM_RE.test(params.get("room") || "") ? params.get("room") : "lobby";
let myName =
  (params.get("name") || store("sse-demo-name") || `guest-${Math.floor(1000 + Math.random() * 9000)}`).slice(0, 32);

// ------------------------------------------------------------------ sidebar

$("name").value = myName;
$("name").addEventListener("input", () => {
  $("name").setCustomValidity("");
  updateComposer();
});
// A new name is a new login: a new token, a new stream (resumed).
$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("name").value.trim().slice(0, 32);
  if (!name) {
    $("name").setCustomValidity("A name, please");
    $("name").reportValidity();
    return;
  }
  myName = name;
  store("sse-demo-name", myName);
  updateComposer();
  conn.reconnect();
});

// Token lifetime for the tests (?ttl=SECONDS); the server caps it.
const ttl = Number(params.get("ttl")) > 0 ? Number(params.get("ttl")) : undefined;
const logins = [];
let loggedInAs = null;

async function login() {
  const r = await fetch("/chat/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: myName, ttl }),
  });
  if (!r.ok) {
    $("login-status").textContent = `Login failed: HTTP ${r.status}`;
    throw new Error(`login: HTTP ${r.status}`);
  }
  const t = await r.json();
  loggedInAs = t.sub;
  logins.push({ sub: t.sub, exp: t.exp, at: Date.now() });
  $("login-status").textContent = `Logged in as ${t.sub} until ${new Date(t.exp * 1000).toLocaleTimeString()}`;
  return t.token; // the cookie carries it; connect() only waits for it
}

const rooms = ROOMS.includes(room) ? ROOMS : [...ROOMS, room];
$("rooms").replaceChildren(
  ...rooms.map((r) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `chat.html?room=${encodeURIComponent(r)}`;
    a.textContent = `# ${r}`;
    if (r === room) a.setAttribute("aria-current", "true");
    li.append(a);
    return li;
  }),
);
$("join").addEventListener("submit", (e) => {
  e.preventDefault();
  const r = $("join-room").value.trim();
  if (ROOM_RE.test(r)) location.href = `chat.html?room=${encodeURIComponent(r)}`;
  else $("join-room").setCustomValidity("Letters, digits, _ . ~ - (at most 64)");
  $("join-room").reportValidity();
});
$("join-room").addEventListener("input", () => $("join-room").setCustomValidity(""));

$("room-title").textContent = `# ${room}`;
$("room-channel").textContent = `chat:${room}`;
document.title = `#${room} · Chat · ngx_http_sse_module demo`;

// ------------------------------------------------------------------ messages

const list = $("messages");
const shown = new Map(); // event id -> <li>
const stats = { received: 0, duplicates: 0, sent: [] };

function nearBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function append(li) {
  const stick = nearBottom();
  const empty = $("empty");
  if (empty) empty.remove();
  list.append(li);
  if (stick) list.scrollTop = list.scrollHeight;
}

function notice(text, kind = "") {
  const li = document.createElement("li");
  li.className = `notice ${kind}`;
  li.textContent = text;
  append(li);
}

function hue(s) {
  let h = 0;
  for (const ch of s) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function timeOf(ts) {
  const d = new Date(typeof ts === "number" && Number.isFinite(ts) ? ts : Date.now());
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// A message is whatever a browser posted: trust nothing in it.
function parseMessage(data) {
  try {
    const m = JSON.parse(data);
    if (m && typeof m.name === "string" && typeof m.text === "string") {
      return { name: m.name.slice(0, 32) || "anonymous", text: m.text.slice(0, MAX_TEXT), ts: m.ts };
    }
  } catch {
    /* below */
  }
  return { name: "?", text: String(data).slice(0, MAX_TEXT), ts: null, odd: true };
}

function showMessage(data, ev) {
  stats.received++;
  const id = ev.lastEventId;
  if (shown.has(id)) {
    stats.duplicates++;
    return;
  }
  const m = parseMessage(data);
  const li = document.createElement("li");
  li.className = "msg" + (m.name === myName ? " mine" : "");
  li.dataset.id = id;
  const avatar = document.createElement("span");
  avatar.className = "avatar";
  avatar.style.background = `hsl(${hue(m.name)} 55% 45%)`;
  avatar.textContent = (m.name.trim()[0] || "?").toUpperCase();
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  const meta = document.createElement("div");
  meta.className = "meta";
  const who = document.createElement("b");
  who.textContent = m.name;
  const when = document.createElement("time");
  when.textContent = timeOf(m.ts);
  when.title = `event id ${id}`;
  meta.append(who, when);
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = m.text;
  bubble.append(meta, text);
  li.append(avatar, bubble);
  shown.set(id, li);
  append(li);
}

// ------------------------------------------------------------------ presence

const presenceChannel = `chat:${room}`;
const online = new Map(); // sub -> streams open under that name
let onlineCount = null;
const seenPresence = new Set();

function renderOnline() {
  const names = [...online.keys()].sort();
  $("online").replaceChildren(
    ...names.map((n) => {
      const li = document.createElement("li");
      const a = document.createElement("span");
      a.textContent = n === myName ? `${n} (you)` : n;
      li.append(a);
      return li;
    }),
  );
  $("online-count").textContent = onlineCount === null ? "" : `· ${onlineCount}`;
}

function presence(kind, data, ev) {
  if (seenPresence.has(ev.lastEventId)) return;
  seenPresence.add(ev.lastEventId);
  let p;
  try {
    p = JSON.parse(data);
  } catch {
    return;
  }
  if (!p || p.channel !== presenceChannel) return;
  onlineCount = p.count;
  // A null sub: a worker died and its subscribers left; only the count is known.
  if (typeof p.sub === "string") {
    const n = (online.get(p.sub) || 0) + (kind === "join" ? 1 : -1);
    if (n > 0) online.set(p.sub, n);
    else online.delete(p.sub);
  }
  renderOnline();
}

// ------------------------------------------------------------------ stream

const panelRoot = $("panel");
panelRoot.innerHTML = PANEL_HTML;
const panel = createPanel(panelRoot);

let wasOpen = false;
const sseErrors = [];
const conn = connect(
  `/chat/events/${encodeURIComponent(room)}`,
  {
    chat(data, ev) {
      showMessage(data, ev);
      panel.countEvent(conn);
    },
    join(data, ev) {
      presence("join", data, ev);
      panel.countEvent(conn);
    },
    leave(data, ev) {
      presence("leave", data, ev);
      panel.countEvent(conn);
    },
  },
  {
    token: login,
    tokenParam: null, // the cookie set by /chat/token carries it
    onSseError(info) {
      panel.sseError(info);
      sseErrors.push(info.reason);
      if (info.reason === "token_expired") notice("Token expired — logging in again and resuming");
    },
    onState(state, c) {
      panel.update(c);
      if (state === "open") {
        if (wasOpen) notice(`Reconnected — resumed after ${c.lastEventId || "the start"}`);
        wasOpen = true;
      } else if (state === "reconnecting") {
        notice("Connection lost — reconnecting…", "warn");
      }
      updateComposer();
    },
    onGap(gap) {
      const why = { evicted: "they left the buffer", epoch: "the hub restarted", malformed: "bad id", unknown: "unknown id" };
      notice(`Some messages could not be recovered (${why[gap.reason] || gap.reason})`, "warn");
    },
  },
);
panel.update(conn);

// ------------------------------------------------------------------ sending

const text = $("text");
const sendBtn = $("send");
const status = $("composer-status");
let sending = false;

function updateComposer() {
  sendBtn.disabled = sending || !myName || !text.value.trim();
}
text.addEventListener("input", () => {
  text.style.height = "auto";
  text.style.height = `${Math.min(140, Math.max(42, text.scrollHeight + 2))}px`;
  updateComposer();
});
text.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});

function setStatus(msg, bad = false) {
  status.textContent = msg;
  status.classList.toggle("bad", bad);
}

async function send(body) {
  const payload = JSON.stringify({ name: myName, text: body, ts: Date.now() });
  const record = { text: body, status: 0, id: null };
  stats.sent.push(record);
  try {
    const r = await fetch(`/chat/send/${encodeURIComponent(room)}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: payload,
    });
    if (r.status === 202) record.id = (await r.json()).id;
    record.status = r.status;
    if (r.status === 202) return null;
    if (r.status === 429) return "Slow down: too many messages at once (nginx limit_req).";
    if (r.status === 413) return "That message is too long.";
    return `Not sent: HTTP ${r.status}.`;
  } catch (err) {
    record.status = -1;
    return `Not sent: ${err.message}`;
  }
}

$("composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = text.value.trim();
  if (!body || sending || !myName) return;
  sending = true;
  updateComposer();
  const err = await send(body.slice(0, MAX_TEXT));
  sending = false;
  if (err) {
    setStatus(err, true);
  } else {
    setStatus("");
    text.value = "";
    text.style.height = "";
  }
  updateComposer();
  text.focus();
});
updateComposer();
text.focus();

// For the browser tests (t/js/demo_browser.mjs) and the curious.
window.chatDemo = {
  room,
  conn,
  stats,
  send,
  logins,
  sseErrors,
  get name() {
    return myName;
  },
  get loggedInAs() {
    return loggedInAs;
  },
  get online() {
    return { names: [...online.keys()].sort(), count: onlineCount };
  },
};
