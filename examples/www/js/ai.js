// The AI page. Two ways to get a streamed answer:
//
//  - "Through the hub": this page follows its own channel ai:SESSION with
//    connect() (EventSource). POST /ai/ask {prompt, channel} answers 202 at
//    once; the model then streams `token` events, `metadata` and `done` (or
//    `error`) into the channel through the module's internal publisher
//    location. If the connection drops mid-answer, the page resumes from
//    its last event id and the answer goes on with nothing missing.
//  - "Direct stream": the POST's own response is the event stream, read
//    with streamRequest() (fetch + an incremental SSE parser).

import { connect, streamRequest } from "../lib/index.js";
import { createPanel, PANEL_HTML } from "./panel.js";

const $ = (id) => document.getElementById(id);

const session = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
const channel = `ai:${session}`;
$("channel").textContent = channel;

// ------------------------------------------------------------------ answers

const conversation = $("conversation");
let current = null; // the answer being written
const answers = []; // for the tests: every answer's record

function scrollDown() {
  conversation.scrollTop = conversation.scrollHeight;
}

function newExchange(prompt, mode) {
  const empty = $("empty");
  if (empty) empty.remove();
  const ex = document.createElement("div");
  ex.className = "exchange";
  const p = document.createElement("div");
  p.className = "prompt";
  p.textContent = prompt;
  const a = document.createElement("div");
  a.className = "answer";
  const text = document.createElement("div");
  text.className = "text";
  const foot = document.createElement("div");
  foot.className = "foot";
  const chip = document.createElement("span");
  chip.className = "chip";
  const meta = document.createElement("span");
  meta.className = "meta";
  const how = document.createElement("span");
  how.textContent = mode === "direct" ? "direct stream" : "through the hub";
  foot.append(chip, meta, how);
  a.append(text, foot);
  ex.append(p, a);
  conversation.append(ex);
  const rec = { prompt, mode, el: a, text, chip, meta, tokens: 0, t0: performance.now(), firstTokenMs: null, state: "" };
  answers.push(rec);
  setAnswerState(rec, "waiting");
  scrollDown();
  return rec;
}

function setAnswerState(rec, state, label = state) {
  rec.state = state;
  rec.el.dataset.state = state;
  rec.chip.textContent = label;
  rec.chip.className = "chip " + ({ streaming: "live", done: "ok", error: "bad", stopped: "bad" }[state] || "");
}

function finish(rec) {
  if (current === rec) current = null;
  updateComposer();
}

// One event of an answer, from either transport.
function onAnswerEvent(rec, type, data) {
  if (!rec || rec.state === "done" || rec.state === "error" || rec.state === "stopped") return;
  switch (type) {
    case "token": {
      if (rec.state === "waiting") {
        setAnswerState(rec, "streaming");
        rec.firstTokenMs = Math.round(performance.now() - rec.t0);
      }
      rec.tokens++;
      rec.text.append(data);
      rec.el.dataset.tokens = String(rec.tokens);
      const stick = conversation.scrollHeight - conversation.scrollTop - conversation.clientHeight < 80;
      if (stick) scrollDown();
      break;
    }
    case "metadata": {
      try {
        const m = JSON.parse(data);
        rec.meta.textContent = `${m.tokens} tokens · ${(m.elapsed_ms / 1000).toFixed(1)} s · first token after ${rec.firstTokenMs} ms`;
      } catch {
        rec.meta.textContent = data;
      }
      break;
    }
    case "done":
      setAnswerState(rec, "done");
      finish(rec);
      break;
    case "error": {
      let msg = data;
      try {
        msg = JSON.parse(data).message || data;
      } catch {
        /* plain text */
      }
      setAnswerState(rec, "error");
      rec.meta.textContent = msg;
      finish(rec);
      break;
    }
    default:
      break;
  }
}

// ------------------------------------------------------------------ the channel

const panelRoot = $("panel");
panelRoot.innerHTML = PANEL_HTML;
const panel = createPanel(panelRoot);

function onChannel(type) {
  return (data) => {
    panel.countEvent(conn);
    if (current && current.mode === "channel") onAnswerEvent(current, type, data);
  };
}

const conn = connect(
  `/ai/events/${session}`,
  { token: onChannel("token"), metadata: onChannel("metadata"), done: onChannel("done"), error: onChannel("error") },
  {
    onSseError(info) {
      panel.sseError(info);
    },
    onState(state, c) {
      panel.update(c);
      updateComposer();
    },
  },
);
panel.update(conn);

// ------------------------------------------------------------------ asking

const promptEl = $("prompt");
const askBtn = $("ask");
const stopBtn = $("stop");
const status = $("composer-status");
let abort = null;

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function updateComposer() {
  const busy = current !== null;
  askBtn.disabled = busy || !promptEl.value.trim() || (mode() === "channel" && conn.state !== "open");
  stopBtn.hidden = !(busy && current.mode === "direct");
}

function setStatus(msg, bad = false) {
  status.textContent = msg;
  status.classList.toggle("bad", bad);
}

async function askViaChannel(rec) {
  const r = await fetch("/ai/ask", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: rec.prompt, channel }),
  });
  if (r.status !== 202) {
    const why = r.status === 429 ? "too many questions at once (nginx limit_req)" : `HTTP ${r.status}`;
    throw new Error(why);
  }
}

async function askDirect(rec) {
  abort = new AbortController();
  try {
    await streamRequest(
      "/ai/ask",
      {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt: rec.prompt }),
        signal: abort.signal,
      },
      (ev) => onAnswerEvent(rec, ev.type, ev.data),
    );
    if (rec.state !== "done" && rec.state !== "error") throw new Error("the stream ended early");
  } finally {
    abort = null;
  }
}

async function ask(prompt) {
  setStatus("");
  const rec = newExchange(prompt, mode());
  current = rec;
  updateComposer();
  try {
    if (rec.mode === "direct") await askDirect(rec);
    else await askViaChannel(rec);
  } catch (err) {
    if (err.name === "AbortError") {
      setAnswerState(rec, "stopped");
    } else {
      setAnswerState(rec, "error");
      rec.meta.textContent = err.message;
    }
    finish(rec);
  }
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const p = promptEl.value.trim();
  if (!p || askBtn.disabled) return;
  promptEl.value = "";
  ask(p);
});
promptEl.addEventListener("input", updateComposer);
promptEl.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
stopBtn.addEventListener("click", () => abort && abort.abort());
$("modes").addEventListener("change", updateComposer);
for (const b of $("examples").querySelectorAll("button")) {
  b.addEventListener("click", () => {
    promptEl.value = b.textContent;
    updateComposer();
    if (!askBtn.disabled) $("composer").requestSubmit();
  });
}
updateComposer();
promptEl.focus();

// For the browser tests (t/js/demo_browser.mjs) and the curious.
window.aiDemo = { channel, conn, answers, ask };
