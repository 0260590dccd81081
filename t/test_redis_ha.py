"""The Redis engine when Redis itself moves: a Redis Cluster migrating the
zone's slot (ASK, TRYAGAIN, then MOVED) and Redis Sentinel failing the
primary over, under load from several nginx "machines" (2 workers each),
all against real redis-server processes started for the test."""

import asyncio
import signal
import time

import pytest

from conftest import free_ports, seq_of
from redishelp import (assert_zone_refused, zone_nginx_t,  # noqa: F401
                       needs_redis, start_redis, start_cluster, node_of, start_sentinel_group,
                       sentinel_url, wait_in_sync, FakeDNS)
from sselib.client import StreamEnd

pytestmark = needs_redis

STATUS = "        location = /sse-status { sse_status; }\n"
REDIS_ERRORS = [r"\[error\].*sse: redis", r"\[error\].*connect\(\) failed",
                r"\[error\].*recv\(\) failed", r"\[error\].*sse: zone"]


def order(i):
    e, _, s = i.partition("-")
    return (int(e), int(s))


def zone(name, url, extra=""):
    return f"sse_zone zone={name}:16m redis={url}{extra};"


class Load:
    """Publishers, one per machine, publishing to `channel` until stopped;
    records what was accepted (202, with its id) and refused (503)."""

    def __init__(self, ms, channel):
        self.ms = ms
        self.channel = channel
        self.accepted = {}   # data -> id
        self.attempted = set()
        self.refused = []    # (data, reason)
        self.stop = asyncio.Event()
        self.tasks = []

    async def publisher(self, k):
        i = 0
        while not self.stop.is_set():
            data = f"p{k}-{i}"
            i += 1
            self.attempted.add(data)
            resp = await self.ms[k].publish(self.channel, data)
            assert resp.status in (202, 503), resp
            if resp.status == 202:
                self.accepted[data] = resp.json()["id"]
            else:
                assert resp.header("Retry-After") == "1", resp
                assert "redis" in resp.text, resp
                self.refused.append((data, resp.text))
                await asyncio.sleep(0.02)

    def start(self):
        self.tasks = [asyncio.ensure_future(self.publisher(k))
                      for k in range(len(self.ms))]

    async def finish(self):
        self.stop.set()
        await asyncio.gather(*self.tasks)

    def last(self):
        return max(self.accepted.values(), key=order)


async def follow(m, c, path, last, timeout=30):
    """Reads c up to the event `last`, resuming (Last-Event-ID) when the
    stream ends; returns the events [(id, data)] and the sse-gap events
    seen on the way."""
    got, gaps = [], []
    deadline = time.monotonic() + timeout
    while not got or got[-1][0] != last:
        left = deadline - time.monotonic()
        assert left > 0, f"never reached {last}: {got[-3:]} {gaps}"
        try:
            b = await c.next_event(left)
        except StreamEnd:
            c.close()
            h = {"Last-Event-ID": got[-1][0]} if got else {}
            c = await m.stream(path, headers=h)
            continue
        if b.event == "sse-gap":
            gaps.append(b.data)
        elif b.event is None:
            got.append((b.id, b.data))
    c.close()
    return got, gaps


def check_exactly_once(load, got, gaps):
    """Every accepted event once, in order; with a gap reported, those of
    the epochs before it may be missing (Redis lost them), never those of
    the newest epoch."""
    ids = [i for i, _ in got]
    assert ids == sorted(ids, key=order), "out of order"
    datas = [d for _, d in got]
    assert len(datas) == len(set(datas)), "an event came twice"
    assert set(datas) <= load.attempted
    for i, d in got:
        if d in load.accepted and order(load.accepted[d])[0] == order(i)[0]:
            assert load.accepted[d] == i, (d, i)
    want = set(load.accepted)
    if gaps:
        newest = order(load.last())[0]
        want = {d for d, i in load.accepted.items() if order(i)[0] == newest}
    missing = want - set(datas)
    assert not missing, f"accepted events missing: {sorted(missing)[:10]}"


