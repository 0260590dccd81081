// Drives the demo pages (examples/www) in Debian's Chromium, for
// t/test_demo_browser.py, which starts nginx with examples/nginx.conf on
// free ports and examples/ai_model.py, then runs
//
//   node demo_browser.mjs '{"scenario": "...", "base": "http://127.0.0.1:PORT",
//                           "master": PID, "publicPort": PORT, "artifacts": DIR, ...}'
//
// Each scenario checks what it is about and prints one JSON line with its
// findings ({"ok": true, ...}, or {"ok": false, "error": ...}). Whenever it
// kills an nginx worker it first prints {"killed": PID}, so that the test
// can allow that worker's "exited on signal 9" alert in the error log.
// Every wait is bounded.

import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const cfg = JSON.parse(process.argv[2] || "{}");
const T = cfg.timeoutMs || 20000; // one wait's bound

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

class Failure extends Error {}
function check(cond, msg, detail) {
  if (!cond) throw new Failure(`${msg}${detail === undefined ? "" : `: ${JSON.stringify(detail)}`}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(pred, what, timeout = T, every = 25) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Failure(`timed out waiting for ${what}`);
    await sleep(every);
  }
}

// ------------------------------------------------------------------ /proc

function procChildren(pid) {
  const out = [];
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out.sort((a, b) => a - b);
}

function cmdline(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ").trim();
  } catch {
    return "";
  }
}

function alive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

function workers() {
  return procChildren(cfg.master).filter((p) => cmdline(p) === "nginx: worker process");
}

// Established connections to the public port, per worker.
function connsByWorker() {
  const est = new Set();
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = fs.readFileSync(table, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c.length < 10) continue;
      const lport = parseInt(c[1].split(":")[1], 16);
      if (lport === cfg.publicPort && c[3] === "01") est.add(c[9]);
    }
  }
  const out = {};
  for (const w of workers()) {
    let n = 0;
    try {
      for (const fd of fs.readdirSync(`/proc/${w}/fd`)) {
        try {
          const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${w}/fd/${fd}`));
          if (m && est.has(m[1])) n++;
        } catch {
          /* closed meanwhile */
        }
      }
    } catch {
      /* gone */
    }
    out[w] = n;
  }
  return out;
}

function killWorker(pid) {
  console.log(JSON.stringify({ killed: pid }));
  process.kill(pid, "SIGKILL");
}

// ------------------------------------------------------------------ browser

const problems = []; // uncaught page errors and console errors
let browser;

