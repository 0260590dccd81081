"""Streaming publish: a `Content-Type: text/event-stream` POST whose chunked
body is read unbuffered, each event published as its blank line arrives."""

import asyncio
import re

import pytest

from clienthelp import StreamPublisher
from conftest import seq_of

ID_RE = re.compile(r"^[0-9]+-[0-9]+$")


async def open_pub(n, channel, **kw):
    return await StreamPublisher.open(n.pub_port, f"/publish/{channel}", **kw)


async def test_each_event_reaches_the_subscriber_before_the_next_is_sent(
        nginx):
    c = await nginx.stream("live")
    pub = await open_pub(nginx, "live")
    got = []
    for i in range(5):
        await pub.send(f"event: token\ndata: piece {i}\n\n")
        # The publisher has not sent the next one yet: this one must
        # already be out.
        b = await c.next_event(timeout=5)
        assert (b.event, b.data) == ("token", f"piece {i}")
        assert ID_RE.match(b.id), b
        got.append(b.id)
    r = await pub.finish()
    assert r.status == 202, r
    assert r.header("content-type") == "application/json"
    j = r.json()
    assert j == {"channel": "live", "id": got[-1], "subscribers": 1,
                 "published": 5}
    assert [seq_of(i) for i in got] == list(
        range(seq_of(got[0]), seq_of(got[0]) + 5))
    info = (await nginx.info("live")).json()
    assert (info["published"], info["first_id"], info["last_id"]) == (
        5, got[0], got[-1])


async def test_an_event_split_over_many_chunks(nginx):
    c = await nginx.stream("split")
    pub = await open_pub(nginx, "split")
    wire = b"event: long\ndata: first line\ndata: second line\n\n"
    for i in range(len(wire)):
        await pub.send(wire[i:i + 1])
    b = await c.next_event()
    assert (b.event, b.data) == ("long", "first line\nsecond line")
    assert (await pub.finish()).json()["published"] == 1


async def test_line_ends_cr_lf_crlf_and_a_crlf_split_across_chunks(nginx):
    c = await nginx.stream("eol")
    pub = await open_pub(nginx, "eol")
    expected = []

    async def step(chunk, data=None):
        await pub.send(chunk)
        if data is not None:
            b = await c.next_event()
            assert b.data == data, (chunk, b)
            expected.append(b.id)

    await step(b"data: lf1\ndata: lf2\n\n", "lf1\nlf2")
    await step(b"data: cr1\rdata: cr2\r\r", "cr1\ncr2")
    await step(b"data: crlf1\r\ndata: crlf2\r\n\r\n", "crlf1\ncrlf2")
    # A chunk that ends with CR, the next starting with its LF: one line
    # end, not two (two would end the event early as "split1" alone). The
    # "marker" event shows the first chunk was consumed before the next
    # one was sent.
    await step(b"data: marker\n\ndata: split1\r", "marker")
    await step(b"\ndata: split2\r\n\r\n", "split1\nsplit2")
    # A lone CR at the end of a chunk, the next one starting a new line.
    await step(b"data: marker2\n\ndata: cr-end\r", "marker2")
    await step(b"data: next-line\r\r", "cr-end\nnext-line")
    # The blank line itself split: CR | LF.
    await step(b"data: marker3\n\ndata: blank-split\r\n\r", "marker3")
    await step(b"\ndata: after\n\n", None)
    b = await c.next_event()
    assert b.data == "blank-split", b
    expected.append(b.id)
    b = await c.next_event()
    assert b.data == "after", b
    expected.append(b.id)
    r = await pub.finish()
    assert r.status == 202, r
    assert r.json()["published"] == len(expected) == 10
    assert r.json()["id"] == expected[-1]
    await c.no_block(0.2)
    # On the subscriber's wire every line ends with LF.
    wire = b"".join(c.chunks)
    assert b"\r" not in wire
    assert b"data: split1\ndata: split2\n\n" in wire


