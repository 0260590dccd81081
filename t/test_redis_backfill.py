"""A new machine's history older than the zone's log: each channel's
older events come from its own stream in Redis (the back-fill), so a
quiet channel in a busy zone answers the same on every machine. The log
is trimmed with XTRIM here, which leaves Redis as 100,000 newer events
of other channels would (the publish script trims it the same way)."""

import asyncio
import os
import re
import time

import pytest

from conftest import seq_of
from redishelp import needs_redis, redis_conf, start_redis, wait_in_sync  # noqa: F401
from test_redis import STATUS, REDIS_ERRORS, machines, no_event, read_events
from test_redis_bus import DelayProxy, load, new_epoch_unheard, status

pytestmark = needs_redis

KEY = "{sse:sse}"
# Under the sanitizer build (make test-asan) freed memory waits in a
# quarantine of 16 MB per process before it is reused.
ASAN = bool(os.environ.get("SSE_PRELOAD"))
SUB = "            sse_initial_events 3;"


def trim_log_before(r, event_id):
    """The zone's log keeps only the entries from this event on."""
    r.cli("XTRIM", f"{KEY}:log", "MINID", f"{seq_of(event_id)}-0")
    first = r.cli("XRANGE", f"{KEY}:log", "-", "+", "COUNT", "1")
    assert first.split()[0] == f"{seq_of(event_id)}-1", first


async def sent(m, ch, prefix, n):
    """Publishes n events "PREFIX0".. to ch through m: [(id, data)]."""
    return [(await m.publish_ok(ch, f"{prefix}{i}"), f"{prefix}{i}")
            for i in range(n)]


def new_machine(start_nginx, r, size="16m", allow_log=(), via=None):
    """A machine of Redis r, or of it through a DelayProxy `via` (a slow
    link: commands wait up to 5 s)."""
    zone = redis_conf(r.url, size=size) if via is None else redis_conf(
        f"redis://127.0.0.1:{via.port}", size=size, extra=" redis_timeout=5s")
    return start_nginx(zone=zone, sub_locations=STATUS, sub=SUB,
                       allow_log=list(allow_log) + REDIS_ERRORS)


async def assert_gap(m, ch, last_id):
    s = await m.stream(ch, headers={"Last-Event-ID": last_id})
    gap = await s.next_event()
    assert gap.event == "sse-gap" and '"evicted"' in gap.data, (ch, gap)


@pytest.mark.timeout_s(60)
async def test_quiet_channel_history_on_a_new_machine(start_nginx,
                                                      start_redis):
    # "quiet" had its say before the log's first entry; "busy" goes on.
    # A machine up all along and a new one answer alike: initial events
    # and exact resumes (no sse-gap), single and multiplexed.
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1, sub=SUB)
    quiet = await sent(a, "quiet", "q", 6)
    busy = await sent(a, "busy", "b", 20)
    # "late" begins after the log's first entry: all of it is in the log.
    late = await sent(a, "late", "l", 2)
    trim_log_before(r, busy[10][0])
    b = new_machine(start_nginx, r)
    await wait_in_sync(b)
    for m in (a, b):
        s = await m.stream("quiet")
        assert await read_events(s, 3, 10) == quiet[3:]
        s = await m.stream("quiet", headers={"Last-Event-ID": quiet[1][0]})
        assert await read_events(s, 4, 10) == quiet[2:]
        await no_event(s, 0.2)
        # Busy's events before the log's first come from its stream too.
        s = await m.stream("busy", headers={"Last-Event-ID": busy[2][0]})
        assert await read_events(s, 17, 10) == busy[3:]
        # Multiplexed, from inside quiet's history: every channel, in the
        # zone's order, back-filled and logged alike; "late" had nothing
        # before, so nothing is missing of it either.
        s = await m.stream("/multi?channels=busy,late,quiet",
                           headers={"Last-Event-ID": quiet[4][0]})
        assert await read_events(s, 23, 10) == quiet[5:] + busy + late
        await no_event(s, 0.2)
    # Live events go on after the back-filled ones, on both machines.
    sb = await b.stream("quiet", headers={"Last-Event-ID": quiet[-1][0]})
    new = await a.publish_ok("quiet", "live")
    assert await read_events(sb, 1, 10) == [(new, "live")]
    assert "reading the channels' older events" in b.log_text()


