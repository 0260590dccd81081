"""Integration fixtures: a real nginx with the built module, per test.

`start_nginx(...)` renders nginx.conf into the test's tmp dir, starts nginx
(master + workers, daemon on), and at teardown stops it by the pid in its pid
file and fails the test if error.log holds an alert, an emerg, a crit or a
sanitizer report. `async def` tests run in their own event loop with a
deadline (`@pytest.mark.timeout_s(N)`, default 60 s).
"""

import asyncio
import inspect
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


# The shared package (pylib/sselib): bench/run.py uses it too. Its names
# are re-exported here, the private spellings included, because tests
# import them from conftest.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pylib"))

from sselib.client import (OPEN_CLIENTS, Block, KeepAlive,  # noqa: E402,F401
                           Response, SSEClient, SSEParser, StreamEnd, http,
                           parse_head, read_chunked, request_bytes)
from sselib.nginx import (BAD_LOG, MODULE, NGINX_BIN,  # noqa: E402,F401
                          ROOT, SANITIZER_LOG, SANITIZER_REPORT,
                          NginxProcess, PortTaken, free_port, free_ports,
                          nginx_env, sanitizer_reports, wait_port)
from sselib.proc import (established_inodes, proc_alive,  # noqa: E402,F401
                         proc_children, proc_cmdline, rss_kb,
                         server_side_inode, socket_inodes)

_OPEN_CLIENTS = OPEN_CLIENTS
_parse_head = parse_head
_read_chunked = read_chunked
_request_bytes = request_bytes
_wait_port = wait_port

PUBLISH_ALLOW = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
SUBSCRIBE_ALLOW = "GET, HEAD, OPTIONS"
STREAM_TYPE = "text/event-stream; charset=utf-8"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "timeout_s(n): deadline of an async test, in seconds")


@pytest.fixture(scope="session", autouse=True)
def built_module():
    if not MODULE.is_file():
        pytest.fail(f"{MODULE} is missing: run `make build` first",
                    pytrace=False)
    return MODULE


# ---------------------------------------------------------------- async tests

@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    marker = pyfuncitem.get_closest_marker("timeout_s")
    deadline = marker.args[0] if marker else 60
    args = {name: pyfuncitem.funcargs[name]
            for name in pyfuncitem._fixtureinfo.argnames}

    async def main():
        try:
            await asyncio.wait_for(pyfuncitem.obj(**args), deadline)
        finally:
            for c in list(OPEN_CLIENTS):
                c.close()
            await asyncio.sleep(0)

    asyncio.run(main())
    return True


# ---------------------------------------------------------------- nginx

CONF_TEMPLATE = """\
load_module {module};

worker_processes {workers};
error_log {d}/error.log info;
pid {d}/nginx.pid;
daemon on;
master_process on;
{user}
{main}

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    {zone}
{http}

    server {{
        listen 127.0.0.1:{sub_port}{listen_opts};
{server}

        # /events/CHANNEL; any byte is captured so that the module judges it
        location ~ (?s)^/events/(?<ch>.+)$ {{
            sse_subscribe;
            sse_channel $ch;
{retry}
{sub}
        }}

        # several channels on one stream: /multi?channels=a,b,c
        location = /multi {{
            sse_subscribe;
            sse_channel $arg_channels split=, unescape;
{retry}
{sub}
        }}
{sub_locations}
    }}

    server {{
        listen 127.0.0.1:{pub_port}{listen_opts};

        location ~ (?s)^/publish/(?<ch>.+)$ {{
            sse_publish;
            sse_channel $ch;
{pub}
        }}

        # /pub?channel=ID
        location = /pub {{
            sse_publish;
            sse_channel $arg_channel;
{pub}
        }}
{pub_locations}
    }}
}}
"""


def render_conf(d, sub_port, pub_port, workers=2, http="", server="", sub="",
                pub="", main="", zone="sse_zone zone=sse:16m;",
                sub_locations="", pub_locations="", reuseport=False,
                retry=3000):
    # sse_retry is on by default here: it also makes the response header
    # go out at once (see test_subscribe.py for the case without it).
    return CONF_TEMPLATE.format(
        module=MODULE, d=d, workers=workers, main=main, zone=zone,
        retry=f"            sse_retry {retry};" if retry is not None else "",
        user="user root;" if os.geteuid() == 0 else "",
        http=http, server=server, sub=sub, pub=pub,
        sub_locations=sub_locations, pub_locations=pub_locations,
        sub_port=sub_port, pub_port=pub_port,
        listen_opts=" reuseport" if reuseport else "")


