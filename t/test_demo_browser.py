"""The demo as `make demo` runs it: examples/nginx.conf (rendered with free
ports), examples/ai_model.py and the pages in examples/www, in Debian's
Chromium (t/js/demo_browser.mjs through playwright-core), plus the
configuration's guards checked over plain HTTP.

Screenshots go to t/artifacts/ (index.png, chat.png, ai.png)."""

import asyncio
import importlib.util
import json
import os
import re
import subprocess
import time
from html.parser import HTMLParser

import pytest

from conftest import ROOT, SSEClient
from demohelp import AI_MODEL, Demo

JS_DIR = ROOT / "t" / "js"
ARTIFACTS = ROOT / "t" / "artifacts"
NODE = "/usr/bin/node"
CHROMIUM = "/usr/bin/chromium"


def load_model():
    spec = importlib.util.spec_from_file_location("ai_model", AI_MODEL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ai = load_model()


@pytest.fixture
def demo(tmp_path, request):
    d = Demo(tmp_path).start()
    yield d
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        lines = [ln for ln in d.log_text().splitlines()
                 if "[notice]" not in ln and "[info]" not in ln]
        print(f"--- {d.error_log} (notices and infos left out)")
        print("\n".join(lines[-40:]))
        print(f"--- {d.model_log}\n{d.model_log.read_text()[-3000:]}")
    problems = []
    if not d.stop():
        problems.append("nginx did not stop within 10 s of SIGQUIT")
    bad = d.bad_log_lines()
    if bad:
        problems.append(f"{d.error_log}:\n" + "\n".join(bad[:20]))
    model_log = d.model_log.read_text()
    if "Traceback" in model_log:
        problems.append(f"{d.model_log}:\n{model_log[-3000:]}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# ---------------------------------------------------------------- browser

needs_browser = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM)
         and (JS_DIR / "node_modules" / "playwright-core").is_dir()),
    reason="needs Debian's chromium and t/js/node_modules (make deps)")

PROMPT = "Why use SSE instead of polling?"
PROMPT2 = "How does nginx fan out events to workers?"


def run_browser(demo, scenario, timeout=150, **extra):
    """Runs one scenario of t/js/demo_browser.mjs against the demo; returns
    its findings. Workers it kills are allowed their alert in the log."""
    cfg = {"scenario": scenario, "base": demo.base, "master": demo.master,
           "publicPort": demo.public, "artifacts": str(ARTIFACTS),
           "prompt": PROMPT, "prompt2": PROMPT2,
           "answers": {p: ai.answer_for(p) for p in (PROMPT, PROMPT2)},
           "tokens": {p: len(ai.tokens_for(p)) for p in (PROMPT, PROMPT2)}}
    cfg.update(extra)
    env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
    env.pop("NODE_OPTIONS", None)
    try:
        p = subprocess.run([NODE, str(JS_DIR / "demo_browser.mjs"),
                            json.dumps(cfg)],
                           cwd=JS_DIR, capture_output=True, text=True,
                           timeout=timeout, env=env)
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        err, rc = str(e.stderr), None
    lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    demo.allow_killed(x["killed"] for x in lines
                      if "killed" in x and "ok" not in x)
    results = [x for x in lines if "ok" in x]
    if rc is None:
        raise AssertionError(f"{scenario} ran over {timeout}s\n{out}\n{err}")
    assert results, f"{scenario}: no result ({rc})\n{out[-3000:]}\n" \
                    f"{err[-3000:]}"
    r = results[-1]
    assert r["ok"], f"{scenario}: {r.get('error')}\n" \
                    f"page problems: {r.get('problems')}\n{err[-2000:]}"
    print(f"{scenario}: {json.dumps(r)[:2000]}")
    return r


@needs_browser
def test_chat_two_pages_talk_and_a_late_joiner_sees_the_history(demo):
    r = run_browser(demo, "chat")
    assert r["messages"] == 7
    assert (ARTIFACTS / "chat.png").stat().st_size > 10_000


@needs_browser
def test_token_expiry_mid_stream_loses_nothing(demo):
    """Chromium's own EventSource through clients/js connect(): tokens of
    3 s, events published every 40 ms across two expiries; the page logs
    in again at each `token_expired` and shows every event once, in order
    (ids compared in the page)."""
    r = run_browser(demo, "expiry", internalPort=demo.internal)
    assert r["published"] > 50 and r["logins"] >= 3, r
    assert r["sseErrors"].count("token_expired") >= 2, r
    assert r["online"]["names"] == ["dana"], r


@needs_browser
def test_chat_survives_sigkill_of_its_workers(demo):
    before = demo.workers()
    r = run_browser(demo, "kill")
    # Each kill took down a worker that held subscribers (sse_status).
    assert r["killed"] and all(k["subscribers"] > 0 for k in r["killed"])
    assert {k["pid"] for k in r["killed"]} <= set(before) | demo.killed
    # Every page lost its stream at least once and came back by itself;
    # nothing lost, nothing twice (checked in the page by event id).
    assert all(s["reconnects"] >= 1 and s["duplicates"] == 0
               for s in r["stats"]), r["stats"]
    assert len(demo.workers()) == 2


