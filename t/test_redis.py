"""The Redis engine: several nginx "machines" (2 workers each) share their
channels through a real redis-server started for the test."""

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_ports, seq_of, overload_end
from redishelp import (assert_zone_refused, zone_nginx_t,  # noqa: F401
                       needs_redis, redis_conf, start_redis, wait_in_sync)

pytestmark = needs_redis
ROOT = Path(__file__).resolve().parent.parent

STATUS = "        location = /sse-status { sse_status; }\n"
# Machines whose Redis goes away log why, as [error].
REDIS_ERRORS = [r"\[error\].*sse: redis", r"\[error\].*connect\(\) failed",
                r"\[error\].*recv\(\) failed"]


async def machines(start_nginx, redis, n, sub="", pub="", extra="",
                   allow_log=(), url=None):
    out = []
    for _ in range(n):
        out.append(start_nginx(zone=redis_conf(url or redis.url,
                                               extra=extra),
                               sub_locations=STATUS, sub=sub, pub=pub,
                               allow_log=list(allow_log) + REDIS_ERRORS))
    for m in out:
        await wait_in_sync(m)
    return out


async def no_event(c, wait):
    """Nothing but heartbeats arrives within `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            b = await c.next_block(left)
        except asyncio.TimeoutError:
            return
        assert not b.is_event, b


async def publish_through_failover(m, ch, n=10, within=30):
    """Publishes "a0".."a{n-1}" on machine m while a Redis node fails
    over: each answer a 202 or a 503 (then sent again), all accepted
    within `within` seconds; their (id, data)."""
    deadline = time.monotonic() + within
    after = []
    while len(after) < n:
        resp = await m.publish(ch, f"a{len(after)}")
        assert resp.status in (202, 503), resp
        if resp.status == 202:
            after.append((resp.json()["id"], f"a{len(after)}"))
        else:
            assert time.monotonic() < deadline, resp
            await asyncio.sleep(0.1)
    return after


async def read_events(c, n, timeout):
    got = await c.events(n, timeout=timeout)
    return [(b.id, b.data) for b in got]


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("param,why", [
    ("redis=http://127.0.0.1", "expected redis://"),
    ("redis=redis://", "no host"),
    ("redis=redis://127.0.0.1:6379/x", "must be a number"),
    ("redis=redis://127.0.0.1:99999", "invalid port"),
    ("redis=redis://no-such-host.invalid", "host not found"),
    ("redis=redis://127.0.0.1 redis_ca=/etc/ssl/certs/ca-certificates.crt",
     "redis_ca= is for TLS"),
    ("redis=rediss://127.0.0.1 redis_ca=/no/such/ca.pem", "no/such/ca.pem"),
    ("redis=redis://127.0.0.1 redis_timeout=abc", "invalid redis_timeout"),
    ("redis_timeout=1s", "needs \"redis=\""),
    ("redis=redis://127.0.0.1 colour=blue", "invalid parameter \"colour=blue\""),
])
def test_bad_redis_parameters_fail_nginx_t(tmp_path, param, why):
    assert_zone_refused(tmp_path, param, why)


@pytest.mark.parametrize("param", [
    "redis=redis://127.0.0.1",
    "redis=redis://u:p%40ss@localhost:6380/2 redis_timeout=500ms",
    "redis=redis://secret@127.0.0.1:7000/0",
    "redis=rediss://127.0.0.1:6380",
])
def test_good_redis_urls_pass_nginx_t(tmp_path, param):
    ok, out = zone_nginx_t(tmp_path, param)
    assert ok, out


# ---------------------------------------------------------------- fan-out

@pytest.mark.timeout_s(240)
async def test_publish_anywhere_reaches_every_machine_once_in_order(
        start_nginx, start_redis):
    r = start_redis()
    ms = await machines(start_nginx, r, 3)
    subs = []
    for m in ms:
        subs += await asyncio.gather(*(m.stream("fan") for _ in range(100)))
    subs.append(await ms[0].stream("/multi?channels=other,fan"))
    total = 500
    readers = [asyncio.ensure_future(read_events(c, total, 200))
               for c in subs]

    async def publisher(k):
        # Round robin: event i through machine i % 3.
        ids = {}
        for i in range(k, total, 3):
            ids[f"e{i}"] = await ms[k].publish_ok("fan", f"e{i}")
        return ids

    sent = {}
    for ids in await asyncio.gather(*(publisher(k) for k in range(3))):
        sent.update(ids)
    got = await asyncio.gather(*readers)
    first = got[0]
    # One order, Redis's: ids strictly increasing, all of them, once.
    assert [seq_of(i) for i, _ in first] == \
        sorted(seq_of(i) for i, _ in first)
    assert sorted(first) == sorted((i, d) for d, i in sent.items())
    for g in got:
        assert g == first
    await asyncio.gather(*(no_event(c, 0.2) for c in subs))
    # Every machine holds the same ids for the channel.
    infos = [(await m.info("fan")).json() for m in ms]
    assert len({i["last_id"] for i in infos}) == 1, infos


@pytest.mark.timeout_s(300)
async def test_fan_out_3_machines_300_subscribers_2000_events(start_nginx,
                                                              start_redis):
    """Issue 9's scale: 300 subscribers on each of 3 machines, held and
    checked by build/sseload (one process per machine: every subscriber
    gets every event, once, in order); 2,000 events published round-robin
    through the three machines, each after the previous one's 202, so
    Redis's order is the publishing order."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "bench")], check=True,
                   timeout=300)
    r = start_redis()
    ms = await machines(start_nginx, r, 3)
    per, total = 300, 2000
    procs = [subprocess.Popen(
        [str(ROOT / "build" / "sseload"), "--mode", "fanout", "--no-publish",
         "--no-warmup", "--sub-port", str(m.sub_port), "--pub-port",
         str(m.pub_port), "--prefix", "big", "--subscribers", str(per),
         "--events", str(total), "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for m in ms]
    try:
        deadline = time.monotonic() + 60
        for m in ms:  # every subscriber has joined on its machine
            while True:
                st = (await m.sub_http("GET", "/sse-status")).json()
                if st["zones"][0]["subscribers"] == per:
                    break
                assert time.monotonic() < deadline, st
                await asyncio.sleep(0.1)
        ids = []
        for i in range(total):
            # sseload's body: channel seq, channel, global seq, send time.
            body = f"{i} 0 {i} {time.monotonic_ns()} "
            ids.append(await ms[i % 3].publish_ok("big0", body))
        outs = [json.loads(p.communicate(timeout=180)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [seq_of(i) for i in ids] == sorted(seq_of(i) for i in ids)
    for o in outs:
        d = o["deliveries"]
        assert o["connect"]["closed_by_server"] == 0, o["connect"]
        assert d["expected"] == d["unique"] == per * total, d
        assert d["duplicates"] == d["out_of_order"] == 0, d
        assert d["unexpected"] == d["wrong_channel"] == 0, d
        assert d["exactly_once"] and d["in_order"], d


# ---------------------------------------------------------------- resume

@pytest.mark.timeout_s(60)
async def test_resume_on_another_machine_gets_exactly_the_rest(
        start_nginx, start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    sa = await a.stream("talk")
    sent = [(await b.publish_ok("talk", f"m{i}"), f"m{i}") for i in range(10)]
    half = await read_events(sa, 5, 10)
    assert half == sent[:5]
    sa.close()
    sb = await b.stream("talk", headers={"Last-Event-ID": half[-1][0]})
    assert await read_events(sb, 5, 10) == sent[5:]
    more = await a.publish_ok("talk", "live")
    assert await read_events(sb, 1, 10) == [(more, "live")]
    await no_event(sb, 0.3)


@pytest.mark.timeout_s(60)
async def test_multiplexed_resume_on_another_machine(start_nginx,
                                                     start_redis):
    r = start_redis()
    a, b, c = await machines(start_nginx, r, 3)
    sa = await a.stream("/multi?channels=x,y")
    sent = []
    for i in range(12):
        ch = "x" if i % 3 else "y"
        m = (a, b, c)[i % 3]
        sent.append((await m.publish_ok(ch, f"{ch}{i}"), f"{ch}{i}"))
    await c.publish_ok("z", "not subscribed")
    half = await read_events(sa, 6, 10)
    assert half == sent[:6]
    sa.close()
    sc = await c.stream("/multi?channels=y,x",
                        headers={"Last-Event-ID": half[-1][0]})
    assert await read_events(sc, 6, 10) == sent[6:]
    await no_event(sc, 0.3)


@pytest.mark.timeout_s(60)
async def test_restarted_machine_serves_history_from_redis(start_nginx,
                                                           start_redis):
    r = start_redis()
    sub = "            sse_initial_events 3;"
    (a,) = await machines(start_nginx, r, 1, sub=sub)
    sent = [(await a.publish_ok("hist", f"h{i}"), f"h{i}") for i in range(6)]
    assert a.stop()
    # A new nginx (fresh shared memory) on the same Redis.
    (a2,) = await machines(start_nginx, r, 1, sub=sub)
    s = await a2.stream("hist")
    assert await read_events(s, 3, 10) == sent[3:]
    s2 = await a2.stream("hist", headers={"Last-Event-ID": sent[1][0]})
    assert await read_events(s2, 4, 10) == sent[2:]
    await no_event(s2, 0.3)
    st = (await a2.sub_http("GET", "/sse-status")).json()["zones"][0]
    assert st["epoch"] == sent[0][0].split("-")[0]


# ---------------------------------------------------------------- failures

@pytest.mark.timeout_s(120)
async def test_redis_killed_under_load_loses_and_doubles_nothing(
        start_nginx, start_redis, tmp_path):
    # Persistent: the restarted Redis holds what it acknowledged.
    r = start_redis(args=["--appendonly", "yes", "--appendfsync", "always"])
    ms = await machines(start_nginx, r, 2, sub="            sse_heartbeat 1s;")
    subs = []
    for m in ms:
        subs += await asyncio.gather(*(m.stream("load") for _ in range(20)))

    attempted, accepted, refused = [], {}, []
    stop = asyncio.Event()

    async def publisher(k):
        i = 0
        while not stop.is_set():
            data = f"p{k}-{i}"
            attempted.append(data)
            resp = await ms[k].publish("load", data)
            assert resp.status in (202, 503), resp
            if resp.status == 202:
                accepted[data] = resp.json()["id"]
            else:
                assert resp.header("Retry-After") == "1", resp
                assert "redis" in resp.text, resp
                refused.append(data)
                await asyncio.sleep(0.01)
            i += 1

    pubs = [asyncio.ensure_future(publisher(k)) for k in range(2)]
    await asyncio.sleep(1)
    r.kill()
    killed = time.monotonic()
    await asyncio.sleep(3)
    during = len(accepted)
    r.start()
    # Publishes succeed again once the machines reconnect.
    deadline = time.monotonic() + 15
    while len(accepted) == during and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1)
    stop.set()
    await asyncio.gather(*pubs)
    assert refused, "no publish was refused while Redis was down"
    assert len(accepted) > during, "no publish accepted after the restart"
    last = max(accepted.values(), key=seq_of)
    for c in subs:
        got = []
        while not got or got[-1][0] != last:
            b = await c.next_event(15)
            got.append((b.id, b.data))
        seqs = [seq_of(i) for i, _ in got]
        assert seqs == sorted(set(seqs)), "out of order or doubled"
        datas = {d for _, d in got}
        assert set(accepted) <= datas, "an accepted event is missing"
        assert datas <= set(attempted)
        assert all(accepted[d] == i for i, d in got if d in accepted)
    for m in ms:
        st = (await m.sub_http("GET", "/sse-status")).json()["zones"][0]
        assert st["redis"]["state"] == "up"
        assert st["redis"]["reconnects"] >= 1
        assert st["redis"]["publish_errors"] >= 1
    assert time.monotonic() - killed < 60


@pytest.mark.timeout_s(60)
async def test_redis_back_empty_gives_new_epoch_and_gap(start_nginx,
                                                        start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    s = await a.stream("e")
    first = await b.publish_ok("e", "before")
    assert (await s.next_event()).id == first
    r.kill()
    r.start()  # no persistence: empty
    # The machines notice, take the new epoch, and end their streams.
    blocks = await s.until_end(10)
    assert [("event", "sse-error"), ("data", '{"reason":"evicted"}')] in \
        [b_.fields for b_ in blocks], blocks
    await wait_in_sync(a)
    await wait_in_sync(b)
    new = await b.publish_ok("e", "after")
    assert new.split("-")[0] != first.split("-")[0]
    s2 = await a.stream("e", headers={"Last-Event-ID": first})
    gap = await s2.next_event()
    assert gap.event == "sse-gap"
    assert '"reason":"epoch"' in gap.data
    # The new epoch's events resume exactly, on either machine.
    s3 = await b.stream("e", headers={"Last-Event-ID": new})
    newer = await a.publish_ok("e", "later")
    assert (await s3.next_event()).id == newer


@pytest.mark.timeout_s(60)
async def test_unreachable_redis_gives_503_and_refused_streams(
        start_nginx, tmp_path):
    (port,) = free_ports(1)  # nobody listens there
    n = start_nginx(zone=redis_conf(f"redis://127.0.0.1:{port}",
                                    extra=" redis_timeout=500ms"),
                    sub_locations=STATUS, allow_log=REDIS_ERRORS)
    t0 = time.monotonic()
    resp = await n.publish("c", "x")
    assert resp.status == 503, resp
    assert resp.header("Retry-After") == "1"
    assert "redis could not store the event" in resp.text
    assert time.monotonic() - t0 < 5
    s = await n.subscribe("c")
    assert s.status == 200
    blocks = await s.until_end(5)
    assert [("event", "sse-error"), ("data", '{"reason":"unavailable"}')] in \
        [b.fields for b in blocks]
    st = (await n.sub_http("GET", "/sse-status")).json()["zones"][0]
    assert st["engine"] == "redis"
    assert st["redis"]["state"] != "up"
    assert "connect" in st["redis"]["last_error"], st
    assert "[error]" in n.log_text()


@pytest.mark.timeout_s(60)
async def test_hung_redis_times_out_with_503(start_nginx, start_redis):
    r = start_redis()
    (n,) = await machines(start_nginx, r, 1, extra=" redis_timeout=300ms")
    await n.publish_ok("c", "warm")
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        resp = await n.publish("c", "x")
        assert resp.status == 503, resp
        assert "timed out" in resp.text, resp
        assert time.monotonic() - t0 < 5
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    # Publishes fail fast for a moment after a failure, then go through.
    deadline = time.monotonic() + 5
    while (await n.publish("c", "after")).status != 202:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


@pytest.mark.timeout_s(60)
async def test_password_and_database(start_nginx, start_redis):
    r = start_redis(args=["--requirepass", "s3cret"])
    bad = start_nginx(zone=redis_conf(f"redis://wrong@127.0.0.1:{r.port}"),
                      sub_locations=STATUS, allow_log=REDIS_ERRORS)
    resp = await bad.publish("c", "x")
    assert resp.status == 503, resp
    assert "AUTH" in resp.text, resp
    (good,) = await machines(start_nginx, r, 1,
                             url=f"redis://:s3cret@127.0.0.1:{r.port}/3")
    await good.publish_ok("c", "x")
    keys = r.cli("-n", "3", "KEYS", "*", password="s3cret").split()
    assert "{sse:sse}:ch:c" in keys, keys
    assert r.cli("-n", "0", "KEYS", "*", password="s3cret").split() == []
    st = (await good.sub_http("GET", "/sse-status")).json()["zones"][0]
    assert "s3cret" not in st["redis"]["url"]


# ---------------------------------------------------------------- publishing

@pytest.mark.timeout_s(60)
async def test_streaming_publish_through_redis(start_nginx, start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    s = await b.stream("st")
    body = "".join(f"event: e\ndata: {i}\n\n" for i in range(50))
    resp = await a.publish("st", body.encode(),
                           headers={"Content-Type": "text/event-stream"})
    assert resp.status == 202, resp
    assert resp.json()["published"] == 50
    got = await s.events(50, 10)
    assert [g.data for g in got] == [str(i) for i in range(50)]
    assert all(g.event == "e" for g in got)
    r.kill()
    resp = await a.publish("st", body.encode(),
                           headers={"Content-Type": "text/event-stream"})
    assert resp.status == 503, resp
    assert "0 published before it" in resp.text


@pytest.mark.timeout_s(60)
async def test_delete_ends_the_channel_on_every_machine(start_nginx,
                                                      start_redis):
    r = start_redis()
    ms = await machines(start_nginx, r, 3)
    subs = [await m.stream("del") for m in ms for _ in range(2)]
    multi = await ms[2].stream("/multi?channels=other,del")
    bystander = await ms[1].stream("other")
    before = await ms[0].publish_ok("del", "before")
    last = await ms[1].publish_ok("del", "last")
    for c in subs + [multi]:
        assert [b.data for b in await c.events(2)] == ["before", "last"]
    # Every machine's subscribers count (t/test_redis_count.py), once
    # each machine has pushed its own.
    deadline = time.monotonic() + 10
    while (await ms[1].info("del")).json()["subscribers"] != 7:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    resp = await ms[1].pub_http("DELETE", "/publish/del")
    assert resp.status == 200, resp
    assert resp.header("content-type") == "application/json"
    assert resp.json() == {"channel": "del", "deleted": True,
                           "subscribers": 7}
    for c in subs + [multi]:
        rest = await c.until_end(timeout=5)
        assert [b.fields for b in rest] == overload_end("deleted"), rest
        assert c.ended.clean
    # Redis holds none of its history any more.
    assert r.cli("EXISTS", "{sse:sse}:ch:del").strip() == "0"
    # Other channels go on.
    eid = await ms[0].publish_ok("other", "still")
    b = await bystander.next_event()
    assert (b.id, b.data) == (eid, "still")
    for m in ms:
        assert (await m.info("del")).status == 404
    # A resume from before events the delete took reports a gap, on every
    # machine, as in a shared-memory zone; a resume from its last event is
    # exact (nothing was missed) where the delete was seen.
    for m in ms:
        s = await m.stream("del", headers={"Last-Event-ID": before})
        gap = await s.next_event()
        assert gap.event == "sse-gap", (m, gap)
        s.close()
        s = await m.stream("del", headers={"Last-Event-ID": last})
        await no_event(s, 0.3)
        s.close()
    # A machine started after the delete reads it from the zone's log in
    # its place: the same there.
    ms.append((await machines(start_nginx, r, 1))[0])
    s = await ms[3].stream("del", headers={"Last-Event-ID": before})
    gap = await s.next_event()
    assert gap.event == "sse-gap", gap
    s.close()
    s = await ms[3].stream("del", headers={"Last-Event-ID": last})
    await no_event(s, 0.3)
    s.close()
    # Published again: a new channel, the same on every machine.
    after = await ms[3].publish_ok("del", "after")
    for m in ms:
        # The bus brings it to the other machines a moment later.
        deadline = time.monotonic() + 5
        while True:
            j = (await m.info("del")).json()
            if j["messages"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert (j["messages"], j["first_id"], j["last_id"]) == \
            (1, after, after), j


@pytest.mark.timeout_s(60)
async def test_delete_missed_on_the_bus_is_repaired_from_redis(start_nginx,
                                                               start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    s = await b.stream("gone")
    await a.publish_ok("gone", "x")
    assert (await s.next_event()).data == "x"
    # Every bus is cut and cannot come back: machine b hears nothing.
    assert r.cli("ACL", "SETUSER", "default", "-subscribe").strip() == "OK"
    r.cli("CLIENT", "KILL", "TYPE", "pubsub")
    deadline = time.monotonic() + 10
    while True:
        st = (await b.sub_http("GET", "/sse-status")).json()["zones"][0]
        if st["redis"]["state"] != "up":
            break
        assert time.monotonic() < deadline, st
        await asyncio.sleep(0.05)
    resp = await a.pub_http("DELETE", "/publish/gone")
    assert resp.status == 200, resp
    eid = await a.publish_ok("other", "y")
    await no_event(s, 0.3)
    # The bus returns: b repairs from Redis, the delete in its place.
    assert r.cli("ACL", "SETUSER", "default", "+subscribe").strip() == "OK"
    rest = await s.until_end(timeout=10)
    assert [blk.fields for blk in rest] == overload_end("deleted"), rest
    await wait_in_sync(b)
    assert (await b.info("gone")).status == 404
    assert (await b.info("other")).json()["last_id"] == eid


async def test_delete_in_a_redis_zone_absent_or_redis_down(start_nginx,
                                                          start_redis):
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1)
    resp = await a.pub_http("DELETE", "/publish/never")
    assert resp.status == 404, resp
    assert resp.text == "no such channel\n"
    await a.publish_ok("d", "x")
    r.kill()
    resp = await a.pub_http("DELETE", "/publish/d")
    assert resp.status == 503, resp
    assert resp.header("retry-after") == "1"
    assert resp.text.startswith("redis could not delete the channel: "), \
        resp.text
    # Nothing was deleted here either.
    assert (await a.info("d")).status == 200


async def test_status_names_the_engine(start_nginx, start_redis):
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1)
    await a.publish_ok("c", "x")
    st = (await a.sub_http("GET", "/sse-status")).json()["zones"][0]
    assert st["engine"] == "redis"
    assert st["redis"]["publishes"] >= 1
    assert st["redis"]["state"] == "up"
    prom = (await a.sub_http("GET", "/sse-status?format=prometheus")).text
    assert 'sse_engine{zone="sse",engine="redis"} 1' in prom
    assert 'sse_redis_up{zone="sse",state="up"} 1' in prom
    assert "sse_redis_publishes_total" in prom
    shm = start_nginx(sub_locations=STATUS)
    st = (await shm.sub_http("GET", "/sse-status")).json()["zones"][0]
    assert st["engine"] == "shm" and "redis" not in st


@pytest.mark.timeout_s(60)
async def test_restarted_machine_reports_history_redis_trimmed(start_nginx,
                                                               start_redis):
    r = start_redis()
    pub = "            sse_buffer_length 3;"
    (a,) = await machines(start_nginx, r, 1, pub=pub)
    sent = []
    for i in range(6):
        sent.append((await a.publish_ok("tr", f"t{i}"), f"t{i}"))
        # Other channels' events in between: the zone-wide seqs of the
        # channel are not consecutive.
        await a.publish_ok("other", f"o{i}")
    assert a.stop()
    (a2,) = await machines(start_nginx, r, 1, pub=pub)
    # Redis kept the newest 3 of "tr": resuming before them is a gap.
    s = await a2.stream("tr", headers={"Last-Event-ID": sent[1][0]})
    gap = await s.next_event()
    assert gap.event == "sse-gap" and '"reason":"evicted"' in gap.data, gap
    # Right before the kept ones: exact.
    s2 = await a2.stream("tr", headers={"Last-Event-ID": sent[2][0]})
    assert await read_events(s2, 3, 10) == sent[3:]


KILL_LOG = [r"\[alert\] .*worker process \d+ exited on signal 9"]


@pytest.mark.timeout_s(90)
async def test_bus_worker_killed_loses_nothing(start_nginx, start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2, allow_log=KILL_LOG)
    st = (await b.sub_http("GET", "/sse-status")).json()["zones"][0]
    leader = st["redis"]["bus_pid"]
    assert leader in b.workers()
    subs = [await b.stream("k") for _ in range(16)]
    total = 300
    sent = []

    async def publish():
        for i in range(total):
            sent.append((await a.publish_ok("k", f"k{i}"), f"k{i}"))
            if i == 100:
                os.kill(leader, signal.SIGKILL)

    async def follow(c):
        got = []
        while len(got) < total:
            try:
                b_ = await c.next_event(20)
                if b_.event != "sse-error":  # the stream ends after it
                    got.append((b_.id, b_.data))
            except Exception:
                # Its worker died: it resumes on the machine, as a browser
                # would.
                c = await b.stream("k", headers={"Last-Event-ID": got[-1][0]}
                                   if got else {})
        return got

    readers = [asyncio.ensure_future(follow(c)) for c in subs]
    await publish()
    got = await asyncio.gather(*readers)
    for g in got:
        assert g == sent
    deadline = time.monotonic() + 10
    while True:
        st = (await b.sub_http("GET", "/sse-status")).json()["zones"][0]
        if st["redis"]["bus_pid"] != leader and st["redis"]["state"] == "up":
            break
        assert time.monotonic() < deadline, st
        await asyncio.sleep(0.05)


@pytest.mark.timeout_s(90)
async def test_reload_loses_nothing(start_nginx, start_redis):
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    subs = [await b.stream("rl") for _ in range(8)]
    total = 200
    sent = []

    async def publish():
        for i in range(total):
            sent.append((await a.publish_ok("rl", f"r{i}"), f"r{i}"))
            if i == 80:
                b.reload()

    async def follow(c):
        got = []
        while len(got) < total:
            try:
                b_ = await c.next_event(20)
                if b_.event != "sse-error":  # the stream ends after it
                    got.append((b_.id, b_.data))
            except Exception:
                c = await b.stream("rl", headers={"Last-Event-ID": got[-1][0]}
                                   if got else {})
        return got

    readers = [asyncio.ensure_future(follow(c)) for c in subs]
    await publish()
    for g in await asyncio.gather(*readers):
        assert g == sent


@pytest.mark.timeout_s(120)
async def test_redis_cluster_zones_on_different_shards(start_nginx,
                                                       start_redis):
    from redishelp import start_cluster, node_of
    nodes = start_cluster(start_redis)
    # Two zones whose keys live on the second and third node; machines are
    # pointed at the first, which redirects them.
    names = {}
    for i in range(200):
        owner = node_of(nodes, f"{{sse:z{i}}}")
        if owner is not nodes[0]:
            names.setdefault(owner.port, f"z{i}")
        if len(names) == 2:
            break
    assert len(names) == 2
    url = nodes[0].url
    for port, name in names.items():
        zone = f"sse_zone zone={name}:16m redis={url};"
        a = start_nginx(zone=zone, sub_locations=STATUS,
                        allow_log=REDIS_ERRORS)
        b = start_nginx(zone=zone, sub_locations=STATUS,
                        allow_log=REDIS_ERRORS)
        await wait_in_sync(a)
        await wait_in_sync(b)
        s = await b.stream("c")
        sent = [(await a.publish_ok("c", f"{name}-{i}"), f"{name}-{i}")
                for i in range(20)]
        assert await read_events(s, 20, 10) == sent
        owner = next(r for r in nodes if r.port == port)
        keys = owner.cli("KEYS", "*").split()
        assert f"{{sse:{name}}}:ch:c" in keys, keys
        assert f"{{sse:{name}}}:seq" in keys
        assert "MOVED" in a.log_text()


def make_cert(d, cn="localhost", san="IP:127.0.0.1,DNS:localhost"):
    """A self-signed certificate for 127.0.0.1 and localhost (or cn and
    san)."""
    import subprocess
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
         "-days", "2", "-subj", f"/CN={cn}",
         "-addext", f"subjectAltName={san}"],
        check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def start_tls_redis(start_redis, tmp_path, auth_clients, args=(), **names):
    """A Redis speaking TLS only, its self-signed certificate its own CA
    (and the client certificate it accepts): (redis, url, cert, key).
    args: more of redis-server's; names: make_cert's cn and san."""
    from conftest import free_port
    cert, key = make_cert(tmp_path / "tls", **names)
    port = free_port()
    r = start_redis(args=["--port", "0", "--tls-port", str(port),
                          "--tls-cert-file", str(cert),
                          "--tls-key-file", str(key),
                          "--tls-ca-cert-file", str(cert),
                          "--tls-auth-clients", auth_clients, *args],
                    tls=(cert, port, cert, key))
    return r, f"rediss://localhost:{port}", cert, key


@pytest.mark.timeout_s(60)
async def test_tls_to_redis(start_nginx, start_redis, tmp_path):
    r, url, cert, key = start_tls_redis(start_redis, tmp_path, "no")
    a, b = await machines(start_nginx, r, 2, url=url,
                          extra=f" redis_ca={cert}")
    s = await b.stream("t")
    sent = [(await a.publish_ok("t", f"s{i}"), f"s{i}") for i in range(10)]
    assert await read_events(s, 10, 10) == sent
    # Without the CA the certificate cannot be verified: refused.
    bad = start_nginx(zone=redis_conf(url), sub_locations=STATUS,
                      allow_log=REDIS_ERRORS)
    resp = await bad.publish("t", "x")
    assert resp.status == 503, resp
    assert "certificate verify failed" in resp.text, resp


@pytest.mark.timeout_s(120)
async def test_redis_cluster_primary_failover(start_nginx, start_redis):
    from redishelp import start_cluster, node_of
    nodes = start_cluster(start_redis, n=6, replicas=1)
    name = next(f"z{i}" for i in range(200)
                if node_of(nodes, f"{{sse:z{i}}}") is not nodes[0])
    primary = node_of(nodes, f"{{sse:{name}}}")
    zone = f"sse_zone zone={name}:16m redis={nodes[0].url};"
    a = start_nginx(zone=zone, sub_locations=STATUS, allow_log=REDIS_ERRORS)
    b = start_nginx(zone=zone, sub_locations=STATUS, allow_log=REDIS_ERRORS)
    await wait_in_sync(a)
    await wait_in_sync(b)
    s = await b.stream("f")
    before = [(await a.publish_ok("f", f"b{i}"), f"b{i}") for i in range(10)]
    assert await read_events(s, 10, 10) == before
    # What it acknowledged reached its replica (replication is
    # asynchronous: only then is a failover sure to keep it).
    assert primary.cli("WAIT", "1", "2000").strip() == "1"
    primary.kill()
    # The replica takes over; publishes succeed again by themselves.
    after = await publish_through_failover(a, "f")
    got = await read_events(s, 10, 20)
    assert got == after
    assert node_of(nodes, f"{{sse:{name}}}") is not primary


@pytest.mark.timeout_s(60)
async def test_presence_events_go_through_redis(start_nginx, start_redis):
    # Presence events are published by the module itself: in a Redis zone
    # they take Redis's ids like any event and reach every machine.
    r = start_redis()
    watch = """
        location ~ ^/watch/(?<pch>.+)$ {
            sse_subscribe;
            sse_channel $pch;
        }"""
    ms = []
    for _ in range(2):
        ms.append(start_nginx(
            zone=redis_conf(r.url),
            sub="            sse_presence_channel $ch:presence;",
            sub_locations=STATUS + watch, allow_log=REDIS_ERRORS))
    a, b = ms
    for m in ms:
        await wait_in_sync(m)
    w = await b.stream("/watch/room:presence")
    sb = await b.stream("room")
    assert (await w.next_event()).event == "join"
    sa = await a.stream("room")
    joined = await w.next_event()
    assert joined.event == "join" and '"channel":"room"' in joined.data
    sent = [(await a.publish_ok("room", f"m{i}"), f"m{i}") for i in range(10)]
    assert await read_events(sb, 10, 10) == sent
    assert await read_events(sa, 10, 10) == sent
    ids = [seq_of(i) for i, _ in sent] + [seq_of(joined.id)]
    assert len(set(ids)) == len(ids)


@pytest.mark.timeout_s(60)
async def test_tls_to_redis_by_ip_address(start_nginx, start_redis, tmp_path):
    """rediss://127.0.0.1: the certificate names that address in an IP
    entry (and a DNS name too), which is what is checked; nginx's own
    check reads DNS names only and refused it."""
    r, url, cert, key = start_tls_redis(start_redis, tmp_path, "no")
    url = url.replace("localhost", "127.0.0.1")
    a, b = await machines(start_nginx, r, 2, url=url,
                          extra=f" redis_ca={cert}")
    s = await b.stream("t")
    sent = [(await a.publish_ok("t", f"s{i}"), f"s{i}") for i in range(3)]
    assert await read_events(s, 3, 10) == sent


@pytest.mark.timeout_s(90)
async def test_tls_seed_list_checks_each_node_by_its_own_name(
        start_nginx, start_redis, tmp_path):
    """rediss://localhost:P1,127.0.0.1:P2: each node's certificate names
    itself only. When the first node dies the machine goes on on the
    second, whose certificate is checked against 127.0.0.1, its own name
    in the list; it was checked against localhost, the first node's, and
    refused."""
    r1, url1, cert1, _ = start_tls_redis(start_redis, tmp_path / "n1", "no",
                                         san="DNS:localhost")
    r2, url2, cert2, _ = start_tls_redis(start_redis, tmp_path / "n2", "no",
                                         cn="node2", san="IP:127.0.0.1")
    ca = tmp_path / "ca.pem"
    ca.write_text(cert1.read_text() + cert2.read_text())
    url = url1 + "," + url2.replace("rediss://localhost", "127.0.0.1")
    (a,) = await machines(start_nginx, r1, 1, url=url,
                          extra=f" redis_ca={ca}")
    await a.publish_ok("t", "on-1")
    r1.kill()
    # The second node is another Redis here (a cluster's would hold the
    # slot): publishes go on there once the machine has moved.
    await publish_through_failover(a, "t", n=3)
    assert "does not match the host" not in a.log_text()
