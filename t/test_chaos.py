"""Chaos (issue 8, item 5 and the chaos test it asks for): workers
SIGKILLed in a loop, reloads, under subscribers and publishers (plain and
streaming) and DELETEs of big channels; afterwards the zone's invariant
walk (GET /sse-status?check=1) is "ok", its figures add up, nginx answers,
no worker is stuck, and every subscriber got every event of its channels
exactly once, in order, across its reconnects.

Kills and publishes are randomised with a fixed seed; every loop is
bounded in time and everything stops by itself."""

import asyncio
import json
import os
import random
import signal
import threading
import time

import pytest

from clienthelp import StreamPublisher, wait_until
from conftest import KeepAlive, SSEClient, StreamEnd, proc_alive, seq_of
from test_guarantees import KILL_LOG, STATUS, exact, zone_status

# What a request cut short by a SIGKILLed worker can raise here (a head
# cut mid-line fails to parse, too).
NET_ERRORS = (OSError, EOFError, asyncio.TimeoutError,
              asyncio.IncompleteReadError, asyncio.LimitOverrunError,
              ValueError, AssertionError)

# Failed plain publishes by kind, printed to help read a failure.
PUB_OUTCOME = {}


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except OSError:
        return 0


async def no_worker_spins(n, seconds=1.0):
    """With no load, no worker burns CPU (one that spins holding the lock
    would)."""
    pids = n.workers()
    before = {p: cpu_ticks(p) for p in pids}
    await asyncio.sleep(seconds)
    hz = os.sysconf("SC_CLK_TCK")
    busy = {p: (cpu_ticks(p) - before[p]) / hz for p in pids}
    assert all(v < 0.5 * seconds for v in busy.values()), busy


async def killer(n, rng, stop, period, kills):
    """SIGKILLs a random current worker every `period` (a pair) seconds,
    on a schedule that a busy event loop does not stretch."""
    due = time.monotonic()
    while not stop.is_set():
        ws = n.workers()
        if ws:
            try:
                os.kill(rng.choice(ws), signal.SIGKILL)
                kills.append(time.monotonic())
            except ProcessLookupError:
                pass
        due += rng.uniform(*period)
        await asyncio.sleep(max(0, due - time.monotonic()))


async def plain_publisher(n, k, channels, stop, sent, rng):
    """POSTs on a keep-alive connection (a new one after each failure)
    until told to stop; `sent` gets (channel, data, id) of each one
    answered 202."""
    i = 0
    ka = None
    while not stop.is_set():
        ch = rng.choice(channels)
        data = f"{ch}:p{k}-{i}"
        i += 1
        try:
            if ka is None:
                ka = await KeepAlive.open(n.pub_port)
            r = await ka.request("POST", f"/publish/{ch}", body=data,
                                 timeout=5)
            if r.status == 202:
                sent.append((ch, data, r.json()["id"]))
            else:
                PUB_OUTCOME[r.status] = PUB_OUTCOME.get(r.status, 0) + 1
        except NET_ERRORS as e:
            k = type(e).__name__
            PUB_OUTCOME[k] = PUB_OUTCOME.get(k, 0) + 1
            if ka is not None:
                ka.close()
            ka = None
        await asyncio.sleep(0.005)
    if ka is not None:
        ka.close()


async def streaming_publisher(n, k, channels, stop, rng, per_stream=40):
    """Long chunked POSTs of one event per chunk, a new one when a stream is
    done or its worker died."""
    j = 0
    while not stop.is_set():
        ch = rng.choice(channels)
        try:
            pub = await StreamPublisher.open(n.pub_port, f"/publish/{ch}")
            for _ in range(per_stream):
                if stop.is_set():
                    break
                await pub.send(f"data: {ch}:s{k}-{j}\n\n")
                j += 1
                await asyncio.sleep(0.02)
            await pub.finish(timeout=5)
        except NET_ERRORS:
            await asyncio.sleep(0.05)


async def big_channel_deleter(n, stop, names, outcome, rng, kills,
                              events=50000):
    """Fills a channel with many events (one streamed POST) and DELETEs it,
    over and over; every other DELETE has its worker SIGKILLed a few
    milliseconds in, where a DELETE of a big channel is at its longest."""
    j = 0
    while not stop.is_set():
        ch = f"big{j}"
        j += 1
        names.append(ch)
        try:
            pub = await StreamPublisher.open(n.pub_port, f"/publish/{ch}")
            await pub.send("".join(f"data: {i} {'b' * 40}\n\n"
                                   for i in range(events)))
            r = await pub.finish(timeout=10)
            outcome.append(r.status)
            ka = await KeepAlive.open(n.pub_port)
            try:
                pid = n.worker_of(n.pub_port, ka.local_port, timeout=1)
                ka.writer.write(f"DELETE /publish/{ch} HTTP/1.1\r\n"
                                "Host: x\r\n\r\n".encode())
                if j % 2:
                    await asyncio.sleep(rng.uniform(0, 0.004))
                    os.kill(pid, signal.SIGKILL)
                    kills.append(time.monotonic())
                    outcome.append("killed in DELETE")
                else:
                    head = await asyncio.wait_for(
                        ka.reader.readuntil(b"\r\n\r\n"), 5)
                    outcome.append(int(head.split()[1]))
            finally:
                ka.close()
        except (ProcessLookupError, *NET_ERRORS) as e:
            outcome.append(type(e).__name__)
            await asyncio.sleep(0.05)


