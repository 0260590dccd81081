"""nginx's own auth_request in front of sse_subscribe and sse_publish: the
check runs before the stream starts, so a refused client gets the 401/403
and no stream; an allowed one streams. The "backend" is a small nginx
server answering 204/401/403 from a header or an argument."""

import pytest

from clienthelp import StreamPublisher
from conftest import STREAM_TYPE, free_port

AUTH_LOCATION = """
        location = /auth {{
            internal;
            proxy_pass http://127.0.0.1:{port}/check;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
        }}"""

AUTH_SERVER = """
    server {{
        listen 127.0.0.1:{port};
        location = /check {{
            if ($http_x_token = "good") {{ return 204; }}
            if ($http_x_original_uri ~ "[?&]token=good(&|$)") {{ return 204; }}
            if ($http_x_token = "forbidden") {{ return 403; }}
            add_header WWW-Authenticate 'Bearer realm="sse"' always;
            return 401;
        }}
    }}"""


@pytest.fixture
def guarded(start_nginx):
    port = free_port()
    loc = AUTH_LOCATION.format(port=port)
    return start_nginx(
        http=AUTH_SERVER.format(port=port),
        sub="auth_request /auth;", pub="auth_request /auth;",
        sub_locations=loc, pub_locations=loc)


GOOD = {"X-Token": "good"}


async def info(n, channel, headers):
    return await n.pub_http("GET", f"/publish/{channel}", headers=headers)


@pytest.mark.parametrize("headers,path,status", [
    ({}, "/events/sec", 401),
    ({"X-Token": "wrong"}, "/events/sec", 401),
    ({"X-Token": "forbidden"}, "/events/sec", 403),
    ({}, "/events/sec?token=bad", 401),
    ({}, "/multi?channels=sec,other", 401),
])
async def test_refused_subscriber_gets_no_stream(guarded, headers, path,
                                                 status):
    c = await guarded.subscribe(path, headers=headers)
    assert c.status == status, (c.status, c.body)
    assert "text/event-stream" not in (c.header("content-type") or "")
    assert c._task is None and b"retry:" not in c.body
    if status == 401:
        assert c.header("www-authenticate") == 'Bearer realm="sse"'
    # Never subscribed: the channel was not even made.
    assert (await info(guarded, "sec", GOOD)).status == 404


@pytest.mark.parametrize("headers,path", [
    (GOOD, "/events/sec"),
    ({}, "/events/sec?token=good"),
    (GOOD, "/multi?channels=sec,other"),
])
async def test_allowed_subscriber_streams(guarded, headers, path):
    c = await guarded.subscribe(path, headers=headers)
    assert c.status == 200
    assert c.header("content-type") == STREAM_TYPE
    eid = await guarded.publish_ok("sec", "for members", headers=GOOD)
    b = await c.next_event()
    assert (b.id, b.data) == (eid, "for members")


@pytest.mark.parametrize("headers,status", [
    ({}, 401), ({"X-Token": "nope"}, 401), ({"X-Token": "forbidden"}, 403)])
async def test_refused_publisher_publishes_nothing(guarded, headers, status):
    c = await guarded.stream("sec", headers=GOOD)
    r = await guarded.publish("sec", "forged", headers=headers)
    assert r.status == status, r
    # Nothing reached the subscriber or the buffer.
    ok = await guarded.publish_ok("sec", "genuine", headers=GOOD)
    b = await c.next_event()
    assert (b.id, b.data) == (ok, "genuine")
    figures = (await info(guarded, "sec", GOOD)).json()
    assert figures["published"] == 1


async def test_channel_info_and_delete_are_guarded_too(guarded):
    await guarded.publish_ok("sec", "x", headers=GOOD)
    assert (await info(guarded, "sec", {})).status == 401
    r = await guarded.pub_http("DELETE", "/publish/sec")
    assert r.status == 401
    assert (await info(guarded, "sec", GOOD)).status == 200
    r = await guarded.pub_http("DELETE", "/publish/sec", headers=GOOD)
    assert r.status == 200


async def test_streaming_publish_behind_auth(guarded):
    c = await guarded.stream("sec", headers=GOOD)
    # Refused: the body is never read as events.
    pub = await StreamPublisher.open(guarded.pub_port, "/publish/sec")
    await pub.send("data: forged\n\n")
    r = await pub.finish()
    assert r.status == 401, r
    # Allowed: streams as usual.
    pub = await StreamPublisher.open(guarded.pub_port, "/publish/sec",
                                     headers=GOOD)
    await pub.send("event: t\ndata: one\n\n")
    assert (await c.next_event()).data == "one"
    await pub.send("event: t\ndata: two\n\n")
    assert (await c.next_event()).data == "two"
    r = await pub.finish()
    assert r.status == 202 and r.json()["published"] == 2
    figures = (await info(guarded, "sec", GOOD)).json()
    assert figures["published"] == 2
