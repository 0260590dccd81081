"""Bad input: each is a 4xx with a one-line reason (or a sse-gap), never a
crash; the fixture fails any test after which nginx logged an alert."""

import asyncio
import json

import pytest

BAD_CHAR = (b"invalid channel: channel id may only contain "
            b"A-Z a-z 0-9 _ . : @ ~ - /\n")
EMPTY = b"invalid channel: empty channel id\n"
TOO_LONG = b"invalid channel: channel id longer than 255 bytes\n"
TOO_MANY = b"invalid channel: more than 64 channels\n"

CHANNEL_ERRORS = [
    # (path on the subscriber side, body)
    ("/events/a%20b", BAD_CHAR),
    ("/events/a%0Ab", BAD_CHAR),
    ("/events/a%0Db", BAD_CHAR),
    ("/events/a%09b", BAD_CHAR),
    ("/events/caf%C3%A9", BAD_CHAR),
    ("/events/a%22b", BAD_CHAR),
    ("/events/a+b", BAD_CHAR),
    ("/events/" + "x" * 256, TOO_LONG),
    ("/multi?channels=a%00b", BAD_CHAR),
    ("/multi?channels=a%20b", BAD_CHAR),
    ("/multi?channels=a%0Ab", BAD_CHAR),
    ("/multi?channels=ok,bad%25", BAD_CHAR),
    ("/multi?channels=a,,b", EMPTY),
    ("/multi?channels=a,", EMPTY),
    ("/multi?channels=,a", EMPTY),
    ("/multi?channels=", EMPTY),
    ("/multi", EMPTY),
    ("/multi?channels=" + "y" * 256, TOO_LONG),
    ("/multi?channels=" + ",".join(f"c{i}" for i in range(65)), TOO_MANY),
]


def one_line(body):
    return body.endswith(b"\n") and body.count(b"\n") == 1


@pytest.mark.parametrize("path,body", CHANNEL_ERRORS,
                         ids=[p[:40] for p, _ in CHANNEL_ERRORS])
async def test_bad_channel_subscribe_400(nginx, path, body):
    r = await nginx.sub_http("GET", path)
    assert r.status == 400
    assert r.header("content-type") == "text/plain; charset=utf-8"
    assert r.body == body
    assert one_line(r.body)


@pytest.mark.parametrize("path,body", CHANNEL_ERRORS,
                         ids=[p[:40] for p, _ in CHANNEL_ERRORS])
async def test_bad_channel_publish_400(nginx, path, body):
    if path.startswith("/events/"):
        path = "/publish/" + path[len("/events/"):]
    else:
        path = path.replace("/multi?channels=", "/pub?channel=") \
            .replace("/multi", "/pub")
        if "," in path:
            # /pub takes its value as one id (no split=): a comma is a bad
            # byte, never a separator.
            body = BAD_CHAR
    r = await nginx.pub_http("POST", path, body=b"data")
    assert r.status == 400
    assert r.body == body
    # Nothing was published anywhere.
    for ch in ("a", "b", "ok", "c0"):
        assert (await nginx.info(ch)).status == 404, ch


async def test_bad_channel_publishes_nothing(nginx):
    c = await nginx.stream("a")
    r = await nginx.pub_http("POST", "/pub?channel=a,,b", body=b"sneaky")
    assert r.status == 400
    assert r.body == BAD_CHAR
    assert (await nginx.info("a")).json()["published"] == 0
    eid = await nginx.publish_ok("a", "fine")
    assert (await c.next_event()).id == eid


async def test_nul_in_path_is_400(nginx):
    # nginx itself refuses %00 in a path, before the module sees it.
    r = await nginx.sub_http("GET", "/events/a%00b")
    assert r.status == 400


async def test_longest_channel_id_and_most_channels_pass(nginx):
    longest = "L" * 255
    c = await nginx.stream(longest)
    eid = await nginx.publish_ok(longest, "x")
    assert (await c.next_event()).id == eid
    names = [f"c{i}" for i in range(64)]
    m = await nginx.stream("/multi?channels=" + ",".join(names))
    eid = await nginx.publish_ok("c63", "y")
    assert (await m.next_event()).id == eid


async def test_every_allowed_character(nginx):
    ch = "AZaz09_.:@~-/x"
    c = await nginx.stream(ch)
    eid = await nginx.publish_ok(ch, "x")
    assert (await c.next_event()).id == eid
    assert (await nginx.info(ch)).json()["channel"] == ch