async def stop_tasks(tasks, timeout=20):
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:
        t.cancel()
    for t in done:
        if t.exception() is not None:
            raise t.exception()
    assert not pending, f"{len(pending)} tasks did not stop"


async def info_or_none(n, ch):
    for _ in range(5):
        try:
            r = await n.info(ch)
        except NET_ERRORS:
            await asyncio.sleep(0.1)
            continue
        return r.json() if r.status == 200 else None
    raise AssertionError(f"GET /publish/{ch} never answered")


# ---------------------------------------------------------------- test A

@pytest.mark.timeout_s(120)
async def test_kill_storm_leaves_the_zone_consistent(start_nginx):
    n = start_nginx(workers=4, reuseport=True, zone="sse_zone zone=sse:64m;",
                    pub="sse_buffer_length 100000;",
                    http="client_max_body_size 0;", pub_locations=STATUS,
                    allow_log=KILL_LOG)
    rng = random.Random(5)
    stop = asyncio.Event()
    plain_chans = [f"a{i}" for i in range(4)]
    stream_chans = [f"s{i}" for i in range(3)]
    big = []
    big_outcome = []
    sent = []
    kills = []
    # A few subscribers too, so that channels are joined and left as
    # their workers die.
    subs = [await n.stream("/multi?channels=a0,s0") for _ in range(8)]
    tasks = [asyncio.ensure_future(plain_publisher(n, 0, plain_chans, stop,
                                                   sent, rng)),
             asyncio.ensure_future(streaming_publisher(n, 0, stream_chans,
                                                       stop, rng)),
             asyncio.ensure_future(streaming_publisher(n, 1, stream_chans,
                                                       stop, rng)),
             asyncio.ensure_future(big_channel_deleter(n, stop, big,
                                                         big_outcome, rng,
                                                         kills))]
    await asyncio.sleep(0.5)
    kill_task = asyncio.ensure_future(killer(n, rng, stop, (0.15, 0.2),
                                             kills))
    await asyncio.sleep(10)
    stop.set()
    await stop_tasks(tasks + [kill_task])
    for c in subs:
        c.close()
    print(f"{len(kills)} kills, {len(sent)} plain publishes, "
          f"{len(big)} big channels", _tally(big_outcome))
    assert len(kills) >= 40

    # The master has replaced every killed worker; they all answer.
    await asyncio.sleep(0.5)
    n.wait_workers(10)
    s = await asyncio.wait_for(zone_status(n, check=True), 10)
    assert s.get("check") == "ok", s
    await no_worker_spins(n)

    # The zone's figures are what its channels add up to (retried a few
    # times: the sweep may free an empty channel between two requests).
    names = set(plain_chans + stream_chans + big)
    live = {}
    figures = []

    async def add_up():
        s = await zone_status(n)
        infos = {ch: await info_or_none(n, ch) for ch in names}
        live.clear()
        live.update({ch: j for ch, j in infos.items() if j is not None})
        figures[:] = [(s["channels"], len(live)),
                      (s["messages"], sum(j["messages"]
                                          for j in live.values()))]
        # Where the channel info tells its bytes, they add up too (either
        # way they must come to 0 once every channel is deleted, below).
        if live and all("message_bytes" in j for j in live.values()):
            figures.append((s["message_bytes"], sum(
                j["message_bytes"] for j in live.values())))
        return all(a == b for a, b in figures)
    try:
        await wait_until(add_up, 5, 0.5, "status figures == channel infos")
    finally:
        print("(status, channel infos): channels, messages:", figures)

    # nginx still delivers, from every worker.
    subs = [await n.stream("after") for _ in range(40)]
    conns = n.subscriber_conns()
    assert len(conns) == 4 and min(conns.values()) > 0, conns
    eid = await n.publish_ok("after", "alive")
    for c in subs:
        assert (await c.next_event(timeout=5)).id == eid
        c.close()

    # Remove everything: nothing may be left counted in the zone.
    for ch in list(live) + ["after"]:
        r = await n.pub_http("DELETE", f"/publish/{ch}")
        assert r.status in (200, 404), r

    async def empty():
        s = await zone_status(n, check=True)
        return (s["channels"], s["messages"], s["message_bytes"],
                s["subscribers"]) == (0, 0, 0, 0) and s.get("check") == "ok"
    try:
        await wait_until(empty, 5, 0.2, "an empty, consistent zone")
    finally:
        s = await zone_status(n, check=True)
        print({k: s.get(k) for k in ("channels", "messages",
                                      "message_bytes", "subscribers",
                                      "check")})


