"""Node's `eventsource` 4.x (t/js/node_es.mjs) against the module: the TCP
connection is killed under it (or the server ends the stream); it
reconnects by itself with Last-Event-ID, and every event published
meanwhile arrives, none twice."""

import pytest

from clienthelp import run_node_async, ss_kill_works

BEFORE = [{"data": "hello", "event": None},
          {"data": "named\nmulti-line\n\nwith a blank", "event": "greet"},
          {"data": "  two leading spaces, trailing LF\n", "event": None}]
DURING = [{"data": f"while away {i}", "event": "greet" if i % 2 else None}
          for i in range(5)]
AFTER = [{"data": "live again \u2713", "event": None}]


def expected_types(items):
    return [e["event"] or "message" for e in items]


async def run_scenario(n, channel, cut):
    return await run_node_async("node_es.mjs", {
        "url": f"http://127.0.0.1:{n.sub_port}/events/{channel}",
        "pub": f"http://127.0.0.1:{n.pub_port}/publish/{channel}",
        "port": n.sub_port, "names": ["greet"], "cut": cut,
        "before": BEFORE, "during": DURING, "after": AFTER}, 75)


def check(out):
    ids = out["ids"]
    every = ids["before"] + ids["during"] + ids["after"]
    got = out["received"]
    # Everything, in order, once.
    assert [r["id"] for r in got] == every
    assert [r["type"] for r in got] == expected_types(BEFORE + DURING + AFTER)
    assert [r["data"] for r in got] == [e["data"] for e in
                                        BEFORE + DURING + AFTER]
    # One reconnect, by itself, carrying the last id it had seen.
    assert [c["lastEventId"] for c in out["connects"]] == [
        None, ids["before"][-1]]
    assert len(out["errors"]) == 1 and out["errors"][0]["readyState"] == 0
    assert len(out["opens"]) == 2
    # The events "during" were published before it came back.
    assert out["connects"][1]["t"] > out["t_during_published"]
    assert out["readyState"] == 2


@pytest.mark.timeout_s(90)
async def test_killed_connection_reconnects_and_resumes(start_nginx):
    if not ss_kill_works():
        pytest.skip("ss -K (SOCK_DESTROY) is not available here")
    n = start_nginx(retry=1500)
    out = await run_scenario(n, "node-kill", "kill")
    assert out["killed"] >= 1
    check(out)


@pytest.mark.timeout_s(90)
async def test_stream_ended_by_the_server_resumes(start_nginx):
    # sse_stream_timeout ends the stream with retry and a clean end.
    n = start_nginx(retry=1500, sub="sse_stream_timeout 3s;")
    out = await run_scenario(n, "node-end", "server")
    check(out)
