"""sse_subscribe_request: an internal subrequest before a subscriber's stream
starts. A tiny backend (Python's http.server) records every join with the
channel ids, the client's address and the token's sub, and refuses some:
a non-2xx answer refuses the subscriber with that status and no stream."""

import http.server
import json
import threading
import time

import jwt
import pytest

from conftest import free_port, nginx_test_config, render_conf


class Backend:
    def __init__(self):
        self.joins = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                chans = self.headers.get("X-SSE-Channels", "")
                outer.joins.append({
                    "path": self.path, "channels": chans,
                    "sub": self.headers.get("X-SSE-Sub", ""),
                    "client": self.headers.get("X-SSE-Client", ""),
                    "uri": self.headers.get("X-Original-URI", "")})
                status = 204
                for word, st in (("locked", 403), ("login", 401),
                                 ("boom", 500), ("moved", 302)):
                    if word in chans:
                        status = st
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Bearer realm="hook"')
                if status == 302:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.close()


HOOK_LOCATION = """
        location = /_join {{
            internal;
            proxy_pass http://127.0.0.1:{port}/join;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-SSE-Channels $sse_channels;
            proxy_set_header X-SSE-Sub $sse_jwt_sub;
            proxy_set_header X-SSE-Client $remote_addr;
            proxy_set_header X-Original-URI $request_uri;
        }}"""

SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def hooked(start_nginx, backend):
    return start_nginx(sub="            sse_subscribe_request /_join;",
                       sub_locations=HOOK_LOCATION.format(port=backend.port))


async def test_join_reaches_the_backend_before_the_stream(hooked, backend):
    c = await hooked.stream("room-1")
    assert backend.joins == [{"path": "/join", "channels": "room-1",
                              "sub": "", "client": "127.0.0.1",
                              "uri": "/events/room-1"}]
    eid = await hooked.publish_ok("room-1", "hi")
    b = await c.next_event()
    assert (b.id, b.data) == (eid, "hi")


async def test_multiplexed_join_names_every_channel(hooked, backend):
    await hooked.stream("/multi?channels=a,b,c")
    assert backend.joins[-1]["channels"] == "a,b,c"


@pytest.mark.parametrize("channel,status", [
    ("locked", 403), ("login", 401), ("boom", 500), ("moved", 502),
])
async def test_non_2xx_refuses_with_that_status(hooked, backend, channel,
                                                status):
    c = await hooked.subscribe(channel)
    assert c.status == status, (c.status, c.body)
    assert c.body == (f"subscription refused by sse_subscribe_request "
                      f"({302 if channel == 'moved' else status})\n").encode()
    assert "text/event-stream" not in (c.header("content-type") or "")
    if status == 401:
        assert c.header("www-authenticate") == 'Bearer realm="hook"'
    assert len(backend.joins) == 1
    assert (await hooked.info(channel)).status == 404


async def test_head_and_options_do_not_join(hooked, backend):
    assert (await hooked.sub_http("HEAD", "/events/x")).status == 200
    assert (await hooked.sub_http("OPTIONS", "/events/x")).status == 204
    assert backend.joins == []


async def test_backend_down_refuses(start_nginx):
    n = start_nginx(sub="            sse_subscribe_request /_join;",
                    sub_locations=HOOK_LOCATION.format(port=free_port()))
    c = await n.subscribe("room-1")
    assert c.status == 502, (c.status, c.body)


async def test_token_sub_reaches_the_backend(start_nginx, backend, tmp_path):
    f = tmp_path / "jwks.json"
    f.write_text(json.dumps({"keys": [{
        "kty": "oct", "kid": "k",
        "k": jwt.utils.base64url_encode(SECRET).decode()}]}))
    n = start_nginx(
        http=f"    sse_auth_jwt_key_file {f};",
        sub=("            sse_auth_jwt sse;\n"
             "            sse_subscribe_request /_join;"),
        sub_locations=HOOK_LOCATION.format(port=backend.port))
    t = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60,
                    "sse": {"subscribe": ["room-*"]}}, SECRET,
                   algorithm="HS256", headers={"kid": "k"})
    await n.stream("room-1", headers={"Authorization": f"Bearer {t}"})
    assert backend.joins[-1]["sub"] == "bob"
    # A refused token never reaches the backend.
    c = await n.subscribe("room-1")
    assert c.status == 401
    c = await n.subscribe("other", headers={"Authorization": f"Bearer {t}"})
    assert c.status == 403
    assert len(backend.joins) == 1


@pytest.mark.parametrize("value,message", [
    ("join", 'invalid value "join" in "sse_subscribe_request" directive, '
             'expected a URI starting with "/" or "off"'),
])
def test_bad_hook_uri_fails_nginx_t(tmp_path, value, message):
    ok, out = nginx_test_config(tmp_path, render_conf(
        tmp_path, 1, 2, sub=f"sse_subscribe_request {value};", retry=None))
    assert not ok
    assert message in out, out
