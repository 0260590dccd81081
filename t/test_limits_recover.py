"""Streams the module ends itself (max subscribers, stream timeout, worker
shutdown, reload) end the way EventSource recovers from: a `retry:` line
and a clean end of the chunked body (its 0-chunk), never a 5xx. A full
zone evicts the oldest events; only an event that cannot fit gets 507.

The body is judged here on the raw wire, chunk framing included."""

import asyncio
import os
import signal
import time

import pytest

from clienthelp import RawResponse, StreamPublisher, status_json
from conftest import STREAM_TYPE, KeepAlive, proc_alive, seq_of

STATUS = "location = /status { sse_status; }"


async def raw_stream(n, path, headers=None):
    if not path.startswith("/"):
        path = f"/events/{path}"
    r = await RawResponse.get(n.sub_port, path, headers=headers)
    assert r.status == 200, (r.status, r.headers)
    assert r.header("content-type") == STREAM_TYPE
    assert r.header("transfer-encoding") == "chunked"
    return r


async def ends_cleanly_with_retry(r, retry="3000", timeout=5):
    """The body ends with `retry:` then the 0-chunk; returns the payload
    chunks before it."""
    assert await r.read_to_last_chunk(timeout), r.wire[-200:]
    chunks, complete = r.dechunk()
    assert complete, r.wire[-200:]
    assert chunks and chunks[-1].endswith(f"retry: {retry}\n\n".encode()), \
        chunks[-3:]
    return chunks


async def connection_still_serves(r):
    """A clean end leaves an HTTP/1.1 connection reusable."""
    r.writer.write(b"OPTIONS /events/x HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(r.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 204 "), head


async def test_max_subscribers_reached(start_nginx):
    n = start_nginx(sub="sse_max_subscribers 2;")
    keep = [await n.stream("cap"), await n.stream("cap")]
    r = await raw_stream(n, "cap")
    chunks = await ends_cleanly_with_retry(r)
    assert b"".join(chunks) == (b'event: sse-error\ndata: {"reason":"max_subscribers"}\n\n'
                                b"retry: 3000\n\n")
    await connection_still_serves(r)
    r.close()
    # The admitted ones go on.
    eid = await n.publish_ok("cap", "x")
    for c in keep:
        assert (await c.next_event()).id == eid


async def test_max_subscribers_on_a_multiplexed_stream(start_nginx):
    n = start_nginx(sub="sse_max_subscribers 1;")
    await n.stream("m2")
    r = await raw_stream(n, "/multi?channels=m1,m2")
    chunks = await ends_cleanly_with_retry(r)
    assert b"".join(chunks) == (b'event: sse-error\ndata: {"reason":"max_subscribers"}\n\n'
                                b"retry: 3000\n\n")
    r.close()
    # Joining m1 was undone: a subscriber still fits there.
    assert (await n.info("m1")).json()["subscribers"] == 0


async def connection_closes(r):
    """A request-free stream (sse_free_request on) closes its connection
    after the clean end."""
    rest = await asyncio.wait_for(r.reader.read(), 5)
    assert rest == b"", rest


@pytest.mark.timeout_s(30)
@pytest.mark.parametrize("free", ["on", "off"])
async def test_stream_timeout_expired(start_nginx, free):
    n = start_nginx(retry=1500,
                    sub=f"sse_stream_timeout 1s; sse_free_request {free};")
    t0 = time.monotonic()
    r = await raw_stream(n, "tmo")
    eid = await n.publish_ok("tmo", "before the end")
    chunks = await ends_cleanly_with_retry(r, "1500", timeout=6)
    assert 0.9 <= time.monotonic() - t0 <= 4
    body = b"".join(chunks)
    assert body == (b"retry: 1500\n\n" +
                    f"id: {eid}\ndata: before the end\n\n".encode() +
                    b'event: sse-error\ndata: {"reason":"stream_timeout"}\n\n' +
                    b"retry: 1500\n\n")
    if free == "on":
        await connection_closes(r)
    else:
        await connection_still_serves(r)
    r.close()
    # Coming back as EventSource would: nothing missed.
    eid2 = await n.publish_ok("tmo", "while away")
    c = await n.stream("tmo", headers={"Last-Event-ID": eid})
    assert (await c.next_event()).id == eid2


@pytest.mark.timeout_s(30)
async def test_graceful_shutdown_sigquit(start_nginx):
    n = start_nginx(reuseport=True)
    streams = [await raw_stream(n, "bye") for _ in range(4)]
    eid = await n.publish_ok("bye", "last words")
    workers = n.workers()
    os.kill(n.master, signal.SIGQUIT)
    for r in streams:
        chunks = await ends_cleanly_with_retry(r)
        assert f"id: {eid}\n".encode() in b"".join(chunks)
        r.close()
    deadline = time.monotonic() + 5
    while any(proc_alive(p) for p in workers + [n.master]):
        assert time.monotonic() < deadline, "nginx did not exit"
        await asyncio.sleep(0.02)


