"""Memory per subscriber (issue 11): what a stream costs the server must not
grow with the events it delivers, and an idle stream must stay small.

Bounds are generous (several times today's figures) and only catch bad
regressions: memory taken from the request's pool on every write (nginx
pools free nothing until the request ends, so a long-lived stream would
grow without bound), or a per-subscriber structure that balloons. RSS of
the workers from /proc; under the sanitizer build (SSE_PRELOAD) freed
memory sits in ASan's quarantine and each allocation has red zones, so the
bounds allow for those."""

import asyncio
import os

import pytest

from conftest import KeepAlive, SSEClient

ASAN = bool(os.environ.get("SSE_PRELOAD"))


def private_kb(n):
    """RssAnon of the workers: their own heap, not the zone's shared pages
    (which a worker touches as the ring moves through the zone)."""
    total = 0
    for pid in n.workers():
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1])
    return total


async def publish_many(port, channel, n, size=64):
    """Publishes one at a time over keep-alive connections of 500 requests
    each (nginx ends one after keepalive_requests, 1000 by default)."""
    ids = []
    body = b"m" * size
    for start in range(0, n, 500):
        keep = await KeepAlive.open(port)
        for _ in range(min(500, n - start)):
            r = await keep.request("POST", f"/publish/{channel}", body=body)
            assert r.status == 202, r
            ids.append(r.json()["id"])
        keep.close()
    return ids


async def read_ids(clients, n, timeout=60):
    got = await asyncio.gather(*(c.events(n, timeout=timeout)
                                 for c in clients))
    return [[b.id for b in blocks] for blocks in got]


@pytest.mark.timeout_s(240)
async def test_long_lived_streams_do_not_grow_with_events_delivered(
        start_nginx):
    n = start_nginx(sub="sse_heartbeat off;")
    subs = [await n.stream("long") for _ in range(4)]
    # Warm up: the allocator's arenas, the queue-entry free list, the
    # worker's tables, the filters' reusable buffers.
    ids = await publish_many(n.pub_port, "long", 1000)
    assert await read_ids(subs, 1000) == [ids] * 4
    for c in subs:
        c.blocks.clear()
        c.chunks.clear()
    before = private_kb(n)
    ids = await publish_many(n.pub_port, "long", 10000)
    # Every event, exactly once, in order, on every stream.
    assert await read_ids(subs, 10000, timeout=120) == [ids] * 4
    grown = private_kb(n) - before
    # 40,000 deliveries: a leak of 32 bytes per write is over 1 MB. Under
    # the sanitizer each worker's quarantine (16 MB, see the Makefile's
    # ASAN_OPTIONS_TEST) fills with freed memory first: there only a
    # gross leak shows; the plain build's run is the real check.
    bound = 1024 + (len(n.workers()) * 16 * 1024 + 8 * 1024 if ASAN else 0)
    assert grown < bound, f"workers grew by {grown} kB (bound {bound} kB)"


@pytest.mark.timeout_s(120)
@pytest.mark.parametrize("free", ["on", "off"])
async def test_idle_subscriber_memory_is_bounded(start_nginx, free):
    n = start_nginx(sub=f"sse_heartbeat off; sse_free_request {free};")
    count = 400
    # One first, so that the channel and the worker's tables exist.
    first = await n.stream("idle")
    await asyncio.sleep(0.2)
    before = private_kb(n)
    clients = [await SSEClient.open(n.sub_port, "/events/idle")
               for _ in range(count)]
    assert all(c.status == 200 for c in clients)
    eid = await n.publish_ok("idle", "ping")
    for c in [first] + clients:
        assert (await c.next_event()).id == eid
    per = (private_kb(n) - before) * 1024 / count
    print(f"sse_free_request {free}: {per:.0f} bytes per idle subscriber")
    if free == "on":
        # Request-free streams: the connection, its pool and the
        # subscriber record, about 2 kB (BENCHMARKS.md). Their requests'
        # 8 kB pools, freed, stay in ASan's quarantine: there only a gross
        # regression shows.
        bound = 5 * 1024 if not ASAN else 48 * 1024
        assert per <= bound, \
            f"{per:.0f} bytes per idle subscriber (bound {bound})"
    elif not ASAN:
        # The same bound fails where each stream keeps its request (about
        # 9.9 kB: the request's pool is 8 of them).
        assert 5 * 1024 < per < 16 * 1024, \
            f"{per:.0f} bytes per idle subscriber with its request"
    for c in clients:
        c.close()
