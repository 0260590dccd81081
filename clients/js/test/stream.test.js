import { describe, expect, it } from "vitest";
import { StreamRequestError, streamRequest } from "../src/index.js";
import { PUB, SUB, channel, publish, subscribers, until } from "./helpers.js";

describe("streamRequest", () => {
  it("reads a subscription with fetch and stops on abort", async () => {
    const ch = channel();
    const got = [];
    const ctrl = new AbortController();
    let head = null;
    const done = streamRequest(`${SUB}/events/${ch}`, { signal: ctrl.signal }, (ev) => got.push(ev), {
      onOpen: (res) => (head = res),
    });
    await subscribers(ch, 1);
    expect(head.headers.get("content-type")).toBe("text/event-stream; charset=utf-8");
    const ids = [await publish(ch, "one"), await publish(ch, "two\nlines", { event: "token" })];
    await until(() => got.length === 2);
    expect(got).toEqual([
      { type: "message", data: "one", id: ids[0] },
      { type: "token", data: "two\nlines", id: ids[1] },
    ]);
    ctrl.abort();
    await expect(done).rejects.toMatchObject({ name: "AbortError" });
    await subscribers(ch, 0);
  });

  it("streams a POST's answer: the model's tokens, metadata and done", async () => {
    const got = [];
    const r = await streamRequest(
      `${SUB}/ask`,
      { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ prompt: "why SSE?" }) },
      (ev) => got.push(ev),
    );
    expect(r.status).toBe(200);
    expect(r.events).toBe(got.length);
    const types = got.map((e) => e.type);
    expect(types.at(-1)).toBe("done");
    expect(types.at(-2)).toBe("metadata");
    expect(types.slice(0, -2).every((t) => t === "token")).toBe(true);
    const meta = JSON.parse(got.at(-2).data);
    expect(meta.tokens).toBe(got.length - 2);
    const text = got.slice(0, -2).map((e) => e.data).join("");
    expect(text).toMatch(/^Good question about \u201csse\u201d\. Server-Sent Events /);
  });

  it("can be aborted in the middle of a POST's stream", async () => {
    const ctrl = new AbortController();
    const got = [];
    const p = streamRequest(
      `${SUB}/ask`,
      { method: "POST", body: JSON.stringify({ prompt: "tell me about reconnects" }), signal: ctrl.signal },
      (ev) => {
        got.push(ev);
        if (got.length === 3) ctrl.abort();
      },
    );
    await expect(p).rejects.toMatchObject({ name: "AbortError" });
    expect(got).toHaveLength(3);
  });

  it("dispatches nothing after an abort, even from the chunk in hand", async () => {
    // Five events in one chunk (the way a busy network delivers them).
    const body = new Response("data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\ndata: 5\n\n", {
      headers: { "Content-Type": "text/event-stream" },
    });
    const ctrl = new AbortController();
    const got = [];
    const p = streamRequest("http://unused.invalid/", { signal: ctrl.signal }, (ev) => {
      got.push(ev.data);
      if (got.length === 2) ctrl.abort();
    }, { fetch: async () => body });
    await expect(p).rejects.toMatchObject({ name: "AbortError" });
    expect(got).toEqual(["1", "2"]);
  });

  it("rejects a non-2xx answer with its status and body", async () => {
    const err = await streamRequest(`${SUB}/multi?channels=ok,,bad`, {}, () => {}).catch((e) => e);
    expect(err).toBeInstanceOf(StreamRequestError);
    expect(err.status).toBe(400);
    expect(err.body).toMatch(/^invalid channel/);
  });

  it("rejects an answer that is not an event stream", async () => {
    const err = await streamRequest(`${PUB}/status`, {}, () => {}).catch((e) => e);
    expect(err).toBeInstanceOf(StreamRequestError);
    expect(err.status).toBe(200);
    expect(err.message).toMatch(/expected text\/event-stream, got application\/json/);
  });

  it("stops when onEvent throws, and rejects with its error", async () => {
    const ch = channel();
    const outcome = streamRequest(`${SUB}/events/${ch}`, {}, () => {
      throw new Error("handler broke");
    }).then(
      () => "resolved",
      (e) => e,
    );
    await subscribers(ch, 1);
    await publish(ch, "x");
    expect((await outcome).message).toBe("handler broke");
    await subscribers(ch, 0);
  });

  it("sees each event of a streamed publish as it is published", async () => {
    // The publisher side of the same pattern: one chunked POST with
    // Content-Type: text/event-stream, written piece by piece (events cut
    // anywhere), read by a streamRequest subscriber event by event.
    const ch = channel();
    const got = [];
    const ctrl = new AbortController();
    const sub = streamRequest(`${SUB}/events/${ch}`, { signal: ctrl.signal }, (ev) => got.push(ev));
    await subscribers(ch, 1);

    let push;
    const body = new ReadableStream({
      start(c) {
        push = (s) => (s === null ? c.close() : c.enqueue(new TextEncoder().encode(s)));
      },
    });
    const post = fetch(`${PUB}/publish/${ch}`, {
      method: "POST",
      headers: { "Content-Type": "text/event-stream" },
      body,
      duplex: "half",
    });
    // Each piece, and how many events are out once it is in: "\r\n\r" is
    // a line end, then a blank line (CR), so "lo" is out before the "\n".
    const pieces = [
      ["event: token\nda", 0],
      ["ta: Hel\n", 0],
      ["\nevent: tok", 1],
      ["en\ndata: lo\r\n\r", 2],
      ["\nevent: done\ndata: [DONE]\n\n", 3],
    ];
    for (const [piece, want] of pieces) {
      push(piece);
      // While the POST is still open, the events so far are out, no more.
      await until(() => got.length >= want, `${want} events`);
      expect(got.length).toBe(want);
    }
    push(null);
    const answer = await (await post).json();
    await until(() => got.length === 3);
    expect(got.map((e) => [e.type, e.data])).toEqual([
      ["token", "Hel"],
      ["token", "lo"],
      ["done", "[DONE]"],
    ]);
    expect(answer).toMatchObject({ channel: ch, published: 3, id: got[2].id });
    ctrl.abort();
    await sub.catch(() => {});
  });
});
