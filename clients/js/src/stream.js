// streamRequest(): read an event stream from any fetch() request, such as a
// POST that answers with `Content-Type: text/event-stream` (the pattern of
// chat-completion APIs), which EventSource cannot do: it only GETs.
//
// The body is decoded with a streaming TextDecoder (a UTF-8 character cut
// between two network chunks stays whole) and fed to the incremental parser,
// so an event cut anywhere between chunks is still one event. Pass
// `init.signal` (an AbortSignal) to stop it. There is no reconnecting here:
// a POST is not safe to repeat; use connect() for resumable streams.

import { createParser } from "./parser.js";

export class StreamRequestError extends Error {
  constructor(message, { status = 0, body = "", response = null } = {}) {
    super(message);
    this.name = "StreamRequestError";
    this.status = status;
    this.body = body;
    this.response = response;
  }
}

function abortReason(signal) {
  if (signal.reason !== undefined) return signal.reason;
  const err = new Error("The operation was aborted.");
  err.name = "AbortError";
  return err;
}

/**
 * @param {string|URL|Request} url
 * @param {RequestInit} [init] passed to fetch(); `Accept: text/event-stream`
 *        is added unless set
 * @param {(event: {type: string, data: string, id: string}) => void} onEvent
 * @param {object} [options]
 * @param {(response: Response) => void} [options.onOpen] the response head, before any event
 * @param {(ms: number) => void} [options.onRetry]
 * @param {(text: string) => void} [options.onComment]
 * @param {typeof fetch} [options.fetch]
 * @returns {Promise<{status: number, headers: Headers, events: number, lastEventId: string}>}
 *          when the stream ends. Rejects with a StreamRequestError on a
 *          non-2xx answer or one that is not an event stream, and with the
 *          signal's reason (an AbortError) when aborted.
 */
export async function streamRequest(url, init = {}, onEvent, options = {}) {
  if (typeof onEvent !== "function") throw new TypeError("streamRequest: onEvent must be a function");
  const doFetch = options.fetch || globalThis.fetch;
  const headers = new Headers(init.headers || {});
  if (!headers.has("accept")) headers.set("accept", "text/event-stream");
  const res = await doFetch(url, { ...init, headers });

  if (!res.ok) {
    let body = "";
    try {
      body = await res.text();
    } catch {
      /* the body is only for the message */
    }
    throw new StreamRequestError(`HTTP ${res.status}${body ? `: ${body.trim().slice(0, 200)}` : ""}`, {
      status: res.status,
      body,
      response: res,
    });
  }
  const type = res.headers.get("content-type") || "";
  if (!/^text\/event-stream\b/i.test(type) || !res.body) {
    let body = "";
    try {
      body = await res.text();
    } catch {
      /* ignore */
    }
    throw new StreamRequestError(`expected text/event-stream, got ${type || "no Content-Type"}`, {
      status: res.status,
      body,
      response: res,
    });
  }
  if (options.onOpen) options.onOpen(res);

  let events = 0;
  const signal = init.signal || null;
  const aborted = () => signal !== null && signal.aborted;
  const parser = createParser({
    onEvent(ev) {
      // Nothing more once aborted, even from the chunk being parsed.
      if (aborted()) return;
      events++;
      onEvent(ev);
    },
    onRetry: options.onRetry,
    onComment: options.onComment,
  });
  // ignoreBOM: keep a BOM in the text so that the parser drops exactly one.
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  const reader = res.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parser.feed(decoder.decode(value, { stream: true }));
      if (aborted()) throw abortReason(signal);
    }
    parser.feed(decoder.decode());
    if (aborted()) throw abortReason(signal);
  } catch (err) {
    // An abort, a network error or a throwing onEvent: stop reading.
    reader.cancel(err).catch(() => {});
    throw err;
  } finally {
    reader.releaseLock();
  }
  return { status: res.status, headers: res.headers, events, lastEventId: parser.lastEventId };
}
