"""sse_status (JSON and Prometheus) and per-channel figures, checked after
known activity."""

import asyncio
import re
import socket
import time

import pytest

from clienthelp import status_json, wait_subscribers, wait_until
from conftest import epoch_of, free_port, proc_alive

STATUS = "location = /status { sse_status; }"
ZONE_BYTES = 16 * 1024 * 1024


def stored_size(data, event=None):
    """Bytes the zone holds for an event: its wire form without the id
    line, which workers add as they copy it."""
    return len((f"event: {event}\n" if event else "") +
               "".join(f"data: {line}\n" for line in data.split("\n")) + "\n")


async def activity(n):
    """Two streams on `a`, one multiplexed on `b,c`; 3+2+1 events."""
    a1 = await n.stream("a")
    a2 = await n.stream("a")
    m = await n.stream("/multi?channels=b,c")
    ids = {}
    for ch, k in (("a", 3), ("b", 2), ("c", 1)):
        ids[ch] = [await n.publish_ok(ch, f"{ch}{i}") for i in range(k)]
    for c in (a1, a2):
        assert [b.id for b in await c.events(3)] == ids["a"]
    assert [b.id for b in await m.events(3)] == ids["b"] + ids["c"]
    return (a1, a2, m), ids


async def flush(n):
    """A publish anywhere makes every worker hand in its counts."""
    return await n.publish_ok("zz-flush", "f")


async def test_figures_after_known_activity(start_nginx):
    n = start_nginx(reuseport=True, pub_locations=STATUS)
    clients, ids = await activity(n)
    fid = await flush(n)
    every = ids["a"] + ids["b"] + ids["c"] + [fid]

    async def delivered_in():
        return (await status_json(n))["delivered"] == 9
    await wait_until(delivered_in, 3, what="delivered == 9")
    s = await status_json(n)
    assert s["name"] == "sse"
    assert s["epoch"] == epoch_of(fid)
    assert s["last_id"] == fid
    assert s["channels"] == 4
    assert s["subscribers"] == 4          # a stream on b,c counts two
    assert s["messages"] == 7
    assert s["published"] == 7
    assert s["delivered"] == 9            # 3x2 + 2 + 1
    assert s["slow_dropped"] == 0
    assert s["evicted"] == 0
    assert s["message_bytes"] == sum(
        stored_size(d) for d in ["a0", "a1", "a2", "b0", "b1", "c0", "f"])
    assert s["bytes_total"] == ZONE_BYTES
    assert s["bytes_used"] + s["bytes_free"] == ZONE_BYTES
    assert 0 < s["bytes_used"] < ZONE_BYTES // 4
    # Workers: the real worker processes, with the subscriptions each
    # actually holds.
    workers = n.workers()
    assert sorted(w["pid"] for w in s["workers"]) == sorted(workers)
    held = {p: 0 for p in workers}
    for c, k in zip(clients, (1, 1, 2)):
        held[n.worker_of(n.sub_port, c.local_port)] += k
    assert {w["pid"]: w["subscribers"] for w in s["workers"]} == held

    # Subscribers leave: the figures follow.
    clients[0].close()
    clients[2].close()
    await wait_subscribers(n, "a", 1)

    async def one_left():
        return (await status_json(n))["subscribers"] == 1
    await wait_until(one_left, 5, what="1 subscriber in status")
    s = await status_json(n)
    assert sum(w["subscribers"] for w in s["workers"]) == 1


async def test_delivered_is_current_without_further_publishing(start_nginx):
    # The counts must not wait for the next publish to show up: after each
    # event a subscriber has received, `delivered` says so.
    n = start_nginx(pub_locations=STATUS)
    c = await n.stream("d")
    last = None
    for i in range(1, 4):
        await n.publish_ok("d", str(i))
        await c.next_event()

        async def check():
            nonlocal last
            last = (await status_json(n))["delivered"]
            return last == i
        try:
            await wait_until(check, 3, 0.1, f"delivered == {i}")
        except AssertionError:
            raise AssertionError(
                f"status says delivered={last} 3 s after {i} deliveries "
                "(and no publish since)") from None


async def test_channel_info_figures(start_nginx):
    n = start_nginx(pub="sse_buffer_length 2;", pub_locations=STATUS)
    assert (await n.info("nope")).status == 404
    c1 = await n.stream("ci")
    c2 = await n.stream("/multi?channels=ci,other")
    ids = [await n.publish_ok("ci", str(i)) for i in range(5)]
    r = await n.info("ci")
    assert r.status == 200
    assert r.header("content-type") == "application/json"
    assert r.json() == {"channel": "ci", "messages": 2, "subscribers": 2,
                        "published": 5, "first_id": ids[3],
                        "last_id": ids[4]}
    other = (await n.info("other")).json()
    assert other == {"channel": "other", "messages": 0, "subscribers": 1,
                     "published": 0, "first_id": None, "last_id": None}
    assert (await status_json(n))["messages"] == 2
    c1.close()
    await wait_subscribers(n, "ci", 1)
    c2.close()
    await wait_subscribers(n, "ci", 0)
    # HEAD: the same headers, no body.
    r = await n.pub_http("HEAD", "/publish/ci")
    assert r.status == 200 and r.body == b""
    assert int(r.header("content-length")) > 0


