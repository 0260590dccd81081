// connect(): EventSource that does not give up.
//
// EventSource reconnects by itself after a network error or a clean end of
// stream (sending Last-Event-ID), but it stops for good when an answer is
// not a 200 event stream: a 502 from a proxy during a deploy, a 503 while a
// server restarts. connect() takes over then: it waits (exponential backoff
// with jitter) and opens a new EventSource whose URL carries the last id it
// saw as `?last_event_id=` (EventSource cannot set headers; the module reads
// that argument when the header is absent), so the stream resumes where it
// stopped. It reports its state, counts reconnects and hands the module's
// `sse-gap` and `sse-error` events to handlers.
//
// With a token provider (options.token), every connection starts with a
// token from it: in the URL (`?token=`, options.tokenParam) or in a cookie
// (options.tokenCookie, or one the provider itself gets set). When the
// server ends a stream because the token expired (`sse-error`
// `token_expired`), connect() drops that EventSource before it reconnects
// with the stale token, asks the provider for a fresh one and resumes from
// the last id: nothing is lost.

export const STATES = Object.freeze(["connecting", "open", "reconnecting", "closed"]);

const DEFAULTS = {
  initialDelay: 1000, // ms before the first retry of our own
  maxDelay: 30000, // ms, the backoff's ceiling
  factor: 2,
  jitter: 0.5, // 0: none; 1: anywhere between 0 and the full delay
  maxRetries: Infinity, // consecutive failed attempts before giving up
  lastEventIdParam: "last_event_id",
  withCredentials: false,
  token: null, // () => string | Promise<string>
  tokenParam: "token", // query argument for the token; null: not in the URL
  tokenCookie: null, // cookie name: the token goes there (document.cookie) instead
};

/**
 * Delay before retry number `attempt` (0-based): exponential, capped, with
 * jitter taking off up to `jitter` of it.
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const o = { ...DEFAULTS, ...options };
  const cap = Math.min(o.maxDelay, o.initialDelay * Math.pow(o.factor, attempt));
  const j = Math.min(1, Math.max(0, o.jitter));
  return Math.round(cap * (1 - j * random()));
}

/** `url` with `param=id` set (replacing any value it had); the rest of the
 * query string is kept as it was written. */
export function withLastEventId(url, id, param = DEFAULTS.lastEventIdParam) {
  return withParam(url, param, id);
}

/** `url` with `param=value` set (replacing any value it had; none when
 * value is empty); the rest of the query string is kept as written. */
export function withParam(url, param, value) {
  const id = value;
  const base = typeof location !== "undefined" ? location.href : undefined;
  const u = new URL(url, base);
  const name = (p) => {
    const k = p.split("=")[0];
    try {
      return decodeURIComponent(k.replace(/\+/g, " "));
    } catch {
      return k;
    }
  };
  const parts = u.search
    .slice(1)
    .split("&")
    .filter((p) => p && name(p) !== param);
  if (id) parts.push(`${encodeURIComponent(param)}=${encodeURIComponent(id)}`);
  u.search = parts.length ? `?${parts.join("&")}` : "";
  return u.href;
}

/**
 * Subscribes to an event stream.
 *
 * @param {string} url  the subscriber URL (relative URLs resolve against the page)
 * @param {Object<string, (data: string, event: MessageEvent) => void>} handlers
 *        one function per event type to listen for: `message` for events
 *        without a name, any other key for `event: NAME`; `sse-gap` may be
 *        one of them (or use options.onGap)
 * @param {object} [options]
 * @param {(state: string, conn: object) => void} [options.onState]
 *        connecting | open | reconnecting | closed
 * @param {(gap: {requested: string, reason: string}, event: MessageEvent) => void} [options.onGap]
 * @param {(error: Event|Error, conn: object) => void} [options.onError]
 * @param {(info: {reason: string}, event: MessageEvent) => void} [options.onSseError]
 *        the module's `sse-error` event (why the server ended or refused
 *        the stream: token_expired, max_subscribers, shutdown, …)
 * @param {() => string|Promise<string>} [options.token] token provider,
 *        called before every connection
 * @param {string|null} [options.tokenParam="token"] query argument for it
 * @param {string|null} [options.tokenCookie] cookie for it instead (same-origin)
 * @param {string} [options.lastEventId] resume point for the first connection
 * @param {number} [options.initialDelay=1000]
 * @param {number} [options.maxDelay=30000]
 * @param {number} [options.factor=2]
 * @param {number} [options.jitter=0.5]
 * @param {number} [options.maxRetries=Infinity]
 * @param {string} [options.lastEventIdParam="last_event_id"]
 * @param {boolean} [options.withCredentials=false]
 * @param {Function} [options.EventSource] an EventSource class (default: the global one)
 */
