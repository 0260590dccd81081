"""sse_publish_wait: a publish is answered once every other worker with
subscribers of its channel has read the event, so a publisher that waits
for its answers never runs ahead of a worker that is behind (nchan's
publishes wait for the channel's owner likewise). The workers are held
with SIGSTOP, so nothing here depends on how fast the machine is."""

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest

from clienthelp import tls_server, wait_subscribers

CURL = "/usr/bin/curl"


async def split(n, channel):
    """A subscriber on one worker, a publisher connection on the other:
    (subscriber, its worker, publisher)."""
    c = await n.stream(channel)
    await c.next_block()  # retry
    sub_worker = n.worker_of(n.sub_port, c.local_port)
    other = [p for p in n.workers() if p != sub_worker][0]
    return c, sub_worker, await n.publisher_on(other)


async def held(pub, channel, body, hold):
    """Publishes on the keep-alive connection `pub` and asserts that the
    answer is still held `hold` seconds later; returns the answer's future
    (the event is stored, but a worker the channel waits for has not read
    it)."""
    answer = asyncio.ensure_future(
        pub.request("POST", f"/publish/{channel}", body=body, timeout=60))
    await asyncio.sleep(hold)
    assert not answer.done()
    return answer


@pytest.mark.timeout_s(60)
async def test_answer_waits_until_the_other_worker_has_read(start_nginx):
    n = start_nginx(reuseport=True, pub="sse_publish_wait 30s;")
    c, sub_worker, pub = await split(n, "held")
    os.kill(sub_worker, signal.SIGSTOP)
    try:
        answer = await held(pub, "held", "one", 1.5)
    finally:
        os.kill(sub_worker, signal.SIGCONT)
    r = await asyncio.wait_for(answer, 10)
    assert r.status == 202, r
    assert r.json()["subscribers"] == 1
    got = await c.events(1)
    assert [(b.id, b.data) for b in got] == [(r.json()["id"], "one")]


@pytest.mark.timeout_s(60)
async def test_off_answers_at_once(start_nginx):
    # Off in the location beats a long wait inherited from http{}.
    n = start_nginx(reuseport=True, http="sse_publish_wait 30s;",
                    pub="sse_publish_wait off;")
    c, sub_worker, pub = await split(n, "free")
    os.kill(sub_worker, signal.SIGSTOP)
    try:
        r = await pub.request("POST", "/publish/free", body="one", timeout=5)
        assert r.status == 202, r
    finally:
        os.kill(sub_worker, signal.SIGCONT)
    got = await c.events(1)
    assert [(b.id, b.data) for b in got] == [(r.json()["id"], "one")]


