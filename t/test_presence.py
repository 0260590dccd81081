"""Who is connected: sse_unsubscribe_request (a fire-and-forget subrequest
when a subscriber leaves) and sse_presence_channel (join/leave events the
module publishes itself, right across a worker SIGKILL).

A tiny backend (Python's http.server) records joins and leaves with the
channel ids, the client's address, the token's sub and the leave reason."""

import asyncio
import http.server
import json
import os
import subprocess
import signal
import threading
import time

import jwt
import pytest

from conftest import free_port, nginx_test_config, render_conf

SECRET = b"0123456789abcdef0123456789abcdef"


class Backend:
    def __init__(self):
        self.calls = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.calls.append({
                    "path": self.path,
                    "channels": self.headers.get("X-SSE-Channels", ""),
                    "sub": self.headers.get("X-SSE-Sub", ""),
                    "client": self.headers.get("X-SSE-Client", ""),
                    "reason": self.headers.get("X-SSE-Reason", "")})
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever,
                         daemon=True).start()

    def of(self, path):
        return [c for c in self.calls if c["path"] == path]

    async def wait_leaves(self, n, timeout=10):
        deadline = time.monotonic() + timeout
        while len(self.of("/leave")) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.of("/leave")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.close()


HOOKS = """
        location = /_join {{
            internal;
            proxy_pass http://127.0.0.1:{port}/join;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-SSE-Channels $sse_channels;
            proxy_set_header X-SSE-Sub $sse_jwt_sub;
            proxy_set_header X-SSE-Client $remote_addr;
        }}
        location = /_leave {{
            internal;
            proxy_pass http://127.0.0.1:{port}/leave;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-SSE-Channels $sse_channels;
            proxy_set_header X-SSE-Sub $sse_jwt_sub;
            proxy_set_header X-SSE-Client $remote_addr;
            proxy_set_header X-SSE-Reason $sse_leave_reason;
        }}"""

BOTH = ("            sse_subscribe_request /_join;\n"
        "            sse_unsubscribe_request /_leave;")


@pytest.fixture
def hooked(start_nginx, backend):
    return start_nginx(sub=BOTH + "\n            sse_stream_timeout 1h;",
                       sub_locations=HOOKS.format(port=backend.port))


async def test_client_close_sends_the_leave(hooked, backend):
    c = await hooked.stream("room-1")
    eid = await hooked.publish_ok("room-1", "hi")
    assert (await c.next_event()).id == eid
    assert backend.of("/leave") == []
    c.close()
    leaves = await backend.wait_leaves(1)
    assert leaves == [{"path": "/leave", "channels": "room-1", "sub": "",
                       "client": "127.0.0.1", "reason": "client_closed"}]
    assert len(backend.of("/join")) == 1
    # The zone forgot it too.
    assert (await hooked.info("room-1")).json()["subscribers"] == 0


async def test_multiplexed_leave_names_every_channel(hooked, backend):
    c = await hooked.stream("/multi?channels=a,b,c")
    c.close()
    leaves = await backend.wait_leaves(1)
    assert [x["channels"] for x in leaves] == ["a,b,c"]


async def test_delete_ends_and_sends_the_leave(hooked, backend):
    c = await hooked.stream("gone")
    r = await hooked.pub_http("DELETE", "/publish/gone")
    assert r.status == 200
    blocks = await c.until_end()
    assert [("event", "sse-error"), ("data", '{"reason":"deleted"}')] in \
        [b.fields for b in blocks]
    assert c.ended.clean
    leaves = await backend.wait_leaves(1)
    assert [(x["channels"], x["reason"]) for x in leaves] == \
        [("gone", "deleted")]


async def test_stream_timeout_sends_the_leave(start_nginx, backend):
    n = start_nginx(sub=BOTH + "\n            sse_stream_timeout 300ms;",
                    sub_locations=HOOKS.format(port=backend.port))
    c = await n.stream("t")
    await c.until_end(5)
    assert c.ended.clean
    leaves = await backend.wait_leaves(1)
    assert [(x["channels"], x["reason"]) for x in leaves] == \
        [("t", "stream_timeout")]


