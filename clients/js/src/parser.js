// An incremental parser for text/event-stream, following the WHATWG HTML
// standard ("Server-sent events", "Interpreting an event stream"):
//
//  - lines end with CRLF, LF or CR, including a CRLF cut between two chunks
//    (a CR at the end of a chunk ends the line at once; an LF that starts
//    the next chunk is then skipped);
//  - one leading U+FEFF (BOM) of the stream is dropped;
//  - "field: value" loses one space after the colon; a line without a colon
//    is a field with an empty value; a line starting with ":" is a comment;
//  - data lines join with "\n"; a blank line dispatches the event, unless it
//    has no data (then only the id, if any, is kept);
//  - "id" containing NUL is ignored; "retry" counts only when all digits;
//  - an event still open when the stream ends is not dispatched.
//
// The parser works on text: decode bytes first (TextDecoder with
// {stream: true} keeps a UTF-8 sequence cut between chunks whole).

/**
 * @param {object} handlers
 * @param {(event: {type: string, data: string, id: string}) => void} handlers.onEvent
 *        called for each complete event; `id` is the stream's last event id
 *        at that point (like MessageEvent.lastEventId)
 * @param {(ms: number) => void} [handlers.onRetry] a valid `retry:` field
 * @param {(text: string) => void} [handlers.onComment] a comment line, without its ":"
 */
export function createParser(handlers) {
  if (typeof handlers === "function") handlers = { onEvent: handlers };
  const { onEvent, onRetry, onComment } = handlers || {};

  let start = true; // nothing seen yet: a BOM may come
  let skipLF = false; // the last chunk ended with CR
  let line = ""; // an unfinished line
  let data = "";
  let hasData = false;
  let type = "";
  let lastId = "";

  function endLine(text) {
    if (text === "") {
      // Dispatch.
      if (hasData) {
        const event = { type: type || "message", data, id: lastId };
        data = "";
        hasData = false;
        type = "";
        if (onEvent) onEvent(event);
      } else {
        data = "";
        type = "";
      }
      return;
    }
    if (text.charCodeAt(0) === 58 /* : */) {
      if (onComment) onComment(text.slice(1).replace(/^ /, ""));
      return;
    }
    const colon = text.indexOf(":");
    let field;
    let value;
    if (colon < 0) {
      field = text;
      value = "";
    } else {
      field = text.slice(0, colon);
      value = text.charCodeAt(colon + 1) === 32 ? text.slice(colon + 2) : text.slice(colon + 1);
    }
    switch (field) {
      case "data":
        data = hasData ? data + "\n" + value : value;
        hasData = true;
        break;
      case "event":
        type = value;
        break;
      case "id":
        if (value.indexOf("\0") < 0) lastId = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value) && onRetry) onRetry(parseInt(value, 10));
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  /** Feeds the next piece of the decoded stream. */
  function feed(chunk) {
    if (typeof chunk !== "string") {
      throw new TypeError("createParser().feed expects a string; decode bytes with TextDecoder first");
    }
    let i = 0;
    const n = chunk.length;
    if (n === 0) return;
    if (start) {
      start = false;
      if (chunk.charCodeAt(0) === 0xfeff) i = 1;
    }
    if (skipLF && i < n) {
      skipLF = false;
      if (chunk.charCodeAt(i) === 10) i++;
    }
    while (i < n) {
      // The next CR or LF.
      let j = i;
      let c = 0;
      for (; j < n; j++) {
        c = chunk.charCodeAt(j);
        if (c === 10 || c === 13) break;
      }
      if (j === n) {
        line += chunk.slice(i);
        return;
      }
      const text = line === "" ? chunk.slice(i, j) : line + chunk.slice(i, j);
      line = "";
      i = j + 1;
      if (c === 13) {
        if (i === n) skipLF = true;
        else if (chunk.charCodeAt(i) === 10) i++;
      }
      endLine(text);
    }
  }

  /** Forgets any unfinished event and line (for a new connection). The
   * last event id is kept unless `keepId` is false. */
  function reset({ keepId = true } = {}) {
    start = true;
    skipLF = false;
    line = "";
    data = "";
    hasData = false;
    type = "";
    if (!keepId) lastId = "";
  }

  return {
    feed,
    reset,
    get lastEventId() {
      return lastId;
    },
  };
}
