"""CORS: sse_allow_origin (+ sse_allow_credentials) on streams, preflights
and publisher answers; nothing at all without the directive."""

import pytest

from conftest import PUBLISH_ALLOW, STREAM_TYPE, SUBSCRIBE_ALLOW

ORIGIN = "https://app.example"
CORS_ON = "sse_allow_origin $http_origin; sse_allow_credentials on;"


def cors_headers(headers):
    return {n: v for n, v in headers if n.startswith("access-control-")}


def allowed_headers(value):
    return {h.strip().lower() for h in value.split(",")}


@pytest.fixture
def cors(start_nginx):
    return start_nginx(sub=CORS_ON, pub=CORS_ON)


async def test_stream_carries_origin_vary_and_credentials(cors):
    c = await cors.stream("c", headers={"Origin": ORIGIN})
    assert c.header("content-type") == STREAM_TYPE
    assert c.header("access-control-allow-origin") == ORIGIN
    assert c.header("access-control-allow-credentials") == "true"
    assert "origin" in [v.strip().lower()
                        for h in [n for n in c.headers if n[0] == "vary"]
                        for v in h[1].split(",")]
    # And it is a working stream.
    eid = await cors.publish_ok("c", "hi")
    assert (await c.next_event()).id == eid


async def test_origin_is_echoed_per_request(cors):
    for origin in ("https://a.example", "http://127.0.0.1:1234", "null"):
        c = await cors.stream("c", headers={"Origin": origin})
        assert c.header("access-control-allow-origin") == origin
        c.close()


async def test_no_origin_header_means_no_allow_origin(cors):
    # $http_origin is empty: an empty value sends nothing.
    c = await cors.stream("c")
    assert c.header("access-control-allow-origin") is None
    assert c.header("access-control-allow-credentials") is None


async def test_head_carries_cors_headers(cors):
    r = await cors.sub_http("HEAD", "/events/c", headers={"Origin": ORIGIN})
    assert r.status == 200
    assert r.header("access-control-allow-origin") == ORIGIN


async def test_preflight_allows_last_event_id_and_cache_control(cors):
    r = await cors.sub_http("OPTIONS", "/events/c", headers={
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id, cache-control"})
    assert r.status == 204, r
    assert r.body == b""
    assert r.header("allow") == SUBSCRIBE_ALLOW
    assert r.header("access-control-allow-origin") == ORIGIN
    assert r.header("access-control-allow-credentials") == "true"
    assert "GET" in [m.strip() for m in
                     r.header("access-control-allow-methods").split(",")]
    assert {"last-event-id", "cache-control"} <= allowed_headers(
        r.header("access-control-allow-headers"))
    assert r.header("vary") is not None and \
        "origin" in r.header("vary").lower()
    # Nothing subscribed by a preflight.
    assert (await cors.info("c")).status == 404


async def test_preflight_on_a_multiplexed_location(cors):
    r = await cors.sub_http("OPTIONS", "/multi?channels=a,b", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id"})
    assert r.status == 204
    assert "last-event-id" in allowed_headers(
        r.header("access-control-allow-headers"))


async def test_publisher_preflight_and_answers(cors):
    r = await cors.pub_http("OPTIONS", "/publish/c", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, sse-event"})
    assert r.status == 204
    assert r.header("allow") == PUBLISH_ALLOW
    assert r.header("access-control-allow-origin") == ORIGIN
    assert {"content-type", "sse-event"} <= allowed_headers(
        r.header("access-control-allow-headers"))
    assert "POST" in r.header("access-control-allow-methods")
    r = await cors.publish("c", "x", headers={"Origin": ORIGIN})
    assert r.status == 202
    assert r.header("access-control-allow-origin") == ORIGIN
    assert r.header("access-control-allow-credentials") == "true"
    r = await cors.pub_http("GET", "/publish/c", headers={"Origin": ORIGIN})
    assert r.status == 200
    assert r.header("access-control-allow-origin") == ORIGIN


async def test_fixed_origin_and_no_credentials(start_nginx):
    n = start_nginx(sub='sse_allow_origin "https://only.example";')
    c = await n.stream("f", headers={"Origin": "https://other.example"})
    assert c.header("access-control-allow-origin") == "https://only.example"
    assert c.header("access-control-allow-credentials") is None
    c = await n.stream("f")
    assert c.header("access-control-allow-origin") == "https://only.example"


async def test_star(start_nginx):
    n = start_nginx(sub="sse_allow_origin *;")
    c = await n.stream("s", headers={"Origin": ORIGIN})
    assert c.header("access-control-allow-origin") == "*"


async def test_without_the_directive_no_cors_headers_at_all(nginx):
    h = {"Origin": ORIGIN}
    c = await nginx.stream("plain", headers=h)
    seen = [cors_headers(c.headers)]
    assert c.header("vary") is None
    pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
           "Access-Control-Request-Headers": "last-event-id"}
    r = await nginx.sub_http("OPTIONS", "/events/plain", headers=pre)
    assert r.status == 204 and r.header("allow") == SUBSCRIBE_ALLOW
    seen.append(cors_headers(r.headers))
    for method, path in (("HEAD", "/events/plain"),
                         ("POST", "/events/plain")):
        seen.append(cors_headers(
            (await nginx.sub_http(method, path, headers=h)).headers))
    seen.append(cors_headers(
        (await nginx.publish("plain", "x", headers=h)).headers))
    seen.append(cors_headers(
        (await nginx.pub_http("OPTIONS", "/publish/plain",
                              headers=pre)).headers))
    assert seen == [{}] * len(seen)