async def assert_migration_lost_nothing(load, subs):
    """After a slot migration under `load`: nothing refused, and every
    subscriber of `subs` ((machine, path, connection)) got every accepted
    event once, all in one order, with no gap."""
    assert not load.refused, load.refused[:5]
    assert len(load.accepted) > 30
    last = load.last()
    results = await asyncio.gather(*(follow(m, c, p, last)
                                     for m, p, c in subs))
    for got, gaps in results:
        assert not gaps, gaps
        check_exactly_once(load, got, gaps)
    first = [i for i, _ in results[0][0]]
    for got, _ in results:
        assert [i for i, _ in got] == first


# ---------------------------------------------------------------- cluster

@pytest.mark.timeout_s(240)
async def test_slot_migration_under_load_ask_tryagain_moved(start_nginx,
                                                            start_redis):
    """The zone's slot moves from one primary to another with the real
    CLUSTER SETSLOT / MIGRATE steps while three machines publish: scripts
    meet TRYAGAIN (keys split between the nodes), then ASK, then MOVED;
    every publish is accepted and every subscriber gets every event once,
    in order."""
    nodes = start_cluster(start_redis)
    name = next(f"z{i}" for i in range(200)
                if node_of(nodes, f"{{sse:z{i}}}") is nodes[1])
    source, target, other = nodes[1], nodes[2], nodes[0]
    slot = source.cli("CLUSTER", "KEYSLOT", f"{{sse:{name}}}").strip()
    # One machine on a bystander, one on each node of the migration: their
    # buses (SUBSCRIBE stays on the configured node) hear the publishes of
    # both nodes.
    ms = [start_nginx(zone=zone(name, n.url, " redis_timeout=5s"),
                      sub_locations=STATUS, allow_log=REDIS_ERRORS)
          for n in (other, source, target)]
    for m in ms:
        await wait_in_sync(m)
    subs = []
    for m in ms:
        for _ in range(3):
            subs.append((m, "mig", await m.stream("mig")))
        subs.append((m, "/multi?channels=x,mig",
                     await m.stream("/multi?channels=x,mig")))
    load = Load(ms, "mig")
    load.start()
    phases = {}

    def migrate():
        sid = source.cli("CLUSTER", "MYID").strip()
        tid = target.cli("CLUSTER", "MYID").strip()
        time.sleep(0.5)
        assert target.cli("CLUSTER", "SETSLOT", slot, "IMPORTING",
                          sid).strip() == "OK"
        assert source.cli("CLUSTER", "SETSLOT", slot, "MIGRATING",
                          tid).strip() == "OK"
        phases["migrating"] = time.monotonic()
        time.sleep(0.7)  # the keys are still on the source: TRYAGAIN
        while True:
            keys = source.cli("CLUSTER", "GETKEYSINSLOT", slot,
                              "100").split()
            if not keys:
                break
            out = source.cli("MIGRATE", "127.0.0.1", str(target.port), "",
                             "0", "5000", "KEYS", *keys)
            assert out.strip() in ("OK", "NOKEY"), out
        phases["migrated"] = time.monotonic()
        time.sleep(0.7)  # the keys are on the target, the slot not: ASK
        for n in (target, source, other):
            assert n.cli("CLUSTER", "SETSLOT", slot, "NODE",
                         tid).strip() == "OK"
        phases["moved"] = time.monotonic()
        time.sleep(1)

    await asyncio.to_thread(migrate)
    await load.finish()
    assert node_of(nodes, f"{{sse:{name}}}") is target
    # Nothing refused: TRYAGAIN is retried, ASK and MOVED followed.
    await assert_migration_lost_nothing(load, subs)
    logs = "".join(m.log_text() for m in ms)
    assert "(ASK)" in logs
    keys = target.cli("KEYS", "*").split()
    assert f"{{sse:{name}}}:seq" in keys, keys
    assert not source.cli("KEYS", "*").split()


# ---------------------------------------------------------------- sentinel

