"""Streams over HTTP/2 (TLS, a throwaway certificate), with curl: many
streams multiplexed on one connection, live flushing, resume."""

import asyncio
import subprocess
import time

import pytest

from clienthelp import tls_server, wait_subscribers, wait_until
from conftest import SSEParser, established_inodes

CURL = "/usr/bin/curl"


@pytest.fixture
def h2(start_nginx, tmp_path):
    tls, port, cert = tls_server(tmp_path, http2=True)
    n = start_nginx(server=tls)
    n.h2_port = port
    n.cacert = cert
    n.tmp = tmp_path
    return n


def curl(n, urls, outs, headers=(), extra=()):
    args = [CURL, "--http2", "--cacert", str(n.cacert), "-sS",
            "--no-progress-meter", "-N", "--max-time", "30",
            "-w", "%{http_version} %{num_connects} %{response_code} "
                  "%{exitcode}\\n"]
    if len(urls) > 1:
        args += ["--parallel", "--parallel-max", str(len(urls))]
    for h in headers:
        args += ["-H", h]
    args += list(extra)
    for u, o in zip(urls, outs):
        args += ["-o", str(o), f"https://127.0.0.1:{n.h2_port}{u}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


async def finish(p, timeout=15):
    deadline = time.monotonic() + timeout
    while p.poll() is None:
        if time.monotonic() > deadline:
            p.kill()
            out, err = p.communicate()
            raise AssertionError(f"curl did not finish: {err}")
        await asyncio.sleep(0.02)
    out, err = p.communicate()
    assert p.returncode == 0, err
    return [line.split() for line in out.splitlines()]


async def all_have(paths, eid, timeout=10):
    """Waits until every output file holds the event (before a DELETE,
    which would otherwise race the delivery)."""
    needle = f"id: {eid}\n".encode()

    def check():
        return all(p.exists() and needle in p.read_bytes() for p in paths)
    await wait_until(check, timeout, what=f"{eid} in every output")


def events_in(path):
    blocks = SSEParser().feed(path.read_bytes())
    return blocks


@pytest.mark.timeout_s(60)
async def test_many_streams_on_one_connection(h2):
    k = 6
    outs = [h2.tmp / f"out{i}" for i in range(k)]
    urls = ["/events/h2"] * (k - 1) + ["/multi?channels=other,h2"]
    p = curl(h2, urls, outs)
    try:
        await wait_subscribers(h2, "h2", k, timeout=15)
        # One TCP connection carries all of them.
        assert len(established_inodes(h2.h2_port)) == 1
        ids = [await h2.publish_ok("h2", f"event {i}\nline 2")
               for i in range(5)]
        await all_have(outs, ids[-1])
        r = await h2.pub_http("DELETE", "/publish/h2")
        assert r.status == 200
        results = await finish(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert len(results) == k
    # HTTP/2 for each, one connect in all, 200s, clean ends.
    assert [r[0] for r in results] == ["2"] * k
    assert sum(int(r[1]) for r in results) == 1
    assert [r[2] for r in results] == ["200"] * k
    assert [r[3] for r in results] == ["0"] * k
    for o in outs:
        blocks = events_in(o)
        assert [b.id for b in blocks if b.is_event and b.event != "sse-error"] == ids, o
        assert all(b.data == f"event {i}\nline 2"
                   for i, b in enumerate(x for x in blocks if x.is_event and x.event != "sse-error"))
        # retry at the start, retry at the end (the DELETE).
        assert blocks[0].retry == "3000" and blocks[-1].retry == "3000"


@pytest.mark.timeout_s(60)
async def test_each_event_is_flushed_over_h2(h2):
    out = h2.tmp / "live"
    hdr = h2.tmp / "headers"
    p = curl(h2, ["/events/live"], [out], extra=["-D", str(hdr)])
    try:
        await wait_subscribers(h2, "live", 1, timeout=15)
        for i in range(8):
            eid = await h2.publish_ok("live", f"tick {i}")
            # Awaited before the next publish.
            await wait_until(lambda: f"id: {eid}\n".encode() in
                             out.read_bytes(), 5, what=f"event {i} over h2")
        await h2.pub_http("DELETE", "/publish/live")
        results = await finish(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert results[0][0] == "2"
    head = hdr.read_text().lower().splitlines()
    assert head[0].startswith("http/2 200")
    assert "content-type: text/event-stream; charset=utf-8" in head
    assert "cache-control: no-cache" in head
    assert not any(h.startswith("transfer-encoding") for h in head)
    assert [b.data for b in events_in(out) if b.is_event and b.event != "sse-error"] == [
        f"tick {i}" for i in range(8)]


@pytest.mark.timeout_s(60)
async def test_resume_with_last_event_id_over_h2(h2):
    ids = [await h2.publish_ok("res", f"m{i}") for i in range(4)]
    outs = [h2.tmp / f"r{i}" for i in range(3)]
    # The Last-Event-ID header, as EventSource sends it...
    p1 = curl(h2, ["/events/res"], outs[:1],
              headers=[f"Last-Event-ID: {ids[0]}"])
    # ...and two streams on one connection resuming from other points.
    p2 = curl(h2, [f"/events/res?last_event_id={ids[1]}",
                   f"/events/res?last_event_id={ids[2]}"], outs[1:])
    try:
        await wait_subscribers(h2, "res", 3, timeout=15)
        live = await h2.publish_ok("res", "live")
        await all_have(outs, live)
        await h2.pub_http("DELETE", "/publish/res")
        r1 = await finish(p1)
        r2 = await finish(p2)
    finally:
        for p in (p1, p2):
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [r[0] for r in r1 + r2] == ["2"] * 3
    assert sum(int(r[1]) for r in r2) == 1
    for o, start in zip(outs, (1, 2, 3)):
        blocks = events_in(o)
        assert all(b.event != "sse-gap" for b in blocks)
        assert [b.id for b in blocks if b.is_event and b.event != "sse-error"] == ids[start:] + [live]
