import { EventSource as NodeEventSource } from "eventsource";
import { afterEach, describe, expect, it } from "vitest";
import { connect } from "../src/index.js";
import { EventSource, SUB, channel, publish, seq, subscribers, tokenFor, until } from "./helpers.js";

const open = [];
afterEach(() => {
  while (open.length) open.pop().close();
});

// Publishes one event every `every` ms until stop() (returns their ids).
function publishing(ch, every = 20) {
  const ids = [];
  let on = true;
  const done = (async () => {
    for (let i = 0; on; i++) {
      ids.push(await publish(ch, `e${i}`));
      await new Promise((r) => setTimeout(r, every));
    }
  })();
  return {
    ids,
    async stop() {
      on = false;
      await done;
    },
  };
}

describe("connect with a token provider", () => {
  it("refreshes the token at token_expired and loses nothing (?token=)", async () => {
    const ch = channel("tok");
    const tokens = [];
    const errors = [];
    const failures = [];
    const got = [];
    const conn = connect(
      `${SUB}/auth/${ch}`,
      { message: (data, ev) => got.push(ev.lastEventId) },
      {
        EventSource,
        initialDelay: 50,
        // Short-lived: the first expires 2 s in, mid-stream.
        token: async () => {
          const t = tokenFor([ch], tokens.length === 0 ? 2 : 60);
          tokens.push(t);
          return t;
        },
        onSseError: (info) => errors.push(info.reason),
        // A reconnection with the stale token would be refused (401).
        onError: (e) => failures.push(e),
      },
    );
    open.push(conn);
    await until(() => conn.state === "open", "open");
    await subscribers(ch, 1);
    const pub = publishing(ch);
    await until(() => tokens.length === 2 && conn.state === "open", "a refreshed token", 15000);
    await until(() => got.length >= pub.ids.length + 5 || pub.ids.length > got.length + 100, "events after the refresh", 5000).catch(() => {});
    await pub.stop();
    await until(() => got.length === pub.ids.length, `all ${pub.ids.length} events`, 5000);
    expect(errors).toEqual(["token_expired"]);
    expect(conn.lastSseError).toEqual({ reason: "token_expired" });
    expect(got).toEqual(pub.ids);
    expect(new Set(got.map(seq)).size).toBe(got.length);
    expect(conn.reconnects).toBe(1);
    expect(failures).toEqual([]);
  });

  it("puts the token in a cookie when the app chooses so", async () => {
    const ch = channel("cookie");
    let jar = "";
    // A cookie jar for Node's EventSource: what a browser does with
    // document.cookie or a Set-Cookie from the app's token endpoint.
    class CookieES extends NodeEventSource {
      constructor(url, init = {}) {
        super(url, {
          ...init,
          fetch: (u, req) => globalThis.fetch(u, { ...req, headers: { ...req.headers, Cookie: `sse_token=${jar}` } }),
        });
      }
    }
    const got = [];
    let calls = 0;
    const conn = connect(
      `${SUB}/authc/${ch}`,
      { message: (data, ev) => got.push(ev.lastEventId) },
      {
        EventSource: CookieES,
        tokenParam: null,
        token: () => {
          calls++;
          jar = tokenFor([ch], calls === 1 ? 2 : 60);
          return jar;
        },
      },
    );
    open.push(conn);
    await until(() => conn.state === "open", "open");
    expect(conn.source.url).not.toContain("token=");
    await subscribers(ch, 1);
    const pub = publishing(ch, 50);
    await until(() => calls === 2 && conn.state === "open", "a refreshed cookie", 15000);
    await new Promise((r) => setTimeout(r, 300));
    await pub.stop();
    await until(() => got.length === pub.ids.length, "all events", 5000);
    expect(got).toEqual(pub.ids);
  });

  it("asks again when the provider fails or the token is refused", async () => {
    const ch = channel("retry");
    const errs = [];
    let calls = 0;
    const conn = connect(
      `${SUB}/auth/${ch}`,
      {},
      {
        EventSource,
        initialDelay: 50,
        maxDelay: 100,
        token: () => {
          calls++;
          if (calls === 1) throw new Error("no session yet");
          if (calls === 2) return Promise.reject(new Error("login server down"));
          if (calls === 3) return tokenFor(["other"], 60); // 403 for this channel
          return tokenFor([ch], 60);
        },
        onError: (e) => errs.push(e),
      },
    );
    open.push(conn);
    await until(() => conn.state === "open", "open", 10000);
    expect(calls).toBe(4);
    expect(errs.length).toBeGreaterThanOrEqual(3);
    expect(errs[0].message).toBe("no session yet");
    expect(errs[1].message).toBe("login server down");
    await subscribers(ch, 1);
  });

  it("reports other sse-error reasons without taking over", async () => {
    const ch = channel("timeout");
    const reasons = [];
    const conn = connect(`${SUB}/flaky/${ch}`, {}, { EventSource, onSseError: (i) => reasons.push(i.reason) });
    open.push(conn);
    await until(() => reasons.length >= 1 && conn.reconnects >= 1, "a stream_timeout end and a reconnect", 10000);
    expect(reasons[0]).toBe("stream_timeout");
  });
});