@pytest.mark.timeout_s(60)
async def test_trimmed_stream_and_remade_channel_gap_where_redis_has_none(
        start_nginx, start_redis):
    # What a channel's stream no longer holds is a gap on the new machine
    # as on the old one: before a stream trimmed to sse_buffer_length, and
    # before a channel deleted and made again (its stream starts anew).
    r = start_redis()
    pub = "            sse_buffer_length 3;"
    (a,) = await machines(start_nginx, r, 1, sub=SUB, pub=pub)
    tr = await sent(a, "tr", "t", 6)
    old = await a.publish_ok("remade", "old")
    assert (await a.pub_http("DELETE", "/publish/remade")).status == 200
    remade = await sent(a, "remade", "r", 2)
    await a.publish_ok("other", "o")
    # The log emptied altogether: the new machine finds the hole at its
    # end (Redis's seq past the log), not at its first entry.
    r.cli("XTRIM", f"{KEY}:log", "MAXLEN", "0")
    b = start_nginx(zone=redis_conf(r.url), sub_locations=STATUS, sub=SUB,
                    pub=pub, allow_log=REDIS_ERRORS)
    await wait_in_sync(b)
    await assert_gap(b, "tr", tr[1][0])
    s = await b.stream("tr", headers={"Last-Event-ID": tr[2][0]})
    assert await read_events(s, 3, 10) == tr[3:]
    await assert_gap(b, "remade", old)
    s = await b.stream("remade", headers={"Last-Event-ID": remade[0][0]})
    assert await read_events(s, 1, 10) == remade[1:]
    s = await b.stream("remade")
    assert await read_events(s, 2, 10) == remade
    await no_event(s, 0.2)


def worker_hwm_kb(m):
    """The largest peak resident size of m's workers."""
    out = 0
    for p in m.workers():
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    out = max(out, int(line.split()[1]))
    return out


@pytest.mark.timeout_s(90)
async def test_back_fill_bounded_coldest_channels_start_at_the_log(
        start_nginx, start_redis):
    # Redis holds 100 channels x 4 events of 60 KB (24 MB) older than the
    # log; the new machine's zone is 2 MB: it holds at most 1 MB of them
    # at once, the newest channels', exact; the coldest resume with an
    # sse-gap (as before the back-fill). Its workers' memory stays small.
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1, sub=SUB)
    body = "x" * 60000
    first = {}
    for i in range(100):
        first[i] = [await a.publish_ok(f"c{i}", body) for _ in range(4)]
    last = await a.publish_ok("tail", "t")
    trim_log_before(r, last)
    b = new_machine(start_nginx, r, size="2m")
    await wait_in_sync(b)
    # The newest channels: exact from inside their history.
    for i in (99, 98, 97):
        s = await b.stream(f"c{i}", headers={"Last-Event-ID": first[i][0]})
        assert [e for e, _ in await read_events(s, 3, 10)] == first[i][1:]
        await no_event(s, 0.1)
    # The coldest: a gap, as without the back-fill.
    for i in (0, 1, 50):
        await assert_gap(b, f"c{i}", first[i][0])
    log = b.log_text()
    m = re.search(r"(\d+) events of (\d+) channels read from their streams "
                  r"\((\d+) of (\d+) bytes\); the colder channels start at "
                  r"the log", log)
    assert m, log
    assert int(m.group(4)) == 1024 * 1024
    assert 3 <= int(m.group(2)) < 10, m.group(0)
    # Read whole, 24 MB would show (more than once: reply and copies);
    # the bound keeps a worker near its own few MB and the 2 MB zone.
    bound = 20 * 1024 + (24 * 1024 if ASAN else 0)
    assert worker_hwm_kb(b) < bound, worker_hwm_kb(b)


