"""The Redis engine where Redis names nodes by hostname or goes partly
missing: a Redis Cluster whose nodes announce hostnames (MOVED and ASK
name them; nginx's resolver looks them up), a machine cut off from every
sentinel (publishing goes on with the primary they named last, and
sse_status and one log line say so), and a primary that refuses writes
(min-replicas-to-write without its replica): all against real
redis-server processes, machines of 2 workers each."""

import asyncio
import re
import time

import pytest

import conftest
from redishelp import (FakeDNS, multi_zone_conf, needs_redis,  # noqa: F401
                       node_of, start_host_cluster, start_redis,
                       start_sentinel_group, sentinel_url, wait_in_sync)
from test_redis_ha import Load, assert_migration_lost_nothing

pytestmark = needs_redis

STATUS = "        location = /sse-status { sse_status; }\n"
REDIS_ERRORS = [r"\[error\].*sse: redis", r"\[error\].*connect\(\) failed",
                r"\[error\].*recv\(\) failed", r"\[error\].*sse: zone"]
NO_RESOLVER = 'a hostname: set a "resolver" at the http level'


def resolver(dns):
    return f"resolver 127.0.0.1:{dns.port} ipv6=off valid=1s;"


def zones_of(nodes, count_per_node=1, skip=()):
    """Zone names whose slots live on each node in turn (several shards)."""
    names = []
    for n in nodes:
        got = [f"h{i}" for i in range(400)
               if f"h{i}" not in skip and
               node_of(nodes, f"{{sse:h{i}}}") is n][:count_per_node]
        names += got
    return names


async def wait_zones_in_sync(m, timeout=15):
    deadline = time.monotonic() + timeout
    zones = None
    while time.monotonic() < deadline:
        r = await m.sub_http("GET", "/sse-status")
        if r.status == 200:
            zones = r.json()["zones"]
            if all(z.get("redis", {}).get("state") == "up" for z in zones):
                return zones
        await asyncio.sleep(0.05)
    raise AssertionError(f"zones never in sync with Redis: {zones}")


class ZoneMachine:
    """Publish/subscribe on one zone of a machine serving several."""

    def __init__(self, m, zone):
        self.m = m
        self.zone = zone

    async def publish(self, channel, data):
        return await self.m.pub_http("POST", f"/p/{self.zone}/{channel}",
                                     body=data)

    async def stream(self, path, headers=None):
        if not path.startswith("/"):
            path = f"/e/{self.zone}/{path}"
        return await self.m.stream(path, headers=headers)


def start_machines(start_nginx, monkeypatch, names, url, http="", n=2):
    monkeypatch.setattr(conftest, "render_conf",
                        multi_zone_conf(conftest.render_conf, names))
    zone = "".join(f"sse_zone zone={z}:8m redis={url} redis_timeout=5s; "
                   for z in names)
    return [start_nginx(zone=zone, http=http, sub_locations=STATUS,
                        allow_log=REDIS_ERRORS) for _ in range(n)]


# ---------------------------------------------------------------- cluster

@pytest.mark.timeout_s(180)
@pytest.mark.parametrize("capitals", [False, True])
async def test_cluster_nodes_named_by_hostname_are_followed(
        start_nginx, start_redis, monkeypatch, capitals):
    """MOVED names the zones' nodes by hostname: each machine resolves
    them with nginx's resolver and publishes there; zones on three shards,
    publishes on both machines are accepted, and every subscriber on both
    gets every event once, in order. Names with capitals too (the
    resolver lowercases the name it is given; once it did so in the
    module's own copy, and no answer matched the node any more)."""
    dns = FakeDNS({})
    try:
        nodes = start_host_cluster(start_redis, dns, capitals=capitals)
        names = zones_of(nodes)
        assert len({node_of(nodes, f"{{sse:{z}}}").port
                    for z in names}) == 3
        ms = start_machines(start_nginx, monkeypatch, names, nodes[0].url,
                            http=resolver(dns))
        for m in ms:
            await wait_zones_in_sync(m)
        subs = {z: [await ZoneMachine(m, z).stream("c") for m in ms]
                for z in names}
        sent = {z: [] for z in names}
        for i in range(30):
            for z in names:
                zm = ZoneMachine(ms[i % 2], z)
                r = await zm.publish("c", f"{z}-{i}")
                assert r.status == 202, r
                sent[z].append((r.json()["id"], f"{z}-{i}"))
        for z in names:
            for s in subs[z]:
                got = await s.events(30, timeout=15)
                assert [(b.id, b.data) for b in got] == sent[z]
                s.close()
        asked = {name for name, _ in dns.asked}
        moved_to = {node_of(nodes, f"{{sse:{z}}}").host for z in names} - \
            {nodes[0].host}
        assert moved_to and {h.lower() for h in moved_to} <= asked, \
            (moved_to, dns.asked)
        for m in ms:
            log = m.log_text()
            for h in moved_to:
                assert re.search(rf"lives on redis node {h}:\d+ \(MOVED\)",
                                 log), log[-2000:]
        for z in names:
            owner = node_of(nodes, f"{{sse:{z}}}")
            assert f"{{sse:{z}}}:seq" in owner.cli("KEYS", "*").split()
    finally:
        dns.close()


