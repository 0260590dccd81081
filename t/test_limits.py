"""Limits: max subscribers, stream timeout, slow subscribers, memory."""

import asyncio
import json
import socket
import time

import pytest

from clienthelp import stalled_subscriber
from conftest import STREAM_TYPE, overload_end


async def wait_subscribers(nginx, channel, want, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        r = await nginx.info(channel)
        got = r.json()["subscribers"] if r.status == 200 else None
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_max_subscribers_answers_retry_and_end(start_nginx):
    n = start_nginx(sub="sse_max_subscribers 2;")
    a = await n.stream("full")
    b = await n.stream("full")
    extra = await n.subscribe("full")
    assert extra.status == 200
    assert extra.header("content-type") == STREAM_TYPE
    rest = await extra.until_end()
    assert [blk.fields for blk in rest] == overload_end("max_subscribers")
    assert extra.ended.clean
    assert (await n.info("full")).json()["subscribers"] == 2
    # The two admitted ones are unaffected.
    eid = await n.publish_ok("full", "x")
    assert (await a.next_event()).id == eid
    assert (await b.next_event()).id == eid
    # A place freed is a place taken.
    a.close()
    assert await wait_subscribers(n, "full", 1) == 1
    again = await n.stream("full")
    eid = await n.publish_ok("full", "y")
    assert (await again.next_event()).id == eid


async def test_max_subscribers_uses_retry_from_config(start_nginx):
    n = start_nginx(retry=7000, sub="sse_max_subscribers 1;")
    await n.stream("one")
    extra = await n.subscribe("one")
    assert [blk.fields for blk in await extra.until_end()] == overload_end(
        "max_subscribers", "7000")
    assert extra.ended.clean


async def test_max_subscribers_counts_across_workers(start_nginx):
    n = start_nginx(reuseport=True, sub="sse_max_subscribers 24;")
    cs = [await n.stream("cap") for _ in range(24)]
    conns = n.subscriber_conns()
    assert min(conns.values()) > 0, conns
    refused = 0
    for _ in range(6):
        c = await n.subscribe("cap")
        if [b.fields for b in await c.until_end()] == overload_end(
                "max_subscribers"):
            refused += 1
    assert refused == 6
    assert (await n.info("cap")).json()["subscribers"] == len(cs)


@pytest.mark.timeout_s(20)
async def test_stream_timeout_ends_with_retry(start_nginx):
    n = start_nginx(sub="sse_stream_timeout 1s;")
    t0 = time.monotonic()
    c = await n.stream("short")
    eid = await n.publish_ok("short", "x")
    rest = await c.until_end(timeout=5)
    elapsed = time.monotonic() - t0
    assert [(b.id, b.data, b.retry) for b in rest] == [
        (None, None, "3000"), (eid, "x", None),
        (None, '{"reason":"stream_timeout"}', None), (None, None, "3000")]
    assert c.ended.clean
    assert 0.9 <= elapsed <= 3, elapsed
    # The client resumes where it was.
    eid2 = await n.publish_ok("short", "y")
    c = await n.stream("short", headers={"Last-Event-ID": eid})
    assert (await c.next_event()).id == eid2


@pytest.mark.timeout_s(20)
async def test_stream_timeout_off_keeps_streaming(start_nginx):
    n = start_nginx(sub="sse_stream_timeout off; sse_heartbeat 500ms;")
    c = await n.stream("long")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2:
        await c.next_block(timeout=2)
    assert c.ended is None



def drain_until_closed(s, timeout):
    """Reads what the socket holds; True if the server closed it."""
    s.settimeout(0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not s.recv(1 << 20):
                return True
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True
    return False


@pytest.mark.timeout_s(120)
async def test_slow_subscriber_is_dropped_and_memory_stays_bounded(
        start_nginx):
    n = start_nginx(sub="sse_max_pending 64k;")
    rss_before = n.worker_rss_kb()
    normal = await n.stream("flood")
    slow = stalled_subscriber(n.sub_port, "/events/flood", rcvbuf=4096)
    try:
        assert await wait_subscribers(n, "flood", 2) == 2
        body = b"z" * (63 * 1024)
        ids = []
        rss_peak = 0
        for i in range(160):  # about 10 MB
            ids.append(await n.publish_ok("flood", body))
            got = await normal.next_event(timeout=10)
            assert got.id == ids[-1]
            assert len(got.data) == len(body)
            if i % 20 == 0:
                rss_peak = max(rss_peak, n.worker_rss_kb())
        rss_peak = max(rss_peak, n.worker_rss_kb())
        # The slow one was let go; the normal one is still there.
        assert await wait_subscribers(n, "flood", 1) == 1
        assert drain_until_closed(slow, 10)
        assert (rss_peak - rss_before) < 64 * 1024, (rss_before, rss_peak)
        # And the normal subscriber keeps streaming.
        eid = await n.publish_ok("flood", "after")
        assert (await normal.next_event()).id == eid
    finally:
        slow.close()
    assert "over sse_max_pending, closing it" in n.log_text()


@pytest.mark.timeout_s(120)
async def test_many_never_reading_subscribers_keep_memory_bounded(
        start_nginx):
    n = start_nginx(sub="sse_max_pending 128k;")
    rss_before = n.worker_rss_kb()
    slow = [stalled_subscriber(n.sub_port, "/events/hog", rcvbuf=4096) for _ in range(50)]
    try:
        assert await wait_subscribers(n, "hog", 50) == 50
        body = b"q" * (32 * 1024)
        for _ in range(200):  # 6.4 MB to each of 50 = 320 MB owed
            await n.publish_ok("hog", body)
        assert await wait_subscribers(n, "hog", 0, timeout=10) == 0
        grown = n.worker_rss_kb() - rss_before
        assert grown < 64 * 1024, grown
    finally:
        for s in slow:
            s.close()


async def test_max_pending_does_not_drop_a_reader_that_keeps_up(
        start_nginx):
    n = start_nginx(sub="sse_max_pending 64k;")
    c = await n.stream("ok")
    ids = [await n.publish_ok("ok", b"k" * 1000) for _ in range(500)]
    got = await c.events(500, timeout=20)
    assert [b.id for b in got] == ids
    assert c.ended is None


ZONE_SMALL = dict(zone="sse_zone zone=sse:256k;",
                  pub="sse_buffer_length 1000; sse_max_message_size 1m;",
                  http="client_max_body_size 2m;")


@pytest.mark.timeout_s(60)
async def test_full_zone_evicts_the_oldest_first(start_nginx):
    n = start_nginx(**ZONE_SMALL)
    ids = []
    for i in range(100):  # 1 MB through a 256 kB zone: all accepted
        ids.append(await n.publish_ok(f"z{1 + i % 2}", b"x" * 10000))
    z1, z2 = (await n.info("z1")).json(), (await n.info("z2")).json()
    assert z1["published"] == z2["published"] == 50
    kept = z1["messages"] + z2["messages"]
    assert 0 < kept < 25
    # What is kept is the newest.
    assert {z1["last_id"], z2["last_id"]} == set(ids[-2:])
    oldest_kept = min(int(z["first_id"].split("-")[1]) for z in (z1, z2))
    assert oldest_kept == int(ids[-kept].split("-")[1])
    # A resume from before the evicted ones says so.
    r = await n.stream("z1", headers={"Last-Event-ID": ids[0]})
    await r.next_block()
    gap = await r.next_block()
    assert json.loads(gap.data) == {"requested": ids[0], "reason": "evicted"}


async def test_message_bigger_than_the_zone_is_507(start_nginx):
    n = start_nginx(**ZONE_SMALL)
    ids = [await n.publish_ok("keep", b"k" * 1000) for _ in range(5)]
    r = await n.publish("keep", b"y" * 300000)
    assert r.status == 507
    assert r.body == b"message does not fit in the sse zone\n"
    # Refused anyway: nothing buffered was evicted for it.
    j = (await n.info("keep")).json()
    assert (j["messages"], j["published"]) == (5, 5)
    assert (j["first_id"], j["last_id"]) == (ids[0], ids[-1])