@pytest.mark.parametrize("param,why", [
    ("redis=redis+sentinel://127.0.0.1:26379", "no master name"),
    ("redis=redis+sentinel://127.0.0.1:26379/", "no master name"),
    ("redis=redis+sentinel:///mymaster", "no sentinel"),
    ("redis=redis+sentinel://127.0.0.1,/mymaster",
     "an empty sentinel address"),
    ("redis=redis+sentinel://127.0.0.1:99999/m", "invalid port"),
    ("redis=redis+sentinel://127.0.0.1,no-such-host.invalid/m",
     "host not found"),
    ("redis=redis+sentinel://127.0.0.1/my*master",
     "the master name may hold"),
    ("redis=redis+sentinel://127.0.0.1/m/x", "must be a number"),
    ("redis=rediss+sentinel://127.0.0.1/m", "not supported"),
    ("redis=redis+sentinel://127.0.0.1/m redis_ca=/etc/hosts",
     "redis_ca= is for TLS"),
    ("redis=redis+sentinel://127.0.0.1/m redis_sentinel_auth=",
     "expected redis_sentinel_auth=[USER:]PASSWORD"),
    ("redis=redis+sentinel://127.0.0.1/m redis_sentinel_auth=admin:",
     "no password after the user"),
    ("redis=redis+sentinel://127.0.0.1/m redis_sentinel_auth=pa%zzss",
     "must start an escape %XX"),
    ("redis=redis+sentinel://127.0.0.1/m redis_sentinel_auth=pass%4",
     "must start an escape %XX"),
    ("redis=redis://127.0.0.1 redis_sentinel_auth=s3cret",
     "redis_sentinel_auth= is for redis+sentinel://"),
    ("redis_sentinel_auth=s3cret", '"redis_sentinel_auth=" in "sse_zone" '
     'needs "redis="'),
    ("redis=redis+sentinel://127.0.0.1/m redis_sentinel_auth=a "
     "redis_sentinel_auth=b", 'duplicate "redis_sentinel_auth=" parameter'),
])
def test_bad_sentinel_urls_fail_nginx_t(tmp_path, param, why):
    assert_zone_refused(tmp_path, param, why)


@pytest.mark.parametrize("param", [
    "redis=redis+sentinel://127.0.0.1/mymaster",
    "redis=redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,localhost/"
    "my-master.1/3",
    "redis=redis+sentinel://u:p%40ss@127.0.0.1:26379/m redis_timeout=1s",
    # README's example
    "redis=redis+sentinel://:s3cret@10.0.0.7:26379,10.0.0.8:26379,"
    "10.0.0.9:26379/mymaster/0",
    "redis=redis+sentinel://127.0.0.1/m redis_sentinel_auth=s3cret",
    "redis=redis+sentinel://127.0.0.1/m redis_sentinel_auth=admin:p%40ss:w",
    "redis=redis+sentinel://127.0.0.1/m redis_sentinel_auth=:pa:ss",
    # README's example
    "redis=redis+sentinel://:d4ta@10.0.0.7,10.0.0.8,10.0.0.9/mymaster/0 "
    "redis_sentinel_auth=watcher:s3nt",
])
def test_good_sentinel_urls_pass_nginx_t(tmp_path, param):
    ok, out = zone_nginx_t(tmp_path, param)
    assert ok, out


@pytest.mark.timeout_s(60)
async def test_sentinel_unknown_master_gives_503_and_error(start_nginx,
                                                           start_redis):
    _, _, sentinels = start_sentinel_group(start_redis)
    m = start_nginx(zone=zone("sse", sentinel_url(sentinels, "nosuch")),
                    sub_locations=STATUS, allow_log=REDIS_ERRORS)
    t0 = time.monotonic()
    r = await m.publish("c", "x")
    assert r.status == 503, r
    assert r.header("Retry-After") == "1"
    assert 'does not know the master "nosuch"' in r.text, r
    assert time.monotonic() - t0 < 5
    st = (await m.sub_http("GET", "/sse-status")).json()["zones"][0]
    assert st["redis"]["state"] != "up"
    assert "nosuch" in st["redis"]["last_error"]
    assert "***" not in st["redis"]["url"]
    c = await m.subscribe("c")
    blocks = await c.until_end(5)
    assert any(b.event == "sse-error" and "unavailable" in b.data
               for b in blocks), blocks
    assert '[error]' in m.log_text()
    assert 'no sentinel named the primary' in m.log_text()


