"""Fan-out: every subscriber, in every worker, gets each event once, in
order; pending events go out in one write."""

import asyncio
import os
import signal
import socket
import struct
import time

import pytest

from conftest import KeepAlive, SSEParser, server_side_inode
from sselib.proc import peer_socket_option


async def wait_conns(nginx, total, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        conns = nginx.subscriber_conns()
        if sum(conns.values()) >= total or time.monotonic() > deadline:
            return conns
        await asyncio.sleep(0.02)


async def collect(c, n, timeout):
    got = await c.events(n, timeout=timeout)
    return [(b.id, b.data) for b in got]


@pytest.mark.timeout_s(60)
async def test_fanout_across_workers(start_nginx):
    n = start_nginx(reuseport=True)
    subs = [await n.stream("fan") for _ in range(24)]
    subs.append(await n.stream("/multi?channels=x,fan,y"))
    conns = await wait_conns(n, len(subs))
    assert len(conns) == 2 and sum(conns.values()) == len(subs), conns
    # reuseport spreads connections by hash: both workers hold some.
    assert all(v > 0 for v in conns.values()), conns

    # Each publish on a new connection: publishes come from both workers.
    sent = []
    for i in range(20):
        eid = await n.publish_ok("fan", f"event {i}")
        sent.append((eid, f"event {i}"))
    end = await n.publish_ok("fan", "end")
    got = await asyncio.gather(*(collect(c, 21, 20) for c in subs))
    for g in got:
        assert g == sent + [(end, "end")]


@pytest.mark.timeout_s(120)
async def test_200_subscribers_100_events_each_once_in_order(start_nginx):
    n = start_nginx(reuseport=True)
    subs = await asyncio.gather(*(n.stream("crowd") for _ in range(200)))
    conns = await wait_conns(n, 200)
    assert sum(conns.values()) == 200 and min(conns.values()) > 0, conns
    r = await n.info("crowd")
    assert r.json()["subscribers"] == 200

    readers = [asyncio.ensure_future(collect(c, 101, 60)) for c in subs]
    sent = []
    for i in range(100):
        r = await n.publish("crowd", f"{i}")
        assert r.status == 202 and r.json()["subscribers"] == 200, r
        sent.append((r.json()["id"], f"{i}"))
    end = await n.publish_ok("crowd", "end")
    got = await asyncio.gather(*readers)
    for g in got:
        assert g == sent + [(end, "end")]


async def test_catch_up_goes_out_in_one_write(nginx):
    first = await nginx.publish_ok("batch", "start")
    ids = [await nginx.publish_ok("batch", f"{i}") for i in range(20)]
    c = await nginx.stream("batch", headers={"Last-Event-ID": first})
    got = await c.events(20)
    assert [b.id for b in got] == ids
    # The retry line and all 20 events: one write, so one HTTP chunk.
    one = SSEParser().feed(c.chunks[0])
    assert [b.id for b in one if b.is_event] == ids
    assert len(c.chunks) == 1


def data_segments_out(pid, server_port, client_port):
    """tcpi_data_segs_out of the worker's side of a subscriber connection:
    with TCP_NODELAY, each write of a few bytes is one segment."""
    inode = server_side_inode(server_port, client_port)
    try:
        info = peer_socket_option(pid, inode, socket.IPPROTO_TCP,
                                  socket.TCP_INFO, 232)
    except PermissionError as e:  # no right to ptrace the worker
        pytest.skip(f"cannot read the worker's socket: {e}")
    return struct.unpack_from("I", info, 156)[0]


@pytest.mark.timeout_s(60)
async def test_live_burst_goes_out_in_one_write(start_nginx):
    # The subscriber's worker is stopped while another worker publishes 20
    # events; once it runs again all 20 are pending for the subscriber and
    # must leave in one write: one TCP segment (HTTP/1.1 streams carry each
    # event as its own ready-made chunk, so chunks do not count writes).
    n = start_nginx(reuseport=True)
    c = await n.stream("burst")
    await c.next_block()  # retry
    sub_worker = n.worker_of(n.sub_port, c.local_port)
    other = [p for p in n.workers() if p != sub_worker][0]
    pub = await n.publisher_on(other)
    segs_before = data_segments_out(sub_worker, n.sub_port, c.local_port)
    ids = []
    os.kill(sub_worker, signal.SIGSTOP)
    try:
        for i in range(20):
            r = await pub.request("POST", "/publish/burst", body=f"{i}",
                                  timeout=5)
            assert r.status == 202, r
            ids.append(r.json()["id"])
    finally:
        os.kill(sub_worker, signal.SIGCONT)
    got = await c.events(20)
    assert [b.id for b in got] == ids
    assert [b.data for b in got] == [f"{i}" for i in range(20)]
    assert data_segments_out(sub_worker, n.sub_port,
                             c.local_port) == segs_before + 1


async def test_publisher_keepalive_connection(nginx):
    c = await nginx.stream("ka")
    pub = await KeepAlive.open(nginx.pub_port)
    ids = []
    for i in range(50):
        r = await pub.request("POST", "/publish/ka", body=f"{i}")
        assert r.status == 202
        ids.append(r.json()["id"])
    got = await c.events(50)
    assert [b.id for b in got] == ids
