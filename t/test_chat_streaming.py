"""The "chat streaming" pattern: a backend streams an AI answer as `token`
events, then `metadata` (JSON), then `done`, through one chunked POST
(examples/ai_publisher.py, run as a real subprocess)."""

import asyncio
import importlib.util
import json
import subprocess
import sys
import time

import pytest

from conftest import ROOT, seq_of

SCRIPT = ROOT / "examples" / "ai_publisher.py"
PROMPT = "why SSE over polling?"


def load_example():
    spec = importlib.util.spec_from_file_location("ai_publisher", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ai = load_example()


def start_publisher(n, channel, prompt=PROMPT, delay=0.02):
    return subprocess.Popen(
        [sys.executable, str(SCRIPT),
         f"http://127.0.0.1:{n.pub_port}/publish/{channel}", prompt,
         "--delay", str(delay)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def wait_proc(p, timeout=20):
    deadline = time.monotonic() + timeout
    while p.poll() is None:
        if time.monotonic() > deadline:
            p.kill()
            p.wait()
            raise AssertionError("ai_publisher did not finish")
        await asyncio.sleep(0.02)
    return p.returncode, p.stdout.read().decode(), p.stderr.read().decode()


async def read_answer(c, timeout=20):
    """Events up to `done`."""
    out = []
    deadline = time.monotonic() + timeout
    while not out or out[-1].event != "done":
        out.append(await c.next_event(max(0.01, deadline - time.monotonic())))
    return out


@pytest.mark.timeout_s(40)
async def test_answer_streams_token_by_token_then_metadata_then_done(nginx):
    c = await nginx.stream("chat-1")
    p = start_publisher(nginx, "chat-1")
    try:
        first = await c.next_event(timeout=10)
        # Streaming, not buffered: the first token is here while the
        # publisher is still producing the rest.
        assert p.poll() is None, "the first token came only at the end"
        rest = await read_answer(c)
    finally:
        rc, out, err = await wait_proc(p)
    assert rc == 0, err
    events = [first] + rest
    tokens = ai.tokens_for(PROMPT)
    assert [b.event for b in events] == \
        ["token"] * len(tokens) + ["metadata", "done"]
    assert [b.data for b in events[:-2]] == tokens
    assert "".join(b.data for b in events[:-2]) == ai.answer_for(PROMPT)
    meta = json.loads(events[-2].data)
    assert meta["model"] == ai.MODEL and meta["prompt"] == PROMPT
    assert meta["tokens"] == len(tokens) and meta["finish_reason"] == "stop"
    assert events[-1].data == "[DONE]"
    seqs = [seq_of(b.id) for b in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(events)))
    # The publisher's answer names the whole stream.
    j = json.loads(out)
    assert j == {"channel": "chat-1", "id": events[-1].id, "subscribers": 1,
                 "published": len(tokens) + 2}
    await c.no_block(0.2)


@pytest.mark.timeout_s(40)
async def test_two_chats_at_once_stay_apart(nginx):
    a = await nginx.stream("chat-a")
    b = await nginx.stream("chat-b")
    pa = start_publisher(nginx, "chat-a", "first question")
    pb = start_publisher(nginx, "chat-b", "second question")
    try:
        ga, gb = await asyncio.gather(read_answer(a), read_answer(b))
    finally:
        ra = await wait_proc(pa)
        rb = await wait_proc(pb)
    assert ra[0] == 0 and rb[0] == 0, (ra, rb)
    assert "".join(e.data for e in ga if e.event == "token") == \
        ai.answer_for("first question")
    assert "".join(e.data for e in gb if e.event == "token") == \
        ai.answer_for("second question")


@pytest.mark.timeout_s(40)
async def test_a_reader_that_drops_mid_answer_resumes_it_whole(nginx):
    c = await nginx.stream("chat-r")
    p = start_publisher(nginx, "chat-r", delay=0.03)
    try:
        head = [await c.next_event(timeout=10) for _ in range(5)]
        c.close()  # the network drops; tokens keep coming meanwhile
        await asyncio.sleep(0.1)
        c2 = await nginx.stream("chat-r",
                                headers={"Last-Event-ID": head[-1].id})
        rest = await read_answer(c2)
    finally:
        rc, out, err = await wait_proc(p)
    assert rc == 0, err
    events = head + rest
    assert all(e.event != "sse-gap" for e in events)
    tokens = ai.tokens_for(PROMPT)
    assert [e.data for e in events if e.event == "token"] == tokens
    seqs = [seq_of(e.id) for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(tokens) + 2))


def test_publisher_reports_a_refused_stream():
    # Nothing listens there: a clear failure, exit status 1.
    from conftest import free_port
    port = free_port()
    p = subprocess.run(
        [sys.executable, str(SCRIPT), f"http://127.0.0.1:{port}/publish/x",
         "q", "--delay", "0"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 1
    assert "ai_publisher:" in p.stderr


async def test_publisher_reports_a_4xx(nginx):
    p = subprocess.run(
        [sys.executable, str(SCRIPT),
         f"http://127.0.0.1:{nginx.pub_port}/pub?channel=a,b", "q",
         "--delay", "0.01"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 1
    assert "HTTP 400" in p.stderr, p.stderr
    # /pub takes its value as one id: the comma is a bad byte.
    assert "invalid channel: channel id may only contain" in p.stderr
