"""The delivery guarantees of issue 8, tested against the contract
(DESIGN.md): live delivery whatever sse_buffer_length is (item 2), more
than 32 workers (3), bounded memory for clients that stop reading (4),
overload ends that say why (6), rings that grow with their content (7),
wake-ups that reach the workers of a newer generation (9).

Every wait is bounded; nothing here keeps running after its test."""

import asyncio
import json
import os
import signal
import statistics
import time

import pytest

from clienthelp import (StreamPublisher, stalled_subscriber, wait_subscribers,
                        wait_until)
from conftest import (STREAM_TYPE, KeepAlive, StreamEnd, _parse_head,
                      established_inodes,
                      proc_alive, proc_children, proc_cmdline, seq_of,
                      server_side_inode)

STATUS = "location = /sse-status { sse_status; }"

# What nginx logs when a test SIGKILLs one of its workers on purpose.
KILL_LOG = [r"\[alert\] .*worker process \d+ exited on signal 9",
            r"\[alert\] .*shared memory zone \"sse\" was locked by \d+"]


# ---------------------------------------------------------------- helpers

async def zone_status(n, check=False):
    r = await n.pub_http("GET", "/sse-status" + ("?check=1" if check else ""))
    assert r.status == 200, r
    return r.json()["zones"][0]


async def collect_until(c, stop_seq, timeout):
    """The events of c up to the first whose seq is >= stop_seq; stops
    early at the end of the stream or at the deadline."""
    out = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            b = await c.next_block(max(0.01, deadline - time.monotonic()))
            if b.is_event:
                out.append(b)
                if b.event is None and b.id is not None and \
                        seq_of(b.id) >= stop_seq:
                    return out
    except (StreamEnd, asyncio.TimeoutError):
        return out


def exact(got, sent, who):
    """None if `got` (blocks) is exactly `sent` ([(id, data)]), else a short
    account of what differs."""
    have = [(b.id, b.data) for b in got]
    if have == sent:
        return None
    specials = [b for b in got if b.event in ("sse-gap", "sse-error")]
    ids = [i for i, _ in have if i is not None]
    want = {i for i, _ in sent}
    missing = [i for i, _ in sent if i not in set(ids)]
    dup = len(ids) - len(set(ids))
    disorder = sum(1 for a, b in zip(ids, ids[1:])
                   if seq_of(a) >= seq_of(b))
    wrong = [(i, d) for i, d in have if i in want and (i, d) not in sent]
    return (f"{who}: got {len(have)} of {len(sent)} events, "
            f"{len(missing)} missing (first {missing[:3]}), {dup} doubled, "
            f"{disorder} out of order, {len(wrong)} with wrong data, "
            f"specials {[(b.event, b.data) for b in specials][:3]}")


def check_all(results, sent):
    bad = [e for e in (exact(g, sent, f"subscriber {i}")
                       for i, g in enumerate(results)) if e]
    assert not bad, f"{len(bad)} of {len(results)} subscribers wrong; " + \
        "; ".join(bad[:5])


async def open_streams(n, path, count, batch=100, **kw):
    out = []
    while len(out) < count:
        k = min(batch, count - len(out))
        out += await asyncio.gather(*(n.stream(path, **kw)
                                      for _ in range(k)))
    return out



