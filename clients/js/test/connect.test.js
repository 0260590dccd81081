import { afterEach, describe, expect, it } from "vitest";
import { backoffDelay, connect, withLastEventId } from "../src/index.js";
import { EventSource, SUB, channel, info, publish, seq, setDown, subscribers, until } from "./helpers.js";

const open = [];
function track(conn) {
  open.push(conn);
  return conn;
}
afterEach(() => {
  while (open.length) open.pop().close();
});

// A connect() whose events and states are recorded.
function follow(path, names = ["message"], options = {}) {
  const got = [];
  const states = [];
  const gaps = [];
  const handlers = {};
  for (const name of names) handlers[name] = (data, ev) => got.push({ type: name, data, id: ev.lastEventId });
  const conn = track(
    connect(`${SUB}${path}`, handlers, {
      EventSource,
      initialDelay: 50,
      maxDelay: 400,
      ...options,
      onState: (s) => states.push(s),
      onGap: (g) => gaps.push(g),
    }),
  );
  return { conn, got, states, gaps };
}

describe("connect", () => {
  it("delivers named and unnamed events and reports its state", async () => {
    const ch = channel();
    const { conn, got, states } = follow(`/events/${ch}`, ["message", "token", "done"]);
    expect(conn.state).toBe("connecting");
    await until(() => conn.state === "open", "open");
    await subscribers(ch, 1);
    const ids = [await publish(ch, "plain"), await publish(ch, "Hel", { event: "token" }), await publish(ch, "lo", { event: "token" })];
    await publish(ch, "ignored: nobody listens", { event: "other" });
    ids.push(await publish(ch, "[DONE]", { event: "done" }));
    await until(() => got.length === 4, "4 events");
    expect(got).toEqual([
      { type: "message", data: "plain", id: ids[0] },
      { type: "token", data: "Hel", id: ids[1] },
      { type: "token", data: "lo", id: ids[2] },
      { type: "done", data: "[DONE]", id: ids[3] },
    ]);
    expect(conn.lastEventId).toBe(ids[3]);
    expect(states).toEqual(["open"]);
    expect(conn.reconnects).toBe(0);
  });

  it("keeps multi-line data whole", async () => {
    const ch = channel();
    const { conn, got } = follow(`/events/${ch}`);
    await until(() => conn.state === "open");
    await subscribers(ch, 1);
    await publish(ch, "line 1\nline 2\r\nline 3");
    await until(() => got.length === 1);
    expect(got[0].data).toBe("line 1\nline 2\nline 3");
  });

  it("hands a server event named `error` to its handler, not to the connection", async () => {
    const ch = channel();
    const errors = [];
    const { conn, got, states } = follow(`/events/${ch}`, ["token", "error"], { onError: (e) => errors.push(e) });
    await until(() => conn.state === "open");
    await subscribers(ch, 1);
    await publish(ch, "a", { event: "token" });
    await publish(ch, '{"message":"model failed"}', { event: "error" });
    await publish(ch, "b", { event: "token" });
    await until(() => got.length === 3);
    expect(got.map((g) => g.type)).toEqual(["token", "error", "token"]);
    expect(got[1].data).toBe('{"message":"model failed"}');
    expect(states).toEqual(["open"]);
    expect(errors).toEqual([]);
  });

  it("counts the reconnects EventSource makes by itself, and loses nothing", async () => {
    // /flaky/ streams end after 1 s with retry: 100.
    const ch = channel();
    const { conn, got, states } = follow(`/flaky/${ch}`);
    await until(() => conn.state === "open");
    // Publish steadily until the stream has ended and come back twice.
    const sent = [];
    const deadline = Date.now() + 10000;
    let i = 0;
    while (conn.reconnects < 2 && Date.now() < deadline) {
      sent.push(await publish(ch, `m${i++}`));
      await new Promise((r) => setTimeout(r, 60));
    }
    for (let k = 0; k < 3; k++) sent.push(await publish(ch, `m${i++}`));
    await until(() => got.length === sent.length, "every event");
    expect(got.map((g) => g.id)).toEqual(sent);
    expect(conn.reconnects).toBeGreaterThanOrEqual(2);
    expect(states).toContain("reconnecting");
    expect(states.at(-1)).toBe("open");
  });

  it("takes over when EventSource gives up (503), resuming with ?last_event_id=", async () => {
    const ch = channel();
    const errors = [];
    const { conn, got, states } = follow(`/flaky/${ch}`, ["message"], { onError: (e) => errors.push(e) });
    await until(() => conn.state === "open");
    await subscribers(ch, 1);
    const before = await publish(ch, "before");
    await until(() => got.length === 1);

    setDown(ch, true); // the stream ends within 1 s; every retry is a 503
    await until(() => conn.state === "reconnecting", "reconnecting");
    await until(() => conn.source === null, "EventSource to give up (CLOSED)", 5000, 5);
    const during = [];
    for (let i = 0; i < 5; i++) during.push(await publish(ch, `during ${i}`));
    // Backing off: several attempts fail while it is down.
    await until(() => errors.length >= 3, "a few failed attempts");
    setDown(ch, false);

    await until(() => got.length === 6, "the missed events", 10000);
    expect(got.map((g) => g.id)).toEqual([before, ...during]);
    expect(got.map((g) => g.data)).toEqual(["before", "during 0", "during 1", "during 2", "during 3", "during 4"]);
    expect(conn.state).toBe("open");
    expect(conn.reconnects).toBe(1);
    expect(states).toEqual(["open", "reconnecting", "open"]);
    // Still live afterwards.
    const after = await publish(ch, "after");
    await until(() => got.length === 7);
    expect(got[6].id).toBe(after);
    setDown(ch, false);
  });

  it("surfaces sse-gap when the resume point cannot be exact", async () => {
    const ch = channel();
    await publish(ch, "buffered");
    const { got, gaps } = follow(`/events/${ch}`, ["message", "sse-gap"], { lastEventId: "not-an-id" });
    // No exact resume point: like a new subscriber, sse_initial_events (0)
    // of the buffer, then the live stream.
    await until(() => gaps.length === 1, "the gap");
    await publish(ch, "live");
    await until(() => got.length === 2, "the live event");
    expect(gaps[0]).toEqual({ requested: "not-an-id", reason: "malformed" });
    expect(got[0].type).toBe("sse-gap");
    expect(JSON.parse(got[0].data).reason).toBe("malformed");
    expect(got[1]).toMatchObject({ type: "message", data: "live" });
  });

  it("resumes from options.lastEventId on its first connection", async () => {
    const ch = channel();
    const a = await publish(ch, "a");
    await publish(ch, "b");
    await publish(ch, "c");
    const { got, gaps } = follow(`/events/${ch}`, ["message"], { lastEventId: a });
    await until(() => got.length === 2);
    expect(got.map((g) => g.data)).toEqual(["b", "c"]);
    expect(gaps).toEqual([]);
  });

  it("follows several channels on one stream", async () => {
    const [x, y] = [channel("x"), channel("y")];
    const { conn, got } = follow(`/multi?channels=${x},${y}`);
    await until(() => conn.state === "open");
    await subscribers(x, 1);
    const ids = [await publish(x, "1"), await publish(y, "2"), await publish(x, "3")];
    await until(() => got.length === 3);
    expect(got.map((g) => g.id)).toEqual(ids);
    expect(seq(ids[2])).toBeGreaterThan(seq(ids[0]));
  });

  it("close() ends the subscription and stops reconnecting", async () => {
    const ch = channel();
    const { conn, states } = follow(`/events/${ch}`);
    await until(() => conn.state === "open");
    await subscribers(ch, 1);
    conn.close();
    expect(conn.state).toBe("closed");
    expect(conn.source).toBe(null);
    await subscribers(ch, 0);
    conn.close(); // twice is fine
    expect(states).toEqual(["open", "closed"]);
  });

  it("gives up after maxRetries consecutive failures", async () => {
    const ch = channel();
    setDown(ch, true);
    const errors = [];
    const { conn, states } = follow(`/flaky/${ch}`, ["message"], {
      maxRetries: 2,
      initialDelay: 20,
      onError: (e) => errors.push(e),
    });
    await until(() => conn.state === "closed", "giving up", 5000);
    expect(errors).toHaveLength(3); // the first attempt and two retries
    expect(states).toEqual(["closed"]);
    setDown(ch, false);
  });

  it("reconnect() starts a new connection at once", async () => {
    const ch = channel();
    const { conn, got } = follow(`/events/${ch}`);
    await until(() => conn.state === "open");
    await subscribers(ch, 1);
    await publish(ch, "1");
    await until(() => got.length === 1);
    const old = conn.source;
    conn.reconnect();
    expect(conn.source).not.toBe(old);
    await until(() => conn.state === "open");
    await publish(ch, "2");
    await until(() => got.length === 2);
    expect(conn.reconnects).toBe(1);
    await subscribers(ch, 1);
  });

  it("refuses to start without an EventSource", () => {
    expect(() => connect(`${SUB}/events/x`, {}, { EventSource: null })).toThrow(/EventSource/);
  });
});

