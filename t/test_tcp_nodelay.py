"""TCP_NODELAY on subscriber connections (issue 11). Events are small
writes that often come close together; with Nagle's algorithm the second
of two waits until the first is acknowledged, and a client that delays its
ACKs (40 ms on Linux, up to 200 ms elsewhere) adds that to the second
event's latency on a real network. nginx sets TCP_NODELAY itself only on
keep-alive and upgraded connections, so the module sets it when a stream
starts, unless `tcp_nodelay off`.

Timing-free: the option is read from the worker's own socket (a duplicate
of its descriptor taken with pidfd_getfd), not inferred from latencies."""

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pylib"))
from sselib.proc import peer_socket_option, server_side_inode  # noqa: E402


def nodelay_of_stream(n, client):
    """TCP_NODELAY of the server side of a subscriber's connection."""
    pid = n.worker_of(n.sub_port, client.local_port)
    inode = server_side_inode(n.sub_port, client.local_port)
    try:
        return peer_socket_option(pid, inode, socket.IPPROTO_TCP,
                                  socket.TCP_NODELAY)
    except PermissionError as e:  # no right to ptrace the worker
        pytest.skip(f"cannot read the worker's socket: {e}")


async def test_stream_has_tcp_nodelay(start_nginx):
    n = start_nginx()
    c = await n.stream("nd")
    await n.publish_ok("nd", "one")
    assert (await c.next_event()).data == "one"
    assert nodelay_of_stream(n, c) != 0


async def test_tcp_nodelay_off_is_honoured(start_nginx):
    # Also shows that the check above can fail: the kernel's default is off.
    n = start_nginx(server="        tcp_nodelay off;")
    c = await n.stream("nd")
    await n.publish_ok("nd", "one")
    assert (await c.next_event()).data == "one"
    assert nodelay_of_stream(n, c) == 0