@pytest.mark.timeout_s(90)
async def test_redis_fails_mid_back_fill_then_machine_comes_up_right(
        start_nginx, start_redis):
    # The new machine's stream reads fail (Redis refuses XREVRANGE, as a
    # Redis failing mid-way), then Redis is killed and restarted from its
    # append-only file: the machine retries, and once Redis is back comes
    # up with the exact history. No crash, nothing half-committed.
    r = start_redis(args=["--appendonly", "yes", "--appendfsync", "always"])
    (a,) = await machines(start_nginx, r, 1, sub=SUB)
    quiet = [(await a.publish_ok(f"q{i % 50}", f"v{i}"), f"v{i}")
             for i in range(200)]
    last = await a.publish_ok("tail", "t")
    trim_log_before(r, last)
    assert r.cli("ACL", "SETUSER", "default", "-xrevrange").strip() == "OK"
    b = new_machine(start_nginx, r, allow_log=[r"NOPERM", r"\[error\]"])
    deadline = time.monotonic() + 20
    while "reading a channel's stream" not in b.log_text():
        assert time.monotonic() < deadline, b.log_text()
        await asyncio.sleep(0.05)
    st = (await b.sub_http("GET", "/sse-status")).json()["zones"][0]
    assert st["redis"]["state"] != "up", st
    # A channel deleted meanwhile (its stream goes; :chans keeps it).
    assert (await a.pub_http("DELETE", "/publish/q2")).status == 200
    r.kill()
    await asyncio.sleep(0.3)
    r.start()  # the ACL is not kept: the reads work again
    await wait_in_sync(b, timeout=30)
    for i in (0, 1, 49):
        mine = [x for k, x in enumerate(quiet) if k % 50 == i]
        s = await b.stream(f"q{i}", headers={"Last-Event-ID": mine[0][0]})
        assert await read_events(s, 3, 10) == mine[1:]
        await no_event(s, 0.1)
    # The deleted channel: nothing of it, and a resume into it a gap, on
    # both machines.
    gone = [x for k, x in enumerate(quiet) if k % 50 == 2]
    for m in (a, b):
        await assert_gap(m, "q2", gone[0][0])
        await no_event(await m.stream("q2"), 0.2)
    # Both workers alive, the one that read Redis included.
    assert len(b.workers()) == 2


@pytest.mark.timeout_s(60)
async def test_new_epoch_while_back_fill_fails_serves_nothing_old(
        start_nginx, start_redis):
    # Redis starts a new epoch while the new machine's back-fill fails:
    # once the reads work again, the machine takes the new epoch and
    # serves nothing of the old one's streams as if it were the new's.
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1, sub=SUB)
    old = await sent(a, "q", "o", 3)
    last = await a.publish_ok("tail", "t")
    trim_log_before(r, last)
    assert r.cli("ACL", "SETUSER", "default", "-xrevrange").strip() == "OK"
    b = new_machine(start_nginx, r, allow_log=[r"NOPERM", r"\[error\]"])
    deadline = time.monotonic() + 20
    while "reading a channel's stream" not in b.log_text():
        assert time.monotonic() < deadline, b.log_text()
        await asyncio.sleep(0.05)
    epoch = new_epoch_unheard(r)
    assert r.cli("ACL", "SETUSER", "default", "+xrevrange").strip() == "OK"
    deadline = time.monotonic() + 20
    while True:
        st = await wait_in_sync(b, timeout=20)
        if st["epoch"] == str(epoch):
            break
        assert time.monotonic() < deadline, st
        await asyncio.sleep(0.05)
    s = await b.stream("q", headers={"Last-Event-ID": old[0][0]})
    gap = await s.next_event()
    assert gap.event == "sse-gap" and '"epoch"' in gap.data, gap
    await no_event(s, 0.2)
    await no_event(await b.stream("q"), 0.2)
    new = await a.publish_ok("q", "new")
    assert new.startswith(f"{epoch}-"), new
    assert await read_events(s, 1, 10) == [(new, "new")]


@pytest.mark.timeout_s(120)
async def test_quiet_channel_after_more_than_the_log_keeps(start_nginx,
                                                           start_redis):
    # The real thing, no XTRIM: a quiet room, then more than 100,000 events
    # of a busy one (one streaming publish), which the publish script's
    # trimming pushes the room's events out of the zone's log with. A
    # restarted machine serves the room's history; before the back-fill
    # it had none there, and a resume into it was an sse-gap.
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1, sub=SUB)
    quiet = await sent(a, "room", "r", 4)
    body = b"data: x\n\n" * 101000
    resp = await a.pub_http("POST", "/publish/busy", body=body,
                            headers={"Content-Type": "text/event-stream"},
                            timeout=60)
    assert resp.status == 202, resp
    assert resp.json()["published"] == 101000
    first = r.cli("XRANGE", f"{KEY}:log", "-", "+", "COUNT", "1").split()[0]
    assert int(first.split("-")[0]) > seq_of(quiet[-1][0]), first
    assert a.stop()
    (a2,) = await machines(start_nginx, r, 1, sub=SUB)
    s = await a2.stream("room")
    assert await read_events(s, 3, 10) == quiet[1:]
    s = await a2.stream("room", headers={"Last-Event-ID": quiet[0][0]})
    assert await read_events(s, 3, 10) == quiet[1:]
    await no_event(s, 0.2)


