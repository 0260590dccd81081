"""Resume: Last-Event-ID gets exactly the missed events; sse-gap when it
cannot be exact; initial events; expiry."""

import asyncio
import json
import random
from urllib.parse import quote

import pytest

from conftest import epoch_of, seq_of


def gap_of(block):
    assert block.event == "sse-gap", block
    return json.loads(block.data)


async def test_resume_gets_exactly_the_missed_events(nginx):
    c = await nginx.stream("res")
    seen = [await nginx.publish_ok("res", f"a{i}") for i in range(3)]
    assert [b.id for b in await c.events(3)] == seen
    c.close()
    missed = [await nginx.publish_ok("res", f"b{i}") for i in range(5)]
    c = await nginx.stream("res", headers={"Last-Event-ID": seen[-1]})
    got = await c.events(5)
    assert [(b.id, b.data) for b in got] == list(
        zip(missed, [f"b{i}" for i in range(5)]))
    live = await nginx.publish_ok("res", "live")
    assert (await c.next_event()).id == live
    # retry, the 5 missed, the live one: nothing else.
    assert [b.retry for b in c.blocks] == ["3000"] + [None] * 6


async def test_resume_from_query_arg(nginx):
    first = await nginx.publish_ok("arg", "1")
    second = await nginx.publish_ok("arg", "2")
    c = await nginx.stream(f"/events/arg?last_event_id={first}")
    b = await c.next_event()
    assert (b.id, b.data) == (second, "2")


async def test_header_wins_over_query_arg(nginx):
    ids = [await nginx.publish_ok("both", str(i)) for i in range(3)]
    c = await nginx.stream(f"/events/both?last_event_id={ids[0]}",
                           headers={"Last-Event-ID": ids[1]})
    b = await c.next_event()
    assert (b.id, b.data) == (ids[2], "2")


async def test_sse_last_event_id_directive(start_nginx):
    n = start_nginx(sub_locations="""
        location ~ ^/from/(?<ch>.+)$ {
            sse_subscribe;
            sse_channel $ch;
            sse_last_event_id $arg_from;
        }""")
    ids = [await n.publish_ok("d", str(i)) for i in range(3)]
    c = await n.stream(f"/from/d?from={ids[0]}",
                       headers={"Last-Event-ID": ids[1]})
    got = await c.events(2)
    assert [b.id for b in got] == ids[1:]


@pytest.mark.parametrize("where", ["arg", "directive"])
async def test_resume_point_is_never_percent_decoded(start_nginx, where):
    # One rule for the default argument and sse_last_event_id values: the
    # bytes nginx gives, as for sse_channel. An escaped id is not an id.
    n = start_nginx(sub_locations="""
        location ~ ^/from/(?<ch>.+)$ {
            sse_subscribe;
            sse_channel $ch;
            sse_last_event_id $arg_from;
            sse_retry 3000;
        }""")
    ids = [await n.publish_ok("pd", str(i)) for i in range(2)]
    escaped = ids[0].replace("-", "%2D")
    path = (f"/events/pd?last_event_id={escaped}" if where == "arg"
            else f"/from/pd?from={escaped}")
    c = await n.stream(path)
    await c.next_block()  # retry
    gap = await c.next_block()
    assert gap.event == "sse-gap"
    assert json.loads(gap.data) == {"requested": escaped,
                                    "reason": "malformed"}
    # Unescaped, the same id resumes exactly.
    path = (f"/events/pd?last_event_id={ids[0]}" if where == "arg"
            else f"/from/pd?from={ids[0]}")
    c = await n.stream(path)
    b = await c.next_event()
    assert (b.id, b.data) == (ids[1], "1")


async def test_empty_last_event_id_is_no_resume_point(nginx):
    await nginx.publish_ok("empty", "old")
    c = await nginx.stream("empty", headers={"Last-Event-ID": ""})
    live = await nginx.publish_ok("empty", "new")
    b = await c.next_event()
    assert (b.id, b.data) == (live, "new")
    assert all(blk.event != "sse-gap" for blk in c.blocks)


async def test_empty_query_arg_is_no_resume_point(nginx):
    await nginx.publish_ok("empty", "old")
    c = await nginx.stream("/events/empty?last_event_id=")
    live = await nginx.publish_ok("empty", "new")
    assert (await c.next_event()).id == live