# ---------------------------------------------------------------- test B

class Follower:
    """A subscriber that reconnects whenever its stream ends, with the
    Last-Event-ID of the last event it got (from the start: the zone's
    newest id before the test began), until it has seen the end marker of
    each of its channels."""

    def __init__(self, n, channels, first_id, rng):
        self.n = n
        self.channels = channels
        self.path = (f"/events/{channels[0]}" if len(channels) == 1 else
                     "/multi?channels=" + ",".join(channels))
        self.last = first_id
        self.rng = rng
        self.got = []          # (id, data) of every event, all streams
        self.gaps = []
        self.errors = {}       # sse-error reason -> count
        self.refused = 0       # connections that failed or were not 200
        self.streams = 0
        self.ended = set()     # channels whose end marker came
        self.c = None

    def finished(self):
        return self.ended == set(self.channels)

    async def run(self):
        while True:
            try:
                c = await SSEClient.open(self.n.sub_port, self.path,
                                         headers={"Last-Event-ID":
                                                  self.last}, timeout=5)
            except NET_ERRORS:
                self.refused += 1
                await asyncio.sleep(self.rng.uniform(0.02, 0.3))
                continue
            if 400 <= c.status < 500:
                raise AssertionError(f"{self.path}: {c.status} {c.body!r}")
            if c.status != 200:
                self.refused += 1
                c.close()
                await asyncio.sleep(self.rng.uniform(0.02, 0.3))
                continue
            self.c = c
            self.streams += 1
            try:
                while True:
                    b = await c.next_block(timeout=30)
                    if b.event == "sse-gap":
                        self.gaps.append(b.data)
                    elif b.event == "sse-error":
                        why = json.loads(b.data).get("reason")
                        self.errors[why] = self.errors.get(why, 0) + 1
                    elif b.is_event:
                        self.got.append((b.id, b.data))
                        self.last = b.id
                        ch, _, what = b.data.partition(":")
                        if what == "end":
                            self.ended.add(ch)
                            if self.finished():
                                return  # the stream stays open
            except (StreamEnd, asyncio.TimeoutError):
                pass
            c.close()
            self.c = None
            await asyncio.sleep(self.rng.uniform(0.02, 0.3))


async def channel_history(n, ch, after):
    """Every event of `ch` after `after`, up to its end marker, as the zone
    holds them (sse_buffer_length is large enough to hold them all)."""
    c = await n.stream(f"/events/{ch}", headers={"Last-Event-ID": after})
    out = []
    try:
        while True:
            b = await c.next_event(timeout=10)
            assert b.event is None, (ch, b)
            out.append((b.id, b.data))
            if b.data == f"{ch}:end":
                return out
    finally:
        c.close()