@pytest.mark.timeout_s(120)
async def test_publishes_during_the_back_fill_keep_every_history_exact(
        start_nginx, start_redis):
    # 1,000 channels older than the log (several :chans pages), and while
    # the new machine reads them, publishes to them, coldest first (each
    # moves its channel to the top of :chans, past the pages read): every
    # channel's history is the same on both machines, exact from its
    # first event.
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1, sub=SUB)
    await load(a, 1000, 2, 20, prefix="c")
    last = await a.publish_ok("tail", "t")
    trim_log_before(r, last)
    b = new_machine(start_nginx, r)
    during = []

    async def publish_meanwhile():
        while (await status(b))["redis"]["state"] != "up" and \
                len(during) < 1000:
            ch = f"c{len(during)}"
            during.append(ch)
            await a.publish_ok(ch, "n")
    await publish_meanwhile()
    await wait_in_sync(b)
    for i in list(range(0, 1000, 50)) + list(range(min(len(during), 10))):
        info = (await a.info(f"c{i}")).json()
        n = info["published"] - 1
        got = {}
        for m in (a, b):
            s = await m.stream(f"c{i}",
                               headers={"Last-Event-ID": info["first_id"]})
            got[m] = await read_events(s, n, 10)
        assert got[b] == got[a], i
        assert got[a][-1][0] == info["last_id"], i


@pytest.mark.timeout_s(120)
async def test_many_small_channels_are_back_filled(start_nginx, start_redis):
    # 6,000 channels of one small event each, all older than the log, into
    # a 2 MB zone (a bound of 1 MB, which remembering the channels counts
    # against too): thousands of the newest come whole (about 3,000 here),
    # not a few (a review feared the channels' cost would crowd out all
    # but the newest one: it does not, the stream reads keep pace with the
    # pages of channels).
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1, sub=SUB)
    await load(a, 6000, 1, 16, conns=8, window=256, prefix="c")
    last = await a.publish_ok("tail", "t")
    trim_log_before(r, last)
    b = new_machine(start_nginx, r, size="2m")
    await wait_in_sync(b, timeout=30)
    m = re.search(r"(\d+) events of (\d+) channels read", b.log_text())
    assert m and int(m.group(2)) >= 1000, m and m.group(0)
    # The newest channels answer as on the machine up all along: their
    # one event, no sse-gap. (load() publishes in rounds over 8
    # connections: the newest are among the last few hundred.)
    newest = r.cli("ZREVRANGE", f"{KEY}:chans", "1", "100").split()
    for ch in newest[:20]:
        s = await b.stream(ch)
        got = await s.events(1, timeout=10)
        assert got[0].event is None and got[0].data == "x" * 16, (ch, got)


