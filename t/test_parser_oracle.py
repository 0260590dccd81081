"""The module's wire bytes, read back by an independent SSE parser (npm
eventsource-parser, via t/js/oracle.mjs) cut at random places: every
event parses back to exactly what was published (CR and CRLF arriving as
LF), with the module's ids and event names, and nothing else."""

import base64
import re
import urllib.parse

import pytest

from clienthelp import run_node_async

CASES = [
    (b"plain", None),
    (b"line1\nline2\nline3", None),
    (b"cr1\rcr2", "crs"),
    (b"crlf1\r\ncrlf2", None),
    (b"lone\rcr then crlf\r\nthen lf\nend", None),
    (b"ends with cr\r", None),
    (b"ends with lf\n", None),
    (b"ends with crlf\r\n", None),
    (b"\r\n", None),
    (b"\n", None),
    (b"\r", None),
    (b"", "empty"),
    (b"\n\nleading blank lines", None),
    (b"blank\n\n\nlines\r\r\rinside\r\n\r\n", None),
    (b"nul\x00in\x00the middle\x00", "nul"),
    (b"\x00", None),
    ("non-ASCII: h\u00e9llo w\u00f6rld \u2014 \u2713 \u65e5\u672c\u8a9e "
     "\U0001F600".encode(), "\u00fcn\u00efcode \u2713"),
    (b" one leading space", None),
    (b"   three leading spaces", "  spaced name"),
    (b"\tleading tab", None),
    (b"colon: in: data:", "a: b"),
    (b":looks like a comment", None),
    (b": also like a comment\n:: and another", None),
    (b"data: looks like a field", None),
    (b"id: 123", None),
    (b"retry: 1", None),
    (b"event: fake", None),
    (b"\n\nid: x\nevent: y\ndata: z", None),
    (b"\r\n\r\nid: x\r\nevent: y\r\ndata: z\r\n\r\n", "forge-crlf"),
    (b"\r\rid: x\revent: y\rdata: z\r\r", None),
    (b"\xef\xbb\xbfBOM inside the data", None),
    (b"x" * 5000 + b"\n" + b"y" * 3000, "big"),
    ("\u2028 and \u2029 and \u0085 are not line ends".encode(), None),
]

RUNS = ([{"seed": s, "max": 1} for s in (1,)] +
        [{"seed": s, "max": 2} for s in (2, 3)] +
        [{"seed": s, "max": 7} for s in range(4, 12)] +
        [{"seed": s, "max": 64} for s in range(12, 20)] +
        [{"seed": s, "max": 1500} for s in range(20, 24)] +
        [{"seed": 0, "max": 0}])


def as_read(data):
    """What an EventSource reader gets back for published data."""
    return re.sub(r"\r\n|\r", "\n", data.decode("utf-8"))


@pytest.mark.timeout_s(60)
async def test_every_event_parses_back_exactly(start_nginx):
    n = start_nginx(sub="sse_heartbeat off;")
    c = await n.stream("oracle")
    expected = []
    for data, event in CASES:
        q = f"event={urllib.parse.quote(event)}" if event is not None else ""
        r = await n.publish("oracle", data, query=q)
        assert r.status == 202, (data, event, r)
        expected.append({"id": r.json()["id"], "event": event,
                         "data": as_read(data)})
    got = await c.events(len(CASES))
    assert [b.id for b in got] == [e["id"] for e in expected]
    raw = b"".join(c.chunks)

    out = await run_node_async("oracle.mjs", {
        "raw_b64": base64.b64encode(raw).decode(), "runs": RUNS}, 60)
    assert len(out["runs"]) == len(RUNS)
    for run in out["runs"]:
        where = f"seed {run['seed']}, pieces of 1..{run['max']}"
        assert run["errors"] == [], where
        assert run["comments"] == [], where
        assert run["retries"] == [3000], where
        for i, (e, x) in enumerate(zip(run["events"], expected)):
            assert e == x, f"{where}: event {i} {CASES[i]!r}"
        assert len(run["events"]) == len(expected), where


@pytest.mark.timeout_s(60)
async def test_multiplexed_catch_up_parses_back_exactly(start_nginx):
    # Catch-up (one write of many buffered events) plus a gap event and
    # two channels: the same bytes-level agreement.
    # sse_initial_events: a resume point from the future is no exact point,
    # so it gets what a new subscriber gets.
    n = start_nginx(sub="sse_heartbeat off; sse_initial_events 100;")
    expected = []
    for i, (data, event) in enumerate(CASES[:12]):
        ch = "left" if i % 2 else "right"
        q = f"event={urllib.parse.quote(event)}" if event is not None else ""
        r = await n.publish(ch, data, query=q)
        assert r.status == 202
        expected.append({"id": r.json()["id"], "event": event,
                         "data": as_read(data)})
    first_epoch = expected[0]["id"].split("-")[0]
    bogus = f"{first_epoch}-999999"
    # A resume from the very start: a gap-free catch-up of everything, in
    # one write; then a resume point from the future: a gap event, then
    # whatever is buffered.
    c = await n.stream("/multi?channels=left,right",
                       headers={"Last-Event-ID": f"{first_epoch}-0"})
    got = await c.events(len(expected))
    assert [b.id for b in got] == [e["id"] for e in expected]
    g = await n.stream("/multi?channels=left,right",
                       headers={"Last-Event-ID": bogus})
    gap = await g.next_event()
    assert gap.event == "sse-gap"
    await g.events(len(expected))  # whatever is buffered follows the gap
    raw = b"".join(c.chunks) + b"".join(g.chunks)
    out = await run_node_async("oracle.mjs", {
        "raw_b64": base64.b64encode(raw).decode(),
        "runs": [{"seed": s, "max": 5} for s in range(6)]}, 60)
    for run in out["runs"]:
        assert run["errors"] == [] and run["comments"] == []
        assert run["retries"] == [3000, 3000]
        assert run["events"][:len(expected)] == expected
        second = run["events"][len(expected):]
        assert second[0]["event"] == "sse-gap"
        assert second[0]["id"] == gap.id
        assert f'"requested":"{bogus}"' in second[0]["data"]
        assert second[1:] == expected