def anon_kb(pid):
    """Private (heap) memory of a process: the shared zone left out, so
    that a worker merely touching zone pages does not count."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def workers_anon_kb(n):
    return sum(anon_kb(p) for p in n.workers())


def gap_of(block):
    assert block.event == "sse-gap", block
    return json.loads(block.data)


def assert_overload_end(c, blocks, reason, retry="3000"):
    """The stream ended the way DESIGN.md says an overload end does: an
    `sse-error` event without id whose JSON names the reason, then
    `retry:`, then a clean end of the chunked stream."""
    assert c.status == 200, (c.status, c.body)
    assert c.header("content-type") == STREAM_TYPE, c.headers
    assert c.ended is not None and c.ended.clean, (c.ended, blocks)
    events = [b for b in blocks if b.is_event]
    assert events and events[-1].event == "sse-error", blocks
    err = events[-1]
    assert err.id is None, err
    assert json.loads(err.data)["reason"] == reason, err
    after = blocks[blocks.index(err):]
    assert any(b.retry == retry for b in after), blocks


# ---------------------------------------------------------------- item 2

@pytest.mark.timeout_s(90)
async def test_buffer_length_1_live_subscribers_get_every_event(start_nginx):
    # 100 subscribers over 2 workers, 4 keep-alive publishers posting back
    # to back: the ring holds one event, every subscriber gets all 500.
    n = start_nginx(reuseport=True, pub="sse_buffer_length 1;")
    subs = await open_streams(n, "dash", 100)
    await wait_subscribers(n, "dash", 100)
    conns = n.subscriber_conns()
    assert sum(conns.values()) == 100 and min(conns.values()) > 0, conns

    pubs = [await KeepAlive.open(n.pub_port) for _ in range(4)]
    sent = {}

    async def post(ka, k):
        for i in range(125):
            body = f"p{k}-{i}"
            r = await ka.request("POST", "/publish/dash", body=body)
            assert r.status == 202, r
            sent[r.json()["id"]] = body

    await asyncio.gather(*(post(ka, k) for k, ka in enumerate(pubs)))
    order = sorted(sent.items(), key=lambda kv: seq_of(kv[0]))
    last = seq_of(order[-1][0])
    got = await asyncio.gather(*(collect_until(c, last, 30) for c in subs))
    check_all(got, order)
    assert all(c.ended is None for c in subs)


async def pipelined_posts(port, path, bodies):
    """POSTs every body on one keep-alive connection, all requests written
    at once (pipelined), so the server publishes them back to back; returns
    the ids, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: "
            f"{len(b)}\r\n\r\n{b}".encode() for b in bodies))
        await writer.drain()
        ids = []
        for _ in bodies:
            status, hdrs = _parse_head(await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), 20))
            body = await reader.readexactly(
                int(dict(hdrs)["content-length"]))
            assert status == 202, (status, body)
            ids.append(json.loads(body)["id"])
        return ids
    finally:
        writer.close()


@pytest.mark.timeout_s(150)
async def test_buffer_length_10_1000_subscribers_300_events(start_nginx):
    n = start_nginx(reuseport=True, pub="sse_buffer_length 10;")
    subs = await open_streams(n, "crowd", 1000)
    await wait_subscribers(n, "crowd", 1000, timeout=20)
    bodies = [[f"{k}:{i}" for i in range(150)] for k in range(2)]
    ids = await asyncio.gather(*(pipelined_posts(n.pub_port, "/publish/crowd",
                                                 b) for b in bodies))
    order = sorted(((i, d) for k in range(2) for i, d in
                    zip(ids[k], bodies[k])), key=lambda kv: seq_of(kv[0]))
    last = seq_of(order[-1][0])
    got = await asyncio.gather(*(collect_until(c, last, 60) for c in subs))
    check_all(got, order)


@pytest.mark.timeout_s(120)
async def test_one_streamed_publish_of_100000_events(start_nginx):
    # A fresh subscriber reads while one chunked POST carries 100,000
    # events. It must get them all, in order; if its stream is ended (its
    # own backlog), the stream gave retry: and an id to resume from, and
    # the resume either continues exactly or begins with sse-gap. A silent
    # loss fails.
    total = 100000
    n = start_nginx(reuseport=True, http="client_max_body_size 0;")
    c = await n.stream("tokens")
    await wait_subscribers(n, "tokens", 1)
    got = []        # data of the events received, as ints
    explained = []  # indexes in `got` where an sse-gap explains a jump

    async def reader():
        nonlocal c
        while not got or got[-1] != total - 1:
            try:
                b = await c.next_block(timeout=20)
            except StreamEnd:
                assert any(x.retry for x in c.blocks), \
                    f"a stream without retry: ended after {len(got)}"
                assert c.last_id is not None, \
                    f"stream ended after {len(got)} events with no id to " \
                    "resume from: a silent loss"
                c = await n.stream("tokens",
                                   headers={"Last-Event-ID": c.last_id})
                continue
            if b.event == "sse-gap":
                explained.append(len(got))
            elif b.is_event:
                got.append(int(b.data))

    task = asyncio.ensure_future(reader())
    pub = await StreamPublisher.open(n.pub_port, "/publish/tokens")
    per = 1000
    for k in range(0, total, per):
        await pub.send("".join(f"data: {i}\n\n" for i in range(k, k + per)))
    r = await pub.finish(timeout=60)
    assert r.status == 202, r
    assert r.json()["published"] == total
    try:
        await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
    silent = [i for i in range(1, len(got))
              if got[i] != got[i - 1] + 1 and i not in explained]
    assert got and got[0] == 0 or 0 in explained, got[:3]
    assert not silent, (f"{len(silent)} unexplained jumps, first at "
                        f"{got[silent[0] - 1]} -> {got[silent[0]]}")
    assert all(a < b for a, b in zip(got, got[1:]))
    assert got[-1] == total - 1


