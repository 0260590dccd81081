"""Group commit through Redis: the publishes one worker has ready in one
turn of its event loop go to Redis as one script call, each event with its
own seq and effects; a call that fails fails all its publishes, and nothing
of it ever shows."""

import asyncio
import os
import re
import signal
import time

import pytest

from clienthelp import StreamPublisher
from conftest import seq_of
from redishelp import needs_redis, redis_conf, start_redis  # noqa: F401
from redishelp import wait_in_sync
from sselib.client import KeepAlive
from test_redis import no_event, read_events

pytestmark = needs_redis

STATUS = "        location = /sse-status { sse_status; }\n"
REDIS_ERRORS = [r"\[error\].*sse: redis", r"\[error\].*connect\(\) failed",
                r"\[error\].*recv\(\) failed"]


async def machines(start_nginx, redis, n, extra=""):
    out = [start_nginx(zone=redis_conf(redis.url, extra=extra),
                       sub_locations=STATUS, allow_log=REDIS_ERRORS)
           for _ in range(n)]
    for m in out:
        await wait_in_sync(m)
    return out


def script_calls(r):
    """How many times Redis ran the publish script (EVALSHA) so far."""
    m = re.search(r"cmdstat_evalsha:calls=(\d+)", r.cli("INFO",
                                                         "commandstats"))
    return int(m.group(1)) if m else 0


def assert_one_order(got, ids):
    """Every subscriber got every event once, in one order: Redis's."""
    first = got[0]
    seqs = [seq_of(i) for i, _ in first]
    assert seqs == sorted(set(seqs)), "not in seq order, or doubled"
    assert sorted(i for i, _ in first) == sorted(ids)
    for g in got[1:]:
        assert g == first


@pytest.mark.timeout_s(120)
async def test_streaming_publish_of_200_events_takes_few_script_calls(
        start_nginx, start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    subs = [await b.stream("st"), await b.stream("st"), await a.stream("st")]
    await a.publish_ok("warm", "x")  # the script is loaded, the clock known
    before = script_calls(r)
    body = "".join(f"event: e\ndata: {i}\n\n" for i in range(200))
    # One write: the body comes with a Content-Length, all at once.
    resp = await a.publish("st", body.encode(),
                           headers={"Content-Type": "text/event-stream"})
    assert resp.status == 202, resp
    j = resp.json()
    assert j["published"] == 200, j
    calls = script_calls(r) - before
    # Groups of up to 64, as the body's reads allow: far fewer than 200.
    assert calls <= 20, f"{calls} script calls for 200 events"
    got = await asyncio.gather(*(read_events(c, 200, 30) for c in subs))
    for g in got:
        assert [d for _, d in g] == [str(i) for i in range(200)]
        seqs = [seq_of(i) for i, _ in g]
        assert seqs == list(range(seqs[0], seqs[0] + 200)), "not consecutive"
        assert g[-1][0] == j["id"]
    assert got[0] == got[1] == got[2]
    await asyncio.gather(*(no_event(c, 0.3) for c in subs))


@pytest.mark.timeout_s(240)
async def test_concurrent_posts_on_two_machines_share_script_calls(
        start_nginx, start_redis):
    r = start_redis()
    ms = await machines(start_nginx, r, 2)
    subs = []
    for m in ms:
        subs += [await m.stream("many"), await m.stream("many"),
                 await m.stream("/multi?channels=other,many")]
    await ms[0].publish_ok("warm", "x")
    await ms[1].publish_ok("warm", "x")
    before = script_calls(r)
    conns, per = 32, 100
    total = conns * per
    readers = [asyncio.ensure_future(read_events(c, total, 200)) for c in subs]

    async def publisher(k):
        # Half the connections to each machine, each POSTing in turn.
        c = await KeepAlive.open(ms[k % 2].pub_port)
        ids = []
        try:
            for i in range(per):
                resp = await c.request("POST", "/publish/many",
                                       body=f"{k}-{i}".encode(), timeout=30)
                assert resp.status == 202, resp
                ids.append((resp.json()["id"], f"{k}-{i}"))
        finally:
            c.close()
        return ids

    sent = []
    for ids in await asyncio.gather(*(publisher(k) for k in range(conns))):
        sent += ids
    assert len({i for i, _ in sent}) == total, "an id given twice"
    calls = script_calls(r) - before
    assert calls < total, f"{calls} script calls for {total} publishes"
    got = await asyncio.gather(*readers)
    assert_one_order(got, [i for i, _ in sent])
    assert sorted(got[0]) == sorted(sent)
    await asyncio.gather(*(no_event(c, 0.3) for c in subs))


@pytest.mark.timeout_s(120)
async def test_failed_call_fails_every_publish_and_never_shows(
        start_nginx, start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2, extra=" redis_timeout=1000ms")
    sub_b, sub_a = await b.stream("f"), await a.stream("f")
    pub = await StreamPublisher.open(a.pub_port, "/publish/f")
    await pub.send("".join(f"data: s{i}\n\n" for i in range(10)))
    first = await read_events(sub_b, 10, 10)
    assert [d for _, d in first] == [f"s{i}" for i in range(10)]
    await read_events(sub_a, 10, 10)

    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        posts = [asyncio.ensure_future(a.publish("f", f"lost{i}"))
                 for i in range(8)]
        # The stream's next events, in one write, then its end.
        await pub.send("".join(f"data: late{i}\n\n" for i in range(5)))
        streamed = asyncio.ensure_future(pub.finish(timeout=15))
        answers = await asyncio.gather(*posts)
        stream_answer = await streamed
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)

    for resp in answers:
        assert resp.status == 503, resp
        assert resp.header("Retry-After") == "1", resp
        assert "redis could not store the event: timed out" in resp.text, \
            resp
    assert stream_answer.status == 503, stream_answer
    assert "redis could not store the event" in stream_answer.text
    assert "10 published before it" in stream_answer.text, stream_answer

    # Redis runs what sat in its socket when it wakes: the calls refuse,
    # being past their cut-off. Later publishes work, on both machines.
    for m in (a, b):
        await wait_in_sync(m, timeout=20)
    deadline = time.monotonic() + 10
    for m, data in ((a, "after-a"), (b, "after-b")):
        while (resp := await m.publish("f", data)).status != 202:
            assert time.monotonic() < deadline, resp
            await asyncio.sleep(0.05)
    for c in (sub_a, sub_b):
        got = await read_events(c, 2, 15)
        assert sorted(d for _, d in got) == ["after-a", "after-b"], got
        await no_event(c, 0.5)
    for key in ("{sse:sse}:ch:f", "{sse:sse}:log"):
        out = r.cli("XRANGE", key, "-", "+")
        assert "lost" not in out and "late" not in out, out
    assert r.cli("XLEN", "{sse:sse}:ch:f").strip() == "12"
    # A new subscriber reads the channel's history from the start.
    c = await b.stream("f", headers={"Last-Event-ID": first[0][0]})
    got = await read_events(c, 11, 10)
    assert [d for _, d in got][:9] == [f"s{i}" for i in range(1, 10)]
    assert sorted(d for _, d in got[9:]) == ["after-a", "after-b"]
    await no_event(c, 0.3)