export function connect(url, handlers = {}, options = {}) {
  const o = { ...DEFAULTS, ...options };
  const ES = o.EventSource || globalThis.EventSource;
  if (typeof ES !== "function") {
    throw new TypeError("connect: no EventSource here; pass options.EventSource");
  }
  withLastEventId(url, null, o.lastEventIdParam); // throws now on a bad URL

  let es = null;
  let timer = null;
  let attempt = 0; // consecutive failures since the last open
  let everOpen = false;
  let closedByUser = false;

  const conn = {
    url,
    state: "connecting",
    reconnects: 0,
    lastEventId: o.lastEventId || null,
    /** The last `sse-error` event's data ({reason}), or null. */
    lastSseError: null,
    /** The EventSource in use (null while waiting to retry). */
    get source() {
      return es;
    },
    close,
    /** Drops the current connection and opens a new one now. */
    reconnect() {
      if (closedByUser) return;
      drop();
      setState(everOpen ? "reconnecting" : "connecting");
      open();
    },
  };

  function setState(s) {
    if (conn.state === s) return;
    conn.state = s;
    if (o.onState) o.onState(s, conn);
  }

  function track(ev) {
    if (ev.lastEventId) conn.lastEventId = ev.lastEventId;
  }

  function report(err) {
    if (o.onError) o.onError(err, conn);
  }

  function listen(source) {
    source.onopen = () => {
      if (source !== es) return;
      if (everOpen && conn.state !== "open") conn.reconnects++;
      everOpen = true;
      attempt = 0;
      setState("open");
    };
    source.onerror = (ev) => {
      if (source !== es) return;
      // A server event named "error" (`event: error`) comes here too: it
      // is a MessageEvent, fired while the connection is open.
      if (source.readyState === 1 /* OPEN */ || typeof ev.data === "string") return;
      report(ev);
      if (source.readyState === 2 /* CLOSED: the browser gave up */) {
        drop();
        retryLater();
      } else {
        // CONNECTING: the browser retries by itself with Last-Event-ID.
        setState(everOpen ? "reconnecting" : "connecting");
      }
    };
    const names = new Set(Object.keys(handlers));
    names.add("sse-gap");
    names.add("sse-error");
    for (const name of names) {
      source.addEventListener(name, (ev) => {
        // Only events from the stream: "error" and "open" are also the
        // names of EventSource's own events, which carry no data.
        if (source !== es || typeof ev.data !== "string") return;
        track(ev);
        if (name === "sse-gap" && o.onGap) {
          let info;
          try {
            info = JSON.parse(ev.data);
          } catch {
            info = { requested: null, reason: "unknown", raw: ev.data };
          }
          call(o.onGap, info, ev);
        }
        if (name === "sse-error") {
          let info;
          try {
            info = JSON.parse(ev.data);
          } catch {
            info = { reason: "unknown", raw: ev.data };
          }
          conn.lastSseError = info;
          if (o.onSseError) call(o.onSseError, info, ev);
          if (info && info.reason === "token_expired" && o.token) {
            // EventSource would reconnect with the stale token: take over.
            const h = handlers[name];
            if (typeof h === "function") call(h, ev.data, ev);
            drop();
            setState("reconnecting");
            open();
            return;
          }
        }
        const h = handlers[name];
        if (typeof h === "function") call(h, ev.data, ev);
      });
    }
  }

  // A handler that throws must not break the stream.
  function call(fn, a, b) {
    try {
      fn(a, b);
    } catch (err) {
      report(err);
      if (!o.onError) setTimeout(() => { throw err; });
    }
  }

  let opening = 0; // the newest open(): older token answers are dropped

  function open() {
    timer = null;
    if (!o.token) {
      start(null);
      return;
    }
    const mine = ++opening;
    let t;
    try {
      t = o.token();
    } catch (err) {
      report(err);
      retryLater();
      return;
    }
    Promise.resolve(t).then(
      (token) => {
        if (mine === opening && !closedByUser && es === null && timer === null) start(token);
      },
      (err) => {
        if (mine !== opening || closedByUser) return;
        report(err);
        retryLater();
      },
    );
  }

  function start(token) {
    let u = withLastEventId(url, conn.lastEventId, o.lastEventIdParam);
    if (token != null && token !== "") {
      if (o.tokenCookie) {
        if (typeof document !== "undefined") {
          document.cookie = `${o.tokenCookie}=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
        }
      } else if (o.tokenParam) {
        u = withParam(u, o.tokenParam, token);
      }
    }
    try {
      es = new ES(u, { withCredentials: !!o.withCredentials });
    } catch (err) {
      es = null;
      report(err);
      retryLater();
      return;
    }
    listen(es);
  }

  function drop() {
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
    if (es) {
      const old = es;
      es = null;
      old.onopen = old.onerror = null;
      old.close();
    }
  }

  function retryLater() {
    if (attempt >= o.maxRetries) {
      closedByUser = true;
      removeOnline();
      setState("closed");
      return;
    }
    const delay = backoffDelay(attempt++, o);
    setState(everOpen ? "reconnecting" : "connecting");
    timer = setTimeout(open, delay);
  }

  // Back online: retry now instead of at the end of the backoff.
  const onOnline = () => {
    if (timer !== null && !closedByUser) {
      clearTimeout(timer);
      open();
    }
  };
  const win = typeof window !== "undefined" && window.addEventListener ? window : null;
  if (win) win.addEventListener("online", onOnline);
  function removeOnline() {
    if (win) win.removeEventListener("online", onOnline);
  }

  function close() {
    if (closedByUser && conn.state === "closed") return;
    closedByUser = true;
    opening++;
    drop();
    removeOnline();
    setState("closed");
  }

  open();
  return conn;
}