@pytest.mark.timeout_s(90)
async def test_sentinel_password_wrong_or_missing_gives_503_and_error(
        start_nginx, start_redis):
    """Sentinels with requirepass, data nodes with another password: a
    wrong sentinel password, none, or the data nodes' password given to
    the sentinels each give a 503 naming Redis's refusal and an [error]
    line, at once (never a hang); the right pair works."""
    _, _, sentinels = start_sentinel_group(start_redis, n=1,
                                           data_pass="d4ta",
                                           auth=(None, "s3nt"))
    url = sentinel_url(sentinels)
    good = url.replace("://", "://:d4ta@")
    cases = [
        (good, " redis_sentinel_auth=wrong", "WRONGPASS"),
        (good, "", "NOAUTH"),
        (good, " redis_sentinel_auth=d4ta", "WRONGPASS"),
    ]
    for u, extra, why in cases:
        m = start_nginx(zone=zone("sse", u, extra + " redis_timeout=1s"),
                        sub_locations=STATUS, allow_log=REDIS_ERRORS)
        for _ in range(2):
            t0 = time.monotonic()
            r = await m.publish("c", "x")
            assert r.status == 503, (extra, r)
            assert r.header("Retry-After") == "1"
            assert "no sentinel named the primary" in r.text, (extra, r)
            assert why in r.text, (extra, r)
            assert time.monotonic() - t0 < 5
        st = (await m.sub_http("GET", "/sse-status")).json()["zones"][0]
        assert why in st["redis"]["last_error"], st
        log = m.log_text()
        assert "[error]" in log and why in log, log[-2000:]
        assert "s3nt" not in log and "d4ta" not in log
        m.stop()
    # The sentinels' password to the sentinels, the data nodes' to them.
    m = start_nginx(zone=zone("sse", good, " redis_sentinel_auth=s3nt"),
                    sub_locations=STATUS, allow_log=REDIS_ERRORS)
    await wait_in_sync(m)
    s = await m.stream("c")
    i = await m.publish_ok("c", "x")
    assert (await s.next_event(10)).id == i
    # ... and a wrong data password is the primary's refusal.
    m2 = start_nginx(zone=zone("sse", url.replace("://", "://:s3nt@"),
                               " redis_sentinel_auth=s3nt"),
                     sub_locations=STATUS, allow_log=REDIS_ERRORS)
    r = await m2.publish("c", "x")
    assert r.status == 503, r
    assert "AUTH" in r.text and "no sentinel" not in r.text, r


@pytest.mark.timeout_s(120)
async def test_the_bus_follows_the_primary(start_nginx, start_redis):
    """A partition, simulated: the replica becomes a primary on its own and
    the sentinels name it, while the old primary stays up, a primary too,
    holding the machines' buses (SUBSCRIBE) and relaying nothing of the
    new one's. The command connections find the new primary; the buses
    must follow them there (and repair what they missed from the zone's
    log), or subscribers would silently miss the other machines'
    events."""
    primary, replica, sentinels = start_sentinel_group(start_redis, n=1)
    url = sentinel_url(sentinels)
    ms = [start_nginx(zone=zone("sse", url), sub_locations=STATUS,
                      allow_log=REDIS_ERRORS) for _ in range(2)]
    for m in ms:
        await wait_in_sync(m)
    subs = [(m, "bus", await m.stream("bus")) for m in ms for _ in range(3)]
    before = [await m.publish_ok("bus", f"b{k}") for k, m in enumerate(ms)]
    assert len(bus_clients(primary)) == 2, primary.cli("CLIENT", "LIST")
    assert primary.cli("WAIT", "1", "2000").strip() == "1"
    # The split: the replica stops following and is named the primary.
    assert replica.cli("REPLICAOF", "NO", "ONE").strip() == "OK"
    s = sentinels[0]
    assert s.cli("SENTINEL", "REMOVE", "mymaster").strip() == "OK"
    assert s.cli("SENTINEL", "MONITOR", "mymaster", "127.0.0.1",
                 str(replica.port), "1").strip() == "OK"
    # Command connections (not the buses, TYPE pubsub) lose the old one
    # and ask the sentinel again.
    primary.cli("CLIENT", "KILL", "TYPE", "normal")
    load = Load(ms, "bus")
    load.start()
    await asyncio.sleep(3)
    await load.finish()
    assert len(load.accepted) > 20, load.refused[-3:]
    last = load.last()
    for m, p, c in subs:
        got, gaps = await follow(m, c, p, last)
        assert not gaps, gaps
        assert [i for i, _ in got[:2]] == before
        check_exactly_once(load, got[2:], gaps)
    assert not bus_clients(primary), primary.cli("CLIENT", "LIST")
    assert len(bus_clients(replica)) == 2, replica.cli("CLIENT", "LIST")
    for m in ms:
        assert "the redis bus moves from" in m.log_text()


