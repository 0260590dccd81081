"""Methods at the subscriber, publisher and status locations: HEAD, OPTIONS,
bodies where none belong, 405 with Allow; and the connection stays usable
after each (a request body left unread must not become the next request).
"""

import asyncio

import pytest

from conftest import (PUBLISH_ALLOW, STREAM_TYPE, SUBSCRIBE_ALLOW, KeepAlive,
                      _parse_head, _read_chunked)

STATUS_ALLOW = "GET, HEAD, OPTIONS"


@pytest.fixture
def n(start_nginx):
    return start_nginx(pub_locations="location = /status { sse_status; }")


async def raw_exchange(port, data, heads, timeout=5):
    """Sends raw bytes on one connection and reads one response per entry
    of `heads` (True: the answer to a HEAD, no body). Returns (status,
    headers, body) for each, and checks nothing else came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)

    async def go():
        out = []
        for head_only in heads:
            status, hdrs = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            h = dict(hdrs)
            if head_only or status in (204, 304):
                body = b""
            elif "chunked" in h.get("transfer-encoding", ""):
                body = await _read_chunked(reader)
            else:
                body = await reader.readexactly(
                    int(h.get("content-length", 0)))
            out.append((status, h, body))
        return out
    try:
        out = await asyncio.wait_for(go(), timeout)
        # Nothing more is owed: no stray body bytes were left behind.
        try:
            extra = await asyncio.wait_for(reader.read(1), 0.1)
        except asyncio.TimeoutError:
            extra = b""
        assert extra == b"", extra
        return out
    finally:
        writer.close()


async def test_head_is_headers_only_and_subscribes_nobody(n):
    got = await raw_exchange(
        n.sub_port,
        b"HEAD /events/hd HTTP/1.1\r\nHost: x\r\n\r\n"
        b"OPTIONS /events/hd HTTP/1.1\r\nHost: x\r\n\r\n", [True, False])
    (s1, h1, rest1), (s2, h2, rest2) = got
    assert s1 == 200
    assert h1["content-type"] == STREAM_TYPE
    assert h1["cache-control"] == "no-cache"
    assert h1["x-accel-buffering"] == "no"
    assert rest1 == b""  # no body: the next bytes were the next response
    assert s2 == 204 and h2["allow"] == SUBSCRIBE_ALLOW
    assert (await n.info("hd")).status == 404
    assert (await n.pub_http("GET", "/status")).json()["zones"][0][
        "subscribers"] == 0


async def test_options_is_204_with_allow_and_no_body(n):
    ka = await KeepAlive.open(n.sub_port)
    for path in ("/events/o", "/multi?channels=a,b"):
        r = await ka.request("OPTIONS", path)
        assert r.status == 204
        assert r.header("allow") == SUBSCRIBE_ALLOW
        assert r.body == b""
    ka.close()


@pytest.mark.parametrize("chunked", [False, True])
async def test_get_with_a_body_is_405_and_the_body_is_not_a_request(
        n, chunked):
    # The body looks like a request of its own: it must be read as a body.
    evil = b"GET /events/evil HTTP/1.1\r\nHost: x\r\n\r\n"
    if chunked:
        body_headers = "Transfer-Encoding: chunked\r\n"
        body = f"{len(evil):x}\r\n".encode() + evil + b"\r\n0\r\n\r\n"
    else:
        body_headers = f"Content-Length: {len(evil)}\r\n"
        body = evil
    got = await raw_exchange(
        n.sub_port,
        (f"GET /events/withbody HTTP/1.1\r\nHost: x\r\n{body_headers}\r\n"
         ).encode() + body +
        b"OPTIONS /events/next HTTP/1.1\r\nHost: x\r\n\r\n", [False, False])
    assert [g[0] for g in got] == [405, 204], got
    assert got[0][1]["allow"] == SUBSCRIBE_ALLOW
    assert got[0][2] == b"a subscribe request takes no body\n"
    for ch in ("withbody", "evil"):
        assert (await n.info(ch)).status == 404, ch


@pytest.mark.parametrize("method", ["DELETE", "POST", "PUT", "PATCH"])
async def test_other_methods_at_a_subscriber_405_with_allow(n, method):
    ka = await KeepAlive.open(n.sub_port)
    r = await ka.request(method, "/events/m", body=b"data: x\n\n")
    assert r.status == 405
    assert r.header("allow") == SUBSCRIBE_ALLOW
    r = await ka.request(method, "/events/m")
    assert r.status == 405 and r.header("allow") == SUBSCRIBE_ALLOW
    # Same connection, next request fine.
    r = await ka.request("OPTIONS", "/events/m")
    assert r.status == 204
    ka.close()
    assert (await n.info("m")).status == 404


@pytest.mark.parametrize("method", ["PATCH", "FOO", "PROPFIND"])
async def test_other_methods_at_a_publisher_405_with_allow(n, method):
    ka = await KeepAlive.open(n.pub_port)
    r = await ka.request(method, "/publish/p", body=b"x")
    assert r.status == 405
    assert r.header("allow") == PUBLISH_ALLOW
    r = await ka.request("POST", "/publish/p", body=b"y")
    assert r.status == 202
    ka.close()
    assert (await n.info("p")).json()["published"] == 1


async def test_publisher_options_head_and_get(n):
    await n.publish_ok("ph", "x")
    r = await n.pub_http("OPTIONS", "/publish/ph")
    assert r.status == 204 and r.header("allow") == PUBLISH_ALLOW
    got = await raw_exchange(
        n.pub_port,
        b"HEAD /publish/ph HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /publish/ph HTTP/1.1\r\nHost: x\r\n\r\n", [True, False])
    (s1, h1, rest1), (s2, h2, _) = got
    assert s1 == s2 == 200
    assert h1["content-type"] == h2["content-type"] == "application/json"
    assert h1["content-length"] == h2["content-length"]
    assert rest1 == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_status_answers_get_only(n, method):
    r = await n.pub_http(method, "/status", body=b"x")
    assert r.status == 405
    assert r.header("allow") == STATUS_ALLOW
    r = await n.pub_http("OPTIONS", "/status")
    assert r.status == 204 and r.header("allow") == STATUS_ALLOW
    r = await n.pub_http("HEAD", "/status")
    assert r.status == 200 and r.body == b""