@pytest.mark.timeout_s(90)
async def test_timed_out_delete_never_runs_later(start_nginx, start_redis):
    """A DELETE that got its 503 (Redis stalled past redis_timeout) is not
    run when Redis wakes with it in its socket: the channel, its history
    and its subscribers stay, as the 503 said."""
    r = start_redis()
    a, b = await machines(start_nginx, r, 2, extra=" redis_timeout=1000ms")
    sub_b = await b.stream("f")
    first = await a.publish_ok("f", "kept")
    assert [d for _, d in await read_events(sub_b, 1, 10)] == ["kept"]
    # Both workers of A connected to Redis, each knowing Redis's clock (a
    # worker's first call waits for it, so a cold worker would not even
    # send its DELETE to a stopped Redis).
    for i in range(12):
        await a.publish_ok("warm", f"w{i}")
    await asyncio.sleep(0.5)

    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        answers = await asyncio.gather(
            *(a.pub_http("DELETE", "/publish/f") for _ in range(4)))
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    for resp in answers:
        assert resp.status == 503, resp
        assert resp.header("Retry-After") == "1", resp
        assert "timed out" in resp.text, resp

    for m in (a, b):
        await wait_in_sync(m, timeout=20)
    deadline = time.monotonic() + 10
    while (resp := await a.publish("f", "after")).status != 202:
        assert time.monotonic() < deadline, resp
        await asyncio.sleep(0.05)
    # The subscriber was not ended (no sse-error deleted): the next event
    # is the one published after.
    assert [d for _, d in await read_events(sub_b, 1, 10)] == ["after"]
    await no_event(sub_b, 0.5)
    out = r.cli("XRANGE", "{sse:sse}:ch:f", "-", "+")
    assert "kept" in out and "after" in out, out
    # Its history on a new subscriber of the other machine, from the start.
    c = await b.stream("f", headers={"Last-Event-ID": first})
    assert [d for _, d in await read_events(c, 1, 10)] == ["after"]