async def test_fields_comments_and_ignored_id_and_retry(nginx):
    c = await nginx.stream("fields")
    pub = await open_pub(nginx, "fields")
    body = (
        b": a comment, skipped\n"
        b"id: 999\n"
        b"retry: 10\n"
        b"event: greet\n"
        b"data: hello\n"
        b": a comment inside an event\n"
        b"data:no space\n"
        b"data:  two spaces\n"
        b"data\n"
        b"unknown: field\n"
        b"\n"
        # no event field: the type does not carry over
        b"data: plain\n\n"
        # event without data: nothing is dispatched
        b"event: nodata\n\n"
        b"id\n\n"
        # the last event: field wins
        b"event: a\nevent: b\ndata: x\n\n"
        b"data: with: colons: inside\n\n")
    await pub.send(body)
    r = await pub.finish()
    assert r.status == 202, r
    j = r.json()
    assert j["published"] == 4
    got = await c.events(4)
    ids = [b.id for b in got]
    assert all(ID_RE.match(i) for i in ids) and "999" not in ids
    assert j["id"] == ids[-1]
    assert [b.fields for b in got] == [
        [("id", ids[0]), ("event", "greet"),
         ("data", "hello"), ("data", "no space"), ("data", " two spaces"),
         ("data", "")],
        [("id", ids[1]), ("data", "plain")],
        [("id", ids[2]), ("event", "b"), ("data", "x")],
        [("id", ids[3]), ("data", "with: colons: inside")],
    ]
    # The only retry the subscriber ever saw is the location's own.
    assert [b.retry for b in c.blocks if b.retry] == ["3000"]
    assert not any(b.comments for b in c.blocks)
    await c.no_block(0.2)


async def test_leading_bom_is_skipped(nginx):
    c = await nginx.stream("bom")
    pub = await open_pub(nginx, "bom")
    await pub.send(b"\xef\xbb")
    await pub.send(b"\xbfdata: after bom\n\n")
    b = await c.next_event()
    assert b.data == "after bom"
    assert (await pub.finish()).status == 202


async def test_content_type_with_parameters_streams_too(nginx):
    c = await nginx.stream("ctp")
    pub = await open_pub(nginx, "ctp",
                         content_type="text/event-stream; charset=utf-8")
    await pub.send("data: one\n\n")
    assert (await c.next_event()).data == "one"
    r = await pub.finish()
    assert r.json()["published"] == 1


async def test_empty_stream_publishes_nothing(nginx):
    pub = await open_pub(nginx, "empty")
    r = await pub.finish()
    assert r.status == 202, r
    assert r.json()["published"] == 0
    assert r.json()["channel"] == "empty"


async def test_event_over_max_message_size_is_400_and_earlier_stay(
        start_nginx):
    n = start_nginx(pub="sse_max_message_size 1k;")
    c = await n.stream("big")
    pub = await open_pub(n, "big")
    await pub.send("data: ok1\n\n")
    first = await c.next_event()
    # Exactly the limit, over two data lines (1023 + LF... = 1024 bytes).
    await pub.send("data: " + "a" * 511 + "\ndata: " + "b" * 512 + "\n\n")
    second = await c.next_event()
    assert len(second.data) == 1024
    await pub.send("data: " + "x" * 1025 + "\n\n")
    r = await pub.response()
    assert r.status == 400, r
    assert "sse_max_message_size" in r.text
    assert "2 events published before it" in r.text, r.text
    # Those before it stay published, to live and to later subscribers.
    info = (await n.info("big")).json()
    assert (info["published"], info["messages"]) == (2, 2)
    assert (info["first_id"], info["last_id"]) == (first.id, second.id)
    await c.no_block(0.3)
    late = await n.stream("big", headers={"Last-Event-ID": first.id})
    b = await late.next_event()
    assert (b.id, len(b.data)) == (second.id, 1024)


async def test_oversize_event_over_many_small_chunks_is_400(start_nginx):
    n = start_nginx(pub="sse_max_message_size 1k;")
    pub = await open_pub(n, "big2")
    await pub.send("data: ok\n\n")
    await pub.send("data: ")
    try:
        for _ in range(40):
            await pub.send("y" * 64)  # one long line, no line end yet
    except (ConnectionError, OSError):
        pass  # answered and closed before the rest was sent
    r = await pub.response()
    assert r.status == 400, r
    assert "sse_max_message_size" in r.text
    assert (await n.info("big2")).json()["published"] == 1


@pytest.mark.parametrize("tail", [b"data: unterminated",
                                  b"data: no blank line\n",
                                  b"event: x\r\ndata: y\r\n",
                                  b"event: only\n"])
async def test_body_ending_inside_an_event_is_400(nginx, tail):
    c = await nginx.stream("cut")
    pub = await open_pub(nginx, "cut")
    await pub.send("data: whole\n\n")
    whole = await c.next_event()
    await pub.send(tail)
    r = await pub.finish()
    assert r.status == 400, r
    assert "ends inside an event" in r.text, r.text
    assert "1 events published before it" in r.text, r.text
    info = (await nginx.info("cut")).json()
    assert (info["published"], info["last_id"]) == (1, whole.id)
    await c.no_block(0.2)


async def test_body_ending_after_cr_only_blank_line_is_complete(nginx):
    c = await nginx.stream("crend")
    pub = await open_pub(nginx, "crend")
    await pub.send(b"data: last\r\r")
    r = await pub.finish()
    assert r.status == 202, r
    assert (await c.next_event()).data == "last"