@pytest.mark.timeout_s(90)
async def test_a_primary_named_by_hostname_is_resolved(start_nginx,
                                                       start_redis):
    """Sentinels with resolve-hostnames and announce-hostnames name the
    primary by hostname ("localhost" here): the machines look it up with
    nginx's resolver (a DNS server of the test's; nginx's resolver does
    not read /etc/hosts), without blocking, and work; with no resolver
    the 503 and the [error] line say what to set."""
    primary, _, sentinels = start_sentinel_group(start_redis, n=1,
                                                 hostnames=True)
    named = sentinels[0].cli("SENTINEL", "get-master-addr-by-name",
                             "mymaster").split()
    assert named == ["localhost", str(primary.port)], named
    dns = FakeDNS({"localhost": "127.0.0.1"})
    try:
        m = start_nginx(zone=zone("sse", sentinel_url(sentinels)),
                        http=f"resolver 127.0.0.1:{dns.port} ipv6=off "
                             "valid=1s;",
                        sub_locations=STATUS, allow_log=REDIS_ERRORS)
        await wait_in_sync(m)
        s = await m.stream("h")
        i = await m.publish_ok("h", "x")
        assert (await s.next_event(10)).id == i
        assert ("localhost", 1) in dns.asked, dns.asked
        assert f"names localhost:{primary.port} the primary" in m.log_text()
        m2 = start_nginx(zone=zone("sse", sentinel_url(sentinels)),
                         sub_locations=STATUS, allow_log=REDIS_ERRORS)
        r = await m2.publish("h", "y")
        assert r.status == 503, r
        assert 'a hostname: set a "resolver"' in r.text, r
        assert "[error]" in m2.log_text()
        # A name the DNS does not know: the reason says so.
        dns.names.pop("localhost")
        m3 = start_nginx(zone=zone("sse", sentinel_url(sentinels)),
                         http=f"resolver 127.0.0.1:{dns.port} ipv6=off "
                              "valid=1s;",
                         sub_locations=STATUS, allow_log=REDIS_ERRORS)
        r = await m3.publish("h", "z")
        assert r.status == 503, r
        assert "does not resolve" in r.text, r
    finally:
        dns.close()


@pytest.mark.timeout_s(60)
async def test_sentinels_unreachable_give_503_never_a_hang(start_nginx,
                                                           start_redis):
    dead = free_ports(3)
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in dead) + \
        "/mymaster"
    m = start_nginx(zone=zone("sse", url, " redis_timeout=1s"),
                    sub_locations=STATUS, allow_log=REDIS_ERRORS)
    for _ in range(3):
        t0 = time.monotonic()
        r = await m.publish("c", "x")
        assert r.status == 503, r
        assert "no sentinel named the primary" in r.text, r
        assert time.monotonic() - t0 < 5
        await asyncio.sleep(0.3)
    log = m.log_text()
    for p in dead:
        assert f"127.0.0.1:{p}" in log


@pytest.mark.timeout_s(60)
async def test_sentinel_names_a_replica_is_refused(start_nginx,
                                                   start_redis):
    # A "sentinel" that names a replica as the primary (a stale sentinel):
    # ROLE says so, and the publish is refused rather than failing on
    # READONLY writes half-way.
    primary, replica, sentinels = start_sentinel_group(start_redis, n=1)
    # The sentinel is told the replica is the master (it believes it).
    sentinels[0].cli("SENTINEL", "REMOVE", "mymaster")
    sentinels[0].cli("SENTINEL", "MONITOR", "mymaster", "127.0.0.1",
                     str(replica.port), "1")
    m = start_nginx(zone=zone("sse", sentinel_url(sentinels)),
                    sub_locations=STATUS, allow_log=REDIS_ERRORS)
    r = await m.publish("c", "x")
    assert r.status == 503, r
    assert "not the master" in r.text, r


