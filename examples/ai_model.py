#!/usr/bin/env python3
"""A pretend AI model for the demo: a small HTTP server that answers
prompts token by token through ngx_http_sse_module.

    ai_model.py [--port 8082] [--publish http://127.0.0.1:8081/publish/]
                [--delay 0.04] [--channel-prefix ai:]

POST /ask with JSON {"prompt": "...", "channel": "ai:SESSION"} answers
202 at once; a thread then streams the answer into the channel as ONE
chunked POST with `Content-Type: text/event-stream` to the module's
publisher location (PUBLISH + channel): an `event: token` per token, then
`event: metadata` (JSON: model, tokens, elapsed_ms, finish_reason), then
`event: done`; or `event: error` (JSON: message) when generation fails.
Subscribers of the channel see the answer grow as it is "generated".

The same POST with `Accept: text/event-stream` streams the same events in
its own response instead (the fetch-based pattern, no channel, nothing to
resume): the demo page offers both.

The "model" is canned and deterministic: the answer is built from the
prompt's words. A prompt starting with /error fails after a few tokens, to
show the error path. GET /health answers 200. POST /token is the chat's
login (examples/demo_tokens.py): a signed token for a name, as a cookie.

Standard library only; examples/ai_publisher.py supplies the chunked POST.
"""

import argparse
import json
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ai_publisher import ChunkedPost, sse_event  # noqa: E402
from demo_tokens import Issuer  # noqa: E402

MODEL = "canned-2"
MAX_BODY = 8192
MAX_PROMPT = 2000
CHANNEL_RE = re.compile(r"^[A-Za-z0-9_.:@~-]{1,200}$")

STOP_WORDS = set("""a an and are as at be but by can could did do does for from
had has have how i if in into is it its me my of on or our should so than that
the their them then there these they this to was we were what when where which
who why will with would you your tell explain about please""".split())

TOPICS = [
    (("sse", "event", "events", "eventsource", "stream", "streaming",
      "server-sent"),
     "Server-Sent Events keep one HTTP response open and write each event "
     "as it happens, so the browser needs nothing but EventSource."),
    (("nginx", "module", "proxy", "worker", "workers"),
     "Here nginx is the hub: a publish lands in shared memory and every "
     "worker copies it once for all of its subscribers."),
    (("reconnect", "resume", "lost", "drop", "drops", "offline", "network",
      "id", "ids"),
     "Every event has an id, so a client that reconnects sends Last-Event-ID "
     "and gets exactly what it missed, nothing twice."),
    (("websocket", "websockets", "polling", "poll", "realtime", "real-time"),
     "Compared with polling it costs one connection instead of a request per "
     "second; compared with WebSockets it stays plain HTTP, which proxies and "
     "caches already understand."),
    (("ai", "llm", "model", "token", "tokens", "gpt", "chat"),
     "A model's answer is a natural stream: each token goes out as its own "
     "event the moment it exists."),
]


def keywords(prompt, n=5):
    out = []
    for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9'-]*", prompt.lower()):
        if w not in STOP_WORDS and w not in out and len(w) > 1:
            out.append(w)
    return out[:n]


def answer_for(prompt):
    """The canned answer: deterministic, built from the prompt's words."""
    words = keywords(prompt)
    if words:
        if len(words) == 1:
            subject = f"\u201c{words[0]}\u201d"
        else:
            subject = (", ".join(f"\u201c{w}\u201d" for w in words[:-1])
                       + f" and \u201c{words[-1]}\u201d")
        parts = [f"Good question about {subject}."]
    else:
        parts = ["Ask me anything about streaming, nginx or reconnects."]
    vocab = set(words)
    for keys, text in TOPICS:
        if vocab & set(keys):
            parts.append(text)
    if len(parts) == 1:
        parts.append(TOPICS[0][1])
        parts.append(TOPICS[2][1])
    parts.append("\n\nIn short: stream it, and let the ids do the "
                 "bookkeeping. \u2713")
    return " ".join(parts).replace(" \n", "\n")


def tokens_for(prompt):
    """The answer cut into tokens the way a model emits them: words with
    their leading space; punctuation and line breaks on their own."""
    return re.findall(r" ?[^\s.,;:!?\u201c\u201d]+|[.,;:!?\u201c\u201d]|\n| ",
                      answer_for(prompt))


class Generation:
    """One answer: the events in order, paced like a model."""

    def __init__(self, prompt, delay):
        self.prompt = prompt
        self.delay = delay

    def events(self):
        """Yields (event, data); `error` ends early."""
        t0 = time.monotonic()
        tokens = tokens_for(self.prompt)
        fail_at = 6 if self.prompt.lstrip().startswith("/error") else None
        for i, tok in enumerate(tokens):
            if fail_at is not None and i == fail_at:
                yield "error", json.dumps(
                    {"message": "the model stopped: simulated failure "
                                "(/error)", "tokens": i})
                return
            yield "token", tok
            if self.delay:
                time.sleep(self.delay)
        meta = {"model": MODEL, "tokens": len(tokens),
                "elapsed_ms": int((time.monotonic() - t0) * 1000),
                "finish_reason": "stop"}
        yield "metadata", json.dumps(meta)
        yield "done", "[DONE]"