describe("backoffDelay", () => {
  it("doubles up to the cap", () => {
    const none = () => 0; // no jitter taken off
    const o = { initialDelay: 100, maxDelay: 1000, factor: 2, jitter: 0.5 };
    expect([0, 1, 2, 3, 4, 10].map((a) => backoffDelay(a, o, none))).toEqual([100, 200, 400, 800, 1000, 1000]);
  });

  it("takes off at most `jitter` of the delay", () => {
    const o = { initialDelay: 1000, maxDelay: 30000, jitter: 0.5 };
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(2, o);
      expect(d).toBeGreaterThanOrEqual(2000);
      expect(d).toBeLessThanOrEqual(4000);
    }
    expect(backoffDelay(2, o, () => 0.999999)).toBe(2000);
    expect(backoffDelay(2, { ...o, jitter: 0 }, Math.random)).toBe(4000);
  });
});

describe("withLastEventId", () => {
  it("sets, replaces and removes the argument", () => {
    expect(withLastEventId("http://h/e/a", "1-2")).toBe("http://h/e/a?last_event_id=1-2");
    expect(withLastEventId("http://h/e/a?x=1&last_event_id=1-1", "1-2")).toBe("http://h/e/a?x=1&last_event_id=1-2");
    expect(withLastEventId("http://h/e/a?last_event_id=1-1", null)).toBe("http://h/e/a");
    expect(withLastEventId("http://h/multi?channels=a,b", "1-2", "since")).toBe("http://h/multi?channels=a,b&since=1-2");
  });
});