@pytest.mark.timeout_s(30)
async def test_reload_ends_streams_cleanly_and_new_ones_work(start_nginx):
    n = start_nginx(retry=500)
    streams = [await raw_stream(n, "rl") for _ in range(3)]
    eid = await n.publish_ok("rl", "x")
    old = n.reload()
    for r in streams:
        chunks = await ends_cleanly_with_retry(r, "500")
        assert f"id: {eid}\n".encode() in b"".join(chunks)
        r.close()
    deadline = time.monotonic() + 5
    while any(proc_alive(p) for p in old):
        assert time.monotonic() < deadline, "old workers stayed"
        await asyncio.sleep(0.02)
    eid2 = await n.publish_ok("rl", "y")
    c = await n.stream("rl", headers={"Last-Event-ID": eid})
    assert (await c.next_event()).id == eid2


@pytest.mark.timeout_s(60)
async def test_zone_full_evicts_the_oldest_first(start_nginx):
    n = start_nginx(zone="sse_zone zone=sse:128k;",
                    pub="sse_buffer_length 1000; sse_max_message_size 1m;",
                    pub_locations=STATUS)
    old = [await n.publish_ok("old", f"old {i}") for i in range(5)]
    body = "n" * 2000
    new = []
    for _ in range(150):  # ~300 kB through a 128 kB zone
        r = await n.publish("new", body)
        assert r.status == 202, r  # never a 507 for an event that fits
        new.append(r.json()["id"])
    info_new = (await n.info("new")).json()
    info_old = (await n.info("old")).json()
    # The oldest events, zone-wide, went first: all of `old`, then the
    # head of `new`; what is left is a contiguous tail.
    assert info_old["messages"] == 0, info_old
    assert (info_old["published"], info_old["last_id"]) == (5, old[-1])
    assert info_new["last_id"] == new[-1]
    assert seq_of(info_new["first_id"]) > seq_of(new[0])
    kept = seq_of(new[-1]) - seq_of(info_new["first_id"]) + 1
    assert info_new["messages"] == kept
    assert 10 < kept < 150
    s = await status_json(n)
    assert s["evicted"] == 5 + 150 - kept > 0
    assert s["messages"] == kept
    assert s["published"] == 155
    # A resume from an evicted id says so.
    c = await n.stream("new", headers={"Last-Event-ID": new[0]})
    gap = await c.next_event()
    assert gap.event == "sse-gap" and '"evicted"' in gap.data
    first = await c.next_event()
    # The subscriber's own record may have evicted one more event of the
    # full zone: it starts at the oldest left when it joined.
    now_first = (await n.info("new")).json()["first_id"]
    assert seq_of(info_new["first_id"]) <= seq_of(first.id)
    assert first.id == now_first


@pytest.mark.timeout_s(60)
async def test_event_that_cannot_fit_is_507_and_evicts_nothing(start_nginx):
    # (client_body_buffer_size: the 200 kB streamed event arrives whole.)
    n = start_nginx(zone="sse_zone zone=sse:128k;",
                    pub="sse_buffer_length 1000; sse_max_message_size 1m; "
                        "client_body_buffer_size 1m;",
                    pub_locations=STATUS)
    c = await n.stream("fit")
    ids = [await n.publish_ok("fit", f"small {i}") for i in range(5)]
    before = (await n.info("fit")).json()
    r = await n.publish("fit", b"B" * (200 * 1024))
    assert r.status == 507, r
    assert "does not fit" in r.text
    assert (await n.info("fit")).json() == before
    assert (await status_json(n))["evicted"] == 0
    # The same through a streaming publish: what came before it stays.
    pub = await StreamPublisher.open(n.pub_port, "/publish/fit")
    await pub.send("data: streamed ok\n\n")
    await pub.send("data: " + "B" * (200 * 1024) + "\n\n")
    r = await pub.response()
    assert r.status == 507, r
    assert "1 published before it" in r.text, r.text
    # And the zone keeps working.
    last = await n.publish_ok("fit", "after")
    got = [b.data for b in await c.events(7)]
    assert got == [f"small {i}" for i in range(5)] + ["streamed ok", "after"]
    assert (await n.info("fit")).json()["last_id"] == last
    assert ids[0] == (await n.info("fit")).json()["first_id"]


@pytest.mark.timeout_s(30)
async def test_delete_ends_streams_only_after_what_was_published_before(
        start_nginx):
    # An event accepted (202, counting this subscriber) before the DELETE
    # reaches the subscriber before its stream ends. The subscriber's
    # worker is held (SIGSTOP) across the publish and the DELETE, as a
    # busy worker would be: it wakes to both at once.
    n = start_nginx()
    r = await raw_stream(n, "del")
    assert await r.read_until(lambda w: b"retry: 3000" in w)
    worker = n.worker_of(n.sub_port, r.writer.get_extra_info("sockname")[1])
    # A publisher connection served by the other worker.
    for _ in range(50):
        ka = await KeepAlive.open(n.pub_port)
        if n.worker_of(n.pub_port, ka.local_port) != worker:
            break
        ka.close()
    else:
        pytest.skip("every publisher connection went to the same worker")
    os.kill(worker, signal.SIGSTOP)
    try:
        pub = await ka.request("POST", "/publish/del",
                               body=b"accepted before the delete")
        assert pub.status == 202 and pub.json()["subscribers"] == 1
        d = await ka.request("DELETE", "/publish/del")
        assert d.status == 200
    finally:
        os.kill(worker, signal.SIGCONT)
        ka.close()
    chunks = await ends_cleanly_with_retry(r)
    assert f"id: {pub.json()['id']}\n".encode() in b"".join(chunks), chunks
