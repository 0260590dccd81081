import { describe, expect, it } from "vitest";
import { createParser } from "../src/parser.js";

function parseAll(chunks) {
  const events = [];
  const retries = [];
  const comments = [];
  const p = createParser({
    onEvent: (e) => events.push(e),
    onRetry: (ms) => retries.push(ms),
    onComment: (c) => comments.push(c),
  });
  for (const c of chunks) p.feed(c);
  return { events, retries, comments, lastEventId: p.lastEventId };
}

// An independent reading of the WHATWG rules, on the whole text at once
// (no chunks): the oracle for the random splits below.
function oracle(text) {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const lines = text.split(/\r\n|\r|\n/);
  lines.pop(); // the last piece has no line end: not a line
  const events = [];
  let data = null;
  let type = "";
  let id = "";
  for (const line of lines) {
    if (line === "") {
      if (data !== null) events.push({ type: type || "message", data, id });
      data = null;
      type = "";
      continue;
    }
    if (line[0] === ":") continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") data = data === null ? value : `${data}\n${value}`;
    else if (field === "event") type = value;
    else if (field === "id" && !value.includes("\0")) id = value;
  }
  return events;
}

// A small deterministic PRNG (mulberry32), so a failure can be replayed.
function rng(seed) {
  return () => {
    seed |= 0;
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomSplit(text, random, maxPieces = 12) {
  const cuts = new Set();
  const n = 1 + Math.floor(random() * maxPieces);
  for (let i = 0; i < n; i++) cuts.add(Math.floor(random() * (text.length + 1)));
  const sorted = [...cuts].sort((a, b) => a - b);
  const out = [];
  let prev = 0;
  for (const c of sorted) {
    out.push(text.slice(prev, c));
    prev = c;
  }
  out.push(text.slice(prev));
  return out;
}

describe("createParser", () => {
  it("reads the spec's examples", () => {
    const { events } = parseAll([
      "data: YHOO\ndata: +2\ndata: 10\n\n",
      ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
      "data\n\ndata\ndata\n\ndata:\n",
    ]);
    expect(events).toEqual([
      { type: "message", data: "YHOO\n+2\n10", id: "" },
      { type: "message", data: "first event", id: "1" },
      { type: "message", data: "second event", id: "" },
      { type: "message", data: " third event", id: "" },
      { type: "message", data: "", id: "" },
      { type: "message", data: "\n", id: "" },
    ]);
  });

  it("names events, keeps the last id, and resets the type after each event", () => {
    const { events, lastEventId } = parseAll([
      "event: token\nid: 1795-7\ndata: Hel\n\ndata: lo\n\nid: 1795-9\nevent: done\ndata: [DONE]\n\n",
    ]);
    expect(events).toEqual([
      { type: "token", data: "Hel", id: "1795-7" },
      { type: "message", data: "lo", id: "1795-7" },
      { type: "done", data: "[DONE]", id: "1795-9" },
    ]);
    expect(lastEventId).toBe("1795-9");
  });

  it("ends lines at CRLF, LF and CR alike", () => {
    const want = [
      { type: "a", data: "1\n2", id: "" },
      { type: "b", data: "3", id: "" },
    ];
    for (const eol of ["\n", "\r", "\r\n"]) {
      const text = `event: a${eol}data: 1${eol}data: 2${eol}${eol}event: b${eol}data: 3${eol}${eol}`;
      expect(parseAll([text]).events).toEqual(want);
    }
    expect(parseAll(["event: a\rdata: 1\r\ndata: 2\n\revent: b\r\ndata: 3\n\r\n"]).events).toEqual(want);
  });

  it("takes a CR at the end of a chunk as a line end, and an LF after it as part of it", () => {
    // "data: a\r" | "\n\r" | "\n": one event, not two blank lines too many.
    expect(parseAll(["data: a\r", "\n\r", "\n"]).events).toEqual([{ type: "message", data: "a", id: "" }]);
    // A CR alone at the end, then a new line: the CR ended the line.
    expect(parseAll(["data: a\r", "\r"]).events).toEqual([{ type: "message", data: "a", id: "" }]);
    // CR | CR LF: the second CR starts a blank line that dispatches.
    expect(parseAll(["data: x\r", "\r\ndata: y\r\n\r\n"]).events).toEqual([
      { type: "message", data: "x", id: "" },
      { type: "message", data: "y", id: "" },
    ]);
  });

  it("drops one BOM at the start of the stream, and only there", () => {
    expect(parseAll(["\uFEFFdata: a\n\n"]).events).toEqual([{ type: "message", data: "a", id: "" }]);
    expect(parseAll(["\uFEFF", "data: a\n\n"]).events).toEqual([{ type: "message", data: "a", id: "" }]);
    // A second BOM is part of the first line: the field "\uFEFFdata" is unknown.
    expect(parseAll(["\uFEFF\uFEFFdata: a\n\n"]).events).toEqual([]);
    expect(parseAll(["data: \uFEFFa\n\n"]).events).toEqual([{ type: "message", data: "\uFEFFa", id: "" }]);
  });

  it("skips comments and unknown fields, and hands comments to onComment", () => {
    const r = parseAll([": hello\n:\nfoo: bar\ndata: x\n: mid-event\n\n"]);
    expect(r.events).toEqual([{ type: "message", data: "x", id: "" }]);
    expect(r.comments).toEqual(["hello", "", "mid-event"]);
  });

  it("ignores an id with NUL, and a retry that is not all digits", () => {
    const r = parseAll(["id: 5\ndata: a\n\nid: 6\0x\ndata: b\n\nretry: 1500\nretry: 15s\nretry: -1\nretry:\n\n"]);
    expect(r.events.map((e) => e.id)).toEqual(["5", "5"]);
    expect(r.retries).toEqual([1500]);
  });

  it("keeps an id given by a block without data", () => {
    const r = parseAll(["id: 7\n\ndata: after\n\n"]);
    expect(r.events).toEqual([{ type: "message", data: "after", id: "7" }]);
    // An empty id resets it.
    expect(parseAll(["id: 7\n\nid\ndata: x\n\n"]).events[0].id).toBe("");
  });

  it("does not dispatch an event the stream ended in", () => {
    expect(parseAll(["data: complete\n\ndata: cut off\n"]).events).toEqual([{ type: "message", data: "complete", id: "" }]);
    expect(parseAll(["data: no line end"]).events).toEqual([]);
  });

  it("keeps colons and spaces in values", () => {
    const r = parseAll(['data: {"a": "b:c"}\ndata:  two spaces\ndata:\tx\n\n']);
    expect(r.events[0].data).toBe('{"a": "b:c"}\n two spaces\n\tx');
  });

  it("passes non-ASCII text through", () => {
    const r = parseAll(["data: na\u00efve \u2014 \u2713 \u{1F600}\n\n"]);
    expect(r.events[0].data).toBe("na\u00efve \u2014 \u2713 \u{1F600}");
  });

  it("can be reset between connections", () => {
    const events = [];
    const p = createParser((e) => events.push(e));
    p.feed("id: 3\ndata: half");
    p.reset();
    p.feed("data: whole\n\n");
    expect(events).toEqual([{ type: "message", data: "whole", id: "3" }]);
    p.reset({ keepId: false });
    p.feed("data: again\n\n");
    expect(events[1].id).toBe("");
  });

  it("refuses bytes: decode first", () => {
    expect(() => createParser(() => {}).feed(new Uint8Array([1]))).toThrow(TypeError);
  });

  it("gives the same events whatever the chunk boundaries (random splits)", () => {
    const random = rng(20241128);
    const pieces = [
      "data: plain\n\n",
      "event: token\ndata:  leading space\n\n",
      "id: 1795-1\nevent: chat\ndata: {\"name\":\"a\",\"text\":\"b\"}\n\n",
      "data: line 1\r\ndata: line 2\r\n\r\n",
      "data: cr only\rdata: still\r\r",
      ": heartbeat\n\n",
      "retry: 3000\n\n",
      "data\n\n",
      "data:\n\n",
      "id: 1795-2\n\n",
      "event: done\ndata: [DONE]\n\n",
      "data: na\u00efve \u2713 \u{1F680}\n\n",
      "bogus: field\ndata: x\n\n",
      "data: a\ndata: b\ndata: c\n\n",
    ];
    for (let round = 0; round < 300; round++) {
      let text = round % 7 === 0 ? "\uFEFF" : "";
      const n = 3 + Math.floor(random() * 12);
      for (let i = 0; i < n; i++) text += pieces[Math.floor(random() * pieces.length)];
      const want = oracle(text);
      // The whole text at once, split at random, and one character at a time.
      expect(parseAll([text]).events).toEqual(want);
      expect(parseAll(randomSplit(text, random)).events).toEqual(want);
      if (round % 10 === 0) expect(parseAll([...text]).events).toEqual(want);
    }
  });

  it("splits a CRLF between chunks at every position of a stream", () => {
    const text = "event: a\r\ndata: 1\r\n\r\nid: 9\r\ndata: 2\r\ndata: 3\r\n\r\n";
    const want = oracle(text);
    expect(want).toHaveLength(2);
    for (let i = 0; i <= text.length; i++) {
      for (let j = i; j <= text.length; j += 3) {
        expect(parseAll([text.slice(0, i), text.slice(i, j), text.slice(j)]).events).toEqual(want);
      }
    }
  });
});