def nginx_test_config(tmp_path, text):
    """`nginx -t` on a config; returns (ok, output)."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    p = subprocess.run(
        [NGINX_BIN, "-t", "-p", f"{tmp_path}/", "-c", str(conf),
         "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30,
        env=nginx_env(tmp_path))
    reports = sanitizer_reports(tmp_path, p.stdout + p.stderr)
    assert not reports, "\n".join(reports)
    return p.returncode == 0, p.stdout + p.stderr


class Nginx(NginxProcess):
    def __init__(self, d, allow_log=(), **opts):
        super().__init__(d, nworkers=opts.get("workers", 2))
        # allow_log: regexes of error.log lines a test expects (a worker it
        # SIGKILLed, say); only those are spared by the bad-log check.
        self.allow_log = [re.compile(p) for p in allow_log]
        self.sub_port, self.pub_port = free_ports(2)
        self.conf.write_text(render_conf(self.dir, self.sub_port,
                                         self.pub_port, **opts))

    # ---- process control

    def start(self):
        return self.launch((self.sub_port, self.pub_port))

    def reload(self):
        """SIGHUP to the master; returns the old workers' pids once the new
        workers run."""
        old = self.workers()
        os.kill(self.master, signal.SIGHUP)
        self.wait_workers(10, exclude=old)
        return old

    def bad_log_lines(self):
        return [line for line in self.log_text().splitlines()
                if BAD_LOG.search(line) and
                not any(a.search(line) for a in self.allow_log)] + \
            sanitizer_reports(self.dir, self.output)

    def worker_rss_kb(self):
        return sum(rss_kb(p) for p in self.workers())

    def subscriber_conns(self):
        """{worker pid: established connections to the public port}."""
        est = established_inodes(self.sub_port)
        return {p: len(socket_inodes(p) & est) for p in self.workers()}

    def worker_of(self, server_port, client_port, timeout=5):
        """The worker pid holding the connection from client_port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            inode = server_side_inode(server_port, client_port)
            if inode is not None:
                for p in self.workers():
                    if inode in socket_inodes(p):
                        return p
            time.sleep(0.01)
        raise AssertionError(f"no worker holds the connection from port "
                             f"{client_port}")

    async def publisher_on(self, pid, attempts=64):
        """A keepalive publisher connection handled by worker `pid`."""
        for _ in range(attempts):
            ka = await KeepAlive.open(self.pub_port)
            if self.worker_of(self.pub_port, ka.local_port) == pid:
                return ka
            ka.close()
        raise AssertionError(f"no publisher connection landed on {pid}")

    # ---- HTTP

    async def sub_http(self, method, path, **kw):
        return await http(self.sub_port, method, path, **kw)

    async def pub_http(self, method, path, **kw):
        return await http(self.pub_port, method, path, **kw)

    async def publish(self, channel, data, event=None, headers=None,
                      query="", method="POST", **kw):
        """Publishes to /publish/CHANNEL; returns the Response."""
        h = dict(headers or {})
        if event is not None:
            h["SSE-Event"] = event
        path = f"/publish/{channel}" + (f"?{query}" if query else "")
        return await self.pub_http(method, path, headers=h, body=data, **kw)

    async def publish_ok(self, channel, data, **kw):
        """Publishes and checks the 202; returns the event id."""
        r = await self.publish(channel, data, **kw)
        assert r.status == 202, r
        return r.json()["id"]

    async def info(self, channel):
        return await self.pub_http("GET", f"/publish/{channel}")

    async def subscribe(self, path, headers=None, **kw):
        """Opens /events/CHANNEL (or any path starting with '/')."""
        if not path.startswith("/"):
            path = f"/events/{path}"
        return await SSEClient.open(self.sub_port, path, headers=headers,
                                    **kw)

    async def stream(self, path, headers=None, **kw):
        """subscribe() that asserts a 200 event stream."""
        c = await self.subscribe(path, headers=headers, **kw)
        assert c.status == 200, (c.status, c.body)
        return c


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def start_nginx(tmp_path, request):
    """Factory: start_nginx(sub=..., pub=..., http=..., workers=...,
    allow_log=[regex, ...])."""
    started = []

    def start(**opts):
        for attempt in range(3):
            d = tmp_path / f"nginx{len(started)}-{attempt}"
            d.mkdir()
            n = Nginx(d, **opts)
            try:
                n.start()
            except PortTaken:
                if attempt == 2:
                    raise
                continue
            except Exception:
                started.append(n)
                raise
            started.append(n)
            return n

    yield start

    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for n in started:
            lines = [ln for ln in n.log_text().splitlines()
                     if "[notice]" not in ln]
            print(f"--- {n.error_log} (notices left out)")
            print("\n".join(lines[-40:]))
    problems = []
    for n in started:
        if not n.stop():
            problems.append(f"{n.dir}: nginx did not stop within 10 s of "
                            "SIGQUIT")
        bad = n.bad_log_lines()
        if bad:
            problems.append(f"{n.error_log}:\n" + "\n".join(bad[:20]))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def nginx(start_nginx):
    """nginx with the default configuration."""
    return start_nginx()


def epoch_of(event_id):
    return event_id.split("-")[0]


def seq_of(event_id):
    return int(event_id.split("-")[1])


def overload_end(reason, retry="3000"):
    """The blocks that end a stream the server closes itself: one sse-error
    event naming why, then retry:."""
    return [[("event", "sse-error"), ("data", '{"reason":"%s"}' % reason)],
            [("retry", retry)]]


def nginx_built_with(flag):
    """True when `nginx -V` of the nginx under test lists flag (the
    matrix's nginx builds have only the default modules)."""
    v = subprocess.run([NGINX_BIN, "-V"], capture_output=True, text=True)
    return flag in v.stdout + v.stderr