async def test_resume_from_the_newest_id_gets_only_live(nginx):
    last = await nginx.publish_ok("newest", "x")
    c = await nginx.stream("newest", headers={"Last-Event-ID": last})
    live = await nginx.publish_ok("newest", "y")
    assert (await c.next_event()).id == live


async def test_resume_with_an_id_from_another_channel(nginx):
    a1 = await nginx.publish_ok("ra", "a1")
    b1 = await nginx.publish_ok("rb", "b1")
    a2 = await nginx.publish_ok("ra", "a2")
    c = await nginx.stream("ra", headers={"Last-Event-ID": b1})
    b = await c.next_event()
    assert (b.id, b.data) == (a2, "a2")
    assert seq_of(a1) < seq_of(b1) < seq_of(a2)


async def test_multiplexed_subscriber_resumes_with_one_id(nginx):
    c = await nginx.stream("/multi?channels=ma,mb")
    first = []
    for i in range(2):
        first.append(await nginx.publish_ok("ma", f"a{i}"))
        first.append(await nginx.publish_ok("mb", f"b{i}"))
    assert [b.id for b in await c.events(4)] == first
    c.close()
    missed = []
    for i in range(2, 5):
        missed.append((await nginx.publish_ok("mb", f"b{i}"), f"b{i}"))
        await nginx.publish_ok("mc", "not subscribed")
        missed.append((await nginx.publish_ok("ma", f"a{i}"), f"a{i}"))
    c = await nginx.stream("/multi?channels=ma,mb",
                           headers={"Last-Event-ID": first[-1]})
    got = await c.events(6)
    assert [(b.id, b.data) for b in got] == missed
    live = await nginx.publish_ok("ma", "live")
    assert (await c.next_event()).id == live


async def test_multiplexed_subscriber_gets_each_event_once(nginx):
    # The same channel named twice, and several channels: one copy each.
    c = await nginx.stream("/multi?channels=dup,dup,other")
    ids = [await nginx.publish_ok(ch, ch) for ch in ("dup", "other", "dup")]
    end = await nginx.publish_ok("other", "end")
    got = await c.events(4)
    assert [b.id for b in got] == ids + [end]


@pytest.mark.timeout_s(90)
async def test_reconnects_racing_publishes_lose_and_repeat_nothing(
        start_nginx):
    n = start_nginx(pub="sse_buffer_length 100000;")
    rng = random.Random(7)
    total = 600
    stop = asyncio.Event()

    async def publisher():
        for i in range(1, total + 1):
            ch = "race-a" if i % 3 else "race-b"
            r = await n.publish(ch, str(i))
            assert r.status == 202, r
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        stop.set()

    reconnects = []

    # Every client starts from this id: all of 1..total is owed to it.
    zero = await n.publish_ok("race-a", "0")

    async def client(path, want):
        seen, last = [], zero
        c = await n.stream(path, headers={"Last-Event-ID": zero})
        while True:
            try:
                for _ in range(rng.randint(0, 25)):
                    b = await c.next_event(timeout=5 if not stop.is_set()
                                           else 1)
                    assert b.event != "sse-gap", b
                    seen.append(int(b.data))
                    last = b.id
            except asyncio.TimeoutError:
                if stop.is_set():
                    break
            c.close()
            if stop.is_set() and seen and seen[-1] == want[-1]:
                break
            await asyncio.sleep(rng.random() * 0.01)
            reconnects.append(path)
            c = await n.stream(path, headers={"Last-Event-ID": last})
        c.close()
        return seen

    all_ids = list(range(1, total + 1))
    only_a = [i for i in all_ids if i % 3]
    tasks = [asyncio.ensure_future(client("/multi?channels=race-a,race-b",
                                          all_ids)),
             asyncio.ensure_future(client("/multi?channels=race-b,race-a",
                                          all_ids)),
             asyncio.ensure_future(client("/events/race-a", only_a))]
    await asyncio.sleep(0.2)
    await publisher()
    results = await asyncio.gather(*tasks)
    assert results[0] == all_ids
    assert results[1] == all_ids
    assert results[2] == only_a
    # Each client came back many times while events kept coming.
    for path in set(reconnects):
        assert reconnects.count(path) >= 10, reconnects.count(path)


