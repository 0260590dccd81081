"""The Redis bus's repair (a new machine, a reconnect) and its epochs:
real redis-server and nginx machines with 2 workers each."""

import asyncio
import re
import time

import pytest

from conftest import overload_end, seq_of
from redishelp import needs_redis, redis_conf, start_redis, wait_in_sync  # noqa: F401
from test_redis import STATUS, REDIS_ERRORS, machines, no_event, read_events

pytestmark = needs_redis

KEY = "{sse:sse}"


async def status(m):
    return (await m.sub_http("GET", "/sse-status")).json()["zones"][0]


async def load(m, channels, per, size, conns=8, window=64, prefix="c"):
    """Publishes `per` events of `size` bytes to each of `channels`
    channels through machine m: one streaming publish per channel,
    pipelined on a few keep-alive connections."""
    data = "x" * size
    body = "".join(f"data: {data}\n\n" for _ in range(per)).encode()

    def request(i):
        return (f"POST /publish/{prefix}{i} HTTP/1.1\r\nHost: t\r\n"
                f"Content-Type: text/event-stream\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def one(ids):
        # nginx closes a keep-alive connection after keepalive_requests:
        # what was not answered goes again on a new one (a filler channel
        # may get an event twice; nothing counts them).
        while ids:
            reader, writer = await asyncio.open_connection("127.0.0.1",
                                                           m.pub_port)
            try:
                while ids:
                    batch = ids[:window]
                    writer.write(b"".join(request(i) for i in batch))
                    await writer.drain()
                    for _ in batch:
                        head = await asyncio.wait_for(
                            reader.readuntil(b"\r\n\r\n"), 30)
                        assert head.startswith(b"HTTP/1.1 202"), head
                        n = int(re.search(rb"(?i)content-length: *(\d+)",
                                          head).group(1))
                        await reader.readexactly(n)
                        ids = ids[1:]
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

    ids = list(range(channels))
    await asyncio.gather(*(one(ids[k::conns]) for k in range(conns)))


async def wait_status(m, pred, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        st = await status(m)
        if pred(st):
            return st
        assert time.monotonic() < deadline, st
        await asyncio.sleep(0.05)


async def cut_bus(r, m):
    """Every machine's bus is cut and cannot come back until
    restore_bus(): machine m hears nothing (its publishes still work)."""
    assert r.cli("ACL", "SETUSER", "default", "-subscribe").strip() == "OK"
    r.cli("CLIENT", "KILL", "TYPE", "pubsub")
    await wait_status(m, lambda st: st["redis"]["state"] != "up")


def restore_bus(r):
    assert r.cli("ACL", "SETUSER", "default", "+subscribe").strip() == "OK"


# Stores an event in Redis as the publish script does (stream, log,
# :chans, the counter) but says nothing on the bus: a notification lost
# (a failover, a slot moving). The body is the newest of the channel
# KEYS[1]'s (a template). KEYS: template stream, seq, stream, log, chans;
# ARGV: channel.
LOST_LUA = """
local t = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local d
for i = 1, #t[1][2], 2 do
  if t[1][2][i] == 'd' then d = t[1][2][i + 1] end
end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local p = '0'
if #last > 0 then p = string.match(last[1][1], '^(%d+)') end
local s = redis.call('INCR', KEYS[2])
local sid = string.format('%.0f', s)
redis.call('XADD', KEYS[3], sid .. '-1', 'p', p, 'l', '100',
           't', '3600000', 'd', d)
redis.call('XADD', KEYS[4], sid .. '-1', 'c', ARGV[1], 'l', '100',
           't', '3600000', 'd', d)
redis.call('ZADD', KEYS[5], s, ARGV[1])
return sid
"""


def store_unheard(r, template, channel):
    """An event on `channel` with the body of `template`'s newest, stored
    in Redis but never heard on the bus; returns its seq."""
    out = r.cli("EVAL", LOST_LUA, "5", f"{KEY}:ch:{template}", f"{KEY}:seq",
                f"{KEY}:ch:{channel}", f"{KEY}:log", f"{KEY}:chans",
                channel)
    return int(out.strip())


# A new epoch as Redis starts one (past every seq given), announced on
# nobody's bus. Returns the epoch.
NEW_EPOCH_LUA = """
local s = tonumber(redis.call('GET', KEYS[2]))
local e = string.format('%.0f', s + 1000000000)
redis.call('SET', KEYS[1], e)
redis.call('SET', KEYS[2], e)
return e
"""


def new_epoch_unheard(r):
    return int(r.cli("EVAL", NEW_EPOCH_LUA, "2", f"{KEY}:epoch",
                     f"{KEY}:seq").strip())


# ------------------------------------------------------------ new machine

@pytest.mark.timeout_s(150)
async def test_new_machine_syncs_in_pages_and_serves_history(start_nginx,
                                                             start_redis):
    # 20,000 channels x 5 events of 1 KB: the zone's log holds 100,000.
    # Read at once (or one XRANGE per channel, all with one deadline), it
    # does not fit a 500 ms redis_timeout: the new machine timed out,
    # reconnected and started over, for good.
    r = start_redis()
    extra = " redis_timeout=500ms"
    sub = "            sse_initial_events 3;"
    (a,) = await machines(start_nginx, r, 1, extra=extra, sub=sub)
    await load(a, 20000, 5, 1000)
    sent = [(await a.publish_ok("probe", f"p{i}"), f"p{i}")
            for i in range(10)]
    (b,) = [start_nginx(zone=redis_conf(r.url, extra=extra),
                        sub_locations=STATUS, sub=sub,
                        allow_log=REDIS_ERRORS)]
    # Events published while it repairs come from the bus or the log,
    # once each.
    during = []

    async def publish_meanwhile():
        while (await status(b))["redis"]["state"] != "up":
            during.append((await a.publish_ok("live", f"l{len(during)}"),
                           f"l{len(during)}"))
    pub = asyncio.ensure_future(publish_meanwhile())
    # And a flood, more than the bus may hold while repairing.
    flood = asyncio.ensure_future(load(a, 3000, 3, 1000, prefix="m"))
    st = await wait_in_sync(b, timeout=60)
    await pub
    await flood
    assert st["redis"]["reconnects"] == 0, st
    assert st["epoch"] == sent[0][0].split("-")[0]
    # History from Redis: resume and initial events.
    s = await b.stream("probe", headers={"Last-Event-ID": sent[3][0]})
    assert await read_events(s, 6, 10) == sent[4:]
    s0 = await b.stream("probe")
    assert await read_events(s0, 3, 10) == sent[7:]
    if len(during) > 1:
        # (The channel keeps its newest 100.)
        k = min(len(during) - 1, 50)
        s1 = await b.stream("live",
                            headers={"Last-Event-ID": during[-k - 1][0]})
        assert await read_events(s1, k, 10) == during[-k:]
        await no_event(s1, 0.2)
    # The flood: every channel's newest the same on both machines.
    for i in range(0, 3000, 97):
        want = (await a.info(f"m{i}")).json()["last_id"]
        assert (await b.info(f"m{i}")).json()["last_id"] == want, i
    # New events: exactly once, in order, on both machines.
    sa = await a.stream("probe", headers={"Last-Event-ID": sent[-1][0]})
    new = []
    for i in range(6):
        m = (a, b)[i % 2]
        new.append((await m.publish_ok("probe", f"n{i}"), f"n{i}"))
    assert await read_events(s, 6, 10) == new
    assert await read_events(sa, 6, 10) == new
    await no_event(s, 0.3)
    assert (await b.info("probe")).json()["last_id"] == new[-1][0]


# ------------------------------------------------------------ epochs

@pytest.mark.timeout_s(60)
async def test_new_epoch_heard_late_repairs_its_first_events(start_nginx,
                                                             start_redis):
    # Redis started a new epoch and its first event never reached the
    # bus: the first one heard is not the epoch's first, so the machine
    # reads what came before from the log, rather than taking the epoch
    # from there and losing the event without a gap.
    r = start_redis()
    sub = "            sse_initial_events 5;"
    a, b = await machines(start_nginx, r, 2, sub=sub)
    old = await a.publish_ok("tmpl", "lost")
    s = await b.stream("ep")
    await a.publish_ok("ep", "old")
    assert (await s.next_event()).data == "old"
    epoch = new_epoch_unheard(r)
    assert epoch > int(old.split("-")[0])
    lost = store_unheard(r, "tmpl", "ep")
    assert lost == epoch + 1
    after = await a.publish_ok("ep", "after")
    assert after == f"{epoch}-{epoch + 2}"
    # The streams of the old epoch end; each machine holds both events.
    await s.until_end(10)
    for m in (a, b):
        await wait_in_sync(m)
        s2 = await m.stream("ep")
        assert await read_events(s2, 2, 10) == \
            [(f"{epoch}-{lost}", "lost"), (after, "after")]
        await no_event(s2, 0.2)


@pytest.mark.timeout_s(60)
async def test_redis_with_an_older_epoch_gets_a_new_one(start_nginx,
                                                        start_redis):
    # A Redis that comes back with an older epoch than the machines took
    # (a replica promoted before the new epoch reached it) lost data: a
    # new epoch, never the old one again.
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1)
    first = await a.publish_ok("o", "x")
    e1 = int(first.split("-")[0])
    s = await a.stream("o", headers={"Last-Event-ID": first})
    r.cli("SET", f"{KEY}:epoch", str(e1 - 1000))
    r.cli("CLIENT", "KILL", "TYPE", "pubsub")
    await s.until_end(10)
    st = await wait_status(a, lambda st: st["redis"]["state"] == "up" and
                           int(st["epoch"]) != e1)
    assert int(st["epoch"]) > e1, st
    s2 = await a.stream("o", headers={"Last-Event-ID": first})
    gap = await s2.next_event()
    assert gap.event == "sse-gap" and '"reason":"epoch"' in gap.data, gap
    new = await a.publish_ok("o", "y")
    assert int(new.split("-")[0]) == int(st["epoch"])
    assert (await s2.next_event()).id == new


@pytest.mark.timeout_s(60)
async def test_repair_across_a_fork_never_relabels_old_events(start_nginx,
                                                              start_redis):
    # Machine b misses an event of the old epoch and the fork: its repair
    # reads the log, whose entries do not say their epoch. The old
    # epoch's event must not come out under the new epoch's id.
    r = start_redis()
    sub = "            sse_initial_events 5;"
    a, b = await machines(start_nginx, r, 2, sub=sub)
    await a.publish_ok("f", "seen")
    await cut_bus(r, b)
    missed = await a.publish_ok("f", "missed")
    epoch = new_epoch_unheard(r)
    after = await a.publish_ok("f", "after")
    assert after == f"{epoch}-{epoch + 1}"
    restore_bus(r)
    st = await wait_status(b, lambda st: st["redis"]["state"] == "up" and
                           int(st["epoch"]) == epoch)
    s = await b.stream("f")
    got = await read_events(s, 1, 10)
    assert got == [(after, "after")], (got, missed)
    await no_event(s, 0.3)


# ------------------------------------------------------------ holes

@pytest.mark.timeout_s(60)
async def test_hole_past_the_log_ends_changed_channels_with_a_gap(
        start_nginx, start_redis):
    # Machine b missed more than the zone's log keeps (trimmed here): the
    # channels that changed meanwhile end and resume with sse-gap, a
    # channel deleted and made again among them too (never its old
    # history followed by the new one); a channel that did not change
    # goes on.
    r = start_redis()
    sub = "            sse_initial_events 5;"
    a, b = await machines(start_nginx, r, 2, sub=sub)
    subs = {ch: await b.stream(ch) for ch in ("h", "d", "u")}
    for ch in ("h", "d", "u"):
        await a.publish_ok(ch, f"{ch}0")
    for ch, c in subs.items():
        assert (await c.next_event()).data == f"{ch}0"
    last = {ch: c.last_id for ch, c in subs.items()}
    await cut_bus(r, b)
    await a.publish_ok("h", "h1")
    assert (await a.pub_http("DELETE", "/publish/d")).status == 200
    await a.publish_ok("d", "new")
    r.cli("XTRIM", f"{KEY}:log", "MAXLEN", "0")
    restore_bus(r)
    for ch in ("h", "d"):
        rest = await subs[ch].until_end(10)
        assert [blk.fields for blk in rest] == overload_end("evicted"), \
            (ch, rest)
        s = await b.stream(ch, headers={"Last-Event-ID": last[ch]})
        gap = await s.next_event()
        assert gap.event == "sse-gap", (ch, gap)
    await wait_in_sync(b)
    # Nothing of "d" from before the delete is served any more, nor what
    # came before the hole in "h" as if nothing were missing after it.
    for ch in ("d", "h"):
        s = await b.stream(ch)
        await no_event(s, 0.3)
        nd = await a.publish_ok(ch, f"{ch}2")
        assert await read_events(s, 1, 10) == [(nd, f"{ch}2")]
    live = await a.publish_ok("u", "u1")
    assert (await subs["u"].next_event()).id == live
    await no_event(subs["u"], 0.2)


class DelayProxy:
    """A TCP proxy to Redis that hands on what Redis sends `delay` seconds
    late, in order: a slow link, each round trip at least that long."""

    def __init__(self, target, delay):
        self.target, self.delay, self.tasks = target, delay, []

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def handle(self, cr, cw):
        rr, rw = await asyncio.open_connection("127.0.0.1", self.target)
        late = asyncio.Queue()

        async def up():
            while data := await cr.read(65536):
                rw.write(data)
                await rw.drain()
            rw.close()

        async def down():
            while data := await rr.read(65536):
                late.put_nowait((time.monotonic() + self.delay, data))
            late.put_nowait((time.monotonic() + self.delay, b""))

        async def out():
            while True:
                due, data = await late.get()
                await asyncio.sleep(max(0, due - time.monotonic()))
                if not data:
                    break
                cw.write(data)
                await cw.drain()
            cw.close()

        self.tasks += [asyncio.ensure_future(f()) for f in (up, down, out)]

    def close(self):
        self.server.close()
        for t in self.tasks:
            t.cancel()


@pytest.mark.timeout_s(120)
async def test_repair_ends_while_the_zone_outpaces_its_log_pages(
        start_nginx, start_redis):
    """A machine whose link to Redis is slow (0.25 s each round trip)
    repairs after its bus was cut while another machine publishes faster
    than one page of the log (256 events) per round trip: every page comes
    back full. The repair still ends once it has read what Redis had when
    the bus subscribed again (the bus has the rest); before, it read on
    after a log that grew as fast, and the machine stayed out of sync
    while the load lasted."""
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1)
    proxy = await DelayProxy(r.port, 0.25).start()
    try:
        stop = asyncio.Event()
        sent = 0

        async def pump():
            # About 2,000 events/s: past the pages' 1,024/s, and little enough
            # that the bus keeps what it hears during the repair (4,096).
            nonlocal sent
            i = 0
            while not stop.is_set():
                t = time.monotonic()
                await load(a, 8, 25, 16, conns=4, prefix=f"p{i}-")
                sent += 200
                i += 1
                await asyncio.sleep(max(0, 0.1 - (time.monotonic() - t)))

        try:
            b = start_nginx(zone=redis_conf(f"redis://127.0.0.1:{proxy.port}",
                                            extra=" redis_timeout=5s"),
                            sub_locations=STATUS, allow_log=REDIS_ERRORS)
            await wait_in_sync(b)
            task = asyncio.ensure_future(pump())
            await asyncio.sleep(1)
            t0, sent0 = time.monotonic(), sent
            r.cli("CLIENT", "KILL", "TYPE", "pubsub")
            await wait_status(b, lambda st: st["redis"]["state"] != "up")
            await wait_in_sync(b, timeout=15)
            rate = (sent - sent0) / (time.monotonic() - t0)
        finally:
            stop.set()
            if "task" in locals():
                await task
        # The load outran the pages, or the test shows nothing.
        assert rate > 1100, rate
        # And b holds what a published: a resume from a channel's first event
        # gets the rest of it exactly, the first channel and the last.
        e = (await status(b))["epoch"]
        for ch in ("p0-0", f"p{sent // 200 - 1}-7"):
            # The link's delay: the last events are on their way to b.
            deadline = time.monotonic() + 10
            while (info := await b.info(ch)).status != 200 or \
                    info.json()["messages"] != 25:
                assert time.monotonic() < deadline, info
                await asyncio.sleep(0.05)
            first = r.cli("XRANGE", f"{KEY}:ch:{ch}", "-", "+", "COUNT", "1")
            seq = first.split()[0].split("-")[0]
            c = await b.stream(ch, headers={"Last-Event-ID": f"{e}-{seq}"})
            got = await c.events(24, timeout=15)
            assert len({blk.id for blk in got}) == 24, got
            assert all(seq_of(blk.id) > int(seq) for blk in got), got
            await no_event(c, 0.3)
    finally:
        proxy.close()
