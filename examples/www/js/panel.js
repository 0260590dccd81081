// The live panel: this page's connection (state, reconnects, last event
// id, events received) and the hub's figures from sse_status (GET /status,
// which nginx proxies to the internal side), refreshed every 2 seconds.

const STATE_TEXT = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  closed: "Closed",
};

function fmtBytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

function fmtInt(n) {
  return Number(n).toLocaleString("en-US");
}

export function createPanel(root, { statusUrl = "/status", every = 2000 } = {}) {
  const $ = (name) => root.querySelector(`[data-field="${name}"]`);
  const stateEl = root.querySelector(".state");
  let events = 0;

  function setState(state) {
    stateEl.dataset.state = state;
    $("state").textContent = STATE_TEXT[state] || state;
  }

  function update(conn) {
    setState(conn.state);
    $("reconnects").textContent = fmtInt(conn.reconnects);
    $("last-id").textContent = conn.lastEventId || "—";
  }

  // The module's sse-error events: why the server ended this stream.
  function sseError(info) {
    const reason = (info && info.reason) || "unknown";
    $("sse-error").textContent = `${reason} at ${new Date().toLocaleTimeString()}`;
    $("sse-error").dataset.reason = reason;
  }

  function countEvent(conn) {
    events++;
    $("events").textContent = fmtInt(events);
    if (conn) $("last-id").textContent = conn.lastEventId || "—";
  }

  let timer = null;
  let lastOk = 0;
  async function poll() {
    timer = null;
    try {
      const r = await fetch(statusUrl, { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const z = (await r.json()).zones[0];
      $("channels").textContent = fmtInt(z.channels);
      $("subscribers").textContent = fmtInt(z.subscribers);
      $("published").textContent = fmtInt(z.published);
      $("delivered").textContent = fmtInt(z.delivered);
      $("buffered").textContent = `${fmtInt(z.messages)} (${fmtBytes(z.message_bytes)})`;
      $("memory").textContent = `${fmtBytes(z.bytes_used)} of ${fmtBytes(z.bytes_total)}`;
      root.querySelector(".meter > span").style.width = `${Math.max(1, (100 * z.bytes_used) / z.bytes_total).toFixed(1)}%`;
      const list = root.querySelector(".workers");
      list.replaceChildren(
        // Numbered, not by pid: a public page has no business showing pids.
        ...z.workers.map((w, i) => {
          const li = document.createElement("li");
          const a = document.createElement("span");
          a.textContent = `worker ${i + 1}`;
          const b = document.createElement("span");
          b.textContent = `${w.subscribers} sub${w.subscribers === 1 ? "" : "s"}`;
          li.append(a, b);
          return li;
        }),
      );
      lastOk = Date.now();
      $("updated").textContent = `epoch ${z.epoch} · updated ${new Date(lastOk).toLocaleTimeString()}`;
    } catch (err) {
      $("updated").textContent = `status unavailable (${err.message})`;
    }
    schedule();
  }
  function schedule() {
    if (timer === null && !document.hidden) timer = setTimeout(poll, every);
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null) poll();
  });
  poll();

  return { update, countEvent, setState, sseError };
}

/** The panel's markup, so that every page has the same one. */
export const PANEL_HTML = `
  <section class="card" aria-label="Connection">
    <h2>This page's stream</h2>
    <div class="state" data-state="connecting"><span class="dot"></span><span data-field="state">Connecting…</span></div>
    <dl class="kv">
      <dt>Reconnects</dt><dd data-field="reconnects">0</dd>
      <dt>Events received</dt><dd data-field="events">0</dd>
      <dt class="wide">Last server end (sse-error)</dt><dd class="mono wide" data-field="sse-error">—</dd>
      <dt class="wide">Last event id</dt><dd class="mono wide" data-field="last-id">—</dd>
    </dl>
  </section>
  <section class="card" aria-label="Hub">
    <h2>The hub (sse_status)</h2>
    <dl class="kv">
      <dt>Channels</dt><dd data-field="channels">…</dd>
      <dt>Subscribers</dt><dd data-field="subscribers">…</dd>
      <dt>Published</dt><dd data-field="published">…</dd>
      <dt>Delivered</dt><dd data-field="delivered">…</dd>
      <dt>Buffered</dt><dd data-field="buffered">…</dd>
      <dt>Zone memory</dt><dd data-field="memory">…</dd>
    </dl>
    <div class="meter"><span></span></div>
    <ul class="workers"></ul>
    <div class="updated" data-field="updated"></div>
  </section>`;