@pytest.mark.timeout_s(90)
async def test_log_trimmed_under_the_back_fill_gives_gaps_not_skips(
        start_nginx, start_redis):
    # The new machine reads x's and y's first events from their streams
    # (older than the log), over a slow link (0.25 s a round trip). While
    # it does, the log is trimmed past x's and y's next events (a busy
    # zone trims it so). Those events are then in neither what it read nor
    # the log: x (which has an event after) and y (which has not) resume
    # from their back-filled events with an sse-gap, and serve no initial
    # events across the missing one. Before, the machine skipped the
    # trimmed entries and served x1 then x-late, and y1 as y's newest.
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1, sub=SUB)
    # Channels older than the log: the back-fill takes a dozen round trips.
    await load(a, 200, 2, 20, prefix="c")
    x = await sent(a, "x", "x", 2)
    y = await sent(a, "y", "y", 2)
    await a.publish_ok("c7", "c7-late")
    trim_log_before(r, await a.publish_ok("tail", "t"))
    x_missed = (await a.publish_ok("x", "x-missed"), "x-missed")
    y_missed = (await a.publish_ok("y", "y-missed"), "y-missed")
    keep = await a.publish_ok("f", "kept")
    x_late = (await a.publish_ok("x", "x-late"), "x-late")
    proxy = await DelayProxy(r.port, 0.25).start()
    try:
        b = new_machine(start_nginx, r, via=proxy)
        deadline = time.monotonic() + 20
        while "reading the channels' older events" not in b.log_text():
            assert time.monotonic() < deadline, b.log_text()[-2000:]
            await asyncio.sleep(0.02)
        trim_log_before(r, keep)
        # Trimmed while the back-fill was still reading, or the test shows
        # nothing.
        assert "channels read from" not in b.log_text()
        await wait_in_sync(b, timeout=30)
        assert "(trimmed while this machine read it, or lost)" in b.log_text()
        # The machine up all along has it all.
        s = await a.stream("x", headers={"Last-Event-ID": x[1][0]})
        assert await read_events(s, 2, 10) == [x_missed, x_late]
        await assert_gap(b, "x", x[1][0])
        await assert_gap(b, "y", y[0][0])
        s = await b.stream("x")
        assert await read_events(s, 1, 10) == [x_late]
        await no_event(s, 0.2)
        s = await b.stream("y")
        await no_event(s, 0.2)
        # After the missing events: exact. A channel with no event in the
        # hole keeps its history whole.
        s = await b.stream("x", headers={"Last-Event-ID": x_missed[0]})
        assert await read_events(s, 1, 10) == [x_late]
        s = await b.stream("c7")
        assert [d for _, d in await read_events(s, 3, 10)][2] == "c7-late"
        # And live events go on after them.
        s = await b.stream("y", headers={"Last-Event-ID": y_missed[0]})
        new = await a.publish_ok("y", "y-new")
        assert await read_events(s, 1, 10) == [(new, "y-new")]
    finally:
        proxy.close()


@pytest.mark.timeout_s(90)
async def test_log_trimmed_under_a_first_read_marks_what_was_held(
        start_nginx, start_redis):
    # A young zone: the new machine's log starts at the epoch, so it reads
    # it from there, no back-fill, and takes y's events from its first
    # page. Then the log is trimmed past y's delete, which the machine has
    # not read: the back-fill that follows reads the streams from there
    # and finds none for y. y held must not keep serving y0 and y1 as if
    # nothing had happened since (before: it did, initial events and
    # resume, while every other machine had deleted it).
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1, sub=SUB)
    y = await sent(a, "y", "y", 2)
    x = await sent(a, "x", "x", 2)
    # About six pages of the log between y's events and its delete.
    await load(a, 15, 100, 16, prefix="f")
    assert (await a.pub_http("DELETE", "/publish/y")).status == 200
    # x deleted and made again in the hole too: the back-fill reads the
    # new x, which must not be served after the old one's events.
    assert (await a.pub_http("DELETE", "/publish/x")).status == 200
    x_new = await sent(a, "x", "n", 2)
    keep = await a.publish_ok("g", "kept")
    await load(a, 15, 100, 16, prefix="h")
    proxy = await DelayProxy(r.port, 0.25).start()
    try:
        b = new_machine(start_nginx, r, via=proxy)
        deadline = time.monotonic() + 20
        while True:
            st = (await b.sub_http("GET", "/sse-status")).json()["zones"][0]
            if seq_of(st.get("last_id") or "0-0") >= seq_of(y[1][0]):
                break
            assert time.monotonic() < deadline, st
            await asyncio.sleep(0.01)
        trim_log_before(r, keep)
        await wait_in_sync(b, timeout=30)
        assert "reading the channels' older events" in b.log_text()
        # The machine never heard of the delete (trimmed before it read
        # it), or the test shows nothing: y is still a channel there.
        assert (await b.info("y")).status == 200
        await assert_gap(b, "y", y[0][0])
        s = await b.stream("y")
        await no_event(s, 0.2)
        s = await b.stream("x")
        assert await read_events(s, 2, 10) == x_new
        await no_event(s, 0.2)
        await assert_gap(b, "x", x[1][0])
        # g after the hole: whole.
        s = await b.stream("g")
        assert await read_events(s, 1, 10) == [(keep, "kept")]
    finally:
        proxy.close()
