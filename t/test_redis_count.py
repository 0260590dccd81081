"""Subscriber counts across the machines of a Redis zone: a publish's 202,
GET's channel info, DELETE's answer and presence's count are the sums over
every live machine (within the push lag), a SIGKILLed machine leaves the
sums once its liveness key expires, a reload keeps the machine's id."""

import asyncio
import json
import os
import re
import signal
import subprocess
import time

import pytest

from redishelp import (assert_zone_refused, needs_redis,  # noqa: F401
                       redis_conf, start_redis, wait_in_sync)
from sselib.client import KeepAlive
from sselib.redis_server import REDIS_CLI

pytestmark = needs_redis

STATUS = "        location = /sse-status { sse_status; }\n"
REDIS_ERRORS = [r"\[error\].*sse: redis", r"\[error\].*connect\(\) failed",
                r"\[error\].*recv\(\) failed"]
# Short enough for the tests that wait for a dead machine to expire.
TTL = " redis_machine_ttl=2s"


async def machines(start_nginx, redis, n, extra=TTL, sub="",
                   allow_log=(), size="16m", reuseport=False):
    out = [start_nginx(zone=redis_conf(redis.url, size=size, extra=extra),
                       sub_locations=STATUS, sub=sub, reuseport=reuseport,
                       allow_log=list(allow_log) + REDIS_ERRORS)
           for _ in range(n)]
    for m in out:
        await wait_in_sync(m)
    return out


async def info_subscribers(m, channel):
    r = await m.info(channel)
    if r.status == 404:
        return None
    assert r.status == 200, r
    return r.json()["subscribers"]


