"""Edges of the publish path to Redis that once crashed a worker: a
command that fails inside the call that sends it (connect() refused at
once, ENETUNREACH; send() failing on a dead socket) is answered like any
other failure, 503 with Retry-After; a streaming publish whose body came
in with its head is answered from Redis's reply."""

import asyncio
import time

import pytest

from redishelp import (needs_redis, redis_conf, start_redis,  # noqa: F401
                       zone_nginx_t)

pytestmark = needs_redis

STATUS = "        location = /sse-status { sse_status; }\n"
# 224.0.0.1 is multicast: connect() fails at once (ENETUNREACH), inside
# the call that queued the command, rather than later on the event loop.
UNREACHABLE = "redis://224.0.0.1:6379"
ALLOW = [r"\[error\].*sse: redis", r"\[error\].*connect\(\) .*failed"]


async def publishes_after_backoff(n, make, count):
    """Sends `count` requests at once, again and again for 3 s, so that
    some of them come when the fail-fast window after a failure is over
    and their send() connects: every answer is a 503 with Retry-After."""
    deadline = time.monotonic() + 3
    seen = 0
    while time.monotonic() < deadline:
        for resp in await asyncio.gather(*(make(i) for i in range(count))):
            assert resp.status == 503, resp
            assert resp.header("Retry-After") == "1", resp
            seen += 1
        await asyncio.sleep(0.02)
    return seen


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize("kind", ["post", "stream", "delete"])
async def test_connect_failing_at_once_answers_503(start_nginx, kind):
    n = start_nginx(zone=redis_conf(UNREACHABLE, extra=" redis_timeout=300ms"),
                    sub_locations=STATUS, allow_log=ALLOW)
    body = "".join(f"data: {i}\n\n" for i in range(5)).encode()

    def make(i):
        if kind == "post":
            return n.publish(f"c{i % 3}", f"x{i}")
        if kind == "stream":
            return n.publish(f"c{i % 3}", body,
                             headers={"Content-Type": "text/event-stream"})
        return n.pub_http("DELETE", f"/publish/c{i % 3}")

    assert await publishes_after_backoff(n, make, 8) > 0
    # Every worker is still the one that started: none crashed.
    st = (await n.sub_http("GET", "/sse-status")).json()
    assert st["zones"][0]["redis"]["state"] != "up"
    assert "crashed" not in n.log_text() and "signal" not in n.log_text()


async def test_small_streaming_publish_read_with_its_head(start_nginx,
                                                          start_redis):
    """A streaming publish whose whole body came in with its head: nginx
    has read it all before the module starts, and the events wait for
    Redis; the answer comes from Redis's reply."""
    from test_redis import machines
    r = start_redis()
    a, b = await machines(start_nginx, r, 2)
    s = await b.stream("small")
    body = "".join(f"data: {i}\n\n" for i in range(3)).encode()
    resp = await a.publish("small", body,
                           headers={"Content-Type": "text/event-stream"})
    assert resp.status == 202, resp
    assert resp.json()["published"] == 3
    assert [e.data for e in await s.events(3, 5)] == ["0", "1", "2"]


@pytest.mark.timeout_s(60)
async def test_reload_answers_publishes_waiting_for_redis(start_nginx,
                                                         start_redis):
    """A reload while publishes wait for a slow Redis: the old workers stay
    until Redis answered them (within redis_timeout), so each publisher
    gets its answer rather than a closed connection."""
    from test_redis import machines
    r = start_redis()
    (a,) = await machines(start_nginx, r, 1, extra=" redis_timeout=5s")
    first = await a.publish_ok("slow", "before")
    r.cli("CLIENT", "PAUSE", "1500", "WRITE")
    pending = [asyncio.ensure_future(a.publish("slow", f"p{i}"))
               for i in range(6)]
    await asyncio.sleep(0.3)  # they are waiting for Redis now
    a.reload()
    answers = await asyncio.gather(*pending)
    assert [x.status for x in answers] == [202] * 6, answers
    # Stored, once each: a resume from "before" gets exactly them.
    s = await a.stream("slow", headers={"Last-Event-ID": first})
    got = [e.data for e in await s.events(6, 10)]
    assert sorted(got) == [f"p{i}" for i in range(6)]
    assert "open socket" not in a.log_text()


@pytest.mark.parametrize("param,why", [
    ("redis=redis://u:hunter2@127.0.0.1:6379/x", "must be a number"),
    ("redis=rediss+sentinel://u:hunter2@127.0.0.1/m",
     "TLS (rediss://) with Sentinel is not supported"),
    ("redis=redis://a:hunter2@127.0.0.1 redis=redis://b:hunter2@127.0.0.1",
     'duplicate "redis=" parameter'),
    ("redis=redis+sentinel://127.0.0.1/m redis_sentinel_auth=x:hunter2 "
     "redis_sentinel_auth=y:hunter2", 'duplicate "redis_sentinel_auth="'),
])
def test_refused_redis_parameters_keep_the_password_out(tmp_path, param,
                                                        why):
    """`nginx -t` says what is wrong without printing the password."""
    ok, out = zone_nginx_t(tmp_path, param)
    assert not ok and "[emerg]" in out and why in out, out
    assert "hunter2" not in out, out


