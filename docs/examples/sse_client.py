#!/usr/bin/env python3
"""A Server-Sent Events client for ngx_http_sse_module, standard library
only: parses the stream as browsers do, resumes with Last-Event-ID after
any end of stream, waits `retry:` between attempts, and reports sse-gap
and sse-error. Prints one JSON line per event.

    python3 sse_client.py http://127.0.0.1:8080/events/demo [MAX_EVENTS]
"""
import json
import sys
import time
import urllib.error
import urllib.request


def events(lines):
    """Yields (type, data, last_id) for each event of an iterable of lines
    (without line ends), and ("retry", ms, None) for each retry field. The
    last id counts once its event is complete, as in browsers."""
    event, data, block_id, last_id = "", [], None, None
    for line in lines:
        if line == "":                              # blank line: dispatch
            if block_id is not None:
                last_id, block_id = block_id, None
            if data:
                yield event or "message", "\n".join(data), last_id
            event, data = "", []
            continue
        if line.startswith(":"):                    # comment: a heartbeat
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            block_id = value
        elif name == "retry" and value.isdigit():
            yield "retry", int(value), None


def lines_of(response):
    """Lines of a response body; CRLF, LF and CR all end a line."""
    pending = ""
    while True:
        chunk = response.read1(65536)
        if not chunk:
            return
        pending += chunk.decode("utf-8", errors="replace")
        pending = pending.replace("\r\n", "\n").replace("\r", "\n")
        *complete, pending = pending.split("\n")
        yield from complete


def subscribe(url, max_events=None):
    last_id, retry_ms, seen = None, 3000, 0
    while True:
        request = urllib.request.Request(url, headers={
            "Accept": "text/event-stream", "Cache-Control": "no-cache"})
        if last_id:
            request.add_header("Last-Event-ID", last_id)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                for kind, value, event_id in events(lines_of(response)):
                    if kind == "retry":
                        retry_ms = value
                        continue
                    last_id = event_id or last_id
                    if kind == "sse-gap":
                        # Events were lost (resume too old, other epoch):
                        # reload the state the events would have built.
                        print(json.dumps({"gap": json.loads(value)}),
                              flush=True)
                    elif kind == "sse-error":
                        # The server ended the stream on purpose; it says
                        # why and when to come back (retry: follows).
                        print(json.dumps({"error": json.loads(value)}),
                              flush=True)
                    else:
                        print(json.dumps({"event": kind, "data": value,
                                          "id": last_id}), flush=True)
                        seen += 1
                        if max_events and seen >= max_events:
                            return
        except urllib.error.HTTPError as e:
            if e.code in (400, 401, 403, 404, 405):
                sys.exit(f"{url}: {e.code} {e.read().decode().strip()}")
        except OSError:
            pass                    # network error: reconnect as after an end
        time.sleep(retry_ms / 1000)


if __name__ == "__main__":
    subscribe(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