async def until_count(m, channel, want, timeout=10):
    """Polls GET's channel info on machine m until it says `want`
    subscribers (the push lag is a fraction of a second)."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = await info_subscribers(m, channel)
        if got == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{channel}: {got} subscribers, not {want}")


async def status(m):
    r = await m.sub_http("GET", "/sse-status")
    assert r.status == 200, r
    return r.json()["zones"][0]


def counted_until(redis, machine):
    """Until when (ms, Redis's clock) Redis counts the machine, or 0."""
    v = redis.cli("HGET", "{sse:sse}:alive", machine).strip()
    return int(v) if v else 0


def redis_ms(redis):
    sec, usec = redis.cli("TIME").split()
    return int(sec) * 1000 + int(usec) // 1000


def fields(redis, channel):
    """The channel's count hash in Redis: {machine id: count}."""
    out = redis.cli("HGETALL", "{sse:sse}:subs:" + channel).split()
    return {out[i]: int(out[i + 1]) for i in range(0, len(out), 2)}


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("param,why", [
    ("redis=redis://127.0.0.1 redis_machine_ttl=abc",
     "invalid redis_machine_ttl \"abc\""),
    ("redis=redis://127.0.0.1 redis_machine_ttl=500ms",
     "at least 1s"),
    ("redis_machine_ttl=5s", "needs \"redis=\""),
    ("redis=redis://127.0.0.1 redis_machine_ttl=5s redis_machine_ttl=6s",
     "duplicate \"redis_machine_ttl=\" parameter"),
])
def test_bad_machine_ttl_fails_nginx_t(tmp_path, param, why):
    assert_zone_refused(tmp_path, param, why)


# ---------------------------------------------------------------- sums

@pytest.mark.timeout_s(60)
async def test_publish_and_info_count_every_machine(start_nginx,
                                                    start_redis):
    r = start_redis()
    a, b, c = await machines(start_nginx, r, 3)
    held = [await b.stream("room") for _ in range(2)]
    held += [await c.stream("room") for _ in range(2)]
    held.append(await c.stream("/multi?channels=other,room"))
    # Machine A holds no subscriber and no event of the channel: its info
    # is the other machines'.
    await until_count(a, "room", 5)
    resp = await a.publish("room", "hello")
    assert resp.status == 202, resp
    assert resp.json()["subscribers"] == 5
    for m in (b, c):
        await until_count(m, "room", 5)
    # A subscriber of the publishing machine counts at once (its own
    # count is exact, read from its zone).
    mine = await a.stream("room")
    resp = await a.publish("room", "again")
    assert resp.json()["subscribers"] == 6
    # Leaving on C: the sums drop everywhere.
    for s in held[2:]:
        s.close()
    for m in (a, b, c):
        await until_count(m, "room", 3)
    assert (await a.publish("room", "x")).json()["subscribers"] == 3
    # In Redis: one field per machine with subscribers.
    ids = {m: (await status(m))["redis_counts"]["machine"] for m in (a, b, c)}
    assert len(set(ids.values())) == 3
    deadline = time.monotonic() + 10
    while fields(r, "room") != {ids[a]: 1, ids[b]: 2}:
        assert time.monotonic() < deadline, fields(r, "room")
        await asyncio.sleep(0.05)
    st = (await status(b))["redis_counts"]
    assert st["pending"] == 0 and st["pushes"] >= 1, st
    assert st["last_push_ms_ago"] is not None
    # The same figures for Prometheus.
    prom = (await b.sub_http("GET", "/sse-status?format=prometheus")).text
    pushes = re.search(r'^sse_redis_count_pushes_total\{zone="sse"\} (\d+)$',
                       prom, re.M)
    assert pushes and int(pushes.group(1)) >= st["pushes"], prom
    assert re.search(r'^sse_redis_count_pending\{zone="sse"\} 0$', prom, re.M)
    assert re.search(r'^sse_redis_count_push_age_seconds\{zone="sse"\} '
                     r'[0-9.]+$', prom, re.M)
    assert "# TYPE sse_redis_count_push_errors_total counter" in prom
    for s in held[:2] + [mine]:
        s.close()
    for m in (a, b, c):
        await until_count(m, "room", 0)


def script_calls(redis):
    """How many times Redis ran the publish script (EVALSHA) so far."""
    m = re.search(r"cmdstat_evalsha:calls=(\d+)",
                  redis.cli("INFO", "commandstats"))
    return int(m.group(1)) if m else 0


@pytest.mark.timeout_s(120)
async def test_posts_sharing_a_script_call_each_count_their_channel(
        start_nginx, start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    # Channel gK has K subscribers on B, and one more on A for g2.
    want = {f"g{k}": k for k in range(1, 5)}
    held = [await b.stream(ch) for ch, k in want.items() for _ in range(k)]
    held.append(await a.stream("g2"))
    want["g2"] += 1
    want["g0"] = 0
    for ch, k in want.items():
        await until_count(a, ch, k or None)
    await a.publish_ok("warm", "x")  # the script is loaded, the clock known
    before = script_calls(r)
    conns, per = 20, 10

    async def publisher(k):
        # Each connection POSTs to one channel in turn; the 20 connections
        # run at once, so a worker's call holds POSTs to several channels.
        c = await KeepAlive.open(a.pub_port)
        ch = f"g{k % 5}"
        try:
            for i in range(per):
                resp = await c.request("POST", "/publish/" + ch,
                                       body=f"{k}-{i}".encode(), timeout=30)
                assert resp.status == 202, resp
                assert resp.json()["subscribers"] == want[ch], (ch, resp)
        finally:
            c.close()

    await asyncio.gather(*(publisher(k) for k in range(conns)))
    calls = script_calls(r) - before
    assert calls < conns * per, f"{calls} script calls: nothing shared"
    # A streaming publish's answer: its channel's count.
    body = "".join(f"data: {i}\n\n" for i in range(150))
    resp = await a.publish("g3", body.encode(),
                           headers={"Content-Type": "text/event-stream"})
    assert resp.status == 202, resp
    assert resp.json()["published"] == 150
    assert resp.json()["subscribers"] == 3
    for s in held:
        s.close()


@pytest.mark.timeout_s(60)
async def test_more_changes_than_the_zone_notes_are_all_pushed(
        start_nginx, start_redis):
    r = start_redis()
    # A 2m zone notes 32 changed channels between two pushes: one stream
    # joins 64 at once, and the pusher reads every subscription instead.
    a, b = await machines(start_nginx, r, 2, size="2m")
    names = [f"m{i}" for i in range(64)]
    s = await b.stream("/multi?channels=" + ",".join(names))
    for n in names:
        await until_count(a, n, 1)
    s.close()
    for n in names:
        await until_count(a, n, None)


@pytest.mark.timeout_s(60)
async def test_a_killed_pusher_is_replaced_and_its_streams_leave(
        start_nginx, start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2,
                          allow_log=[r"exited on signal 9"])
    held = [await b.stream("pk") for _ in range(8)]
    await until_count(a, "pk", 8)
    st = await status(b)
    pusher = st["redis_counts"]["pusher_pid"]
    on_pusher = {w["pid"]: w["subscribers"] for w in st["workers"]}[pusher]
    os.kill(pusher, signal.SIGKILL)
    # The dead worker's streams leave (its slot reaped), counted by the
    # worker that takes the pushing over.
    await until_count(a, "pk", 8 - on_pusher or None, timeout=15)
    more = [await b.stream("pk") for _ in range(2)]
    await until_count(a, "pk", 10 - on_pusher)
    assert (await status(b))["redis_counts"]["pusher_pid"] != pusher
    for s in held + more:
        s.close()
    await until_count(a, "pk", None)


@pytest.mark.timeout_s(60)
async def test_delete_answers_every_machines_subscribers(start_nginx,
                                                         start_redis):
    r = start_redis()
    a, b, c = await machines(start_nginx, r, 3)
    subs = [await b.stream("gone") for _ in range(3)]
    subs.append(await c.stream("gone"))
    await until_count(a, "gone", 4)
    resp = await a.pub_http("DELETE", "/publish/gone")
    assert resp.status == 200, resp
    assert resp.json() == {"channel": "gone", "deleted": True,
                           "subscribers": 4}
    for s in subs:
        await s.until_end()
    # Nobody left anywhere: gone.
    for m in (a, b, c):
        await until_count(m, "gone", None)
    assert (await a.pub_http("DELETE", "/publish/gone")).status == 404


@pytest.mark.timeout_s(60)
async def test_a_killed_machine_leaves_the_sum_after_its_ttl(start_nginx,
                                                             start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    held = [await b.stream("k") for _ in range(3)]
    await until_count(a, "k", 3)
    b_id = (await status(b))["redis_counts"]["machine"]
    # The whole machine dies at once: master and workers.
    for pid in b.pids():
        os.kill(pid, signal.SIGKILL)
    for s in held:
        s.close()
    # Its time runs out (2 s): its count leaves the sum, and the sum that
    # met its field dropped it.
    await until_count(a, "k", None, timeout=15)
    assert b_id not in fields(r, "k")
    assert counted_until(r, b_id) <= redis_ms(r)
    # A's refreshes forget it (its set of channels emptied).
    deadline = time.monotonic() + 15
    while counted_until(r, b_id):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert r.cli("EXISTS", "{sse:sse}:machine:" + b_id).strip() == "0"


@pytest.mark.timeout_s(60)
async def test_a_clean_stop_removes_the_machines_counts(start_nginx,
                                                        start_redis):
    r = start_redis()
    # The default TTL (10 s): only the stop itself can remove them soon.
    a, b = await machines(start_nginx, r, 2, extra="")
    held = [await b.stream("bye") for _ in range(2)]
    await until_count(a, "bye", 2)
    b_id = (await status(b))["redis_counts"]["machine"]
    assert counted_until(r, b_id) > redis_ms(r)
    assert b.stop()
    for s in held:
        s.close()

    def removed():
        return (b_id not in fields(r, "bye") and
                counted_until(r, b_id) == 0 and
                r.cli("EXISTS", "{sse:sse}:machine:" + b_id).strip() == "0")
    # Sent before its connections closed, but Redis may still be reading
    # them when this test's own client asks (once in an ASan run): well
    # under the 10 s the TTL would take.
    deadline = time.monotonic() + 3
    while not removed():
        assert time.monotonic() < deadline, (fields(r, "bye"),
                                             counted_until(r, b_id))
        await asyncio.sleep(0.05)
    assert await info_subscribers(a, "bye") is None


def machine_traces(redis, machine):
    """Every key and hash field Redis holds of the machine."""
    out = []
    for k in redis.cli("--scan", "--pattern", "{sse:sse}:*").split():
        if machine in k:
            out.append(k)
        elif ((":subs:" in k or k.endswith(":alive")) and
              machine in redis.cli("HKEYS", k).split()):
            out.append(f"{k} [{machine}]")
    return sorted(out)


@pytest.mark.timeout_s(90)
async def test_a_stop_while_counts_change_leaves_nothing(start_nginx,
                                                         start_redis):
    # Subscribers come and go on 200 channels on both workers while the
    # machine stops, so pushes (and their replies) are under way while
    # each worker removes the machine: none may land after the last
    # removal and leave a key nobody collects (the collectors look only at
    # machines Redis still counts), and the removal must reach Redis whole
    # (a close with replies unread resets the connection, and Redis drops
    # what it had not read). Without either, each round fails about one
    # time in five on a quiet machine, more under load.
    r = start_redis()
    for _ in range(3):
        a, b = await machines(start_nginx, r, 2, extra="")
        held = [await b.stream(f"c{i}") for i in range(200)]
        await until_count(a, "c0", 1)
        b_id = (await status(b))["redis_counts"]["machine"]
        stopping = False

        async def churn():
            i = 0
            while not stopping:
                try:
                    s = await b.subscribe(f"c{i % 200}")
                    await asyncio.sleep(0.01)
                    s.close()
                except OSError:
                    await asyncio.sleep(0.01)
                i += 1
        tasks = [asyncio.ensure_future(churn()) for _ in range(16)]
        await asyncio.sleep(0.7)
        stopped = await asyncio.to_thread(b.stop)
        stopping = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in held:
            s.close()
        assert stopped
        deadline = time.monotonic() + 3
        while machine_traces(r, b_id):
            assert time.monotonic() < deadline, machine_traces(r, b_id)
            await asyncio.sleep(0.05)
        a.stop()


async def streams_on(m, channel, worker, n):
    """n streams of the channel on machine m, all held by `worker`."""
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        assert tries < 200, "no connection landed on the worker"
        s = await m.stream(channel)
        await s.next_block()  # retry: the stream is up
        if m.worker_of(m.sub_port, s.local_port) == worker:
            out.append(s)
        else:
            s.close()
    return out


@pytest.mark.timeout_s(60)
async def test_a_worker_stopping_alone_leaves_the_pushers_counts_right(
        start_nginx, start_redis):
    # One worker of machine B that never pushed stops cleanly (SIGQUIT to
    # it alone; the master starts another) while the pusher goes on: the
    # machine stays counted, and every count stays right, a channel that
    # empties afterwards included (a removal that deleted the machine's
    # set made the pusher forget that channel: its count stayed in Redis
    # for good, summed by every machine).
    r = start_redis()
    a, b = await machines(start_nginx, r, 2, extra="", reuseport=True)
    st = (await status(b))["redis_counts"]
    b_id, pusher = st["machine"], st["pusher_pid"]
    assert pusher in b.workers()
    keep = await streams_on(b, "keep", pusher, 1)
    gone = await streams_on(b, "gone", pusher, 2)
    await until_count(a, "keep", 1)
    await until_count(a, "gone", 2)
    other = [p for p in b.workers() if p != pusher][0]
    # A publish through it: its connection to Redis is up, so its removal
    # goes out when it stops.
    pub = await b.publisher_on(other)
    r1 = await pub.request("POST", "/publish/elsewhere", body="x")
    assert r1.status == 202, r1
    pub.close()
    os.kill(other, signal.SIGQUIT)
    deadline = time.monotonic() + 10
    while other in b.workers() or len(b.workers()) < 2:
        assert time.monotonic() < deadline, b.workers()
        await asyncio.sleep(0.05)
    assert (await status(b))["redis_counts"]["pusher_pid"] == pusher
    # Counted throughout (or, were it taken out, again by the pusher's next
    # refresh, a third of the TTL). No machine reads the counts meanwhile:
    # a read drops the fields of a machine not counted, which would hide a
    # count left behind.
    deadline = time.monotonic() + 10
    while counted_until(r, b_id) <= redis_ms(r):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    for s in gone:
        s.close()
    await until_count(a, "gone", None)
    await until_count(a, "keep", 1)
    assert fields(r, "keep") == {b_id: 1}
    assert b_id not in fields(r, "gone")
    assert counted_until(r, b_id) > redis_ms(r)
    for s in keep:
        s.close()
    assert b.stop()
    deadline = time.monotonic() + 3
    while machine_traces(r, b_id):
        assert time.monotonic() < deadline, machine_traces(r, b_id)
        await asyncio.sleep(0.05)


# Atomically: the machine's field of the channel's count, and its entry
# in the liveness hash (nil when absent).
BOTH = ("return {redis.call('HGET', KEYS[1], ARGV[1]), "
        "redis.call('HGET', KEYS[2], ARGV[1])}")


@pytest.mark.timeout_s(60)
async def test_a_push_writes_nothing_for_a_machine_redis_dropped(
        start_nginx, start_redis):
    # Redis stops counting machine B (as when another of its workers
    # stopped cleanly, or its time ran out): B's next push must not write
    # a count then, which no collector would ever remove; it counts itself
    # again at once and pushes everything. A long TTL keeps B's own
    # refresh (every third of it) out of the way.
    r = start_redis()
    a, b = await machines(start_nginx, r, 2, extra=" redis_machine_ttl=60s")
    b_id = (await status(b))["redis_counts"]["machine"]
    deadline = time.monotonic() + 5
    while counted_until(r, b_id) <= redis_ms(r):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    r.cli("HDEL", "{sse:sse}:alive", b_id)
    held = await b.stream("late")
    deadline = time.monotonic() + 5
    while True:
        field, alive = (r.cli("EVAL", BOTH, "2", "{sse:sse}:subs:late",
                              "{sse:sse}:alive", b_id).split("\n") + [""])[:2]
        # A count only ever for a machine Redis counts.
        assert not field or alive, (field, alive)
        if field == "1":
            break
        assert time.monotonic() < deadline, (field, alive)
        await asyncio.sleep(0.02)
    await until_count(a, "late", 1)
    held.close()
    await until_count(a, "late", None)


@pytest.mark.timeout_s(60)
async def test_a_reload_keeps_the_machine_id_and_counts(start_nginx,
                                                        start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    held = [await b.stream("rl") for _ in range(2)]
    await until_count(a, "rl", 2)
    before = (await status(b))["redis_counts"]["machine"]
    b.reload()
    # The old workers end their streams; the clients come back.
    for s in held:
        await s.until_end()
    await wait_in_sync(b)
    held = [await b.stream("rl") for _ in range(2)]
    assert (await status(b))["redis_counts"]["machine"] == before
    await until_count(a, "rl", 2)
    # One machine, one field: the reload's workers did not count it twice
    # nor drop the machine.
    assert fields(r, "rl") == {before: 2}
    assert counted_until(r, before) > redis_ms(r)
    # Still pushed after the reload.
    held.append(await b.stream("rl"))
    await until_count(a, "rl", 3)
    for s in held:
        s.close()
    await until_count(a, "rl", None)


@pytest.mark.timeout_s(60)
async def test_redis_down_answers_what_the_machine_knows(start_nginx,
                                                         start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    held = [await b.stream("dn") for _ in range(2)]
    held.append(await a.stream("dn"))
    await until_count(a, "dn", 3)
    r.kill()
    # Nothing waits on the dead Redis: the local count, promptly.
    t = time.monotonic()
    await until_count(a, "dn", 1)
    await until_count(b, "dn", 2)
    assert time.monotonic() - t < 8
    assert (await a.publish("dn", "x")).status == 503


# ---------------------------------------------------------------- presence

@pytest.mark.timeout_s(60)
async def test_presence_counts_every_machine(start_nginx, start_redis):
    r = start_redis()
    a, b = await machines(
        start_nginx, r, 2,
        sub="            sse_presence_channel $ch:presence;")
    w = await a.stream("room:presence")

    async def next_presence():
        e = await w.next_event(5)
        return e.event, json.loads(e.data)

    on_b = await b.stream("room")
    assert await next_presence() == \
        ("join", {"sub": None, "channel": "room", "count": 1})
    await until_count(a, "room", 1)
    on_a = await a.stream("room")
    assert await next_presence() == \
        ("join", {"sub": None, "channel": "room", "count": 2})
    await until_count(b, "room", 2)
    on_b.close()
    assert await next_presence() == \
        ("leave", {"sub": None, "channel": "room", "count": 1})
    await until_count(a, "room", 1)
    on_a.close()
    assert await next_presence() == \
        ("leave", {"sub": None, "channel": "room", "count": 0})


# ---------------------------------------------------------------- review

@pytest.mark.timeout_s(90)
async def test_subscribers_back_at_once_after_a_delete_are_counted(
        start_nginx, start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    n = 4
    held = [await b.stream("dl") for _ in range(n)]
    await until_count(a, "dl", n)
    # A DELETE wipes every machine's field of the channel in Redis; B's
    # subscribers come back before B's next push (every 250 ms), so that
    # B's count is what it was: B pushes it again all the same. A few
    # rounds: one alone may straddle a push.
    for _ in range(3):
        resp = await a.pub_http("DELETE", "/publish/dl")
        assert resp.status == 200, resp
        assert resp.json()["subscribers"] == n
        await asyncio.gather(*(s.until_end() for s in held))
        held = await asyncio.gather(*(b.stream("dl") for _ in range(n)))
        await until_count(a, "dl", n, timeout=5)
    for s in held:
        s.close()
    await until_count(a, "dl", None)


@pytest.mark.timeout_s(90)
async def test_a_channel_hash_of_many_machines_is_summed(start_nginx,
                                                         start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    s = await b.stream("big")
    await until_count(a, "big", 1)
    key = "{sse:sse}:subs:big"

    def fill():
        # 9000 fields of machines Redis does not count (more values than
        # Lua's unpack takes at once), and three counted ones: 1+2+3.
        args = []
        for i in range(9000):
            args += [f"gone{i:05d}", "1"]
        r.cli("HSET", key, *args)
        until = str(redis_ms(r) + 600000)
        for i in (1, 2, 3):
            r.cli("HSET", key, f"fake{i}", str(i))
            r.cli("HSET", "{sse:sse}:alive", f"fake{i}", until)

    fill()
    assert await info_subscribers(a, "big") == 7
    # The sum dropped the fields of machines not counted.
    assert len(fields(r, "big")) == 4
    fill()
    resp = await a.publish("big", "once")
    assert resp.status == 202, resp
    assert resp.json()["subscribers"] == 7
    assert (await s.next_event()).data == "once"
    await s.no_block(0.5)
    fill()
    resp = await a.pub_http("DELETE", "/publish/big")
    assert resp.status == 200, resp
    assert resp.json()["subscribers"] == 7
    await s.until_end()


@pytest.mark.timeout_s(120)
async def test_reloads_never_take_the_machine_out(start_nginx, start_redis):
    r = start_redis()
    # The default TTL (10 s): reloads one after the other delay the
    # machine's refreshes.
    a = (await machines(start_nginx, r, 1))[0]
    b = start_nginx(zone=redis_conf(r.url), sub_locations=STATUS,
                    allow_log=REDIS_ERRORS)
    await wait_in_sync(b)
    b_id = (await status(b))["redis_counts"]["machine"]
    # Every change of the liveness hash and of B's set, as Redis makes it.
    r.cli("CONFIG", "SET", "notify-keyspace-events", "Kgh")
    watch = subprocess.Popen(
        [REDIS_CLI, "-p", str(r.port), "PSUBSCRIBE",
         "__keyspace@0__:{sse:sse}:alive",
         "__keyspace@0__:{sse:sse}:machine:" + b_id],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        await asyncio.sleep(0.3)
        # Old workers that outlive the reloads after theirs (nginx's cycles
        # come back at the same addresses after a few reloads): each has
        # published (its connection to Redis is up), then waits for the
        # body of another publish on the same connection.
        slow = []
        for _ in range(6):
            c = await KeepAlive.open(b.pub_port)
            resp = await c.request("POST", "/publish/slow", body=b"x")
            assert resp.status == 202, resp
            c.writer.write(b"POST /publish/slow HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 10\r\n\r\nab")
            await c.writer.drain()
            slow.append(c)
            b.reload()
            await asyncio.sleep(0.1)
        held = [await b.stream("rr") for _ in range(2)]
        await until_count(a, "rr", 2)
        # The old workers stop now, the newest still running.
        for c in slow:
            c.close()
        deadline = time.monotonic() + 10
        while len(b.pids()) > 3:
            assert time.monotonic() < deadline, b.pids()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert await info_subscribers(a, "rr") == 2
    finally:
        watch.terminate()
        out = watch.communicate(timeout=10)[0]
    # Refreshes (hset) only: no reload's worker removed the machine.
    assert "hset" in out, out
    assert "hdel" not in out and "\ndel\n" not in out, out
    assert counted_until(r, b_id) > redis_ms(r)
    for s in held:
        s.close()


@pytest.mark.timeout_s(60)
async def test_pending_stays_true_when_a_reload_takes_the_pushing_over(
        start_nginx, start_redis):
    r = start_redis()
    b = start_nginx(zone=redis_conf(r.url, extra=" redis_timeout=5s"),
                    sub_locations=STATUS, allow_log=REDIS_ERRORS)
    await wait_in_sync(b)
    first = await b.stream("p-first")
    deadline = time.monotonic() + 5
    while (await status(b))["redis_counts"]["pushes"] == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    names = [f"p{i}" for i in range(20)]
    # Redis holds every command for a while: the pusher's push of the 20
    # channels waits there, then a reload hands the pushing to a new
    # worker, and the old one gets its answer.
    r.cli("CLIENT", "PAUSE", "2000", "ALL")
    s = await b.stream("/multi?channels=" + ",".join(names))
    deadline = time.monotonic() + 5
    while (await status(b))["redis_counts"]["pending"] < 20:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.6)  # the push is sent (every 250 ms)
    old = (await status(b))["redis_counts"]["pusher_pid"]
    b.reload()
    await s.until_end()
    await first.until_end()
    deadline = time.monotonic() + 15
    while True:
        st = (await status(b))["redis_counts"]
        assert st["pending"] < 1000, st
        if st["pending"] == 0 and st["pusher_pid"] not in (0, old) and \
                old not in b.pids():
            break
        assert time.monotonic() < deadline, st
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    assert (await status(b))["redis_counts"]["pending"] == 0


def resp(*args):
    """A Redis command in RESP."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


@pytest.mark.timeout_s(60)
async def test_a_machine_back_while_collected_keeps_counting(start_nginx,
                                                             start_redis):
    r = start_redis()
    a = (await machines(start_nginx, r, 1))[0]
    alive = "{sse:sse}:alive"
    # Machine X, whose time ran out: the next refresh of A finds it dead
    # and collects it.
    r.cli("HSET", "{sse:sse}:subs:xc", "X", "5")
    r.cli("SADD", "{sse:sse}:machine:X", "xc")
    r.cli("HSET", alive, "X", str(redis_ms(r) - 1))
    r.cli("CONFIG", "SET", "notify-keyspace-events", "Kh")
    srd, swr = await asyncio.open_connection("127.0.0.1", r.port)
    crd, cwr = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        swr.write(resp("SUBSCRIBE", "__keyspace@0__:" + alive))
        buf = b""
        while b"\r\nhset\r\n" not in buf:
            buf += await asyncio.wait_for(srd.read(4096), 5)
        # A refreshed (and found X dead): X comes back at once, before A
        # is done collecting it.
        cwr.write(resp("EVAL", "local t = redis.call('TIME') "
                       "redis.call('HSET', KEYS[1], 'X', "
                       "t[1] * 1000 + 60000) return 1", "1", alive))
        assert (await asyncio.wait_for(crd.readline(), 5)) == b":1\r\n"
    finally:
        swr.close()
        cwr.close()
    await asyncio.sleep(1)
    # Counted again, whatever A had collected before X came back.
    assert counted_until(r, "X") > redis_ms(r)


@pytest.mark.timeout_s(60)
async def test_a_reload_that_resizes_the_zone_drops_the_old_id_at_once(
        start_nginx, start_redis):
    r = start_redis()
    a = (await machines(start_nginx, r, 1))[0]
    # The default TTL (10 s): the old id leaves sooner than its time.
    b = start_nginx(zone=redis_conf(r.url), sub_locations=STATUS,
                    allow_log=REDIS_ERRORS)
    await wait_in_sync(b)
    old = (await status(b))["redis_counts"]["machine"]
    held = [await b.stream("zs") for _ in range(2)]
    await until_count(a, "zs", 2)
    t = time.monotonic()
    b.conf.write_text(b.conf.read_text().replace("zone=sse:16m",
                                                 "zone=sse:32m"))
    b.reload()
    for s in held:
        await s.until_end()
    await wait_in_sync(b)
    new = (await status(b))["redis_counts"]["machine"]
    assert new != old
    held = [await b.stream("zs") for _ in range(2)]
    # The old workers take the old id out as they stop, long before its
    # time runs out: then the subscribers count once.
    while counted_until(r, old) != 0:
        assert time.monotonic() - t < 8, fields(r, "zs")
        await asyncio.sleep(0.05)
    assert old not in fields(r, "zs")
    await until_count(a, "zs", 2)
    for s in held:
        s.close()