@pytest.mark.timeout_s(240)
async def test_slot_migration_by_hostname_ask_tryagain_moved(
        start_nginx, start_redis, monkeypatch):
    """The zone's slot migrates (TRYAGAIN, ASK, then MOVED, all naming
    nodes by hostname) while both machines publish: nothing is refused and
    every subscriber gets every event once, in order."""
    dns = FakeDNS({})
    try:
        nodes = start_host_cluster(start_redis, dns)
        name = next(f"m{i}" for i in range(400)
                    if node_of(nodes, f"{{sse:m{i}}}") is nodes[1])
        source, target = nodes[1], nodes[2]
        slot = source.cli("CLUSTER", "KEYSLOT", f"{{sse:{name}}}").strip()
        ms = start_machines(start_nginx, monkeypatch, [name], nodes[0].url,
                            http=resolver(dns))
        for m in ms:
            await wait_zones_in_sync(m)
        zms = [ZoneMachine(m, name) for m in ms]
        subs = []
        for zm in zms:
            for _ in range(2):
                subs.append((zm, f"/e/{name}/mig", await zm.stream("mig")))
        load = Load(zms, "mig")
        load.start()

        def migrate():
            sid = source.cli("CLUSTER", "MYID").strip()
            tid = target.cli("CLUSTER", "MYID").strip()
            time.sleep(0.5)
            assert target.cli("CLUSTER", "SETSLOT", slot, "IMPORTING",
                              sid).strip() == "OK"
            assert source.cli("CLUSTER", "SETSLOT", slot, "MIGRATING",
                              tid).strip() == "OK"
            time.sleep(0.7)  # the keys are still on the source: TRYAGAIN
            while True:
                keys = source.cli("CLUSTER", "GETKEYSINSLOT", slot,
                                  "100").split()
                if not keys:
                    break
                out = source.cli("MIGRATE", "127.0.0.1", str(target.port),
                                 "", "0", "5000", "KEYS", *keys)
                assert out.strip() in ("OK", "NOKEY"), out
            time.sleep(0.7)  # the keys are on the target, the slot not: ASK
            # The target first, as redis-cli --cluster does: a node told
            # before it would redirect to a target that sends back.
            for n in (target, source, nodes[0]):
                assert n.cli("CLUSTER", "SETSLOT", slot, "NODE",
                             tid).strip() == "OK"
            time.sleep(1)

        await asyncio.to_thread(migrate)
        await load.finish()
        assert node_of(nodes, f"{{sse:{name}}}") is target
        await assert_migration_lost_nothing(load, subs)
        logs = "".join(m.log_text() for m in ms)
        assert f"migrating to redis node {target.host}:{target.port} (ASK)" \
            in logs, logs[-3000:]
        assert f"lives on redis node {target.host}:{target.port} (MOVED)" \
            in logs
        assert (target.host, 1) in dns.asked
        assert f"{{sse:{name}}}:seq" in target.cli("KEYS", "*").split()
    finally:
        dns.close()