@pytest.mark.timeout_s(120)
async def test_cluster_seed_list_outlives_its_first_node(start_nginx,
                                                         start_redis):
    """`redis=redis://A,B,C`: the node a machine first reached (its bus
    and its way in) dies for good, its replica taking over at another
    address; the machines move on to the next node of the list, and every
    accepted event still reaches every subscriber once, in order."""
    from redishelp import node_of, start_cluster, wait_in_sync
    from test_redis import (REDIS_ERRORS, STATUS, publish_through_failover,
                            read_events)
    nodes = start_cluster(start_redis, n=6, replicas=1)
    primaries = [r for r in nodes
                 if "role:master" in r.cli("INFO", "replication")]
    first = primaries[0]
    name = next(f"z{i}" for i in range(200)
                if node_of(nodes, f"{{sse:z{i}}}") is not first)
    seeds = ",".join(f"127.0.0.1:{r.port}" for r in primaries)
    zone = f"sse_zone zone={name}:16m redis=redis://{seeds};"
    a, b = (start_nginx(zone=zone, sub_locations=STATUS,
                        allow_log=REDIS_ERRORS) for _ in range(2))
    await wait_in_sync(a)
    await wait_in_sync(b)
    s = await b.stream("f")
    before = [(await a.publish_ok("f", f"b{i}"), f"b{i}") for i in range(5)]
    assert await read_events(s, 5, 10) == before
    first.kill()
    after = await publish_through_failover(a, "f")
    assert await read_events(s, 10, 30) == after
    await wait_in_sync(b)


@pytest.mark.parametrize("param,why", [
    ("redis=redis://127.0.0.1:7000,,127.0.0.1:7001",
     "an empty address in the list"),
    ("redis=redis://127.0.0.1:7000,no-such-host.invalid", "host not found"),
])
def test_bad_seed_lists_fail_nginx_t(tmp_path, param, why):
    ok, out = zone_nginx_t(tmp_path, param)
    assert not ok and "[emerg]" in out and why in out, out


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize("protocols", [None, "TLSv1.2"])
async def test_tls_client_certificate(start_nginx, start_redis, tmp_path,
                                      protocols):
    """A Redis with tls-auth-clients (its default with TLS) takes a machine
    that presents redis_cert=/redis_key=; one without them gets a 503 that
    says what to set (and nginx's own [crit] of the refused read is not
    logged: the conftest fails on it). With TLS 1.2 the refusal comes in
    the handshake (1.3: after it), and says the same."""
    from test_redis import (REDIS_ERRORS, STATUS, machines, read_events,
                            start_tls_redis)
    args = ["--tls-protocols", protocols] if protocols else []
    r, url, cert, key = start_tls_redis(start_redis, tmp_path, "yes",
                                        args=args)
    a, b = await machines(start_nginx, r, 2, url=url,
                          extra=f" redis_ca={cert} redis_cert={cert} "
                                f"redis_key={key}")
    s = await b.stream("t")
    sent = [(await a.publish_ok("t", f"s{i}"), f"s{i}") for i in range(5)]
    assert await read_events(s, 5, 10) == sent
    bare = start_nginx(zone=redis_conf(url, extra=f" redis_ca={cert}"),
                       sub_locations=STATUS, allow_log=REDIS_ERRORS)
    deadline = time.monotonic() + 10
    while True:
        resp = await bare.publish("t", "x")
        assert resp.status == 503, resp
        if "client certificate" in resp.text:
            break
        assert time.monotonic() < deadline, resp
        await asyncio.sleep(0.2)
    assert "redis_cert=" in resp.text, resp


@pytest.mark.parametrize("param,why", [
    ("redis=redis://127.0.0.1 redis_cert=/etc/ssl/x.pem "
     "redis_key=/etc/ssl/x.key", "are for TLS"),
    ("redis=rediss://127.0.0.1 redis_cert=/etc/ssl/x.pem",
     "go together"),
    ("redis_key=/etc/ssl/x.key", "needs \"redis=\""),
    ("redis=rediss://127.0.0.1 redis_cert=/no/such/cert.pem "
     "redis_key=/no/such/key.pem", "/no/such/cert.pem"),
])
def test_bad_client_certificate_parameters_fail_nginx_t(tmp_path, param,
                                                        why):
    ok, out = zone_nginx_t(tmp_path, param)
    assert not ok and "[emerg]" in out and why in out, out