class Model:
    def __init__(self, publish, delay, prefix, max_running=16):
        self.publish = publish
        self.delay = delay
        self.prefix = prefix
        self.max_running = max_running
        self.lock = threading.Lock()
        self.running = set()  # channels with an answer in progress

    def claim(self, channel):
        with self.lock:
            if channel in self.running:
                return "busy"
            if len(self.running) >= self.max_running:
                return "full"
            self.running.add(channel)
            return None

    def release(self, channel):
        with self.lock:
            self.running.discard(channel)

    def stream_to_channel(self, channel, prompt):
        url = self.publish + channel
        try:
            post = ChunkedPost(url)
            try:
                for event, data in Generation(prompt, self.delay).events():
                    post.send(sse_event(event, data))
            except Exception as e:
                # Tell the subscribers before giving up on this stream.
                self.publish_one(channel, "error",
                                 json.dumps({"message": f"model failed: {e}"}))
                raise
            status, body = post.finish()
            if status != 202:
                log(f"publish to {url}: HTTP {status}: "
                    f"{body.decode('utf-8', 'replace').strip()}")
        except OSError as e:
            log(f"publish to {url}: {e}")
        finally:
            self.release(channel)

    def publish_one(self, channel, event, data):
        req = urllib.request.Request(
            self.publish + channel, data=data.encode(), method="POST",
            headers={"SSE-Event": event})
        try:
            urllib.request.urlopen(req, timeout=5).read()
        except (OSError, urllib.error.HTTPError) as e:
            log(f"publish {event} to {channel}: {e}")


def log(msg):
    print(f"ai_model: {msg}", file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    server_version = "ai_model/1"
    model = None  # set in main()
    issuer = None

    def log_message(self, fmt, *args):
        pass  # quiet; errors go through log()

    def reply(self, status, obj, headers=()):
        body = (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, {"ok": True, "model": MODEL})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        if self.path.split("?")[0] == "/token" and self.issuer is not None:
            return self.token()
        if self.path.split("?")[0] not in ("/ask", "/ai/ask"):
            return self.reply(404, {"error": "not found"})
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            return self.reply(413, {"error": "body too large"})
        try:
            req = json.loads(self.rfile.read(n) or b"{}")
            prompt = req.get("prompt")
            channel = req.get("channel")
        except (ValueError, AttributeError):
            return self.reply(400, {"error": "body must be a JSON object"})
        if not isinstance(prompt, str) or not prompt.strip():
            return self.reply(400, {"error": "prompt: a non-empty string"})
        if len(prompt) > MAX_PROMPT:
            return self.reply(413, {"error": f"prompt: at most {MAX_PROMPT} "
                                             "characters"})
        direct = "text/event-stream" in (self.headers.get("Accept") or "")
        if direct:
            return self.stream_here(prompt)
        m = self.model
        if (not isinstance(channel, str) or not CHANNEL_RE.match(channel)
                or not channel.startswith(m.prefix)):
            return self.reply(400, {"error": f"channel: {m.prefix}ID with "
                                             "ID of A-Z a-z 0-9 _ . : @ ~ -"})
        why = m.claim(channel)
        if why == "busy":
            return self.reply(409, {"error": "an answer is already streaming "
                                             "into this channel"})
        if why == "full":
            return self.reply(503, {"error": "too many answers at once"},
                              [("Retry-After", "1")])
        threading.Thread(target=m.stream_to_channel, args=(channel, prompt),
                         daemon=True).start()
        self.reply(202, {"channel": channel, "model": MODEL})

    def token(self):
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            return self.reply(413, {"error": "body too large"})
        try:
            req = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            return self.reply(400, {"error": "body must be a JSON object"})
        status, answer, headers = self.issuer.issue(req)
        self.reply(status, answer, headers)

    def stream_here(self, prompt):
        """The answer in this response, as an event stream."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for event, data in Generation(prompt, self.model.delay).events():
                self.wfile.write(sse_event(event, data))
                self.wfile.flush()
        except OSError:
            pass  # the reader went away
        self.close_connection = True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8082)
    ap.add_argument("--publish", default="http://127.0.0.1:8081/publish/",
                    help="publisher URL prefix; the channel is appended")
    ap.add_argument("--delay", type=float, default=0.04,
                    help="seconds per token (default 0.04)")
    ap.add_argument("--channel-prefix", default="ai:",
                    help="only channels starting with this (default ai:)")
    ap.add_argument("--jwks", default=str(Path(__file__).resolve().parent
                                          / "jwks.json"),
                    help="JWK Set whose oct key signs the chat's tokens")
    ap.add_argument("--token-ttl", type=int, default=600,
                    help="seconds a chat token lasts (default 600)")
    args = ap.parse_args(argv)

    Handler.model = Model(args.publish, args.delay, args.channel_prefix)
    Handler.issuer = Issuer(args.jwks, args.token_ttl)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    log(f"listening on http://{args.host}:{server.server_address[1]}/ask, "
        f"publishing to {args.publish}<channel>")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