PROM_LINE = re.compile(
    r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>[0-9]+)$')
JSON_OF = {
    "sse_channels": ("channels", "gauge"),
    "sse_subscribers": ("subscribers", "gauge"),
    "sse_messages": ("messages", "gauge"),
    "sse_message_bytes": ("message_bytes", "gauge"),
    "sse_published_total": ("published", "counter"),
    "sse_delivered_total": ("delivered", "counter"),
    "sse_slow_dropped_total": ("slow_dropped", "counter"),
    "sse_batched_writes_total": ("batched_writes", "counter"),
    "sse_evicted_total": ("evicted", "counter"),
    "sse_zone_bytes_used": ("bytes_used", "gauge"),
    "sse_zone_bytes_free": ("bytes_free", "gauge"),
}


def parse_prometheus(text):
    helps, types, samples, order = {}, {}, {}, []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, h = line[7:].partition(" ")
            helps[name] = h
            order.append(("help", name))
        elif line.startswith("# TYPE "):
            name, _, t = line[7:].partition(" ")
            types[name] = t
            order.append(("type", name))
        elif line:
            m = PROM_LINE.match(line)
            assert m, f"not a sample line: {line!r}"
            labels = dict(re.findall(r'([a-z_]+)="([^"]*)"', m["labels"]))
            samples.setdefault(m["name"], []).append(
                (labels, int(m["value"])))
            order.append(("sample", m["name"]))
    return helps, types, samples, order


async def test_prometheus_matches_json(start_nginx):
    n = start_nginx(reuseport=True, pub_locations=STATUS)
    await activity(n)
    await flush(n)
    await wait_until(lambda: _delivered_is(n, 9), 3, what="delivered 9")
    s = await status_json(n)
    r = await n.pub_http("GET", "/status?format=prometheus")
    assert r.status == 200
    assert r.header("content-type").startswith("text/plain; version=0.0.4")
    helps, types, samples, order = parse_prometheus(r.text)
    for metric, (key, typ) in JSON_OF.items():
        assert helps.get(metric), metric
        assert types.get(metric) == typ, metric
        # HELP, then TYPE, then the samples.
        i = order.index(("help", metric))
        assert order[i + 1] == ("type", metric)
        assert order[i + 2] == ("sample", metric)
        assert samples[metric] == [({"zone": "sse"}, s[key])], metric
    assert types["sse_worker_subscribers"] == "gauge"
    per_worker = {int(lb["pid"]): v
                  for lb, v in samples["sse_worker_subscribers"]}
    assert per_worker == {w["pid"]: w["subscribers"] for w in s["workers"]}
    assert sorted(per_worker) == sorted(n.workers())
    # Anything but exactly "prometheus" is JSON.
    r = await n.pub_http("GET", "/status?format=json")
    assert r.header("content-type") == "application/json"


async def _delivered_is(n, want):
    return (await status_json(n))["delivered"] == want


async def test_status_workers_follow_a_reload(start_nginx):
    n = start_nginx(pub_locations=STATUS)
    before = sorted(w["pid"] for w in (await status_json(n))["workers"])
    assert before == sorted(n.workers())
    old = n.reload()
    deadline = time.monotonic() + 10
    while any(proc_alive(p) for p in old) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    s = await status_json(n)
    assert sorted(w["pid"] for w in s["workers"]) == sorted(n.workers())
    assert not set(old) & {w["pid"] for w in s["workers"]}


@pytest.mark.timeout_s(60)
async def test_slow_dropped_counts_a_subscriber_let_go(start_nginx):
    slow_port = free_port()
    # A listener with small socket buffers, so that owing 8k is quick.
    n = start_nginx(pub_locations=STATUS, http=f"""
    server {{
        listen 127.0.0.1:{slow_port} sndbuf=4k;
        location /slow {{
            sse_subscribe;
            sse_channel slow;
            sse_max_pending 8k;
        }}
    }}""")
    keeper = await n.stream("slow")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", slow_port))
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        await wait_subscribers(n, "slow", 2)
        body = "s" * 8000
        for _ in range(100):
            await n.publish_ok("slow", body)
            await keeper.next_event()
            if (await n.info("slow")).json()["subscribers"] == 1:
                break
        await wait_subscribers(n, "slow", 1)
        await flush(n)

        async def dropped():
            return (await status_json(n))["slow_dropped"] == 1
        await wait_until(dropped, 3, what="slow_dropped == 1")
    finally:
        s.close()