async def test_reload_sends_the_leaves_of_old_workers(hooked, backend):
    cs = [await hooked.stream(f"r{i}") for i in range(4)]
    old = hooked.reload()
    for c in cs:
        blocks = await c.until_end(10)
        assert [("event", "sse-error"), ("data", '{"reason":"shutdown"}')] \
            in [b.fields for b in blocks]
    leaves = await backend.wait_leaves(4)
    assert sorted((x["channels"], x["reason"]) for x in leaves) == \
        [(f"r{i}", "shutdown") for i in range(4)]
    # The old workers still exit.
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{p}") for p in old) and \
            time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{p}") for p in old)


async def test_sigkill_sends_no_leave_but_the_zone_forgets(start_nginx,
                                                           backend):
    """What a SIGKILLed worker's subscribers get: no leave hook (the process
    that held their requests is gone), but the zone's counts drop (its slot
    is reaped) and, with sse_presence_channel, a presence "leave"."""
    n = start_nginx(sub=BOTH, sub_locations=HOOKS.format(port=backend.port),
                    allow_log=[r"exited on signal 9"])
    c = await n.stream("k")
    victim = n.worker_of(n.sub_port, c.local_port)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (await n.info("k")).json()["subscribers"] == 0:
            break
        await asyncio.sleep(0.1)
    assert (await n.info("k")).json()["subscribers"] == 0
    await asyncio.sleep(0.5)
    assert backend.of("/leave") == []
    c.close()


async def test_token_sub_reaches_the_leave(start_nginx, backend, tmp_path):
    f = tmp_path / "jwks.json"
    f.write_text(json.dumps({"keys": [{
        "kty": "oct", "kid": "k",
        "k": jwt.utils.base64url_encode(SECRET).decode()}]}))
    n = start_nginx(http=f"    sse_auth_jwt_key_file {f};",
                    sub="            sse_auth_jwt sse;\n"
                        "            sse_unsubscribe_request /_leave;",
                    sub_locations=HOOKS.format(port=backend.port))
    t = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60,
                    "sse": {"subscribe": ["room-*"]}}, SECRET,
                   algorithm="HS256", headers={"kid": "k"})
    c = await n.stream("room-1", headers={"Authorization": f"Bearer {t}"})
    # Refused subscribers never joined: no leave.
    assert (await n.subscribe("room-1")).status == 401
    c.close()
    leaves = await backend.wait_leaves(1)
    assert [(x["channels"], x["sub"]) for x in leaves] == [("room-1", "bob")]
    await asyncio.sleep(0.3)
    assert len(backend.of("/leave")) == 1


async def test_head_and_refused_send_no_leave(start_nginx, backend):
    n = start_nginx(sub="            sse_unsubscribe_request /_leave;\n"
                        "            sse_max_subscribers 1;",
                    sub_locations=HOOKS.format(port=backend.port))
    assert (await n.sub_http("HEAD", "/events/x")).status == 200
    c = await n.stream("x")
    over = await n.stream("x")
    await over.until_end()
    await asyncio.sleep(0.3)
    assert backend.of("/leave") == []
    c.close()
    assert len(await backend.wait_leaves(1)) == 1


async def test_backend_down_changes_nothing_for_the_client(start_nginx):
    n = start_nginx(sub="            sse_unsubscribe_request /_leave;",
                    sub_locations=HOOKS.format(port=free_port()))
    c = await n.stream("x")
    c.close()
    c = await n.stream("x")
    eid = await n.publish_ok("x", "still")
    assert (await c.next_event()).id == eid


@pytest.mark.parametrize("directive,value,message", [
    ("sse_unsubscribe_request", "leave",
     'invalid value "leave" in "sse_unsubscribe_request" directive, '
     'expected a URI starting with "/" or "off"'),
    ("sse_presence_channel", '""',
     'invalid value "" in "sse_presence_channel" directive, expected a '
     'channel id (variables allowed) or "off"'),
])
def test_bad_values_fail_nginx_t(tmp_path, directive, value, message):
    ok, out = nginx_test_config(tmp_path, render_conf(
        tmp_path, 1, 2, sub=f"{directive} {value};", retry=None))
    assert not ok
    assert message in out, out