# ---------------------------------------------------------------- item 3

def unlisted_first(pids, listed, k):
    """k pids to kill: those the status does not list first (today: the
    workers beyond 32 that share the last slot), then the youngest."""
    rest = sorted(set(pids) - listed)
    return (rest + sorted(set(pids) & listed, reverse=True))[:k]


def pump_alive(c):
    return c._task is not None and not c._task.done()


@pytest.mark.timeout_s(150)
async def test_40_workers_counts_stay_exact_through_kills(start_nginx):
    n = start_nginx(workers=40, reuseport=True, pub_locations=STATUS,
                    allow_log=KILL_LOG)
    subs = await open_streams(n, "w40", 400, batch=50)
    # More connections until every worker holds a subscriber.
    for _ in range(8):
        conns = n.subscriber_conns()
        if min(conns.values()) > 0:
            break
        subs += await open_streams(n, "w40", 50, batch=50)
    conns = n.subscriber_conns()
    assert len(conns) == 40 and min(conns.values()) > 0, conns
    await wait_subscribers(n, "w40", len(subs), timeout=20)

    sent = [(await n.publish_ok("w40", f"e{i}"), f"e{i}") for i in range(5)]
    got = await asyncio.gather(*(collect_until(c, seq_of(sent[-1][0]), 20)
                                 for c in subs))
    check_all(got, sent)

    s = await zone_status(n)
    listed = {w["pid"] for w in s["workers"]}
    assert listed == set(n.workers()), (len(listed), sorted(listed))
    assert s["subscribers"] == len(subs)
    assert {w["pid"]: w["subscribers"] for w in s["workers"]} == conns

    victims = unlisted_first(n.workers(), listed, 4)
    lost = sum(conns[v] for v in victims)
    for v in victims:
        os.kill(v, signal.SIGKILL)
    n.wait_workers(20, exclude=victims)
    live = len(subs) - lost
    await wait_until(lambda: sum(map(pump_alive, subs)) == live, 10,
                     what="the dead workers' streams to end")

    async def counts_exact():
        s = await zone_status(n)
        conns = n.subscriber_conns()
        per = {w["pid"]: w["subscribers"] for w in s["workers"]}
        return s["subscribers"] == live and per == conns
    try:
        await wait_until(counts_exact, 10, 0.2, "status == live streams")
    finally:
        s = await zone_status(n)
        print("status:", s["subscribers"], "live:", live,
              "workers listed:", len(s["workers"]))
    assert (await n.info("w40")).json()["subscribers"] == live

    # Later publishes reach every stream still open, and newcomers.
    alive = [c for c in subs if pump_alive(c)]
    alive += await open_streams(n, "w40", 80, batch=40)
    await wait_subscribers(n, "w40", len(alive), timeout=20)
    later = [(await n.publish_ok("w40", f"l{i}"), f"l{i}") for i in range(3)]
    got = await asyncio.gather(*(collect_until(c, seq_of(later[-1][0]), 20)
                                 for c in alive))
    check_all(got, later)
    s = await zone_status(n)
    assert s["subscribers"] == len(alive)
    assert len(s["workers"]) == 40