async def test_escaped_channel_list(nginx):
    # split=, unescape: split first, then decode each item once, so an
    # escaped comma is part of one (invalid) id, not a separator.
    r = await nginx.sub_http("GET", "/multi?channels=esc%3Aa%2Cesc%2Fb")
    assert (r.status, r.body) == (400, BAD_CHAR)
    c = await nginx.stream("/multi?channels=esc%3Aa,esc%2Fb")
    a = await nginx.publish_ok("esc:a", "1")
    b = await nginx.publish_ok("esc/b", "2")
    assert [e.id for e in await c.events(2)] == [a, b]


@pytest.mark.timeout_s(30)
async def test_huge_last_event_id_is_a_malformed_gap(start_nginx):
    n = start_nginx(http="large_client_header_buffers 4 32k;")
    eid = await n.publish_ok("huge", "x")
    big = "9" * 10240
    c = await n.stream("huge", headers={"Last-Event-ID": big})
    assert (await c.next_block()).retry == "3000"
    gap = await c.next_block()
    assert gap.event == "sse-gap"
    assert json.loads(gap.data) == {"requested": big[:128],
                                    "reason": "malformed"}
    live = await n.publish_ok("huge", "live")
    assert (await c.next_event()).id == live


async def test_huge_last_event_id_with_default_buffers_is_rejected(nginx):
    big = "1" * 10240
    r = await nginx.sub_http("GET", "/events/h",
                             headers={"Last-Event-ID": big})
    assert r.status == 400


@pytest.mark.parametrize("requested", ['a"b', "a\\b", "</script>", "x" * 127,
                                       "y" * 129])
async def test_gap_json_escapes_what_was_asked(nginx, requested):
    await nginx.publish_ok("esc", "x")
    c = await nginx.stream("esc", headers={"Last-Event-ID": requested})
    await c.next_block()
    gap = await c.next_block()
    assert json.loads(gap.data) == {"requested": requested[:128],
                                    "reason": "malformed"}


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"\x01\x02", b"\xc3\xa9-1"])
async def test_gap_json_stays_valid_for_any_bytes(nginx, raw):
    # Control and non-UTF-8 bytes arrive raw in the header.
    c = await nginx.stream("/events/bytes",
                           headers={"Last-Event-ID": raw.decode("latin-1")})
    await c.next_block()
    gap = await c.next_block()
    assert gap.event == "sse-gap"
    j = json.loads(gap.data)
    assert j["reason"] == "malformed"
    assert isinstance(j["requested"], str)


@pytest.mark.parametrize("query", ["event=a%0Ab", "event=%0D", "event=x%00",
                                   "event=" + "e" * 256])
async def test_bad_event_name_400(nginx, query):
    r = await nginx.publish("ev", "d", query=query)
    assert r.status == 400
    assert one_line(r.body)
    assert r.body.startswith(b"invalid event name:")


async def test_oversize_body_413(nginx):
    r = await nginx.publish("big", b"x" * (64 * 1024 + 1))
    assert r.status == 413
    assert r.body == b"message larger than sse_max_message_size\n"


async def test_lying_content_length_is_not_a_crash(nginx):
    # Claims more than it sends, then hangs up.
    reader, writer = await asyncio.open_connection("127.0.0.1",
                                                   nginx.pub_port)
    writer.write(b"POST /publish/lie HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: 1000\r\n\r\nshort")
    await writer.drain()
    writer.close()
    c = await nginx.stream("lie")
    eid = await nginx.publish_ok("lie", "ok")
    assert (await c.next_event()).id == eid
    assert (await nginx.info("lie")).json()["published"] == 1


async def test_garbage_requests_leave_the_server_working(nginx):
    for raw in [b"GET /events/x HTTP/1.1\r\n\r\n",  # no Host
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" * 4,  # TLS
                b"GET /events/x HTTP/9.9\r\nHost: x\r\n\r\n",
                b"GET /events/" + b"z" * 5000 +
                b" HTTP/1.1\r\nHost: x\r\n\r\n"]:
        reader, writer = await asyncio.open_connection("127.0.0.1",
                                                       nginx.sub_port)
        writer.write(raw)
        try:
            await asyncio.wait_for(reader.read(65536), 2)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        writer.close()
    c = await nginx.stream("x")
    eid = await nginx.publish_ok("x", "alive")
    assert (await c.next_event()).id == eid
