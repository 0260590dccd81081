"""sse_free_request (issue 11): a plain HTTP/1.1 stream frees its request
once set up and all sent (the access log entry is written then), keeps
only its connection and a small record, and still ends every way a stream
ends: with sse-error, retry: and the last chunk where the server ends it,
closed where the client is gone, slow or stalled, its channels left and
counted out. Each test checks that the stream it ends went request-free
(its access log line was written while it was open) and that the module
logged the end ("sse: stream ended (REASON)"). With `off` the request
lives as long as the stream, as before. The memory it saves:
t/test_memory.py."""

import asyncio
import json
import re
import socket
import ssl

import pytest

from clienthelp import (stalled_subscriber, status_json, tls_server,
                        wait_subscribers, wait_until)
from conftest import (OPEN_CLIENTS, KeepAlive, SSEClient, nginx_test_config,
                      overload_end, parse_head, render_conf, request_bytes)

LOG_FORMAT = 'log_format sse "$status $request_uri $body_bytes_sent";'
STATUS = "location = /status { sse_status; }"
WATCH = """
        location ~ ^/watch/(?<pch>.+)$ {
            sse_subscribe;
            sse_channel $pch;
            sse_free_request off;
        }"""


def start(start_nginx, mode="on", sub="", **kw):
    return start_nginx(
        http=LOG_FORMAT + kw.pop("http", ""),
        sub=f"            sse_free_request {mode};\n"
            f"            access_log access.log sse;\n{sub}",
        pub_locations=STATUS, **kw)


def access_lines(n, path):
    try:
        text = (n.dir / "access.log").read_text()
    except OSError:
        return []
    return [ln for ln in text.splitlines() if f" {path} " in ln]


def end_lines(n, channel):
    return re.findall(r'sse: stream ended \((\w+)\): channel\(s\) "'
                      + re.escape(channel) + r'", (\d+) bytes sent',
                      n.log_text())


async def freed_stream(n, channel, **kw):
    """A stream on /events/CHANNEL whose request was freed: its access log
    line is out while it is open."""
    c = await n.stream(channel, **kw)
    await wait_until(lambda: access_lines(n, f"/events/{channel}"), 5, 0.02,
                     "the access log line of a stream being set up")
    assert c.ended is None
    return c


async def wait_end_line(n, channel, reason):
    got = await wait_until(lambda: end_lines(n, channel), 5, 0.02,
                           f"the end line of {channel}")
    assert [r for r, _ in got] == [reason], got
    return int(got[0][1])


async def test_access_log_written_at_set_up_and_stream_goes_on(
        start_nginx):
    n = start(start_nginx, sub="            sse_heartbeat 300ms;")
    c = await freed_stream(n, "alog")
    [line] = access_lines(n, "/events/alog")
    assert line.startswith("200 /events/alog "), line
    # Events and heartbeats after the request is gone: exactly once, in
    # order, each in its own chunk.
    ids = [await n.publish_ok("alog", f"e{i}") for i in range(20)]
    got = await c.events(20)
    assert [b.id for b in got] == ids
    assert [b.data for b in got] == [f"e{i}" for i in range(20)]
    hb = await c.next_block(timeout=3)
    assert hb.is_heartbeat, hb
    c.close()
    sent = await wait_end_line(n, "alog", "client_closed")
    assert sent > 20 * len("data: e0\n\n")
    await wait_subscribers(n, "alog", 0)
    # One access log line per stream, the set-up's.
    assert len(access_lines(n, "/events/alog")) == 1


async def test_off_keeps_the_request_and_logs_at_the_end(start_nginx):
    n = start(start_nginx, mode="off")
    c = await n.stream("late")
    eid = await n.publish_ok("late", "x" * 500)
    assert (await c.next_event()).id == eid
    await asyncio.sleep(0.5)
    assert access_lines(n, "/events/late") == []
    c.close()
    [line] = await wait_until(lambda: access_lines(n, "/events/late"), 5,
                              0.02, "the access log line at the end")
    status, _, sent = line.split()
    assert status == "200" and int(sent) > 500, line
    assert end_lines(n, "late") == []


async def test_stream_timeout_ends_a_freed_stream_cleanly(start_nginx):
    n = start(start_nginx, sub="            sse_stream_timeout 1s;")
    c = await freed_stream(n, "st")
    eid = await n.publish_ok("st", "one")
    assert (await c.next_event()).id == eid
    blocks = await c.until_end(timeout=5)
    assert [b.fields for b in blocks[-2:]] == overload_end("stream_timeout")
    assert c.ended.clean
    await wait_end_line(n, "st", "stream_timeout")
    await wait_subscribers(n, "st", 0)


async def delete_ends(n, c, channel):
    """DELETE of the channel ends the freed stream c cleanly, with its end
    line in the error log."""
    r = await n.pub_http("DELETE", f"/publish/{channel}")
    assert r.status in (200, 204), r
    blocks = await c.until_end(timeout=5)
    assert [b.fields for b in blocks[-2:]] == overload_end("deleted")
    assert c.ended.clean
    await wait_end_line(n, channel, "deleted")