@pytest.mark.timeout_s(150)
async def test_40_workers_reloads_in_a_row_with_streams_held(start_nginx):
    # Three reloads in a row while 150 clients hold streams (and a few
    # stalled ones owe output): old and new workers overlap, 80 processes
    # at once. The reading clients resume after each end and miss nothing,
    # and the status then counts exactly the streams held.
    n = start_nginx(workers=40, reuseport=True, pub_locations=STATUS,
                    pub="sse_buffer_length 100000;",
                    http="send_timeout 4s;")
    subs = await open_streams(n, "rl40", 150, batch=50)
    stalled = []
    received = [[] for _ in subs]
    sent = []

    async def follow(i):
        c = subs[i]
        while True:
            try:
                b = await c.next_block(timeout=30)
            except StreamEnd:
                resume = c.last_id or sent[0][0]
                try:
                    c = await n.stream("rl40",
                                       headers={"Last-Event-ID": resume})
                except (OSError, asyncio.IncompleteReadError,
                        asyncio.TimeoutError):
                    # Landed on a listener being closed: try again.
                    await asyncio.sleep(0.05)
                    continue
                subs[i] = c
                continue
            if b.is_event and b.event != "sse-error":
                received[i].append(b)
                if b.data == "end":
                    return

    most = 0

    async def count_workers():
        nonlocal most
        while True:
            most = max(most, len([p for p in proc_children(n.master)
                                  if "worker" in proc_cmdline(p)]))
            await asyncio.sleep(0.05)

    sent.append((await n.publish_ok("rl40", "first"), "first"))
    tasks = [asyncio.ensure_future(follow(i)) for i in range(len(subs))]
    tasks.append(asyncio.ensure_future(count_workers()))
    try:
        for k in range(3):
            for _ in range(3):
                stalled.append(stalled_subscriber(n.sub_port, "/events/rl40"))
            await asyncio.sleep(0.3)
            for j in range(3):
                d = f"r{k}-{j}" + "x" * 30000
                sent.append((await n.publish_ok("rl40", d), d))
            os.kill(n.master, signal.SIGHUP)
            await asyncio.sleep(1.0)
            sent.append((await n.publish_ok("rl40", f"after {k}"),
                         f"after {k}"))
        await asyncio.sleep(1)
        sent.append((await n.publish_ok("rl40", "end"), "end"))
        await asyncio.wait_for(asyncio.gather(*tasks[:-1]), 60)
    finally:
        for t in tasks:
            t.cancel()
        for s in stalled:
            s.close()
    bad = [e for e in (exact(g, sent, f"client {i}")
                       for i, g in enumerate(received)) if e]
    assert not bad, f"{len(bad)} clients wrong; " + "; ".join(bad[:5])
    print("worker processes at once:", most)
    n.wait_workers(20)

    async def settled():
        s = await zone_status(n)
        return (s["subscribers"] == len(subs) and
                {w["pid"] for w in s["workers"]} == set(n.workers()))
    try:
        await wait_until(settled, 20, 0.3, "status == the held streams")
    finally:
        s = await zone_status(n)
        print("status:", s["subscribers"], "streams:", len(subs),
              "workers listed:", len(s["workers"]))


# ---------------------------------------------------------------- item 4

@pytest.mark.timeout_s(150)
async def test_resume_with_bad_ids_pins_no_memory(start_nginx):
    # 64 channels of 100 events of 4 kB: 25.6 MB buffered, which today is
    # copied whole into each resuming client's heap (40 clients: 1 GB).
    nch, per, size = 64, 100, 4000
    n = start_nginx(reuseport=True, zone="sse_zone zone=sse:96m;",
                    pub="sse_buffer_length 1000;",
                    sub="sse_initial_events 5;", pub_locations=STATUS)
    chans = [f"big{i}" for i in range(nch)]
    for ch in chans:
        pub = await StreamPublisher.open(n.pub_port, f"/publish/{ch}")
        await pub.send("".join(f"data: {ch} {j} " + "x" * size + "\n\n"
                               for j in range(per)))
        r = await pub.finish()
        assert r.status == 202 and r.json()["published"] == per, r
    s = await zone_status(n)
    assert s["messages"] == nch * per
    epoch = int(s["epoch"])
    path = "/multi?channels=" + ",".join(chans)
    bad_ids = ["not-an-id", f"{epoch}-{10 ** 15}", f"{epoch - 1}-5"]

    base = workers_anon_kb(n)
    peak = base
    socks = []
    try:
        for i in range(40):
            socks.append(stalled_subscriber(
                n.sub_port, path,
                headers={"Last-Event-ID": bad_ids[i % len(bad_ids)]}))
            if i % 4 == 3:
                await asyncio.sleep(0.3)
                peak = max(peak, workers_anon_kb(n))
                # Stop early rather than take a gigabyte from the box.
                assert peak - base < 150 * 1024, \
                    f"{i + 1} clients: workers grew {(peak - base) >> 10} MB"
        await asyncio.sleep(1)
        peak = max(peak, workers_anon_kb(n))
        assert peak - base < 150 * 1024, (base, peak)
    finally:
        for sk in socks:
            sk.close()

    # A reading client with a malformed id: sse-gap, then at most
    # sse_initial_events buffered events, then the live stream.
    c = await n.stream(path, headers={"Last-Event-ID": "not-an-id"})
    first = await c.next_event()
    assert gap_of(first)["reason"] == "malformed", first
    caught = []
    try:
        while True:
            caught.append(await c.next_event(timeout=1))
    except asyncio.TimeoutError:
        pass
    assert len(caught) <= 5, f"{len(caught)} buffered events after the gap"
    live = await n.publish_ok(chans[7], "live")
    assert (await c.next_event()).id == live