# ---------------------------------------------------------------- presence

WATCH = """
        # presence watchers: no presence of their own
        location ~ ^/watch/(?<pch>.+)$ {
            sse_subscribe;
            sse_channel $pch;
            sse_initial_events 100;
        }"""


def token(sub):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 60,
                       "sse": {"subscribe": ["*"]}}, SECRET,
                      algorithm="HS256", headers={"kid": "k"})


@pytest.fixture
def presence(start_nginx, tmp_path):
    f = tmp_path / "jwks.json"
    f.write_text(json.dumps({"keys": [{
        "kty": "oct", "kid": "k",
        "k": jwt.utils.base64url_encode(SECRET).decode()}]}))
    return start_nginx(
        http=f"    sse_auth_jwt_key_file {f};",
        sub="            sse_auth_jwt sse token=$arg_token;\n"
            "            sse_presence_channel $ch:presence;",
        sub_locations=WATCH, allow_log=[r"exited on signal 9"])


def presence_of(block):
    return block.event, json.loads(block.data)


async def test_join_and_leave_events(presence):
    w = await presence.stream("/watch/room:presence")
    a = await presence.stream(f"/events/room?token={token('alice')}")
    assert presence_of(await w.next_event()) == \
        ("join", {"sub": "alice", "channel": "room", "count": 1})
    b = await presence.stream(f"/events/room?token={token('bob')}")
    assert presence_of(await w.next_event()) == \
        ("join", {"sub": "bob", "channel": "room", "count": 2})
    a.close()
    assert presence_of(await w.next_event()) == \
        ("leave", {"sub": "alice", "channel": "room", "count": 1})
    await presence.pub_http("DELETE", "/publish/room")
    await b.until_end()
    assert presence_of(await w.next_event()) == \
        ("leave", {"sub": "bob", "channel": "room", "count": 0})
    # A newcomer gets who came and went (sse_initial_events).
    r = await presence.stream("/watch/room:presence")
    got = [presence_of(e)[0] for e in await r.events(4)]
    assert got == ["join", "join", "leave", "leave"]


async def test_bad_presence_value_is_400(start_nginx):
    n = start_nginx(sub="            sse_presence_channel $arg_p;")
    c = await n.subscribe("/events/x?p=" + "a" * 300)
    assert c.status == 400
    assert c.body.startswith(b"invalid sse_presence_channel: ")
    # Empty: no presence for that request.
    await n.stream("/events/x")


async def test_sigkill_publishes_the_leaves(presence):
    """Subscribers on both workers; the worker without the watcher is
    SIGKILLed: a surviving worker reaps its slot and publishes one leave
    (sub null) with the count that is left, which matches the zone's."""
    w = await presence.stream("/watch/room:presence")
    keep = presence.worker_of(presence.sub_port, w.local_port)
    subs = []
    for i in range(40):
        c = await presence.stream(f"/events/room?token={token(f'u{i}')}")
        subs.append((c, presence.worker_of(presence.sub_port, c.local_port)))
        await w.next_event()
        if sum(p != keep for _, p in subs) >= 3 and \
                sum(p == keep for _, p in subs) >= 2:
            break
    victims = [c for c, p in subs if p != keep]
    survivors = [c for c, p in subs if p == keep]
    assert len(victims) >= 3 and len(survivors) >= 2
    dead = next(p for _, p in subs if p != keep)
    os.kill(dead, signal.SIGKILL)
    ev, data = presence_of(await w.next_event(timeout=10))
    assert (ev, data) == ("leave", {"sub": None, "channel": "room",
                                    "count": len(survivors)})
    assert (await presence.info("room")).json()["subscribers"] == \
        len(survivors)
    # Later leaves count on from there.
    survivors[0].close()
    ev, data = presence_of(await w.next_event())
    assert (ev, data["count"]) == ("leave", len(survivors) - 1)
    assert data["sub"].startswith("u")
    for c in victims:
        c.close()


