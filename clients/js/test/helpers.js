// Shared by the tests: the nginx that test/setup/nginx.js started, and
// small bounded waits.
import { inject } from "vitest";
import { EventSource as NodeEventSource } from "eventsource";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";

export const env = inject("env");
export const SUB = `http://127.0.0.1:${env.sub}`;
export const PUB = `http://127.0.0.1:${env.pub}`;

// Node's own fetch, kept before a DOM environment can replace it.
const nodeFetch = globalThis.fetch;

/** EventSource for Node (the npm `eventsource` package), on Node's fetch. */
export class EventSource extends NodeEventSource {
  constructor(url, init = {}) {
    super(url, { ...init, fetch: nodeFetch });
  }
}

let n = 0;
/** A channel name no other test uses. */
export function channel(prefix = "t") {
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${n++}`;
}

export async function publish(ch, data, { event, headers = {} } = {}) {
  const h = { ...headers };
  if (event) h["SSE-Event"] = event;
  const r = await nodeFetch(`${PUB}/publish/${ch}`, { method: "POST", body: data, headers: h });
  const body = await r.json();
  if (r.status !== 202) throw new Error(`publish: ${r.status} ${JSON.stringify(body)}`);
  return body.id;
}

export async function info(ch) {
  const r = await nodeFetch(`${PUB}/publish/${ch}`);
  return r.status === 200 ? r.json() : null;
}

export async function until(pred, what = "condition", timeout = 10000, every = 10) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

export async function subscribers(ch, want) {
  try {
    await until(async () => ((await info(ch))?.subscribers ?? 0) === want, `${want} subscribers on ${ch}`);
  } catch (err) {
    // What the hub and its log say, for the report.
    const status = await (await nodeFetch(`${PUB}/status`)).text();
    let log = "";
    try {
      log = fs
        .readFileSync(path.join(env.dir, "error.log"), "utf8")
        .split("\n")
        .filter((l) => l.includes(ch) || /\[(alert|crit|error|warn)\]/.test(l))
        .slice(-20)
        .join("\n");
    } catch {
      /* no log */
    }
    err.message += `\nchannel: ${JSON.stringify(await info(ch))}\nstatus: ${status}\nlog:\n${log}`;
    throw err;
  }
}

/** While it exists, /flaky/CH answers 503. */
export function setDown(ch, down) {
  const f = path.join(env.dir, "down", ch);
  if (down) fs.writeFileSync(f, "");
  else fs.rmSync(f, { force: true });
}

export const seq = (id) => Number(String(id).split("-")[1]);

/** An HS256 token signed with the key of the test nginx's JWK Set. */
export function signToken(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT", kid: "test" });
  const body = b64(claims);
  const sig = crypto.createHmac("sha256", Buffer.from(env.jwtKey, "base64url")).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** A token for `channels` that expires `seconds` from now. */
export function tokenFor(channels, seconds, sub = "tester") {
  return signToken({ sub, exp: Math.floor(Date.now() / 1000) + seconds, sse: { subscribe: channels } });
}