@pytest.mark.timeout_s(60)
async def test_stalled_client_is_closed_after_send_timeout_with_heartbeats(
        start_nginx):
    # 8 MB to a client that reads nothing: more than the kernel's socket
    # buffers take (tcp_wmem allows 4 MB), so nginx's own write blocks, but
    # under sse_max_pending, so only send_timeout can end it.
    n = start_nginx(sub="sse_heartbeat 1s; sse_max_pending 32m;",
                    http="send_timeout 2s; client_body_buffer_size 128k;")
    reader = await n.stream("stall")
    s = stalled_subscriber(n.sub_port, "/events/stall", rcvbuf=2048)
    try:
        await wait_subscribers(n, "stall", 2)
        client_port = s.getsockname()[1]
        ids = []
        pub = await KeepAlive.open(n.pub_port)
        for i in range(130):
            r = await pub.request("POST", "/publish/stall",
                                  body=b"s" * 63000)
            assert r.status == 202, r
            ids.append(r.json()["id"])
        got = await reader.events(130, timeout=30)
        assert [b.id for b in got] == ids
        t0 = time.monotonic()

        def closed():
            inode = server_side_inode(n.sub_port, client_port)
            return inode is None or inode not in established_inodes(
                n.sub_port)
        await wait_until(closed, 12, 0.1,
                         "the server to close the stalled client")
        await wait_subscribers(n, "stall", 1)
        print(f"closed {time.monotonic() - t0:.1f} s after the last event")
    finally:
        s.close()
    # The reader, idle but reading heartbeats, was not closed.
    hb = await reader.next_block(timeout=3)
    assert hb.is_heartbeat, hb
    assert reader.ended is None


# ---------------------------------------------------------------- item 6

@pytest.mark.timeout_s(60)
async def test_full_zone_answers_a_subscriber_200_sse_error_and_retry(
        start_nginx):
    # A small zone: channel records (long names) soon fill it.
    n = start_nginx(zone="sse_zone zone=sse:128k;", pub_locations=STATUS)
    held = []
    refused = None
    pad = "f" * 200
    for i in range(3000):
        ch = f"{pad}{i}"
        c = await n.subscribe(f"/events/{ch}")
        if c.status == 200 and (await n.info(ch)).status == 200:
            held.append((ch, c))
            continue
        refused = c
        break
    assert refused is not None, "the zone never filled"
    assert held, "not even one channel fitted"
    print(f"{len(held)} channels fitted")
    blocks = await refused.until_end(timeout=5)
    assert_overload_end(refused, blocks, "zone_full")
    s = await zone_status(n)
    assert s["refused"] >= 1, s
    # A place freed is a place taken.
    held[0][1].close()

    # The same size of record: the slab allocator keeps sizes apart.
    newcomer = f"{pad}newcomer"

    async def fits():
        c = await n.subscribe(f"/events/{newcomer}")
        ok = c.status == 200 and (await n.info(newcomer)).status == 200
        c.close()
        return ok
    await wait_until(fits, 10, 0.3, "a new channel to fit again")


async def test_max_subscribers_end_says_sse_error(start_nginx):
    n = start_nginx(sub="sse_max_subscribers 1;")
    a = await n.stream("cap")
    extra = await n.subscribe("cap")
    blocks = await extra.until_end()
    assert_overload_end(extra, blocks, "max_subscribers")
    assert [b.event for b in blocks if b.is_event] == ["sse-error"]
    eid = await n.publish_ok("cap", "x")
    assert (await a.next_event()).id == eid


@pytest.mark.timeout_s(20)
async def test_stream_timeout_end_says_sse_error(start_nginx):
    n = start_nginx(sub="sse_stream_timeout 1s;")
    c = await n.stream("short")
    eid = await n.publish_ok("short", "x")
    blocks = await c.until_end(timeout=5)
    assert_overload_end(c, blocks, "stream_timeout")
    assert [(b.id, b.event) for b in blocks if b.is_event] == [
        (eid, None), (None, "sse-error")]


@pytest.mark.timeout_s(30)
async def test_shutdown_end_says_sse_error(start_nginx):
    n = start_nginx()
    subs = [await n.stream("bye"), await n.stream("/multi?channels=bye,b2")]
    eid = await n.publish_ok("bye", "x")
    for c in subs:
        assert (await c.next_event()).id == eid
    n.reload()
    for c in subs:
        blocks = await c.until_end(timeout=5)
        assert_overload_end(c, blocks, "shutdown")


