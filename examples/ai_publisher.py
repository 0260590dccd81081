#!/usr/bin/env python3
"""Streams an AI-style answer into an ngx_http_sse_module channel.

    ai_publisher.py URL "prompt" [--delay 0.05] [--model NAME]

URL is a publisher location, e.g. http://127.0.0.1:8081/publish/chat-42.
The answer goes out as one long chunked POST with
`Content-Type: text/event-stream`: one `event: token` per token, as it is
"generated", then one `event: metadata` whose data is JSON, then
`event: done`. The module publishes each event the moment its blank line
arrives, so subscribers see the answer grow token by token. On success it
prints the module's answer (JSON: channel, id, subscribers, published) and
exits 0; otherwise it prints the status and body to stderr and exits 1.

Standard library only.
"""

import argparse
import http.client
import json
import re
import sys
import time
import urllib.parse

MODEL = "canned-1"


def answer_for(prompt):
    """The canned answer to a prompt (deterministic, so tests can check)."""
    return (
        f"You asked: \u201c{prompt}\u201d.\n"
        "Server-Sent Events keep one HTTP response open and write each "
        "event as it happens; the browser's EventSource reconnects by "
        "itself and sends Last-Event-ID, so nothing is lost.\n\n"
        "In short: a na\u00efve \u2018poll\u2019 is slower \u2014 "
        "stream it. \u2713"
    )


def tokens_for(prompt):
    """The answer cut into tokens the way a model emits them: words with
    their leading space, punctuation and line breaks on their own."""
    return re.findall(r" ?[^\s.,;:!?\u201c\u201d]+|[.,;:!?\u201c\u201d]|\n| ",
                      answer_for(prompt))


def sse_event(event, data):
    """One event in SSE wire form. Each line of data gets its own `data:`
    field; the space after the colon is the separator, so a value's own
    leading space survives."""
    lines = data.split("\n")
    out = f"event: {event}\n" if event else ""
    for line in lines:
        out += f"data: {line}\n"
    return (out + "\n").encode("utf-8")


class ChunkedPost:
    """A POST whose body is sent in HTTP chunks as it is produced."""

    def __init__(self, url, timeout=30):
        u = urllib.parse.urlsplit(url)
        if u.scheme == "https":
            self.conn = http.client.HTTPSConnection(u.hostname, u.port,
                                                    timeout=timeout)
        else:
            self.conn = http.client.HTTPConnection(u.hostname, u.port or 80,
                                                   timeout=timeout)
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        self.conn.putrequest("POST", path)
        self.conn.putheader("Content-Type", "text/event-stream")
        self.conn.putheader("Transfer-Encoding", "chunked")
        self.conn.endheaders()

    def send(self, data):
        if data:
            self.conn.send(b"%x\r\n%s\r\n" % (len(data), data))

    def finish(self):
        self.conn.send(b"0\r\n\r\n")
        r = self.conn.getresponse()
        body = r.read()
        self.conn.close()
        return r.status, body


def stream_answer(url, prompt, delay=0.05, model=MODEL):
    """Streams the answer; returns (status, body) of the module's answer."""
    post = ChunkedPost(url)
    t0 = time.monotonic()
    tokens = tokens_for(prompt)
    for tok in tokens:
        post.send(sse_event("token", tok))
        if delay:
            time.sleep(delay)
    meta = {"model": model, "prompt": prompt, "tokens": len(tokens),
            "finish_reason": "stop",
            "elapsed_ms": int((time.monotonic() - t0) * 1000)}
    post.send(sse_event("metadata", json.dumps(meta, ensure_ascii=False)))
    post.send(sse_event("done", "[DONE]"))
    return post.finish()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url", help="publisher URL, e.g. "
                    "http://127.0.0.1:8081/publish/chat-42")
    ap.add_argument("prompt")
    ap.add_argument("--delay", type=float, default=0.05,
                    help="seconds between tokens (default 0.05)")
    ap.add_argument("--model", default=MODEL)
    args = ap.parse_args(argv)
    try:
        status, body = stream_answer(args.url, args.prompt, args.delay,
                                     args.model)
    except OSError as e:
        print(f"ai_publisher: {e}", file=sys.stderr)
        return 1
    if status != 202:
        print(f"ai_publisher: HTTP {status}: "
              f"{body.decode('utf-8', 'replace').strip()}", file=sys.stderr)
        return 1
    sys.stdout.write(body.decode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