async def test_non_utf8_bytes_pass_through_untouched(nginx):
    c = await nginx.stream("bytes")
    pub = await open_pub(nginx, "bytes")
    # Invalid UTF-8, a lone continuation byte, an overlong form, NEL and
    # U+2028 (neither is a line end in SSE), Latin-1.
    raw = (b"\xff\xfe\x80 caf\xe9 \xc3\x28 \xc0\xaf \x85nel "
           b"\xe2\x80\xa8ls \xf0\x9f\x98\x80")
    await pub.send(b"event: bin\xe9\ndata: " + raw + b"\ndata: \xfe2nd\n\n")
    b = await c.next_event()
    r = await pub.finish()
    assert r.status == 202, r
    eid = r.json()["id"]
    wire = b"".join(c.chunks)
    assert (f"id: {eid}\n".encode() + b"event: bin\xe9\ndata: " + raw +
            b"\ndata: \xfe2nd\n\n") in wire
    assert b.id == eid


async def test_two_streams_to_one_channel_interleave_in_arrival_order(
        nginx):
    c = await nginx.stream("two")
    p1 = await open_pub(nginx, "two")
    p2 = await open_pub(nginx, "two")
    order = []
    for i in range(3):
        for name, p in (("p1", p1), ("p2", p2)):
            await p.send(f"data: {name}-{i}\n\n")
            order.append((await c.next_event()).data)
    assert order == ["p1-0", "p2-0", "p1-1", "p2-1", "p1-2", "p2-2"]
    r1, r2 = await asyncio.gather(p1.finish(), p2.finish())
    assert r1.json()["published"] == r2.json()["published"] == 3


@pytest.mark.timeout_s(30)
async def test_a_long_stream_keeps_flowing_past_the_body_buffer(nginx):
    # A long-lived publisher (tokens for minutes) sends far more than
    # client_body_buffer_size (8k here) over its life, a little at a time.
    c = await nginx.stream("long")
    pub = await open_pub(nginx, "long")
    sent = 0
    for i in range(300):  # ~30 kB in all
        piece = f"data: {i:04d} " + "z" * 84 + "\n\n"
        await pub.send(piece)
        sent += len(piece)
        try:
            b = await c.next_event(timeout=3)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"event {i} never came: the stream stalled after {sent} "
                "bytes of body") from None
        assert b.data.startswith(f"{i:04d} "), b
    r = await pub.finish(timeout=5)
    assert r.status == 202 and r.json()["published"] == 300, r


@pytest.mark.timeout_s(30)
@pytest.mark.parametrize("size", [16_000, 40_000])
async def test_a_burst_bigger_than_the_body_buffer(nginx, size):
    # Many events written at once: more than one buffer of body arrives
    # before nginx reads it.
    c = await nginx.stream("burst")
    pub = await open_pub(nginx, "burst")
    n = size // 1000
    await pub.send(("data: " + "b" * 994 + "\n\n") * n)
    try:
        r = await pub.finish(timeout=5)
    except asyncio.TimeoutError:
        info = (await nginx.info("burst")).json()
        raise AssertionError(
            f"no answer to a {size}-byte burst of {n} events; "
            f"published so far: {info.get('published')}") from None
    assert r.status == 202, r
    assert r.json()["published"] == n
    assert len(await c.events(n)) == n


async def test_stream_with_content_length_over_the_limit_is_not_413(
        start_nginx):
    # sse_max_message_size is per event: a text/event-stream body sent
    # with a Content-Length (not chunked) may be larger than it in total.
    n = start_nginx(pub="sse_max_message_size 1k;")
    c = await n.stream("cl")
    events = [f"data: {i}-" + "z" * 900 + "\n\n" for i in range(10)]
    body = "".join(events).encode()
    assert len(body) > 8 * 1024
    r = await n.pub_http("POST", "/publish/cl", body=body,
                         headers={"Content-Type": "text/event-stream"})
    assert r.status == 202, r
    assert r.json()["published"] == 10
    got = await c.events(10)
    assert [e.data.split("-")[0] for e in got] == [str(i) for i in range(10)]
    # One event over the limit in such a body is that event's 400.
    body = ("data: ok\n\ndata: " + "x" * 1100 + "\n\n").encode()
    r = await n.pub_http("POST", "/publish/cl", body=body,
                         headers={"Content-Type": "text/event-stream"})
    assert r.status == 400, r
    assert "sse_max_message_size" in r.text
    assert "1 events published before it" in r.text, r.text
    # A plain publish is one event: its Content-Length is its size.
    r = await n.pub_http("POST", "/publish/cl", body=b"y" * 1025)
    assert r.status == 413, r