def bus_clients(r):
    """The machines' buses subscribed on r (pub/sub clients that are not
    sentinels)."""
    out = r.cli("CLIENT", "LIST", "TYPE", "pubsub")
    return [ln for ln in out.splitlines()
            if ln.strip() and "name=sentinel-" not in ln]


@pytest.mark.timeout_s(240)
@pytest.mark.parametrize("how", ["sigkill", "manual"])
async def test_sentinel_failover_under_load(start_nginx, start_redis, how):
    """Primary SIGKILLed (or a manual SENTINEL FAILOVER, which leaves the
    old primary up as a replica: READONLY) under load from 2 machines: the
    sentinels promote the replica, the machines find it by themselves;
    publishes meanwhile get 202 or 503, and every subscriber gets every
    accepted event once, in order (or, should the failover have lost
    acknowledged events, an sse-gap on its resume: never a silent
    hole)."""
    await failover_under_load(start_nginx, start_redis, how)


@pytest.mark.timeout_s(240)
@pytest.mark.parametrize("how,auth", [
    ("sigkill", (None, "s3nt")),          # requirepass on the sentinels
    ("manual", ("watcher", "s3nt:pw")),   # an ACL user on the sentinels
])
async def test_sentinels_with_a_password_failover_under_load(
        start_nginx, start_redis, how, auth):
    """Sentinels that want a password (requirepass, or an ACL user), other
    than the data nodes' (requirepass and masterauth): the machines AUTH
    to the sentinels with redis_sentinel_auth= and to the primary with
    the URL's password, through a failover under load."""
    await failover_under_load(start_nginx, start_redis, how, auth=auth)


async def failover_under_load(start_nginx, start_redis, how, auth=None):
    data_pass = "d4ta" if auth else None
    primary, replica, sentinels = start_sentinel_group(
        start_redis, data_pass=data_pass, auth=auth)
    url = sentinel_url(sentinels)
    extra = ""
    if auth:
        url = url.replace("://", f"://:{data_pass}@")
        user, pw = auth
        extra = " redis_sentinel_auth=" + \
            (f"{user}:" if user else "") + pw.replace(":", "%3A")
    # A resume after an epoch change (sse-gap) starts with the new epoch's
    # events: all of them, here.
    ms = [start_nginx(zone=zone("sse", url, extra), sub_locations=STATUS,
                      sub="            sse_heartbeat 1s;\n"
                          "            sse_initial_events 100000;",
                      pub="            sse_buffer_length 100000;",
                      allow_log=REDIS_ERRORS) for _ in range(2)]
    for m in ms:
        await wait_in_sync(m)
    subs = []
    for m in ms:
        for _ in range(5):
            subs.append((m, "ha", await m.stream("ha")))
    load = Load(ms, "ha")
    load.start()
    await asyncio.sleep(1)
    if how == "sigkill":
        primary.kill()
    else:
        assert sentinels[0].cli("SENTINEL", "FAILOVER",
                                "mymaster").strip() == "OK"
    killed = time.monotonic()
    # The sentinels promote the replica (and turn the old primary, when
    # it is up, into a replica of it)...
    while not (sentinels[0].master().get("port") == str(replica.port) and
               (how == "sigkill" or
                "role:slave" in primary.cli("INFO", "replication"))):
        await asyncio.sleep(0.1)
        assert time.monotonic() - killed < 60, sentinels[0].master()
    # ... and publishes succeed again.
    switched = len(load.accepted)
    while len(load.accepted) < switched + 20:
        await asyncio.sleep(0.1)
        assert time.monotonic() - killed < 60, \
            (len(load.accepted), load.refused[-3:])
    await asyncio.sleep(1)
    await load.finish()
    if how == "sigkill":
        assert load.refused, "no publish was refused during the failover"
    assert "role:master" in replica.cli("INFO", "replication")
    last = load.last()
    for m, p, c in subs:
        got, gaps = await follow(m, c, p, last)
        check_exactly_once(load, got, gaps)
    for m in ms:
        st = await wait_in_sync(m)
        if how == "sigkill":
            assert st["redis"]["reconnects"] >= 1
        assert f"names 127.0.0.1:{replica.port} the primary" in \
            m.log_text()
    # The buses are on the new primary too. (Sentinel's reconfiguration of
    # a demoted primary kills its pub/sub clients as well, so this holds
    # here whether or not the bus follows by itself: see
    # test_the_bus_follows_the_primary for a partition, where it must.)
    assert len(bus_clients(replica)) == len(ms), \
        replica.cli("CLIENT", "LIST")
    if how == "manual":
        assert not bus_clients(primary), primary.cli("CLIENT", "LIST")