@pytest.mark.timeout_s(240)
async def test_chaos_kills_and_reloads_under_1000_subscribers(start_nginx):
    n = start_nginx(workers=4, reuseport=True, zone="sse_zone zone=sse:64m;",
                    pub="sse_buffer_length 100000;",
                    http="client_max_body_size 0;", pub_locations=STATUS,
                    allow_log=KILL_LOG)
    rng = random.Random(11)
    chans = [f"ch{i}" for i in range(10)]
    for ch in chans:
        await n.publish_ok(ch, f"{ch}:before")
    first_id = (await zone_status(n))["last_id"]

    def channels_of(i):
        if i % 10 < 7:
            return [chans[i % 10]]
        if i % 10 < 9:
            return [chans[i % 10], chans[(i + 3) % 10]]
        return [chans[i % 10], chans[(i + 4) % 10], chans[(i + 7) % 10]]

    followers = [Follower(n, channels_of(i), first_id, rng)
                 for i in range(1000)]
    runs = []
    for k in range(0, len(followers), 100):
        runs += [asyncio.ensure_future(f.run())
                 for f in followers[k:k + 100]]
        await asyncio.sleep(0.2)

    # The storm runs in a thread of its own, with its own event loop, so
    # that the kill schedule and the publishers keep their pace while the
    # followers' loop is busy reconnecting.
    stop = threading.Event()
    sent = []
    kills = []
    reloads = []

    async def storm():
        srng = random.Random(13)
        tasks = [asyncio.ensure_future(plain_publisher(n, k, chans, stop,
                                                       sent, srng))
                 for k in range(2)]
        tasks += [asyncio.ensure_future(streaming_publisher(n, k, chans,
                                                            stop, srng))
                  for k in range(2)]
        await asyncio.sleep(1)
        tasks.append(asyncio.ensure_future(killer(n, srng, stop, (0.2, 0.2),
                                                  kills)))
        for _ in range(3):
            await asyncio.sleep(2.5)
            os.kill(n.master, signal.SIGHUP)
            reloads.append(time.monotonic())
        await asyncio.sleep(2.5)
        stop.set()
        await stop_tasks(tasks)

    failure = []

    def storm_thread():
        try:
            asyncio.run(storm())
        except BaseException as e:  # reported by the test below
            failure.append(e)

    t = threading.Thread(target=storm_thread, daemon=True)
    t.start()
    while t.is_alive():
        await asyncio.sleep(0.2)
    if failure:
        raise failure[0]
    print(f"{len(kills)} kills, {len(reloads)} reloads, {len(sent)} plain "
          f"publishes", PUB_OUTCOME)

    # Let the old generations go, then mark the end of every channel.
    await asyncio.sleep(1)
    n.wait_workers(10)
    for ch in chans:
        for _ in range(20):
            try:
                await n.publish_ok(ch, f"{ch}:end")
                break
            except NET_ERRORS:
                await asyncio.sleep(0.2)
    done, pending = await asyncio.wait(runs, timeout=90)
    for t in pending:
        t.cancel()
    for t in done:
        if t.exception() is not None:
            raise t.exception()
    stuck = [f for f in followers if not f.finished()]
    assert not stuck, (f"{len(stuck)} followers never saw their end: " +
                       str([(f.channels, len(f.got), f.streams)
                            for f in stuck[:3]]))

    # The truth: what the zone holds for each channel after first_id.
    history = {ch: await channel_history(n, ch, first_id) for ch in chans}
    for ch, h in history.items():
        assert all(seq_of(a) < seq_of(b) for (a, _), (b, _) in
                   zip(h, h[1:])), ch
    held = {eid: data for h in history.values() for eid, data in h}
    lost = [(eid, d) for _, d, eid in sent if held.get(eid) != d]
    assert not lost, f"{len(lost)} acknowledged publishes not held: {lost[:3]}"

    # No gap is legitimate here: one epoch throughout (the zone survives
    # kills and reloads), rings longer than all that is published, and a
    # zone with room to spare.
    gaps = [(f.channels, f.gaps[:2]) for f in followers if f.gaps]
    assert not gaps, f"{len(gaps)} followers saw sse-gap: {gaps[:3]}"
    bad = []
    for i, f in enumerate(followers):
        want = sorted((e for ch in set(f.channels) for e in history[ch]),
                      key=lambda e: seq_of(e[0]))
        why = exact([_Ev(*e) for e in f.got], want, f"follower {i} "
                    f"{f.channels} ({f.streams} streams)")
        if why:
            bad.append(why)
    assert not bad, f"{len(bad)} of {len(followers)} followers wrong: " + \
        "; ".join(bad[:4])
    print("events:", {ch: len(h) for ch, h in history.items()})
    print("streams per follower: max", max(f.streams for f in followers),
          "total", sum(f.streams for f in followers), "; sse-error:",
          _sum_errors(followers))

    # The zone is consistent and counts exactly the streams held open.
    still = [f for f in followers if f.c is not None and not f.c._task.done()]
    assert len(still) == len(followers), \
        f"{len(followers) - len(still)} streams ended after their end marker"
    open_subs = sum(len(set(f.channels)) for f in followers)

    async def counted():
        s = await zone_status(n, check=True)
        conns = n.subscriber_conns()
        per = {w["pid"]: w["subscribers"] for w in s["workers"]}
        return (s.get("check") == "ok" and s["subscribers"] == open_subs and
                sum(per.values()) == open_subs and
                set(per) == set(conns) and
                sum(conns.values()) == len(followers))
    try:
        await wait_until(counted, 10, 0.3, "exact counts, check ok")
    finally:
        s = await zone_status(n, check=True)
        print({k: s.get(k) for k in ("subscribers", "check", "channels")},
              "open:", open_subs,
              "per worker:", [w["subscribers"] for w in s["workers"]],
              "connections:", n.subscriber_conns())
    assert all(proc_alive(p) for p in n.workers())
    await no_worker_spins(n)


class _Ev:
    """(id, data) in the shape exact() reads."""

    __slots__ = ("id", "data", "event")

    def __init__(self, eid, data):
        self.id, self.data, self.event = eid, data, None


def _sum_errors(followers):
    out = {}
    for f in followers:
        for k, v in f.errors.items():
            out[k] = out.get(k, 0) + v
    return out


def _tally(items):
    out = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out
