"""Reload: the zone survives, old workers end their streams with `retry:`
promptly, and clients resume on the new workers with nothing lost."""

import asyncio
import os
import signal
import time

import pytest

from conftest import epoch_of, overload_end, proc_alive


async def wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while any(proc_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.mark.timeout_s(60)
async def test_reload_ends_streams_and_resume_loses_nothing(start_nginx):
    n = start_nginx(reuseport=False)
    subs = [await n.stream("rl") for _ in range(6)]
    subs.append(await n.stream("/multi?channels=rl,rl2"))
    before = [await n.publish_ok("rl", f"before {i}") for i in range(5)]
    for c in subs:
        assert [b.id for b in await c.events(5)] == before
    info_before = (await n.info("rl")).json()

    t0 = time.monotonic()
    old = n.reload()
    for c in subs:
        rest = await c.until_end(timeout=5)
        assert [b.fields for b in rest] == overload_end("shutdown"), rest
        assert c.ended.clean
    assert time.monotonic() - t0 < 5
    # The old workers are gone soon after their streams ended.
    assert await wait_gone(old, 5), [p for p in old if proc_alive(p)]

    # Published while the clients are away.
    during = [await n.publish_ok("rl", f"during {i}") for i in range(3)]
    assert epoch_of(during[0]) == epoch_of(before[0])
    info = (await n.info("rl")).json()
    assert info["published"] == info_before["published"] + 3
    assert info["first_id"] == info_before["first_id"]

    again = []
    for c in subs:
        path = "/multi?channels=rl,rl2" if c is subs[-1] else "/events/rl"
        again.append(await n.stream(path,
                                    headers={"Last-Event-ID": c.last_id}))
    after = [await n.publish_ok("rl", f"after {i}") for i in range(3)]
    for c in again:
        got = await c.events(6)
        assert [b.id for b in got] == during + after
        assert all(b.event != "sse-gap" for b in c.blocks)


@pytest.mark.timeout_s(60)
async def test_reload_keeps_the_epoch_and_the_sequence(start_nginx):
    n = start_nginx()
    first = await n.publish_ok("ep", "1")
    n.reload()
    second = await n.publish_ok("ep", "2")
    assert epoch_of(first) == epoch_of(second)
    assert int(second.split("-")[1]) == int(first.split("-")[1]) + 1
    j = (await n.info("ep")).json()
    assert (j["messages"], j["published"]) == (2, 2)
    assert (j["first_id"], j["last_id"]) == (first, second)


@pytest.mark.timeout_s(60)
async def test_reload_with_changed_config_keeps_the_zone(start_nginx):
    n = start_nginx(sub="sse_heartbeat 15s;")
    ids = [await n.publish_ok("cfg", str(i)) for i in range(3)]
    text = n.conf.read_text().replace("sse_heartbeat 15s;",
                                      "sse_heartbeat 1s;")
    n.conf.write_text(text)
    assert await wait_gone(n.reload(), 5)
    c = await n.stream("cfg", headers={"Last-Event-ID": ids[0]})
    assert [b.id for b in await c.events(2)] == ids[1:]
    hb = await c.next_block(timeout=3)
    assert hb.is_heartbeat


@pytest.mark.timeout_s(60)
async def test_reload_while_publishing(start_nginx):
    n = start_nginx(pub="sse_buffer_length 10000;")
    c = await n.stream("busy")
    stop = asyncio.Event()
    published = []

    async def publisher():
        i = 0
        while not stop.is_set():
            r = await n.publish("busy", str(i))
            assert r.status == 202, r
            published.append(r.json()["id"])
            i += 1
            await asyncio.sleep(0.002)

    task = asyncio.ensure_future(publisher())
    seen = []
    try:
        await asyncio.sleep(0.2)
        old = n.reload()
        # Read up to the end of the old stream, then resume.
        for b in await c.until_end(timeout=5):
            if b.is_event and b.event != "sse-error":
                seen.append(b.id)
        assert c.ended.clean
        assert await wait_gone(old, 5)
        c = await n.stream("busy", headers={"Last-Event-ID": seen[-1]})
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await task
    while not seen or seen[-1] != published[-1]:
        b = await c.next_event(timeout=5)
        assert b.event != "sse-gap", b
        seen.append(b.id)
    assert seen == published


@pytest.mark.timeout_s(60)
async def test_graceful_stop_ends_streams_with_retry(start_nginx):
    n = start_nginx()
    subs = [await n.stream("bye") for _ in range(4)]
    for c in subs:
        assert (await c.next_block()).retry == "3000"
    t0 = time.monotonic()
    os.kill(n.master, signal.SIGQUIT)
    for c in subs:
        rest = await c.until_end(timeout=5)
        assert [b.fields for b in rest] == overload_end("shutdown")
        assert c.ended.clean
    assert time.monotonic() - t0 < 5
    assert await wait_gone([n.master], 5)