# ---------------------------------------------------------------- sse-gap

async def subscribe_expecting_gap(nginx, channel, requested, reason):
    c = await nginx.stream(channel, headers={"Last-Event-ID": requested})
    assert (await c.next_block()).retry == "3000"
    gap = await c.next_block()
    assert gap.event == "sse-gap", gap
    assert json.loads(gap.data) == {"requested": requested, "reason": reason}
    return c, gap


async def test_gap_other_epoch(nginx):
    ids = [await nginx.publish_ok("ge", str(i)) for i in range(3)]
    other = f"{int(epoch_of(ids[0])) + 1}-{seq_of(ids[0])}"
    c, _ = await subscribe_expecting_gap(nginx, "ge", other, "epoch")
    # No exact point: as a new subscriber, sse_initial_events (0) of the
    # buffer, then the live stream.
    await c.no_block(0.3)
    live = await nginx.publish_ok("ge", "live")
    assert (await c.next_event()).id == live


@pytest.mark.parametrize("bad", [
    "garbage", "12", "1-", "-1", "1-2-3", "a-1", "1-a", "+1-1",
    "1--1", "1.0-1", "0x1-1", "99999999999999999999999-1",
    "1-99999999999999999999"])
async def test_gap_malformed(nginx, bad):
    ids = [await nginx.publish_ok("gm", str(i)) for i in range(2)]
    c, _ = await subscribe_expecting_gap(nginx, "gm", bad, "malformed")
    live = await nginx.publish_ok("gm", "live")
    assert (await c.next_event()).id == live


@pytest.mark.parametrize("bad", [" 1-1", "1-1 ", "1-1\t", "\u0661-1",
                                 "１-２"])
async def test_gap_malformed_from_query_arg(nginx, bad):
    # The argument is used as given (never percent-decoded): what was asked
    # is the escaped form.
    ids = [await nginx.publish_ok("gq", str(i)) for i in range(2)]
    c = await nginx.stream("/events/gq?last_event_id=" + quote(bad))
    assert (await c.next_block()).retry == "3000"
    gap = await c.next_block()
    assert gap.event == "sse-gap", gap
    j = json.loads(gap.data)
    assert j["reason"] == "malformed"
    assert j["requested"] == quote(bad)
    live = await nginx.publish_ok("gq", "live")
    assert (await c.next_event()).id == live


async def test_gap_from_the_future(nginx):
    ids = [await nginx.publish_ok("gf", str(i)) for i in range(2)]
    future = f"{epoch_of(ids[0])}-{seq_of(ids[-1]) + 1000}"
    c, _ = await subscribe_expecting_gap(nginx, "gf", future, "unknown")
    live = await nginx.publish_ok("gf", "live")
    assert (await c.next_event()).id == live


async def test_gap_evicted(start_nginx):
    n = start_nginx(pub="sse_buffer_length 5;")
    ids = [await n.publish_ok("gv", str(i)) for i in range(10)]
    c, gap = await subscribe_expecting_gap(n, "gv", ids[1], "evicted")
    got = await c.events(5)
    assert [(b.id, b.data) for b in got] == list(
        zip(ids[5:], [str(i) for i in range(5, 10)]))
    # The gap's own id resumes exactly after it: no second gap.
    assert gap.id is not None
    c.close()
    c = await n.stream("gv", headers={"Last-Event-ID": gap.id})
    got = await c.events(5)
    assert [b.id for b in got] == ids[5:]
    assert all(b.event != "sse-gap" for b in c.blocks)


async def test_no_gap_when_resuming_from_the_newest_evicted(start_nginx):
    n = start_nginx(pub="sse_buffer_length 5;")
    ids = [await n.publish_ok("ne", str(i)) for i in range(10)]
    c = await n.stream("ne", headers={"Last-Event-ID": ids[4]})
    got = await c.events(5)
    assert [b.id for b in got] == ids[5:]
    assert all(b.event != "sse-gap" for b in c.blocks)