@pytest.mark.timeout_s(120)
async def test_cluster_by_hostname_without_resolver_says_to_set_one(
        start_nginx, start_redis, monkeypatch):
    """No "resolver": publishes to a zone on a node named by hostname get
    503 with Retry-After and a reason saying to set one; the machine logs
    it at [error] once, however many publishes follow."""
    dns = FakeDNS({})
    try:
        nodes = start_host_cluster(start_redis, dns)
        name = next(f"h{i}" for i in range(400)
                    if node_of(nodes, f"{{sse:h{i}}}") is nodes[1])
        m = start_machines(start_nginx, monkeypatch, [name], nodes[0].url,
                           n=1)[0]
        zm = ZoneMachine(m, name)
        for _ in range(8):
            r = await zm.publish("c", "x")
            assert r.status == 503, r
            assert r.header("Retry-After") == "1", r
            assert NO_RESOLVER in r.text, r
            assert f"{nodes[1].host}:{nodes[1].port}" in r.text, r
            await asyncio.sleep(0.3)
        said = [ln for ln in m.log_text().splitlines() if NO_RESOLVER in ln]
        assert len(said) == 1 and "[error]" in said[0], said
        st = (await m.sub_http("GET", "/sse-status")).json()["zones"][0]
        assert NO_RESOLVER in st["redis"]["last_error"], st
    finally:
        dns.close()


# ---------------------------------------------------------------- sentinel

def sentinel_zone(sentinels):
    return f"sse_zone zone=sse:16m redis={sentinel_url(sentinels)};"


async def redis_status(m):
    r = await m.sub_http("GET", "/sse-status")
    assert r.status == 200, r
    return r.json()["zones"][0]["redis"]


async def wait_status(m, pred, timeout=15):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = await redis_status(m)
        if pred(st):
            return st
        await asyncio.sleep(0.1)
    raise AssertionError(f"status never matched: {st}")