@needs_browser
def test_chat_survives_reload(demo):
    r = run_browser(demo, "reload")
    assert set(r["oldWorkers"]).isdisjoint(r["newWorkers"])
    assert all(s["reconnects"] >= 1 and s["duplicates"] == 0
               for s in r["stats"]), r["stats"]


@needs_browser
def test_ai_page_renders_the_answer_token_by_token(demo):
    r = run_browser(demo, "ai")
    for mode in ("channel", "direct"):
        assert r[mode]["tokens"] == len(ai.tokens_for(
            PROMPT if mode == "channel" else PROMPT2))
        assert r[mode]["distinctLengths"] >= 5
    assert (ARTIFACTS / "ai.png").stat().st_size > 10_000


@needs_browser
def test_ai_answer_survives_reload_mid_answer(demo):
    r = run_browser(demo, "ai_reload")
    assert r["reconnects"] >= 1 and r["text"] == ai.answer_for(PROMPT)


@needs_browser
def test_pages_load_without_errors(demo):
    r = run_browser(demo, "pages")
    assert (ARTIFACTS / "index.png").stat().st_size > 10_000
    # The live panel numbers the workers; a public page shows no pid.
    assert "worker 1" in r["panel"], r["panel"]
    for pid in demo.workers():
        assert not re.search(rf"\b{pid}\b", r["panel"]), r["panel"]


# ---------------------------------------------------------------- HTTP

def test_demo_config_passes_nginx_t(demo):
    ok, out = demo.test_config()
    assert ok, out


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v and not re.match(
                    r"^(https?:|mailto:|#|data:)", v):
                self.refs.append(v.split("?")[0].split("#")[0])


def test_every_page_and_what_it_links_is_served(demo):
    pages = ["index.html", "chat.html", "ai.html"]
    seen = set()
    for page in pages:
        status, h, body = demo.request("GET", f"/{page}")
        assert status == 200 and h["content-type"].startswith("text/html")
        p = _Refs()
        p.feed(body.decode())
        seen.update(r for r in p.refs if r)
    for ref in sorted(seen):
        status, h, _ = demo.request("GET", "/" + ref.lstrip("./")
                                    if ref not in ("./", "status") else "/")
        assert status == 200, ref
    # ES modules need a JavaScript type; lib/ is the client package.
    for js in ("/js/chat.js", "/js/ai.js", "/js/panel.js", "/lib/index.js",
               "/lib/connect.js", "/lib/parser.js", "/lib/stream.js"):
        status, h, body = demo.request("GET", js)
        assert status == 200 and h["content-type"].startswith(
            "text/javascript"), (js, status, h)
    assert demo.request("GET", "/lib/index.js")[2] == \
        (ROOT / "clients" / "js" / "src" / "index.js").read_bytes()


def test_the_public_side_does_not_publish(demo):
    assert demo.request("POST", "/events/x", body="hi")[0] == 405
    # A room's stream needs a token (401), and with one it only subscribes.
    assert demo.request("POST", "/chat/events/lobby", body="hi")[0] == 401
    assert demo.request("POST", "/chat/events/lobby", body="hi",
                        headers=login(demo, "x"))[0] == 405
    assert demo.request("POST", "/publish/x", body="hi")[0] == 404
    assert demo.request("GET", "/chat/send/lobby")[0] == 403
    assert demo.request("GET", "/ai/ask")[0] == 403
    assert demo.request("POST", "/status")[0] == 403


def login(demo, name, **extra):
    """The chat's login: the sse_token cookie header for `name`."""
    status, h, body = demo.request("POST", "/chat/token",
                                   {"name": name, **extra},
                                   {"Content-Type": "application/json"})
    assert status == 200, body
    assert "HttpOnly" in h["set-cookie"], h
    return {"Cookie": h["set-cookie"].split(";")[0]}


async def test_chat_needs_a_token_and_publishes_presence(demo):
    c = await SSEClient.open(demo.public, "/chat/events/locked")
    assert c.status == 401 and c.body == b"token missing\n"
    assert demo.request("POST", "/chat/token", {"name": ""},
                        {"Content-Type": "application/json"})[0] == 400
    assert demo.request("GET", "/chat/token")[0] == 403
    w = await SSEClient.open(demo.public, "/chat/events/p",
                             headers=login(demo, "watcher"))
    assert w.status == 200
    ev = await w.next_event()   # its own join, on the multiplexed stream
    assert (ev.event, json.loads(ev.data)) == (
        "join", {"sub": "watcher", "channel": "chat:p", "count": 1})
    c = await SSEClient.open(demo.public, "/chat/events/p",
                             headers=login(demo, "zoe"))
    ev = await w.next_event()
    assert (ev.event, json.loads(ev.data)) == (
        "join", {"sub": "zoe", "channel": "chat:p", "count": 2})
    c.close()
    ev = await w.next_event()
    assert (ev.event, json.loads(ev.data)) == (
        "leave", {"sub": "zoe", "channel": "chat:p", "count": 1})
    w.close()