async def test_delete_end_says_sse_error(start_nginx):
    n = start_nginx()
    c = await n.stream("gone")
    other = await n.stream("stay")
    eid = await n.publish_ok("gone", "x")
    assert (await c.next_event()).id == eid
    r = await n.pub_http("DELETE", "/publish/gone")
    assert r.status == 200, r
    blocks = await c.until_end(timeout=5)
    assert_overload_end(c, blocks, "deleted")
    # Another channel's stream is untouched.
    eid = await n.publish_ok("stay", "y")
    assert (await other.next_event()).id == eid


# ---------------------------------------------------------------- item 7

@pytest.mark.timeout_s(60)
async def test_long_rings_grow_with_their_content(start_nginx):
    n = start_nginx(zone="sse_zone zone=sse:1m;",
                    pub="sse_buffer_length 100000;", pub_locations=STATUS)
    pub = await KeepAlive.open(n.pub_port)
    statuses = []
    for i in range(200):
        r = await pub.request("POST", f"/publish/tiny{i}", body="t")
        statuses.append(r.status)
    assert statuses == [202] * 200, \
        f"{statuses.count(202)} of 200 accepted: {sorted(set(statuses))}"
    counts = []
    for i in range(200):
        r = await pub.request("GET", f"/publish/tiny{i}")
        counts.append(r.json()["messages"] if r.status == 200 else None)
    kept = counts.count(1)
    assert kept == 200, f"{200 - kept} of 200 channels lost their event"
    s = await zone_status(n)
    assert (s["evicted"], s["messages"], s["channels"]) == (0, 200, 200), s


# ---------------------------------------------------------------- item 9

@pytest.mark.timeout_s(60)
async def test_streaming_publisher_on_an_old_worker_wakes_new_workers(
        start_nginx):
    n = start_nginx()
    pub = await StreamPublisher.open(n.pub_port, "/publish/old")
    probe = await n.stream("old")
    await pub.send("data: before\n\n")
    assert (await probe.next_event()).data == "before"
    pub_worker = n.worker_of(n.pub_port, pub.writer.get_extra_info(
        "sockname")[1])
    old = n.reload()
    assert pub_worker in old
    # Once it says so, the old worker has closed its listening sockets.
    await wait_until(lambda: "shutting down" in proc_cmdline(pub_worker), 5,
                     what="the old worker to begin its shutdown")
    subs = [await n.stream("old") for _ in range(4)]
    new = set(n.workers())
    for c in subs:
        assert n.worker_of(n.sub_port, c.local_port) in new
    await wait_subscribers(n, "old", 4)
    assert proc_alive(pub_worker), "the old worker left before the test"

    delays = []
    for i in range(10):
        t0 = time.monotonic()
        await pub.send(f"data: tick {i}\n\n")
        worst = 0
        for c in subs:
            b = await c.next_event(timeout=0.6)  # before the next send
            assert b.data == f"tick {i}", b
            worst = max(worst, time.monotonic() - t0)
        delays.append(worst)
        await asyncio.sleep(max(0, 0.6 - (time.monotonic() - t0)))
    r = await pub.finish()
    assert r.status == 202 and r.json()["published"] == 11, r
    ms = [round(d * 1000) for d in delays]
    print("delays (ms):", ms)
    # A correctness bound, not a benchmark: today's 250 ms poll puts the
    # median near 125 ms and at least one of ten (sent 600 ms apart, so at
    # spread phases of the poll) past 200 ms.
    assert statistics.median(ms) < 50, ms
    assert sum(1 for d in ms if d > 200) <= 1, ms


# ---------------------------------------------------------------- conftest

@pytest.mark.timeout_s(30)
async def test_allow_log_spares_only_the_lines_a_test_expects(start_nginx):
    n = start_nginx(allow_log=KILL_LOG)
    victim = n.workers()[0]
    os.kill(victim, signal.SIGKILL)
    n.wait_workers(10, exclude=[victim])
    await wait_until(lambda: "exited on signal 9" in n.log_text(), 5,
                     what="the master to log the kill")
    assert n.bad_log_lines() == []
    # Any other bad line still counts.
    crash = ("2026/01/01 00:00:00 [alert] 1#1: worker process 2 exited on "
             "signal 11")
    fake = n.dir / "fake-error.log"
    fake.write_text(n.log_text() + crash + "\n")
    real, n.error_log = n.error_log, fake
    try:
        assert n.bad_log_lines() == [crash]
    finally:
        n.error_log = real