async def test_http2_streams(start_nginx, backend, tmp_path):
    """Over HTTP/2 a stream the server ends sends the leave hook too; a
    client that resets its stream leaves the zone (and its presence) right,
    without the hook (see the README)."""
    from clienthelp import tls_server
    tls, port, cert = tls_server(tmp_path, http2=True)
    n = start_nginx(
        server=tls,
        sub=BOTH + "\n            sse_stream_timeout 500ms;",
        sub_locations=HOOKS.format(port=backend.port) + """
        location ~ ^/long/(?<lch>.+)$ {
            sse_subscribe;
            sse_channel $lch;
            sse_unsubscribe_request /_leave;
            sse_presence_channel $lch:presence;
        }""")

    def curl(path):
        return subprocess.Popen(
            ["/usr/bin/curl", "--http2", "--cacert", str(cert), "-sS", "-N",
             "--max-time", "20", "-o", os.devnull,
             f"https://127.0.0.1:{port}{path}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    p = curl("/events/h2a")
    leaves = await backend.wait_leaves(1)
    assert [(x["channels"], x["reason"]) for x in leaves] == \
        [("h2a", "stream_timeout")]
    p.kill()
    p.wait()
    p = curl("/long/h2b")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = await n.info("h2b")
        if r.status == 200 and r.json()["subscribers"] == 1:
            break
        await asyncio.sleep(0.05)
    p.kill()
    p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (await n.info("h2b")).json()["subscribers"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await n.info("h2b")).json()["subscribers"] == 0
    # The presence channel got the join and the leave.
    r = await n.pub_http("GET", "/publish/h2b:presence")
    assert r.json()["messages"] == 2


async def test_stalled_client_sends_the_leave_at_send_timeout(start_nginx,
                                                              backend):
    # 8 MB to a client that reads nothing: nginx's own write blocks, under
    # sse_max_pending, so send_timeout ends it (see test_guarantees.py).
    import socket
    n = start_nginx(sub=BOTH + "\n            sse_max_pending 32m;",
                    http="send_timeout 1s; client_body_buffer_size 128k;",
                    sub_locations=HOOKS.format(port=backend.port))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.connect(("127.0.0.1", n.sub_port))
    s.sendall(b"GET /events/stall HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        deadline = time.monotonic() + 5
        while (await n.info("stall")).status != 200 and \
                time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for _ in range(130):
            r = await n.publish("stall", b"s" * 63000)
            assert r.status == 202, r
        leaves = await backend.wait_leaves(1, timeout=15)
        assert [(x["channels"], x["reason"]) for x in leaves] == \
            [("stall", "client_timeout")]
        assert (await n.info("stall")).json()["subscribers"] == 0
    finally:
        s.close()


async def test_presence_across_a_reload(presence):
    """Old workers end their streams (shutdown): each subscriber's leave
    is published before the worker exits; a watcher that resumes sees it,
    then the rejoin on a new worker."""
    w = await presence.stream("/watch/rl:presence")
    a = await presence.stream(f"/events/rl?token={token('ann')}")
    assert presence_of(await w.next_event()) == \
        ("join", {"sub": "ann", "channel": "rl", "count": 1})
    presence.reload()
    await a.until_end(10)
    # The leave reaches the watcher before its own stream ends, or after
    # it resumes.
    seen = [presence_of(b) for b in await w.until_end(10)
            if b.event in ("join", "leave")]
    w2 = await presence.stream("/watch/rl:presence",
                               headers={"Last-Event-ID": w.last_id})
    if not seen:
        seen.append(presence_of(await w2.next_event()))
    assert seen == [("leave", {"sub": "ann", "channel": "rl", "count": 0})]
    await presence.stream(f"/events/rl?token={token('ann')}")
    assert presence_of(await w2.next_event()) == \
        ("join", {"sub": "ann", "channel": "rl", "count": 1})
    assert (await presence.info("rl")).json()["subscribers"] == 1