@pytest.mark.timeout_s(120)
async def test_sentinel_failover_that_lost_events_is_a_new_epoch(
        start_nginx, start_redis):
    """Acknowledged events the replica never got (replication is
    asynchronous) are lost by the failover: the machines, which delivered
    them, take a new epoch, and a resume from one of them reports an
    sse-gap instead of a silent hole."""
    primary, replica, sentinels = start_sentinel_group(start_redis)
    url = sentinel_url(sentinels)
    a, b = [start_nginx(zone=zone("sse", url), sub_locations=STATUS,
                        allow_log=REDIS_ERRORS) for _ in range(2)]
    await wait_in_sync(a)
    await wait_in_sync(b)
    s = await b.stream("lost")
    kept = [(await a.publish_ok("lost", f"k{i}"), f"k{i}") for i in range(5)]
    assert primary.cli("WAIT", "1", "2000").strip() == "1"
    # Cut the replica off: what follows never reaches it.
    replica.proc.send_signal(signal.SIGSTOP)
    try:
        primary.cli("CLIENT", "KILL", "TYPE", "replica")
        lost = [(await a.publish_ok("lost", f"l{i}"), f"l{i}")
                for i in range(5)]
        got = [(e.id, e.data) for e in await s.events(10, timeout=10)]
        assert got == kept + lost
        primary.kill()
    finally:
        replica.proc.send_signal(signal.SIGCONT)
    # The stream ends (new epoch) once the machine finds the new primary.
    deadline = time.monotonic() + 60
    blocks = await s.until_end(60)
    assert any(x.event == "sse-error" and "evicted" in x.data
               for x in blocks), blocks
    while True:
        r = await a.publish("lost", "after")
        if r.status == 202:
            break
        assert r.status == 503, r
        assert time.monotonic() < deadline, r
        await asyncio.sleep(0.2)
    after = r.json()["id"]
    assert order(after)[0] != order(lost[-1][0])[0]
    s2 = await b.stream("lost", headers={"Last-Event-ID": lost[-1][0]})
    gap = await s2.next_event(10)
    assert gap.event == "sse-gap", gap
    assert '"reason":"epoch"' in gap.data
    more = await a.publish_ok("lost", "more")
    nxt = await s2.next_event(10)
    assert nxt.id in (after, more)


@pytest.mark.timeout_s(60)
async def test_seqs_given_again_after_a_loss_are_a_new_epoch(start_nginx,
                                                             start_redis):
    """Redis lost two acknowledged events (rolled back here by hand, as a
    failover to a replica that never got them would) and a machine that
    never had them publishes on, so Redis gives their seqs to new events.
    The machine that delivered the lost ones sees its seqs name other
    events, starts a new epoch, and its subscribers' resume reports an
    sse-gap instead of silently missing the new events."""
    r = start_redis()
    a = start_nginx(zone=zone("sse", r.url), sub_locations=STATUS,
                    allow_log=REDIS_ERRORS)
    await wait_in_sync(a)
    s = await a.stream("d")
    sent = [(await a.publish_ok("d", f"e{i}"), f"e{i}") for i in range(5)]
    assert [(e.id, e.data) for e in await s.events(5)] == sent
    # Redis forgets e3 and e4.
    for i, _ in sent[3:]:
        seq = i.split("-")[1]
        for key in ("{sse:sse}:ch:d", "{sse:sse}:log"):
            assert r.cli("XDEL", key, f"{seq}-1").strip() == "1"
    kept = sent[2][0].split("-")[1]
    for key in ("{sse:sse}:ch:d", "{sse:sse}:log"):
        assert r.cli("XSETID", key, f"{kept}-1").strip() == "OK"
    r.cli("SET", "{sse:sse}:seq", kept)
    r.cli("ZADD", "{sse:sse}:chans", kept, "d")
    # A machine started now never had them.
    b = start_nginx(zone=zone("sse", r.url), sub_locations=STATUS,
                    allow_log=REDIS_ERRORS)
    await wait_in_sync(b)
    again = await b.publish_ok("d", "new3")
    assert again == sent[3][0]  # e3's id, another event
    blocks = await s.until_end(10)
    assert any(x.event == "sse-error" and "evicted" in x.data
               for x in blocks), blocks
    assert "another event than this machine holds" in a.log_text()
    s2 = await a.stream("d", headers={"Last-Event-ID": sent[-1][0]})
    gap = await s2.next_event(10)
    assert gap.event == "sse-gap" and '"reason":"epoch"' in gap.data, gap
    new = await b.publish_ok("d", "later")
    assert order(new)[0] > order(sent[0][0])[0]
    assert (await s2.next_event(10)).id == new