async def test_deleted_channel_ends_a_freed_stream(start_nginx):
    n = start(start_nginx)
    c = await freed_stream(n, "gone")
    other = await freed_stream(n, "stays")
    await delete_ends(n, c, "gone")
    # The other stream is untouched.
    eid = await n.publish_ok("stays", "still")
    assert (await other.next_event()).id == eid


@pytest.mark.timeout_s(60)
async def test_reload_ends_freed_streams_with_shutdown(start_nginx):
    n = start(start_nginx)
    subs = [await freed_stream(n, f"rl{i}") for i in range(4)]
    n.reload()
    for i, c in enumerate(subs):
        blocks = await c.until_end(timeout=10)
        assert [b.fields for b in blocks[-2:]] == overload_end("shutdown")
        assert c.ended.clean
        await wait_end_line(n, f"rl{i}", "shutdown")
    # The new workers serve the resumed streams.
    c = await n.stream("rl0")
    eid = await n.publish_ok("rl0", "after")
    assert (await c.next_event()).id == eid


async def test_client_close_counts_out_and_publishes_the_leave(start_nginx):
    n = start(start_nginx, sub="            sse_presence_channel $ch:who;",
              sub_locations=WATCH)
    w = await n.stream("/watch/room:who")
    a = await freed_stream(n, "room")
    b = await freed_stream(n, "room")
    joins = [json.loads((await w.next_event()).data) for _ in range(2)]
    assert [j["count"] for j in joins] == [1, 2]
    s = await status_json(n)
    assert s["subscribers"] == 3
    a.close()
    b.close()
    leaves = [await w.next_event() for _ in range(2)]
    assert [x.event for x in leaves] == ["leave", "leave"]
    assert [json.loads(x.data)["count"] for x in leaves] == [1, 0]
    await wait_subscribers(n, "room", 0)
    await wait_until(lambda: len(end_lines(n, "room")) == 2, 5, 0.02,
                     "two end lines")
    assert [r for r, _ in end_lines(n, "room")] == ["client_closed"] * 2

    async def counted_out():
        return (await status_json(n))["subscribers"] == 1  # the watcher
    await wait_until(counted_out, 5, 0.05, "the status to count them out")



async def publish_big(n, channel, count, size):
    pub = await KeepAlive.open(n.pub_port)
    for _ in range(count):
        r = await pub.request("POST", f"/publish/{channel}",
                              body=b"s" * size)
        assert r.status == 202, r
    pub.close()


@pytest.mark.timeout_s(60)
async def test_max_pending_drops_a_freed_stream(start_nginx):
    n = start(start_nginx, sub="            sse_max_pending 64k;")
    s = stalled_subscriber(n.sub_port, "/events/slow")
    try:
        await wait_until(lambda: access_lines(n, "/events/slow"), 5, 0.02,
                         "the stalled stream to go request-free")
        # The kernel's buffers take a few MB before nginx holds any.
        await publish_big(n, "slow", 200, 60000)
        await wait_end_line(n, "slow", "max_pending")
        await wait_subscribers(n, "slow", 0)
        assert (await status_json(n))["slow_dropped"] >= 1
    finally:
        s.close()


@pytest.mark.timeout_s(60)
async def test_send_timeout_ends_a_stalled_freed_stream(start_nginx):
    # Over the kernel's buffers but under sse_max_pending: only
    # send_timeout ends it, heartbeats notwithstanding.
    n = start(start_nginx,
              sub="            sse_max_pending 32m; sse_heartbeat 300ms;",
              http="send_timeout 1s; client_body_buffer_size 128k;")
    s = stalled_subscriber(n.sub_port, "/events/stall")
    try:
        await wait_until(lambda: access_lines(n, "/events/stall"), 5, 0.02,
                         "the stalled stream to go request-free")
        await publish_big(n, "stall", 130, 63000)
        await wait_until(lambda: end_lines(n, "stall"), 15, 0.1,
                         "send_timeout to end the stalled stream")
        assert [r for r, _ in end_lines(n, "stall")] == ["send_timeout"]
        assert "sse: client timed out" in n.log_text()
        await wait_subscribers(n, "stall", 0)
    finally:
        s.close()


async def test_ended_stream_still_flushes_its_end_to_a_slow_reader(
        start_nginx):
    # The end of stream waits behind what the client has not read yet,
    # then comes whole.
    n = start(start_nginx, sub="            sse_max_pending 32m;")
    c = await freed_stream(n, "tail", rcvbuf=4096)
    ids = [await n.publish_ok("tail", "t" * 60000) for _ in range(40)]
    r = await n.pub_http("DELETE", "/publish/tail")
    assert r.status in (200, 204), r
    await wait_end_line(n, "tail", "deleted")
    got = await c.events(40, timeout=20)
    assert [b.id for b in got] == ids
    blocks = await c.until_end(timeout=10)
    assert [b.fields for b in blocks[-2:]] == overload_end("deleted")
    assert c.ended.clean


