"""Subscribing: the stream's headers, its first lines, heartbeats, methods."""

import asyncio
import time

import pytest

from conftest import STREAM_TYPE, SUBSCRIBE_ALLOW, StreamEnd


async def test_stream_headers(nginx):
    c = await nginx.subscribe("hdr")
    assert c.status == 200
    assert c.header("content-type") == STREAM_TYPE
    assert c.header("cache-control") == "no-cache"
    assert c.header("x-accel-buffering") == "no"
    assert c.header("transfer-encoding") == "chunked"
    assert c.header("content-length") is None


@pytest.mark.timeout_s(20)
async def test_headers_are_sent_at_once_without_retry(start_nginx):
    # Nothing to send yet (no retry line, nothing buffered, heartbeat far
    # away): the 200 and its headers must still reach the client at once,
    # or EventSource never fires `open`.
    n = start_nginx(retry=None, sub="sse_heartbeat 10s;")
    t0 = time.monotonic()
    c = await n.subscribe("early", timeout=5)
    assert c.status == 200
    assert time.monotonic() - t0 < 2


async def test_retry_line_comes_first(start_nginx):
    n = start_nginx(retry=2500)
    c = await n.stream("r")
    first = await c.next_block()
    assert first.fields == [("retry", "2500")]
    assert c.chunks[0] == b"retry: 2500\n\n"


async def test_no_retry_line_when_off(start_nginx):
    n = start_nginx(retry="off", sub="sse_heartbeat 1s;")
    c = await n.stream("r")
    eid = await n.publish_ok("r", "hello")
    b = await c.next_event()
    assert b.fields == [("id", eid), ("data", "hello")]
    assert all(blk.is_heartbeat for blk in c.blocks[:-1]), c.blocks


@pytest.mark.timeout_s(20)
async def test_heartbeat_is_a_comment_when_idle(start_nginx):
    n = start_nginx(sub="sse_heartbeat 1s;")
    c = await n.stream("hb")
    assert (await c.next_block()).retry == "3000"
    t0 = time.monotonic()
    times = []
    for _ in range(2):
        b = await c.next_block(timeout=4)
        assert b.is_heartbeat and b.comments == [""] and b.fields == [], b
        times.append(time.monotonic())
    assert c.chunks[1:3] == [b":\n\n", b":\n\n"]
    assert 0.8 <= times[0] - t0 <= 2.5
    assert 0.8 <= times[1] - times[0] <= 2.5


@pytest.mark.timeout_s(20)
async def test_no_heartbeat_while_events_flow(start_nginx):
    n = start_nginx(sub="sse_heartbeat 1s;")
    c = await n.stream("busy")
    await c.next_block()  # retry
    for i in range(6):
        await n.publish_ok("busy", str(i))
        b = await c.next_block()
        assert b.is_event and b.data == str(i), b
        await asyncio.sleep(0.4)
    # Idle from the last event on: a heartbeat after about a second.
    t0 = time.monotonic()
    b = await c.next_block(timeout=4)
    assert b.is_heartbeat
    assert time.monotonic() - t0 >= 0.4


@pytest.mark.timeout_s(20)
async def test_heartbeat_off(start_nginx):
    n = start_nginx(sub="sse_heartbeat off;")
    c = await n.stream("quiet")
    await c.next_block()  # retry
    await c.no_block(2.5)


async def test_head_sends_stream_headers_and_no_body(nginx):
    reader, writer = await asyncio.open_connection("127.0.0.1",
                                                   nginx.sub_port)
    writer.write(b"HEAD /events/h HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    lines = head.decode().lower().split("\r\n")
    assert f"content-type: {STREAM_TYPE}" in lines
    assert "cache-control: no-cache" in lines
    assert "x-accel-buffering: no" in lines
    assert rest == b""


async def test_options(nginx):
    r = await nginx.sub_http("OPTIONS", "/events/o")
    assert r.status == 204
    assert r.header("allow") == SUBSCRIBE_ALLOW
    assert r.body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "FOO"])
async def test_other_methods_405(nginx, method):
    r = await nginx.sub_http(method, "/events/m", body=b"x")
    assert r.status == 405
    assert r.header("allow") == SUBSCRIBE_ALLOW
    assert r.body == b"subscribers use GET\n"


@pytest.mark.parametrize("chunked", [False, True])
async def test_get_with_a_body_405(nginx, chunked):
    r = await nginx.sub_http("GET", "/events/m", body=b"abc", chunked=chunked)
    assert r.status == 405
    assert r.header("allow") == SUBSCRIBE_ALLOW
    assert r.body == b"a subscribe request takes no body\n"


async def test_get_with_empty_content_length_subscribes(nginx):
    c = await nginx.subscribe("m", headers={"Content-Length": "0"})
    assert c.status == 200
    assert c.header("content-type") == STREAM_TYPE


async def test_subscriber_counts_follow_connections(nginx):
    cs = [await nginx.stream("count") for _ in range(3)]
    r = await nginx.info("count")
    assert r.status == 200 and r.json()["subscribers"] == 3
    r = await nginx.publish("count", "x")
    assert r.json()["subscribers"] == 3
    cs[0].close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (await nginx.info("count")).json()["subscribers"] == 2:
            break
        await asyncio.sleep(0.05)
    assert (await nginx.info("count")).json()["subscribers"] == 2


async def test_new_subscriber_gets_only_new_events(nginx):
    await nginx.publish_ok("fresh", "old")
    c = await nginx.stream("fresh")
    eid = await nginx.publish_ok("fresh", "new")
    b = await c.next_event()
    assert (b.id, b.data) == (eid, "new")


async def test_subscriber_sees_nothing_of_other_channels(nginx):
    c = await nginx.stream("mine")
    await nginx.publish_ok("theirs", "no")
    eid = await nginx.publish_ok("mine", "yes")
    b = await c.next_event()
    assert (b.id, b.data) == (eid, "yes")


async def test_client_closing_mid_stream_is_harmless(nginx):
    for _ in range(20):
        c = await nginx.stream("gone")
        c.close()
    c = await nginx.stream("gone")
    eid = await nginx.publish_ok("gone", "still here")
    assert (await c.next_event()).id == eid


async def test_error_then_subscribe_on_one_keepalive_connection(nginx):
    # A 400 then a subscribe on the same connection: the error response
    # must not leave the connection in a state that breaks the next one.
    reader, writer = await asyncio.open_connection("127.0.0.1",
                                                   nginx.sub_port)
    writer.write(b"GET /multi?channels=a,,b HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /events/ka HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    deadline = time.monotonic() + 5
    while b"retry: 3000" not in data and time.monotonic() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 1)
        except asyncio.TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    writer.close()
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert data.count(b"HTTP/1.1 ") == 2, data
    second = data[data.index(b"HTTP/1.1 ", 1):]
    assert second.startswith(b"HTTP/1.1 200 "), data
    assert b"retry: 3000\n\n" in second


async def test_stream_end_is_reported(nginx):
    c = await nginx.stream("end")
    await c.next_block()
    r = await nginx.pub_http("DELETE", "/publish/end")
    assert r.status == 200
    with pytest.raises(StreamEnd):
        while True:
            await c.next_block()
    assert c.ended.clean