async def test_gap_in_one_of_several_channels(start_nginx):
    n = start_nginx(pub="sse_buffer_length 2;")
    a = [await n.publish_ok("ga", f"a{i}") for i in range(4)]
    b = await n.publish_ok("gb", "b")
    c = await n.stream("/multi?channels=gb,ga",
                       headers={"Last-Event-ID": a[0]})
    assert (await c.next_block()).retry == "3000"
    gap = await c.next_block()
    assert json.loads(gap.data) == {"requested": a[0], "reason": "evicted"}
    got = await c.events(3)
    assert [x.id for x in got] == a[2:] + [b]


async def test_buffer_length_keeps_the_newest(start_nginx):
    n = start_nginx(pub="sse_buffer_length 3;")
    ids = [await n.publish_ok("bl", str(i)) for i in range(7)]
    j = (await n.info("bl")).json()
    assert (j["messages"], j["published"]) == (3, 7)
    assert (j["first_id"], j["last_id"]) == (ids[4], ids[6])


# ---------------------------------------------------------------- initial

async def test_initial_events(start_nginx):
    n = start_nginx(sub="sse_initial_events 3;")
    ids = [await n.publish_ok("ini", str(i)) for i in range(5)]
    c = await n.stream("ini")
    got = await c.events(3)
    assert [(b.id, b.data) for b in got] == list(zip(ids[2:], ["2", "3",
                                                               "4"]))
    live = await n.publish_ok("ini", "live")
    assert (await c.next_event()).id == live


async def test_initial_events_fewer_buffered(start_nginx):
    n = start_nginx(sub="sse_initial_events 10;")
    ids = [await n.publish_ok("few", str(i)) for i in range(2)]
    c = await n.stream("few")
    live = await n.publish_ok("few", "live")
    got = await c.events(3)
    assert [b.id for b in got] == ids + [live]


async def test_initial_events_across_channels_newest_in_order(start_nginx):
    n = start_nginx(sub="sse_initial_events 3;")
    ids = []
    for i in range(3):
        ids.append(await n.publish_ok("ia", f"a{i}"))
        ids.append(await n.publish_ok("ib", f"b{i}"))
    c = await n.stream("/multi?channels=ia,ib")
    got = await c.events(3)
    assert [b.id for b in got] == ids[3:]


async def test_initial_events_do_not_apply_to_a_resume(start_nginx):
    n = start_nginx(sub="sse_initial_events 1;")
    ids = [await n.publish_ok("ir", str(i)) for i in range(5)]
    c = await n.stream("ir", headers={"Last-Event-ID": ids[0]})
    got = await c.events(4)
    assert [b.id for b in got] == ids[1:]


# ---------------------------------------------------------------- ttl

@pytest.mark.timeout_s(30)
async def test_message_ttl_expires_buffered_events(start_nginx):
    n = start_nginx(pub="sse_message_ttl 1s;", sub="sse_initial_events 10;")
    # A subscriber keeps the channel itself alive.
    holder = await n.stream("ttl")
    ids = [await n.publish_ok("ttl", str(i)) for i in range(3)]
    assert len(await holder.events(3)) == 3
    j = (await n.info("ttl")).json()
    assert j["messages"] == 3
    await asyncio.sleep(1.5)
    j = (await n.info("ttl")).json()
    assert (j["messages"], j["first_id"], j["last_id"]) == (0, None, ids[-1])
    c = await n.stream("ttl")
    live = await n.publish_ok("ttl", "live")
    b = await c.next_event()
    assert (b.id, b.data) == (live, "live")
    # A resume from before the expired events cannot be exact.
    c2, _ = await subscribe_expecting_gap(n, "ttl", ids[0], "evicted")
    assert (await c2.next_event()).id == live


@pytest.mark.timeout_s(30)
async def test_resume_after_expiry_of_an_unwatched_channel(start_nginx):
    n = start_nginx(pub="sse_message_ttl 1s;")
    ids = [await n.publish_ok("gone", str(i)) for i in range(3)]
    await asyncio.sleep(2.5)
    r = await n.info("gone")
    assert r.status == 404 or r.json()["messages"] == 0, r
    # Whether or not the channel itself was freed, the events after ids[0]
    # are gone: the resume must say so.
    c, _ = await subscribe_expecting_gap(n, "gone", ids[0], "evicted")
    live = await n.publish_ok("gone", "live")
    assert (await c.next_event()).id == live
