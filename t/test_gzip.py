"""Streams through nginx's gzip filter: every event is flushed through the
compressor as it is written, so a client inflating as it reads has each
event as soon as it is published."""

import zlib

import pytest

from clienthelp import GzipSSEClient
from conftest import STREAM_TYPE, StreamEnd, nginx_built_with

GZIP = "gzip on; gzip_types text/event-stream; gzip_min_length 1;"


@pytest.fixture
def gz(start_nginx):
    return start_nginx(http=GZIP)


async def open_gz(n, path, **kw):
    c = await GzipSSEClient.open(n.sub_port, f"/events/{path}", **kw)
    assert c.status == 200
    assert c.header("content-type") == STREAM_TYPE
    assert c.header("content-encoding") == "gzip"
    assert c.header("transfer-encoding") == "chunked"
    assert c.header("content-length") is None
    return c


@pytest.mark.timeout_s(40)
async def test_each_event_inflates_as_soon_as_it_is_published(gz):
    c = await open_gz(gz, "g")
    assert (await c.next_block()).retry == "3000"
    for i in range(20):
        data = f"event {i}: " + "compressible text " * (i % 4) + "\u00e9\u2713"
        eid = await gz.publish_ok("g", data.encode(), event="tick")
        # Awaited before the next publish: the compressor flushed it.
        b = await c.next_event(timeout=5)
        assert (b.id, b.event, b.data) == (eid, "tick", data)
    assert c.ended is None


async def test_inflated_bytes_are_exactly_the_plain_stream(gz):
    gzc = await open_gz(gz, "same")
    plain = await gz.stream("same")
    ids = []
    for i in range(5):
        ids.append(await gz.publish_ok("same", f"line {i}\nsecond"))
        await gzc.next_event()
        await plain.next_event()
    assert gzc.plain == b"".join(plain.chunks)
    assert gzc.plain.startswith(b"retry: 3000\n\n")
    # Compressed on the wire: the text itself does not appear there.
    assert b"second" not in b"".join(gzc.wire_chunks)


async def test_the_end_of_a_gzip_stream_is_a_complete_gzip_member(gz):
    c = await open_gz(gz, "end")
    eid = await gz.publish_ok("end", "last")
    assert (await c.next_event()).id == eid
    r = await gz.pub_http("DELETE", "/publish/end")
    assert r.status == 200
    blocks = []
    with pytest.raises(StreamEnd) as end:
        while True:
            blocks.append(await c.next_block())
    assert end.value.clean
    assert [(b.event, b.retry) for b in blocks] == [("sse-error", None),
                                                    (None, "3000")]
    # The gzip trailer came: the member is complete and checks out.
    assert c.gzip_eof
    assert zlib.decompress(b"".join(c.wire_chunks),
                           16 + zlib.MAX_WBITS) == c.plain


@pytest.mark.timeout_s(20)
async def test_heartbeats_come_through_the_compressor(start_nginx):
    n = start_nginx(http=GZIP, sub="sse_heartbeat 1s;")
    c = await open_gz(n, "hb")
    assert (await c.next_block()).retry == "3000"
    b = await c.next_block(timeout=4)
    assert b.is_heartbeat


async def test_catch_up_through_gzip(gz):
    ids = [await gz.publish_ok("cu", f"m{i}") for i in range(10)]
    c = await open_gz(gz, "cu", headers={"Last-Event-ID": ids[2]})
    got = [await c.next_event() for _ in range(7)]
    assert [b.id for b in got] == ids[3:]


async def test_without_accept_encoding_the_stream_is_plain(gz):
    c = await gz.stream("plain")
    assert c.header("content-encoding") is None
    eid = await gz.publish_ok("plain", "x")
    assert (await c.next_event()).id == eid


@pytest.mark.skipif(not nginx_built_with("http_sub_module"),
                    reason="this nginx is built without the sub module")
async def test_other_body_filters_still_see_live_events(start_nginx):
    # Plain HTTP/1.1 streams skip the body filters (each event goes out as
    # the worker's ready-made chunk); one a rewriting filter took keeps
    # them, here sub_filter.
    n = start_nginx(sub="sub_filter_types text/event-stream; "
                        "sub_filter_once off; sub_filter secret public;")
    c = await n.stream("rw")
    for i in range(3):
        eid = await n.publish_ok("rw", f"a secret {i}")
        b = await c.next_event()
        assert (b.id, b.data) == (eid, f"a public {i}")