@pytest.mark.parametrize("value, message", [
    ("maybe", 'invalid value "maybe" in "sse_free_request" directive, it '
              'must be "on" or "off"'),
    ("", 'invalid number of arguments in "sse_free_request" directive'),
])
def test_bad_value_fails_nginx_t(tmp_path, value, message):
    ok, out = nginx_test_config(tmp_path, render_conf(
        tmp_path, 1, 2, sub=f"sse_free_request {value};", retry=None))
    assert not ok
    assert message in out, out


def test_accepted_at_every_level(tmp_path):
    ok, out = nginx_test_config(tmp_path, render_conf(
        tmp_path, 1, 2, http="sse_free_request off;",
        server="sse_free_request on;", sub="sse_free_request off;",
        retry=None))
    assert ok, out


@pytest.mark.parametrize("what, http, sub, headers", [
    ("limit_conn", "limit_conn_zone $binary_remote_addr zone=per_ip:1m;",
     "            limit_conn per_ip 1;", {}),
    ("limit_rate", "", "            limit_rate 100k;", {}),
    ("gzip", "gzip on; gzip_types text/event-stream; gzip_min_length 1;",
     "", {"Accept-Encoding": "gzip"}),
])
async def test_streams_that_need_their_request_keep_it(start_nginx, what,
                                                       http, sub, headers):
    n = start(start_nginx, http=http, sub=sub)
    c = await n.stream("kept", headers=headers)
    await n.publish_ok("kept", "x")
    await asyncio.sleep(0.5)
    # Not freed: no access log line while it is open.
    assert access_lines(n, "/events/kept") == []
    if what == "limit_conn":
        # The open stream still counts against the limit.
        r = await n.subscribe("kept")
        assert r.status == 503, r.status
    c.close()
    await wait_until(lambda: [ln for ln in access_lines(n, "/events/kept")
                              if ln.startswith("200 ")], 5, 0.02,
                     "the stream's access log line at its end")
    assert end_lines(n, "kept") == []


async def tls_stream(port, path, cafile, rcvbuf=None, read=True):
    """An HTTP/1.1 event stream over TLS (no ALPN: HTTP/1.1); with
    read=False nothing is read past the head until start_reading()."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    c = SSEClient()
    c._reader, c._writer = await asyncio.open_connection(
        sock=sock, ssl=ctx, server_hostname="127.0.0.1", limit=4096)
    OPEN_CLIENTS.add(c)
    c._writer.write(request_bytes("GET", path, None, None, False, True))
    head = await asyncio.wait_for(c._reader.readuntil(b"\r\n\r\n"), 10)
    c.status, c.headers = parse_head(head)
    assert c.status == 200, head
    if read:
        start_reading(c)
    return c


def start_reading(c):
    c._task = asyncio.ensure_future(c._pump())


@pytest.mark.timeout_s(60)
async def test_tls_stream_goes_request_free(start_nginx, tmp_path):
    tls, port, cert = tls_server(tmp_path)
    n = start(start_nginx, server=tls)
    c = await tls_stream(port, "/events/tls", cert)
    await wait_until(lambda: access_lines(n, "/events/tls"), 5, 0.02,
                     "the access log line of a TLS stream being set up")
    # Small events, then big ones that go through TLS's buffer in parts.
    ids = [await n.publish_ok("tls", f"e{i}") for i in range(10)]
    ids += [await n.publish_ok("tls", "b" * 50000) for _ in range(20)]
    got = await c.events(30, timeout=20)
    assert [b.id for b in got] == ids
    await delete_ends(n, c, "tls")
    # Another one, which the client closes.
    c = await tls_stream(port, "/events/tls2", cert)
    await wait_until(lambda: access_lines(n, "/events/tls2"), 5, 0.02,
                     "the access log line of the second TLS stream")
    c.close()
    await wait_end_line(n, "tls2", "client_closed")
    await wait_subscribers(n, "tls2", 0)


@pytest.mark.timeout_s(60)
async def test_tls_stream_that_falls_behind_gets_everything(start_nginx,
                                                            tmp_path):
    # A client that reads nothing for a while: TLS's buffer and the
    # socket fill, the writes wait for the client, then all comes, in
    # order.
    tls, port, cert = tls_server(tmp_path)
    n = start(start_nginx, sub="            sse_max_pending 32m;", server=tls)
    c = await tls_stream(port, "/events/lag", cert, rcvbuf=4096, read=False)
    await wait_until(lambda: access_lines(n, "/events/lag"), 5, 0.02,
                     "the access log line of a TLS stream being set up")
    # More than the socket's send buffer takes (up to 4 MB).
    ids = [await n.publish_ok("lag", f"{i:05d}" + "x" * 60000)
           for i in range(120)]
    await asyncio.sleep(1)
    start_reading(c)
    got = await c.events(120, timeout=30)
    assert [b.id for b in got] == ids
    assert [b.data[:5] for b in got] == [f"{i:05d}" for i in range(120)]
    c.close()
    await wait_end_line(n, "lag", "client_closed")