async function newPage(label, { allowNetErrors = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 820 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.on("pageerror", (e) => problems.push(`${label}: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const t = m.text();
    // A killed worker or a reload cuts streams: Chromium logs the failed
    // network request itself. Anything else is a bug in the page.
    if (allowNetErrors && /net::ERR_|Failed to load resource/.test(t)) return;
    problems.push(`${label} console: ${t}`);
  });
  return page;
}

async function shot(page, name) {
  if (!cfg.artifacts) return null;
  fs.mkdirSync(cfg.artifacts, { recursive: true });
  const file = path.join(cfg.artifacts, name);
  await page.screenshot({ path: file });
  return file;
}

// ------------------------------------------------------------------ chat

async function openChat(room, name, opts) {
  const page = await newPage(name, opts);
  await page.goto(`${cfg.base}/chat.html?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
  await page.waitForFunction(() => window.chatDemo && window.chatDemo.conn.state === "open", null, { timeout: T });
  return page;
}

const domIds = (page) => page.$$eval("#messages li.msg", (els) => els.map((e) => e.dataset.id));
const chatStats = (page) =>
  page.evaluate(() => ({
    state: window.chatDemo.conn.state,
    reconnects: window.chatDemo.conn.reconnects,
    lastEventId: window.chatDemo.conn.lastEventId,
    received: window.chatDemo.stats.received,
    duplicates: window.chatDemo.stats.duplicates,
    panelReconnects: document.querySelector('[data-field="reconnects"]').textContent,
    panelState: document.querySelector(".state").dataset.state,
  }));

// Sends through the page's own composer (type, Enter) and waits for the
// POST's answer; a send that failed (the worker holding the keep-alive
// connection just died) is tried again, as a person would.
async function say(page, text, tries = 3) {
  for (let i = 0; i < tries; i++) {
    const before = await page.evaluate(() => window.chatDemo.stats.sent.length);
    await page.fill("#text", text);
    await page.press("#text", "Enter");
    const rec = await page.waitForFunction(
      (n) => {
        const s = window.chatDemo.stats.sent;
        return s.length > n && s[s.length - 1].status !== 0 && s[s.length - 1];
      },
      before,
      { timeout: T, polling: 20 },
    );
    const r = await rec.jsonValue();
    if (r.status === 202) return r.id;
    if (r.status === 429) await sleep(250);
  }
  throw new Failure(`could not send ${JSON.stringify(text)}`);
}

// Every page shows exactly `ids`, in that order, each once.
async function allShow(pages, ids, what) {
  await until(
    async () => {
      for (const p of pages) {
        const d = await domIds(p);
        if (d.length < ids.length) return false;
      }
      return true;
    },
    what,
  );
  for (const [i, p] of pages.entries()) {
    const d = await domIds(p);
    check(new Set(d).size === d.length, `page ${i} shows a message twice`, d);
    check(JSON.stringify(d) === JSON.stringify(ids), `page ${i} shows other messages than were sent`, { shown: d, sent: ids });
    const s = await chatStats(p);
    check(s.duplicates === 0 && s.received === ids.length, `page ${i} received an event twice`, s);
  }
}

async function chatRoom(names, opts) {
  const room = `r${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
  const pages = [];
  for (const n of names) pages.push(await openChat(room, n, opts));
  return { room, pages };
}

async function scenarioChat() {
  const { room, pages } = await chatRoom(["alice", "bob"]);
  const [a, b] = pages;
  const ids = [];
  const lines = [
    [a, "Hi Bob! Is the stream up?"],
    [b, "Loud and clear. Every event has an id."],
    [a, "So if my laptop sleeps…"],
    [b, "…EventSource comes back with Last-Event-ID and gets what it missed."],
    [a, "Nice. And nothing twice?"],
    [b, "Nothing twice \u2713 Even na\u00efve caf\u00e9 UTF-8 \u2014 in one piece."],
  ];
  for (const [p, text] of lines) {
    ids.push(await say(p, text));
    await allShow(pages, ids, "both pages to show the message");
  }
  // A late joiner sees the history (sse_initial_events 50), then the live stream.
  const c = await openChat(room, "carol");
  pages.push(c);
  await allShow(pages, ids, "the late joiner to show the history");
  ids.push(await say(c, "Just joined, and I can read everything above."));
  await allShow(pages, ids, "all three pages to show carol's message");
  const mine = await a.$$eval("#messages li.msg.mine", (els) => els.length);
  check(mine === 3, "alice's own messages are marked as hers", mine);
  // Who is online, from the presence channel (join events with the sub).
  await a.waitForFunction(
    () => JSON.stringify(window.chatDemo.online) === JSON.stringify({ names: ["alice", "bob", "carol"], count: 3 }),
    null,
    { timeout: T },
  );
  const onlineText = await a.$eval("#online", (e) => e.innerText);
  check(/alice \(you\)/.test(onlineText) && /carol/.test(onlineText), "the Online list shows the names", onlineText);
  // The live panel's figures come from sse_status: three pages, each
  // subscribed to two channels (the room and its presence channel).
  await a.waitForFunction(() => document.querySelector('[data-field="subscribers"]').textContent === "6", null, { timeout: T });
  const screenshot = await shot(a, "chat.png");
  // carol leaves: the others see it.
  await c.context().close();
  pages.pop();
  await a.waitForFunction(
    () => JSON.stringify(window.chatDemo.online) === JSON.stringify({ names: ["alice", "bob"], count: 2 }),
    null,
    { timeout: T },
  );
  return { room, messages: ids.length, screenshot };
}

// A page whose tokens last 3 s, while events are published without a
// pause: Chromium's own EventSource is ended with sse-error token_expired,
// connect() logs in again before reconnecting, and the page shows every
// event once, in order.
async function scenarioExpiry() {
  const room = `x${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
  const page = await newPage("dana");
  await page.goto(`${cfg.base}/chat.html?room=${room}&name=dana&ttl=3`);
  await page.waitForFunction(() => window.chatDemo && window.chatDemo.conn.state === "open", null, { timeout: T });
  const ids = [];
  let on = true;
  const pub = (async () => {
    for (let i = 0; on; i++) {
      const r = await fetch(`http://127.0.0.1:${cfg.internalPort}/publish/chat:${room}`, {
        method: "POST",
        headers: { "SSE-Event": "chat" },
        body: JSON.stringify({ name: "bot", text: `tick ${i}`, ts: Date.now() }),
      });
      check(r.status === 202, "publish", r.status);
      ids.push((await r.json()).id);
      await sleep(40);
    }
  })();
  // Two expiries: three logins.
  await page.waitForFunction(() => window.chatDemo.logins.length >= 3 && window.chatDemo.conn.state === "open", null, {
    timeout: 3 * T,
  });
  await sleep(500);
  on = false;
  await pub;
  await allShow([page], ids, "every event published across the expiries");
  const st = await page.evaluate(() => ({
    sseErrors: window.chatDemo.sseErrors,
    logins: window.chatDemo.logins.length,
    reconnects: window.chatDemo.conn.reconnects,
    panel: document.querySelector('[data-field="sse-error"]').dataset.reason,
    online: window.chatDemo.online,
  }));
  check(st.sseErrors.filter((r) => r === "token_expired").length >= 2, "the page saw token_expired", st);
  check(st.panel === "token_expired", "the live panel shows the reason", st);
  check(st.reconnects >= 2, "it reconnected after each expiry", st);
  return { published: ids.length, ...st };
}

// Sends a few messages from the pages while some of them are cut off.
async function talkDuring(pages, ids, round) {
  for (const [i, p] of pages.entries()) {
    ids.push(await say(p, `round ${round}: message from page ${i}`));
  }
}

async function waitReconnected(pages, before) {
  await until(
    async () => {
      for (const [i, p] of pages.entries()) {
        const s = await chatStats(p);
        if (s.state !== "open") return false;
        if (before && s.reconnects <= before[i]) return false;
      }
      return true;
    },
    "the pages to reconnect",
  );
}

// Subscribers per worker, from sse_status (only this test's pages subscribe).
async function subscribersByWorker() {
  const z = (await (await fetch(`${cfg.base}/status`)).json()).zones[0];
  return Object.fromEntries(z.workers.map((w) => [w.pid, w.subscribers]));
}

async function scenarioKill() {
  const { pages } = await chatRoom(["alice", "bob", "carol"], { allowNetErrors: true });
  const ids = [];
  await talkDuring(pages, ids, 0);
  await allShow(pages, ids, "the first round");

  // SIGKILL a worker that holds subscribers (sse_status says which), talk
  // while the cut pages wait to retry, check every page; again until every
  // page has lost its stream at least once.
  const killed = [];
  for (let round = 1; round <= 4; round++) {
    const stats = [];
    for (const p of pages) stats.push(await chatStats(p));
    if (stats.every((s) => s.reconnects >= 1)) break;
    const subs = await subscribersByWorker();
    const alivePids = workers();
    const [victim, n] = Object.entries(subs)
      .map(([pid, k]) => [Number(pid), k])
      .filter(([pid, k]) => k > 0 && alivePids.includes(pid))
      .sort((a, b) => b[1] - a[1])[0] || [];
    check(victim, "a worker with subscribers", { subs, alivePids });
    const before = stats.map((s) => s.reconnects);
    const connections = connsByWorker()[victim];
    killWorker(victim);
    killed.push({ pid: victim, subscribers: n, connections });
    await until(() => !alive(victim), `worker ${victim} to die`);
    await talkDuring(pages, ids, round);
    await until(() => workers().length === alivePids.length, "the master to replace the worker");
    await until(
      async () => {
        let cut = 0;
        for (const [i, p] of pages.entries()) {
          const s = await chatStats(p);
          if (s.state !== "open") return false;
          if (s.reconnects > before[i]) cut++;
        }
        // Each page's stream counts two subscriptions (room, presence).
        return cut >= n / 2;
      },
      "the cut pages to be connected again",
    );
    await allShow(pages, ids, `the messages after killing worker ${victim}`);
  }
  const stats = [];
  for (const p of pages) stats.push(await chatStats(p));
  for (const [i, s] of stats.entries()) {
    check(s.reconnects >= 1, `page ${i} reconnected by itself`, s);
    check(String(s.reconnects) === s.panelReconnects && s.panelState === "open", `page ${i}'s panel shows it`, s);
  }
  // And the conversation goes on.
  ids.push(await say(pages[0], "still here"));
  await allShow(pages, ids, "a message after the kills");
  return { killed, messages: ids.length, stats };
}

async function scenarioReload() {
  const { pages } = await chatRoom(["alice", "bob", "carol"], { allowNetErrors: true });
  const ids = [];
  await talkDuring(pages, ids, 0);
  await allShow(pages, ids, "the first round");
  const old = workers();
  const before = [];
  for (const p of pages) before.push((await chatStats(p)).reconnects);
  process.kill(cfg.master, "SIGHUP");
  await talkDuring(pages, ids, 1); // during the reload
  await until(() => old.every((w) => !alive(w)), "the old workers to exit");
  await talkDuring(pages, ids, 2);
  await waitReconnected(pages, before);
  await allShow(pages, ids, "the messages across the reload");
  const stats = [];
  for (const p of pages) stats.push(await chatStats(p));
  return { oldWorkers: old, newWorkers: workers(), messages: ids.length, stats };
}

// ------------------------------------------------------------------ AI

async function openAi(opts) {
  const page = await newPage("ai", opts);
  await page.goto(`${cfg.base}/ai.html`);
  await page.waitForFunction(() => window.aiDemo && window.aiDemo.conn.state === "open", null, { timeout: T });
  return page;
}

// Asks through the page's composer and samples the answer's text as it
// grows; returns the samples and the final state.
async function askAndWatch(page, prompt, mode) {
  await page.check(`input[name="mode"][value="${mode}"]`);
  const n = await page.$$eval(".answer", (els) => els.length);
  await page.fill("#prompt", prompt);
  await page.press("#prompt", "Enter");
  const sel = `.exchange:nth-child(${n + 1}) .answer`;
  await page.waitForSelector(sel, { timeout: T });
  const samples = [];
  const deadline = Date.now() + T;
  for (;;) {
    const s = await page.$eval(sel, (el) => ({
      state: el.dataset.state,
      len: el.querySelector(".text").textContent.length,
      t: performance.now(),
    }));
    if (!samples.length || samples[samples.length - 1].len !== s.len || s.state !== samples[samples.length - 1].state) {
      samples.push(s);
    }
    if (s.state === "done" || s.state === "error" || s.state === "stopped") break;
    check(Date.now() < deadline, "the answer to finish", samples.slice(-3));
    await sleep(15);
  }
  const final = await page.$eval(sel, (el) => ({
    state: el.dataset.state,
    chip: el.querySelector(".chip").textContent,
    text: el.querySelector(".text").textContent,
    tokens: Number(el.dataset.tokens || 0),
    meta: el.querySelector(".meta").textContent,
  }));
  return { samples, final };
}

function checkGrew(samples, what) {
  const lens = samples.filter((s) => s.state === "streaming").map((s) => s.len);
  const distinct = new Set(lens).size;
  check(distinct >= 5, `${what}: the answer grew token by token in the page`, lens);
  for (let i = 1; i < lens.length; i++) check(lens[i] >= lens[i - 1], `${what}: the text only grows`, lens);
  const span = samples[samples.length - 1].t - samples[0].t;
  check(span > 200, `${what}: the answer came over time, not at once`, span);
  return { distinctLengths: distinct, spanMs: Math.round(span) };
}

async function scenarioAi() {
  const page = await openAi();
  const out = {};
  for (const [mode, prompt] of [
    ["channel", cfg.prompt],
    ["direct", cfg.prompt2],
  ]) {
    const { samples, final } = await askAndWatch(page, prompt, mode);
    check(final.state === "done" && final.chip === "done", `${mode}: the answer shows done`, final);
    check(final.text === cfg.answers[prompt], `${mode}: the answer is whole`, { got: final.text, want: cfg.answers[prompt] });
    check(final.tokens === cfg.tokens[prompt] && final.meta.startsWith(`${final.tokens} tokens`), `${mode}: metadata shown`, final);
    out[mode] = { ...checkGrew(samples, mode), tokens: final.tokens, meta: final.meta };
  }
  // The failure path.
  const { final } = await askAndWatch(page, "/error please", "channel");
  check(final.state === "error" && final.chip === "error" && /simulated failure/.test(final.meta), "an error shows as such", final);
  out.error = final.meta;
  const conn = await page.evaluate(() => ({ state: window.aiDemo.conn.state, reconnects: window.aiDemo.conn.reconnects }));
  check(conn.state === "open" && conn.reconnects === 0, "`event: error` is not taken for a connection error", conn);
  await page.check('input[name="mode"][value="channel"]');
  out.screenshot = await shot(page, "ai.png");
  return out;
}

// The connection drops mid-answer (nginx reload): the page resumes from its
// last id and the answer completes, whole and in order.
async function scenarioAiReload() {
  const page = await openAi({ allowNetErrors: true });
  const prompt = cfg.prompt;
  await page.fill("#prompt", prompt);
  await page.press("#prompt", "Enter");
  await page.waitForFunction(() => Number(document.querySelector(".answer")?.dataset.tokens || 0) >= 5, null, { timeout: T, polling: 10 });
  const old = workers();
  process.kill(cfg.master, "SIGHUP");
  await page.waitForFunction(() => document.querySelector(".answer").dataset.state !== "streaming" || window.aiDemo.conn.reconnects > 0, null, { timeout: T });
  await page.waitForFunction(() => document.querySelector(".answer").dataset.state === "done", null, { timeout: T });
  const final = await page.evaluate(() => ({
    text: document.querySelector(".answer .text").textContent,
    tokens: Number(document.querySelector(".answer").dataset.tokens),
    reconnects: window.aiDemo.conn.reconnects,
  }));
  check(final.reconnects >= 1, "the page reconnected during the answer", final);
  check(final.text === cfg.answers[prompt], "the answer is whole after the reload", { got: final.text, want: cfg.answers[prompt] });
  await until(() => old.every((w) => !alive(w)), "the old workers to exit");
  return final;
}

async function scenarioPages() {
  // The home page, and that every page loads its scripts without errors.
  const page = await newPage("index");
  const resp = await page.goto(`${cfg.base}/`);
  check(resp.status() === 200, "the home page loads", resp.status());
  const links = await page.$$eval("a.tile", (els) => els.map((e) => e.getAttribute("href")));
  check(links.includes("chat.html") && links.includes("ai.html"), "it links both demos", links);
  const screenshot = await shot(page, "index.png");
  await page.click('a.tile[href="chat.html"]');
  await page.waitForFunction(() => window.chatDemo && window.chatDemo.conn.state === "open", null, { timeout: T });
  await page.waitForFunction(() => document.querySelectorAll(".workers li").length > 0, null, { timeout: T });
  const panel = await page.evaluate(() => document.body.innerText);
  await page.click('nav a[href="ai.html"]');
  await page.waitForFunction(() => window.aiDemo && window.aiDemo.conn.state === "open", null, { timeout: T });
  return { screenshot, panel };
}

// ------------------------------------------------------------------ main

const SCENARIOS = {
  chat: scenarioChat,
  kill: scenarioKill,
  reload: scenarioReload,
  ai: scenarioAi,
  ai_reload: scenarioAiReload,
  pages: scenarioPages,
  expiry: scenarioExpiry,
};

let result;
const t0 = Date.now();
try {
  const run = SCENARIOS[cfg.scenario];
  if (!run) throw new Failure(`no scenario ${cfg.scenario}`);
  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS, headless: true, timeout: 30000 });
  result = { ok: true, ...(await run()) };
  check(problems.length === 0, "the pages logged errors", problems);
} catch (err) {
  result = { ok: false, error: err instanceof Failure ? err.message : String(err && err.stack ? err.stack : err), problems };
} finally {
  if (browser) await browser.close().catch(() => {});
}
result.ms = Date.now() - t0;
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