async def test_chat_send_publishes_exactly_one_chat_event(demo):
    c = await SSEClient.open(demo.public, "/chat/events/forge",
                             headers=login(demo, "forger"))
    assert c.status == 200
    await c.next_event()  # its own join
    body = 'event: message\ndata: {"name":"x"}\n\nid: 9\ndata: two\n\n'
    # A browser cannot name the event, nor publish a stream of events.
    status, _, resp = await asyncio.to_thread(
        demo.request, "POST", "/chat/send/forge?event=forged", body,
        {"SSE-Event": "evil", "Content-Type": "text/event-stream"})
    assert status == 202, resp
    ev = await c.next_event()
    assert ev.event == "chat" and ev.data == body  # as data, line by line
    assert ev.id == json.loads(resp)["id"]
    await c.no_block(0.2)
    c.close()


def test_chat_send_limits(demo):
    big = json.dumps({"name": "n", "text": "x" * 5000, "ts": 0})
    assert demo.request("POST", "/chat/send/lim", body=big)[0] == 413
    assert demo.request("POST", "/chat/send/bad%20room", body="{}")[0] == 404
    # limit_req: a burst of 20 passes, the rest of a fast burst is 429.
    codes = [demo.request("POST", "/chat/send/lim",
                          body={"name": "n", "text": str(i), "ts": 0})[0]
             for i in range(30)]
    assert codes.count(202) >= 20 and 429 in codes, codes
    assert set(codes) <= {202, 429}, codes


def test_status_is_sse_status_json(demo):
    status, h, body = demo.request("GET", "/status")
    assert status == 200 and h["content-type"].startswith("application/json")
    z = json.loads(body)["zones"][0]
    assert z["name"] == "sse" and len(z["workers"]) == 2


async def test_ai_ask_answers_at_once_then_streams_into_the_channel(demo):
    session = "t0123456789abcdef"
    c = await SSEClient.open(demo.public, f"/ai/events/{session}")
    assert c.status == 200
    t0 = time.monotonic()
    status, _, body = await asyncio.to_thread(
        demo.request, "POST", "/ai/ask",
        {"prompt": PROMPT, "channel": f"ai:{session}"},
        {"Content-Type": "application/json"})
    took = time.monotonic() - t0
    assert status == 202 and json.loads(body)["channel"] == f"ai:{session}"
    assert took < 1.0, took  # the answer is not waited for
    events = []
    while not events or events[-1].event not in ("done", "error"):
        events.append(await c.next_event(timeout=10))
    tokens = ai.tokens_for(PROMPT)
    assert [e.event for e in events] == \
        ["token"] * len(tokens) + ["metadata", "done"]
    assert "".join(e.data for e in events[:-2]) == ai.answer_for(PROMPT)
    meta = json.loads(events[-2].data)
    assert meta["tokens"] == len(tokens) and meta["elapsed_ms"] > 0
    # One streamed publish: consecutive ids.
    seqs = [int(e.id.split("-")[1]) for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    c.close()


async def test_ai_error_event(demo):
    session = "e0123456789abcdef"
    c = await SSEClient.open(demo.public, f"/ai/events/{session}")
    status, _, _ = await asyncio.to_thread(
        demo.request, "POST", "/ai/ask",
        {"prompt": "/error now", "channel": f"ai:{session}"})
    assert status == 202
    events = []
    while not events or events[-1].event not in ("done", "error"):
        events.append(await c.next_event(timeout=10))
    assert events[-1].event == "error"
    assert "simulated" in json.loads(events[-1].data)["message"]
    assert all(e.event == "token" for e in events[:-1])
    c.close()


def test_ai_ask_refuses_what_it_must(demo):
    ask = lambda body, **kw: demo.request(  # noqa: E731
        "POST", "/ai/ask", body, {"Content-Type": "application/json"}, **kw)
    # Only ai: channels: a prompt cannot be streamed into a chat room.
    assert ask({"prompt": "hi", "channel": "chat:lobby"})[0] == 400
    assert ask({"prompt": "", "channel": "ai:abcdefgh"})[0] == 400
    assert ask("not json")[0] == 400
    assert ask({"prompt": "x" * 5000, "channel": "ai:abcdefgh"})[0] == 413
    # One answer at a time per channel.
    ch = {"prompt": PROMPT, "channel": "ai:busybusy"}
    codes = [ask(ch)[0], ask(ch)[0]]
    assert codes == [202, 409], codes


def test_ai_ask_direct_stream(demo):
    status, h, body = demo.request(
        "POST", "/ai/ask", {"prompt": PROMPT},
        {"Content-Type": "application/json", "Accept": "text/event-stream"},
        timeout=20)
    assert status == 200 and h["content-type"].startswith("text/event-stream")
    text = body.decode()
    assert text.count("event: token\n") == len(ai.tokens_for(PROMPT))
    assert text.endswith("event: done\ndata: [DONE]\n\n")
