"""A real browser: headless Debian Chromium (t/js/browser.mjs, through
playwright-core) runs a page served by nginx itself whose EventSource
records what arrives. Named and unnamed events and multi-line data come
intact; when the stream's TCP connection is killed under it (the page
stays), the browser reconnects by itself with Last-Event-ID and every
event published meanwhile arrives, none twice. A page of another origin
can listen only where sse_allow_origin allows it."""

import asyncio
import re
import time

import pytest

from clienthelp import run_node_async, ss_kill_works
from conftest import free_port

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>sse test page</title>
<script>
window.t0 = performance.now();
const cfg = JSON.parse(decodeURIComponent(location.hash.slice(1)));
sessionStorage.loads = String(Number(sessionStorage.loads || 0) + 1);
const ms = () => Math.round(performance.now() - window.t0);
window.rec = {opens: [], errors: [], events: [],
              loads: Number(sessionStorage.loads), origin: location.origin};
const es = new EventSource(cfg.es, {withCredentials: cfg.withCredentials});
window.es = es;
const record = (e) => rec.events.push(
    {type: e.type, data: e.data, id: e.lastEventId, origin: e.origin});
es.onmessage = record;
for (const name of cfg.names) es.addEventListener(name, record);
es.onopen = () => rec.opens.push(ms());
es.onerror = () => rec.errors.push({t: ms(), readyState: es.readyState});
</script>
"""

BEFORE = [{"data": "hello", "event": None},
          {"data": "first line\nsecond line\n\nfourth after a blank",
           "event": "greet"},
          {"data": "crlf\r\nand lone\rcr", "event": None},
          {"data": "  leading spaces \u00e9\u2713 trailing LF\n",
           "event": "greet"}]
DURING = [{"data": f"while away {i}", "event": "greet" if i % 2 else None}
          for i in range(5)]
AFTER = [{"data": "back live", "event": "greet"}]

LOG_FORMAT = ("log_format ssetest '$request_method $uri $status "
              "\"$http_last_event_id\" \"$http_origin\"';")


def as_read(data):
    return re.sub(r"\r\n|\r", "\n", data)


@pytest.fixture
def site(start_nginx, tmp_path):
    html = tmp_path / "html"
    html.mkdir()
    (html / "es.html").write_text(PAGE)
    other = free_port()
    log = tmp_path / "access.log"
    n = start_nginx(
        retry=1500,
        http=f"""
    {LOG_FORMAT}
    server {{                          # another origin, same page
        listen 127.0.0.1:{other};
        location /page/ {{ alias {html}/; }}
    }}""",
        server=f"""
        access_log {log} ssetest;
        location /page/ {{ alias {html}/; }}""",
        sub_locations="""
        location ~ ^/cors/(?<cch>.+)$ {
            sse_subscribe;
            sse_channel $cch;
            sse_retry 1500;
            sse_allow_origin $http_origin;
            sse_allow_credentials on;
        }""")
    n.other_port = other
    n.access_log = log
    return n


def scenario(n, page_port, es, channel, mode="resume", credentials=False):
    return {
        "page": f"http://127.0.0.1:{page_port}/page/es.html",
        "es": es, "withCredentials": credentials, "names": ["greet"],
        "pub": f"http://127.0.0.1:{n.pub_port}/publish/{channel}",
        "port": n.sub_port, "mode": mode,
        "before": BEFORE, "during": DURING, "after": AFTER}


async def stream_requests(n, path_prefix, want, timeout=5):
    """Access-log lines of finished stream requests: (method, status,
    last_event_id, origin); nginx logs an empty value as "-"."""
    deadline = time.monotonic() + timeout
    while True:
        lines = []
        try:
            text = n.access_log.read_text()
        except OSError:
            text = ""
        for line in text.splitlines():
            m = re.match(r'^(\S+) (\S+) (\d+) "([^"]*)" "([^"]*)"$', line)
            if m and m[2].startswith(path_prefix):
                lines.append((m[1], int(m[3]), m[4], m[5]))
        if len([x for x in lines if x[0] == "GET"]) >= want or \
                time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.05)


def check_resume(out, page_origin):
    rec, ids = out["rec"], out["ids"]
    every = ids["before"] + ids["during"] + ids["after"]
    items = BEFORE + DURING + AFTER
    assert rec["loads"] == 1, "the page reloaded"
    got = rec["events"]
    assert [e["id"] for e in got] == every, "missing or repeated events"
    assert [e["type"] for e in got] == [i["event"] or "message"
                                        for i in items]
    assert [e["data"] for e in got] == [as_read(i["data"]) for i in items]
    assert {e["origin"] for e in got} == {page_origin}
    # One error (the cut), while reconnecting; two opens, the second after
    # the events "during" were published.
    assert len(rec["errors"]) == 1 and rec["errors"][0]["readyState"] == 0
    assert len(rec["opens"]) == 2
    assert rec["opens"][1] > out["t_during_published"]
    assert out["killed"] >= 1
    return every


@pytest.mark.timeout_s(120)
async def test_same_origin_events_and_resume_after_a_killed_connection(site):
    if not ss_kill_works():
        pytest.skip("ss -K (SOCK_DESTROY) is not available here")
    out = await run_node_async("browser.mjs", scenario(
        site, site.sub_port, "/events/br", "br"), 100)
    check_resume(out, f"http://127.0.0.1:{site.sub_port}")
    # The browser came back with the last id it had.
    reqs = [r for r in await stream_requests(site, "/events/br", 2)
            if r[0] == "GET"]
    assert [r[2] for r in reqs] == ["-", out["ids"]["before"][-1]], reqs
    assert all(r[1] == 200 for r in reqs)


@pytest.mark.timeout_s(120)
async def test_cross_origin_page_with_sse_allow_origin(site):
    if not ss_kill_works():
        pytest.skip("ss -K (SOCK_DESTROY) is not available here")
    es = f"http://127.0.0.1:{site.sub_port}/cors/xo"
    out = await run_node_async("browser.mjs", scenario(
        site, site.other_port, es, "xo", credentials=True), 100)
    check_resume(out, f"http://127.0.0.1:{site.sub_port}")
    page_origin = f"http://127.0.0.1:{site.other_port}"
    reqs = await stream_requests(site, "/cors/xo", 2)
    gets = [r for r in reqs if r[0] == "GET"]
    assert [r[2] for r in gets] == ["-", out["ids"]["before"][-1]], reqs
    assert all(r[3] == page_origin for r in gets)
    # A preflight, if the browser sent one, was answered 204.
    assert all(r[1] == 204 for r in reqs if r[0] == "OPTIONS"), reqs


@pytest.mark.timeout_s(120)
async def test_cross_origin_page_without_sse_allow_origin_fails(site):
    es = f"http://127.0.0.1:{site.sub_port}/events/denied"
    cfg = scenario(site, site.other_port, es, "denied", mode="denied")
    cfg["before"] = BEFORE[:1]
    out = await run_node_async("browser.mjs", cfg, 100)
    rec = out["rec"]
    assert len(rec["errors"]) >= 1
    assert rec["opens"] == []
    assert rec["events"] == []
