"""sse_io_uring (issue 11): a worker sends the writes of one slice of
request-free plain-TCP streams to the kernel as one io_uring submission.
Each test runs with the batches on and with `sse_io_uring off`, asserts
what the client receives (every event once, in order, whole) and, through
sse_status's `batched_writes`, which path the writes took: a test of the
batches that passed with them off would prove nothing."""

import asyncio
import re
import socket
import time
from pathlib import Path

import pytest

from clienthelp import stalled_subscriber, status_json, wait_subscribers
from conftest import (SSEParser, nginx_test_config, render_conf,
                      free_port)

STATUS = "location = /status { sse_status; }"
MODES = ["on", "off"]


def io_uring_usable():
    # 1 allows it to root, which the test workers are; 2 to no one.
    p = Path("/proc/sys/kernel/io_uring_disabled")
    return not p.exists() or p.read_text().strip() != "2"


def start(start_nginx, mode, **kw):
    if mode == "on" and not io_uring_usable():
        pytest.skip("io_uring is disabled on this kernel")
    main_http = kw.pop("http", "")
    return start_nginx(http=f"sse_io_uring {mode};\n" + main_http,
                       pub_locations=STATUS, **kw)


async def batched(n):
    return (await status_json(n))["batched_writes"]


def check_path(n, mode, before, after, least):
    """With batches on, at least `least` writes went through them; off,
    none did, and the notice that io_uring is missing is not logged."""
    if mode == "on":
        assert after - before >= least, (before, after)
    else:
        assert after == 0
    assert "io_uring is not available" not in n.log_text()


@pytest.mark.parametrize("mode", MODES)
async def test_paced_events_reach_every_stream_once_in_order(start_nginx,
                                                             mode):
    n = start(start_nginx, mode)
    streams = [await n.stream("u") for _ in range(40)]
    await wait_subscribers(n, "u", 40)
    # The streams go request-free once their head is out.
    await asyncio.sleep(0.2)
    before = await batched(n)
    ids = []
    for i in range(10):
        ids.append(await n.publish_ok("u", f"e{i}"))
        for s in streams:
            assert (await s.next_event()).data == f"e{i}"
    for s in streams:
        assert s.last_id == ids[-1]
    # One write per stream per event, each event waited for.
    check_path(n, mode, before, await batched(n), 40 * 10)



def read_events(s, want, timeout=20):
    """Reads the stream's head and chunked body until `want` events came;
    returns their blocks."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    buf = buf.split(b"\r\n\r\n", 1)[1]
    parser = SSEParser()
    events = []
    while len(events) < want:
        assert time.monotonic() < deadline, f"{len(events)} of {want}"
        while b"\r\n" not in buf:
            buf += s.recv(65536)
        line, rest = buf.split(b"\r\n", 1)
        size = int(line, 16)
        while len(rest) < size + 2:
            rest += s.recv(65536)
        assert rest[size:size + 2] == b"\r\n"
        events += [b for b in parser.feed(rest[:size]) if b.is_event]
        buf = rest[size + 2:]
    return events


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize("mode", MODES)
async def test_a_stalled_stream_gets_everything_after_partial_sends(
        start_nginx, mode):
    # Small buffers and events larger than the kernel takes at once (about
    # 64 KB while the send buffer has room): the socket takes part of the
    # first write, then nothing; the rest, and the events queued behind
    # it, wait in nginx until the client reads.
    port = free_port()
    n = start(start_nginx, mode, http=f"""
    sse_max_message_size 256k;
    server {{
        listen 127.0.0.1:{port} sndbuf=4k;
        location /slow {{
            sse_subscribe;
            sse_channel slow;
            sse_max_pending 8m;
        }}
    }}""")
    s = stalled_subscriber(port, "/slow", rcvbuf=4096)
    try:
        await wait_subscribers(n, "slow", 1)
        await asyncio.sleep(0.2)
        before = await batched(n)
        ids = [await n.publish_ok("slow", f"{i:04d}" + "x" * 200000)
               for i in range(20)]
        events = await asyncio.get_running_loop().run_in_executor(
            None, read_events, s, len(ids))
    finally:
        s.close()
    assert [e.id for e in events] == ids
    assert [e.data[:4] for e in events] == [f"{i:04d}" for i in range(20)]
    assert all(e.data[4:] == "x" * 200000 for e in events)
    check_path(n, mode, before, await batched(n), 1)


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize("mode", MODES)
async def test_reset_streams_end_and_the_rest_get_everything(start_nginx,
                                                            mode):
    # Clients that vanish with a reset while events flow: their streams
    # end and are counted out, and the streams beside them in the same
    # batches miss nothing. (The reset is mostly seen by the read handler
    # first, so this does not reach the batch's own send-error branch;
    # nothing here can make a send fail on demand.)
    n = start(start_nginx, mode)
    keep = [await n.stream("r") for _ in range(20)]
    gone = []
    for _ in range(20):
        s = stalled_subscriber(n.sub_port, "/events/r", rcvbuf=65536)
        gone.append(s)
    await wait_subscribers(n, "r", 40)
    await asyncio.sleep(0.2)
    before = await batched(n)
    ids = [await n.publish_ok("r", "a")]
    for s in gone:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # linger 0: a reset
    for i in range(30):
        ids.append(await n.publish_ok("r", f"b{i}"))
    for c in keep:
        got = await c.events(len(ids))
        assert [e.id for e in got] == ids
    await wait_subscribers(n, "r", 20)
    check_path(n, mode, before, await batched(n), 20 * len(ids))


def conf(tmp_path, **kw):
    return render_conf(tmp_path, free_port(), free_port(), **kw)


def test_sse_io_uring_is_an_http_level_flag(tmp_path):
    ok, out = nginx_test_config(tmp_path, conf(tmp_path,
                                               http="sse_io_uring maybe;"))
    assert not ok, out
    assert re.search(r'\[emerg\] invalid value "maybe" in "sse_io_uring" '
                     r'directive, it must be "on" or "off"', out), out
    ok, out = nginx_test_config(tmp_path, conf(tmp_path,
                                               sub="sse_io_uring off;"))
    assert not ok, out
    assert '"sse_io_uring" directive is not allowed here' in out, out
    ok, out = nginx_test_config(tmp_path, conf(tmp_path,
                                               http="sse_io_uring off;"))
    assert ok, out