@pytest.mark.timeout_s(60)
async def test_wait_is_bounded_and_loses_nothing(start_nginx):
    # A worker that does not read (stopped, stuck) holds each answer for
    # sse_publish_wait at most; the events stay stored for it.
    n = start_nginx(reuseport=True, pub="sse_publish_wait 200ms;")
    c, sub_worker, pub = await split(n, "late")
    ids = []
    os.kill(sub_worker, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        for i in range(3):
            r = await pub.request("POST", "/publish/late", body=f"{i}",
                                  timeout=10)
            assert r.status == 202, r
            ids.append(r.json()["id"])
        # Each answer waited out the bound (the worker never read them).
        assert time.monotonic() - t0 >= 0.5
    finally:
        os.kill(sub_worker, signal.SIGCONT)
    got = await c.events(3)
    assert [(b.id, b.data) for b in got] == list(zip(ids, ["0", "1", "2"]))


@pytest.mark.timeout_s(60)
async def test_same_worker_and_no_subscribers_answer_at_once(start_nginx):
    # Only other workers are waited for: with the subscriber's own worker
    # (or nobody) subscribed, a stopped worker holds nothing back.
    n = start_nginx(reuseport=True, pub="sse_publish_wait 30s;")
    c, sub_worker, _ = await split(n, "mine")
    pub = await n.publisher_on(sub_worker)
    other = [p for p in n.workers() if p != sub_worker][0]
    os.kill(other, signal.SIGSTOP)
    try:
        r = await pub.request("POST", "/publish/mine", body="m", timeout=5)
        assert r.status == 202, r
        r2 = await pub.request("POST", "/publish/nobody", body="x", timeout=5)
        assert r2.status == 202 and r2.json()["subscribers"] == 0, r2
    finally:
        os.kill(other, signal.SIGCONT)
    got = await c.events(1)
    assert [(b.id, b.data) for b in got] == [(r.json()["id"], "m")]


@pytest.mark.timeout_s(60)
async def test_reload_answers_what_it_holds(start_nginx):
    # A graceful exit (reload) answers the publishes it holds instead of
    # keeping the old worker for sse_publish_wait.
    n = start_nginx(reuseport=True, pub="sse_publish_wait 60s;")
    c, sub_worker, pub = await split(n, "reload")
    os.kill(sub_worker, signal.SIGSTOP)
    try:
        answer = await held(pub, "reload", "r", 0.5)
        os.kill(n.master, signal.SIGHUP)
        r = await asyncio.wait_for(answer, 10)
        assert r.status == 202, r
    finally:
        os.kill(sub_worker, signal.SIGCONT)
    # The stopped worker, once it runs, ends its stream for the reload
    # after delivering what was published before.
    got = await c.events(1)
    assert [(b.id, b.data) for b in got] == [(r.json()["id"], "r")]


@pytest.mark.timeout_s(90)
async def test_closed_loop_publisher_never_runs_ahead_of_a_stopped_worker(
        start_nginx):
    # Under load: 50 subscribers on each worker, a closed-loop publisher on
    # one worker and the other stopped. Answers wait out sse_publish_wait,
    # so in 1.5 s the publisher gets at most a few events in; off, it gets
    # hundreds in. Every subscriber then receives all of them, in order.
    n = start_nginx(reuseport=True, pub="sse_publish_wait 500ms;")
    subs = []
    while len(subs) < 100:
        subs.append(await n.stream("load"))
    for s in subs:
        await s.next_block()
    workers = {n.worker_of(n.sub_port, s.local_port) for s in subs}
    assert len(workers) == 2
    c, sub_worker, pub = await split(n, "load")
    subs.append(c)
    os.kill(sub_worker, signal.SIGSTOP)
    ids = []
    try:
        async def publish_loop():
            for i in range(200):  # within keepalive_requests
                r = await pub.request("POST", "/publish/load", body=f"{i}",
                                      timeout=10)
                assert r.status == 202, r
                ids.append(r.json()["id"])
        loop = asyncio.ensure_future(publish_loop())
        await asyncio.wait([loop], timeout=1.5)
        if not loop.done():
            loop.cancel()
        try:
            await loop
        except asyncio.CancelledError:
            pass
        assert 1 <= len(ids) <= 4, len(ids)
    finally:
        os.kill(sub_worker, signal.SIGCONT)
    for s in subs:
        got = await s.events(len(ids))
        assert [b.id for b in got] == ids


@pytest.mark.timeout_s(60)
async def test_publisher_gone_while_held_loses_nothing(start_nginx):
    # A publisher that closes its connection while its answer is held: the
    # event stays published, the worker answers into nothing (no alert, no
    # sanitizer report: the fixture checks the log), and the next publish
    # on a new connection is answered as usual.
    n = start_nginx(reuseport=True, pub="sse_publish_wait 30s;")
    c, sub_worker, pub = await split(n, "gone")
    os.kill(sub_worker, signal.SIGSTOP)
    try:
        answer = await held(pub, "gone", "lost-answer", 0.5)
        answer.cancel()
        pub.close()
        await asyncio.sleep(0.2)
    finally:
        os.kill(sub_worker, signal.SIGCONT)
    got = await c.events(1)
    assert got[0].data == "lost-answer"
    r = await n.publish("gone", "next", timeout=10)
    assert r.status == 202, r
    assert [b.data for b in await c.events(1)] == ["next"]


@pytest.mark.timeout_s(90)
async def test_a_large_fan_out_may_trail_by_one_event(start_nginx):
    # From 1,024 subscribers on, a worker may trail by one event per 1,024
    # (so that its writes keep coalescing under a burst), and by no more:
    # with the subscriber's worker stopped, the first publish is answered
    # at once and the second waits for that worker.
    n = start_nginx(reuseport=True, pub="sse_publish_wait 30s;")
    c, sub_worker, pub = await split(n, "big")
    more = [await n.stream("big") for _ in range(1023)]
    await wait_subscribers(n, "big", 1024, timeout=15)
    os.kill(sub_worker, signal.SIGSTOP)
    try:
        r1 = await pub.request("POST", "/publish/big", body="1", timeout=5)
        assert r1.status == 202, r1
        assert r1.json()["subscribers"] == 1024
        answer = await held(pub, "big", "2", 1.0)
    finally:
        os.kill(sub_worker, signal.SIGCONT)
    r2 = await asyncio.wait_for(answer, 10)
    assert r2.status == 202, r2
    want = [(r1.json()["id"], "1"), (r2.json()["id"], "2")]
    for s in [c] + more:
        assert [(b.id, b.data) for b in await s.events(2)] == want


@pytest.mark.timeout_s(60)
async def test_an_http2_publisher_is_held_and_answered(start_nginx,
                                                       tmp_path):
    # A publish over HTTP/2 (one stream of a multiplexed connection) is
    # held like one over HTTP/1.1 and answered on its stream. With the
    # subscriber's worker stopped, only the other worker accepts the
    # publisher's connection.
    tls, port, cert = tls_server(tmp_path, http2=True)
    n = start_nginx(
        server=tls,
        sub_locations="""
        location ~ ^/h2pub/(?<pc>.+)$ {
            sse_publish;
            sse_channel $pc;
            sse_publish_wait 30s;
        }""")
    c = await n.stream("h2held")
    await c.next_block()  # retry
    sub_worker = n.worker_of(n.sub_port, c.local_port)
    os.kill(sub_worker, signal.SIGSTOP)
    try:
        p = subprocess.Popen(
            [CURL, "--http2", "--cacert", str(cert), "-sS", "--max-time",
             "30", "-X", "POST", "--data-binary", "over h2",
             "-w", "\n%{http_version} %{response_code}",
             f"https://127.0.0.1:{port}/h2pub/h2held"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        await asyncio.sleep(1.5)
        # Stored, but the subscriber's worker has not read it: no answer.
        assert p.poll() is None
    finally:
        os.kill(sub_worker, signal.SIGCONT)
    out, err = await asyncio.to_thread(p.communicate, timeout=15)
    assert p.returncode == 0, err
    body, last = out.rsplit("\n", 1)
    assert last.split() == ["2", "202"], out
    eid = json.loads(body)["id"]
    got = await c.events(1)
    assert [(b.id, b.data) for b in got] == [(eid, "over h2")]