@pytest.mark.timeout_s(60)
async def test_a_silent_sentinel_times_out_and_the_next_answers(
        start_nginx, start_redis):
    """The first sentinel accepts connections and never answers: asking it
    times out (redis_timeout), the next one is asked and named the
    primary; no worker hangs."""
    import socket
    primary, _, sentinels = start_sentinel_group(start_redis, n=1)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel accepts; nobody reads
    try:
        port = silent.getsockname()[1]
        url = (f"redis+sentinel://127.0.0.1:{port},"
               f"127.0.0.1:{sentinels[0].port}/mymaster")
        m = start_nginx(zone=zone("sse", url, " redis_timeout=1s"),
                        sub_locations=STATUS, allow_log=REDIS_ERRORS)
        t0 = time.monotonic()
        await wait_in_sync(m, timeout=20)
        ok = 0
        while ok < 5:
            r = await m.publish("c", "x")
            assert r.status in (202, 503), r
            if r.status == 202:
                ok += 1
            else:
                assert "timed out" in r.text, r
            assert time.monotonic() - t0 < 20
        assert "timed out" in m.log_text()
        assert f"names 127.0.0.1:{primary.port} the primary" in m.log_text()
    finally:
        silent.close()


# A publish as a node whose notification never went out would leave it:
# counted, in the channel's stream and the zone's log, not on the bus.
UNHEARD = """
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
local d
for i = 1, #last[2], 2 do
  if last[2][i] == 'd' then d = last[2][i + 1] end
end
d = string.gsub(d, ARGV[1], ARGV[2])
local s = redis.call('INCR', KEYS[1])
local sid = string.format('%.0f', s)
local p = string.match(last[1], '^(%d+)')
redis.call('XADD', KEYS[2], sid .. '-1', 'p', p, 'l', '100', 't',
           '3600000', 'd', d)
redis.call('XADD', KEYS[3], sid .. '-1', 'c', ARGV[3], 'l', '100', 't',
           '3600000', 'd', d)
redis.call('ZADD', KEYS[4], s, ARGV[3])
return sid
"""


@pytest.mark.timeout_s(60)
async def test_a_seq_missing_on_the_bus_is_read_from_the_log(start_nginx,
                                                             start_redis):
    """An event Redis holds whose notification never reached the bus (a
    primary that died before passing it on, two nodes' notifications
    overtaking each other during a migration): the machines notice the
    skipped seq with the next one and read it from the zone's log, so
    subscribers get both, in order."""
    r = start_redis()
    ms = [start_nginx(zone=zone("sse", r.url), sub_locations=STATUS,
                      allow_log=REDIS_ERRORS) for _ in range(2)]
    for m in ms:
        await wait_in_sync(m)
    subs = [await m.stream("g") for m in ms for _ in range(2)]
    first = await ms[0].publish_ok("g", "first")
    for s in subs:
        assert (await s.next_event()).id == first
    sid = r.cli("EVAL", UNHEARD, "4", "{sse:sse}:seq", "{sse:sse}:ch:g",
                "{sse:sse}:log", "{sse:sse}:chans", "first", "unheard",
                "g").strip()
    assert int(sid) == seq_of(first) + 1, sid
    after = await ms[1].publish_ok("g", "after")
    for s in subs:
        got = [(e.id, e.data) for e in await s.events(2)]
        assert got == [(f"{first.split('-')[0]}-{sid}", "unheard"),
                       (after, "after")]
    for m in ms:
        assert "the redis bus skipped from seq" in m.log_text()
