"""The module reports its version (ngx_http_sse_version.hpp, the one place
it is defined): in sse_status, JSON and Prometheus, and in one [notice]
line the master logs when it loads a configuration."""

import re

from conftest import ROOT

VERSION = re.search(r'#define NGX_HTTP_SSE_VERSION "([^"]+)"',
                    (ROOT / "ngx_http_sse_module" /
                     "ngx_http_sse_version.hpp").read_text()).group(1)
STATUS = "location = /status { sse_status; }"


def test_version_is_0_1_0_everywhere():
    assert VERSION == "0.1.0"
    assert f"## {VERSION} " in (ROOT / "CHANGELOG.md").read_text()
    assert f'"version": "{VERSION}"' in \
        (ROOT / "clients" / "js" / "package.json").read_text()


async def test_status_reports_the_version(start_nginx):
    n = start_nginx(pub_locations=STATUS)
    r = await n.pub_http("GET", "/status")
    assert r.status == 200
    assert r.json()["version"] == VERSION
    assert r.text.startswith('{"version":')
    r = await n.pub_http("GET", "/status?format=prometheus")
    assert r.status == 200
    lines = r.text.splitlines()
    assert f'sse_build_info{{version="{VERSION}"}} 1' in lines
    assert "# TYPE sse_build_info gauge" in lines


def notices(n):
    return [ln for ln in n.log_text().splitlines()
            if re.search(r"\[notice\] \d+#\d+: sse module " +
                         re.escape(VERSION) + "$", ln)]


async def test_startup_notice_once_from_the_master(start_nginx):
    n = start_nginx(workers=3)
    lines = notices(n)
    assert len(lines) == 1, n.log_text()
    # Before daemonising: the process that becomes the master, no worker.
    pid = int(re.search(r"\[notice\] (\d+)#", lines[0]).group(1))
    assert pid not in n.workers()
    n.reload()
    assert len(notices(n)) == 2