def prometheus_value(text, name):
    m = re.search(rf'^{name}{{zone="sse"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


NO_SENTINEL = re.compile(r"\[warn\].*no sentinel of \"mymaster\" has "
                         r"answered for \d+s")
AGAIN = re.compile(r"\[notice\].*sentinel 127\.0\.0\.1:\d+ answers again")


@pytest.mark.timeout_s(150)
async def test_cut_off_from_every_sentinel_publishing_goes_on(start_nginx,
                                                              start_redis):
    """Every sentinel killed: publishes on both machines keep getting 202
    and every subscriber gets every event once, in order; sse_status
    shows 0 sentinels answering and the age of the last confirmation; one
    [warn] line per machine, not one per check; a sentinel restarted: one
    [notice] line, and the status counts it again."""
    primary, _, sentinels = start_sentinel_group(start_redis, n=3)
    ms = [start_nginx(zone=sentinel_zone(sentinels), sub_locations=STATUS,
                      allow_log=REDIS_ERRORS) for _ in range(2)]
    for m in ms:
        await wait_in_sync(m)
        st = await wait_status(m, lambda s: s["sentinels_answered"] == 3)
        assert st["sentinels"] == 3
        assert 0 <= st["sentinel_confirmed_ago_ms"] < 5000, st
    subs = [await m.stream("c") for m in ms for _ in range(2)]
    sent = []
    for i in range(10):
        sent.append((await ms[i % 2].publish_ok("c", f"before-{i}"),
                     f"before-{i}"))
    for s in sentinels:
        s.kill()
    t0 = time.monotonic()
    i = 0
    # Well past the few checks after which the warning is due.
    while time.monotonic() - t0 < 6:
        sent.append((await ms[i % 2].publish_ok("c", f"cut-{i}"),
                     f"cut-{i}"))
        i += 1
        await asyncio.sleep(0.05)
    for m in ms:
        st = await wait_status(m, lambda s: s["sentinels_answered"] == 0)
        assert st["sentinel_confirmed_ago_ms"] >= 3000, st
        assert st["state"] == "up", st
        prom = (await m.sub_http("GET", "/sse-status?format=prometheus")).text
        assert prometheus_value(prom, "sse_redis_sentinels_answered") == 0, \
            prom
        assert prometheus_value(
            prom, "sse_redis_sentinel_confirmed_age_seconds") >= 3, prom
        log = m.log_text().splitlines()
        warned = [ln for ln in log if NO_SENTINEL.search(ln)]
        # The checks' failures are not told once a second either.
        errors = [ln for ln in log if "[error]" in ln]
        assert len(errors) < 5, errors
        assert len(warned) == 1, warned
        assert "publishing goes on with the primary they named last" \
            in warned[0]
    # The connections to the primary drop meanwhile: with no sentinel to
    # ask, the machines go back to the primary they named last.
    primary.cli("CLIENT", "KILL", "TYPE", "normal")
    primary.cli("CLIENT", "KILL", "TYPE", "pubsub")
    for k, m in enumerate(ms):
        deadline = time.monotonic() + 15
        while True:
            assert time.monotonic() < deadline, "never published again"
            r = await m.publish("c", f"reconnected-{k}")
            if r.status == 202:
                sent.append((r.json()["id"], f"reconnected-{k}"))
                break
            assert r.status == 503, r
            await asyncio.sleep(0.1)
        await wait_in_sync(m)
        assert "connecting to 127.0.0.1:" in m.log_text()
    for s in subs:
        got = await s.events(len(sent), timeout=15)
        assert [(b.id, b.data) for b in got] == sent
    # One sentinel back.
    sentinels[0].start()
    for m in ms:
        st = await wait_status(m, lambda s: s["sentinels_answered"] == 1)
        assert st["sentinel_confirmed_ago_ms"] < 3000, st
    await asyncio.sleep(1.5)
    more = [(await ms[i % 2].publish_ok("c", f"after-{i}"), f"after-{i}")
            for i in range(5)]
    for s in subs:
        got = await s.events(5, timeout=10)
        assert [(b.id, b.data) for b in got] == more
    for m in ms:
        log = m.log_text().splitlines()
        assert len([ln for ln in log if AGAIN.search(ln)]) == 1, \
            [ln for ln in log if "sentinel" in ln][-10:]
        assert len([ln for ln in log if NO_SENTINEL.search(ln)]) == 1


NOREPLICAS = "the primary refuses writes (NOREPLICAS)"


@pytest.mark.timeout_s(120)
async def test_primary_without_its_replica_refuses_with_503(start_nginx,
                                                            start_redis):
    """A primary with min-replicas-to-write 1 whose replica stops answers
    NOREPLICAS: publishes get 503 with Retry-After and a reason naming it,
    nothing of them reaches any subscriber; with the replica back,
    publishing resumes by itself."""
    primary = start_redis(args=["--min-replicas-to-write", "1",
                                "--min-replicas-max-lag", "2"])
    replica = start_redis(args=["--replicaof", "127.0.0.1",
                                str(primary.port)])

    def synced():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "master_link_status:up" in replica.cli("INFO", "replication") \
                    and "min_slaves_good_slaves:1" in \
                    primary.cli("INFO", "replication"):
                return
            time.sleep(0.1)
        raise AssertionError("the replica never synced")

    synced()
    zone = f"sse_zone zone=sse:16m redis={primary.url};"
    ms = [start_nginx(zone=zone, sub_locations=STATUS,
                      allow_log=REDIS_ERRORS) for _ in range(2)]
    for m in ms:
        await wait_in_sync(m)
    subs = [await m.stream("c") for m in ms]
    sent = [(await ms[i % 2].publish_ok("c", f"ok-{i}"), f"ok-{i}")
            for i in range(4)]
    replica.stop()
    refused = []
    deadline = time.monotonic() + 20
    while len(refused) < 6:
        assert time.monotonic() < deadline, "never refused"
        k = len(sent) + len(refused)
        r = await ms[k % 2].publish("c", f"try-{k}")
        if r.status == 202:
            sent.append((r.json()["id"], f"try-{k}"))
            await asyncio.sleep(0.2)
            continue
        assert r.status == 503, r
        assert r.header("Retry-After") == "1", r
        assert NOREPLICAS in r.text, r
        refused.append(f"try-{k}")
    errors = [(await redis_status(m))["last_error"] for m in ms]
    assert any(NOREPLICAS in e for e in errors), errors
    replica.start()
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "publishing never resumed"
        r = await ms[0].publish("c", "back")
        if r.status == 202:
            sent.append((r.json()["id"], "back"))
            break
        assert NOREPLICAS in r.text, r
        await asyncio.sleep(0.2)
    sent.append((await ms[1].publish_ok("c", "back-2"), "back-2"))
    for s in subs:
        got = await s.events(len(sent), timeout=10)
        assert [(b.id, b.data) for b in got] == sent
    for m in ms:
        # Nothing refused was stored: a late reader gets the same.
        c = await m.stream("c", headers={"Last-Event-ID": sent[0][0]})
        got = await c.events(len(sent) - 1, timeout=10)
        assert [b.data for b in got] == [d for _, d in sent[1:]]
        c.close()
    for m in ms:
        # Said once per machine, not per refusal.
        log = m.log_text()
        assert len(re.findall(r"\[warn\].*NOREPLICAS", log)) == 1, log
        assert "the primary accepts writes again" in log
