"""Integration fixtures: a real nginx with the built module, per test.

`start_nginx(...)` renders nginx.conf into the test's tmp dir, starts nginx
(master + workers, daemon on), and at teardown stops it by the pid in its pid
file and fails the test if error.log holds an alert, an emerg, a crit or a
sanitizer report. `async def` tests run in their own event loop with a
deadline (`@pytest.mark.timeout_s(N)`, default 60 s).
"""

import asyncio
import inspect
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE = Path(os.environ.get("SSE_MODULE")
              or ROOT / "build" / "ngx_http_sse_module.so")
# Another nginx with the module built for it (make matrix).
NGINX_BIN = os.environ.get("SSE_NGINX_BIN") or "/usr/sbin/nginx"

BAD_LOG = re.compile(
    r"\[(alert|emerg|crit)\]|AddressSanitizer|runtime error|LeakSanitizer")

# ---- sanitizer builds (`make test-asan`)
# SSE_MODULE names the module to load (build-asan/'s, built with ASan and
# UBSan) and SSE_PRELOAD the sanitizer runtime, which must come first in
# nginx's process: it goes into LD_PRELOAD of nginx only, never of python
# or node. ASan writes its reports to DIR/sanitizer.PID (log_path); gcc's
# UBSan ignores log_path and writes to stderr, which is error.log once nginx
# runs and the output of the nginx command before that. A report in any of
# the three fails the test.
SANITIZER_LOG = "sanitizer"
SANITIZER_REPORT = re.compile(r"AddressSanitizer|runtime error|LeakSanitizer")


def nginx_env(d):
    """The environment to start nginx with, its prefix directory being d."""
    env = dict(os.environ)
    preload = os.environ.get("SSE_PRELOAD")
    if preload:
        env["LD_PRELOAD"] = preload
        for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
            env[var] = ":".join(filter(None, (
                env.get(var), f"log_path={d}/{SANITIZER_LOG}")))
    return env


def sanitizer_reports(d, output=""):
    """The first lines of every sanitizer report nginx wrote into d, and the
    lines of a report in `output` (what the nginx command printed)."""
    out = [ln for ln in output.splitlines() if SANITIZER_REPORT.search(ln)]
    for f in sorted(Path(d).glob(f"{SANITIZER_LOG}.*")):
        text = f.read_text(errors="replace").strip()
        if text:
            out.append(f"{f}:")
            out += text.splitlines()[:30]
    return out

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

_OPEN_CLIENTS = set()


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
            for c in list(_OPEN_CLIENTS):
                c.close()
            await asyncio.sleep(0)

    asyncio.run(main())
    return True


# ---------------------------------------------------------------- SSE parsing

class Block:
    """The lines of one blank-line-terminated block of an event stream."""

    __slots__ = ("fields", "comments")

    def __init__(self):
        self.fields = []     # (name, value), in order
        self.comments = []   # text after ':'

    def values(self, name):
        return [v for n, v in self.fields if n == name]

    @property
    def data(self):
        """The event's data as EventSource builds it; None: no data field."""
        d = self.values("data")
        return "\n".join(d) if d else None

    @property
    def id(self):
        v = self.values("id")
        return v[-1] if v else None

    @property
    def event(self):
        v = self.values("event")
        return v[-1] if v else None

    @property
    def retry(self):
        v = self.values("retry")
        return v[-1] if v else None

    @property
    def is_event(self):
        return self.data is not None

    @property
    def is_heartbeat(self):
        return not self.fields and bool(self.comments)

    @property
    def seq(self):
        return int(self.id.split("-")[1])

    def __repr__(self):
        return f"Block(fields={self.fields!r}, comments={self.comments!r})"


_EOL = re.compile(rb"[\r\n]")


class SSEParser:
    """Incremental parser of text/event-stream (WHATWG rules): lines end
    with CRLF, LF or CR, also when a chunk boundary splits a CRLF; a field
    value loses one leading space; ':' starts a comment; a blank line ends
    a block."""

    def __init__(self):
        self._line = bytearray()
        self._skip_lf = False
        self._block = None

    def feed(self, data):
        out = []
        i, n = 0, len(data)
        while i < n:
            if self._skip_lf:
                self._skip_lf = False
                if data[i] == 0x0A:
                    i += 1
                    continue
            m = _EOL.search(data, i)
            if m is None:
                self._line += data[i:]
                break
            j = m.start()
            self._line += data[i:j]
            self._skip_lf = data[j] == 0x0D
            i = j + 1
            self._end_line(out)
        return out

    def _end_line(self, out):
        line = self._line.decode("utf-8", errors="replace")
        self._line.clear()
        if line == "":
            if self._block is not None:
                out.append(self._block)
                self._block = None
            return
        if self._block is None:
            self._block = Block()
        if line.startswith(":"):
            self._block.comments.append(line[1:])
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        self._block.fields.append((name, value))


# ---------------------------------------------------------------- raw HTTP

class StreamEnd(Exception):
    def __init__(self, clean):
        super().__init__("clean end of stream" if clean
                         else "connection closed without end of stream")
        self.clean = clean


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (lower-case name, value)
        self.body = body

    def header(self, name):
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_all(self, name):
        return [v for n, v in self.headers if n == name.lower()]

    @property
    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Response({self.status}, {self.headers!r}, {self.body!r})"


def _request_bytes(method, path, headers, body, chunked, keepalive):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if not keepalive:
        lines.append("Connection: close")
    hdrs = list(headers.items()) if isinstance(headers, dict) else \
        list(headers or [])
    names = {n.lower() for n, _ in hdrs}
    if body is not None:
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif "content-length" not in names:
            lines.append(f"Content-Length: {len(body)}")
    for n, v in hdrs:
        lines.append(f"{n}: {v}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body is None:
        return head
    if isinstance(body, str):
        body = body.encode()
    if chunked:
        out = bytearray(head)
        for i in range(0, len(body), 4096):
            part = body[i:i + 4096]
            out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
        out += b"0\r\n\r\n"
        return bytes(out)
    return head + body


def _parse_head(raw):
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        n, _, v = line.partition(":")
        headers.append((n.strip().lower(), v.strip()))
    return status, headers


async def _read_chunked(reader):
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        assert await reader.readexactly(2) == b"\r\n"


async def http(port, method, path, headers=None, body=None, chunked=False,
               timeout=10):
    """One request on a fresh connection; the whole response."""
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(_request_bytes(method, path, headers, body, chunked,
                                        False))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status, hdrs = _parse_head(head)
            h = dict(hdrs)
            if method == "HEAD" or status in (204, 304):
                data = b""
            elif "chunked" in h.get("transfer-encoding", ""):
                data = await _read_chunked(reader)
            elif "content-length" in h:
                data = await reader.readexactly(int(h["content-length"]))
            else:
                data = await reader.read()
            return Response(status, hdrs, data)
        finally:
            writer.close()
    return await asyncio.wait_for(go(), timeout)


class KeepAlive:
    """Several requests on one connection (responses with Content-Length)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        _OPEN_CLIENTS.add(self)

    @classmethod
    async def open(cls, port):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    @property
    def local_port(self):
        return self.writer.get_extra_info("sockname")[1]

    async def request(self, method, path, headers=None, body=None,
                      timeout=10):
        async def go():
            self.writer.write(_request_bytes(method, path, headers, body,
                                             False, True))
            status, hdrs = _parse_head(
                await self.reader.readuntil(b"\r\n\r\n"))
            n = int(dict(hdrs).get("content-length", 0))
            return Response(status, hdrs, await self.reader.readexactly(n))
        return await asyncio.wait_for(go(), timeout)

    def close(self):
        _OPEN_CLIENTS.discard(self)
        self.writer.transport.abort()


class SSEClient:
    """An event-stream subscriber on a raw connection. A background task
    decodes the chunked body and parses it; `chunks` keeps every HTTP chunk
    (one per write of the server) as received."""

    def __init__(self):
        self.status = None
        self.headers = []
        self.blocks = []
        self.chunks = []
        self.last_id = None
        self.ended = None    # None: open; else StreamEnd
        self._queue = asyncio.Queue()
        self._task = None
        self._reader = self._writer = None
        self.body = b""

    @classmethod
    async def open(cls, port, path, headers=None, method="GET", body=None,
                   timeout=10, rcvbuf=None):
        c = cls()
        sock = None
        if rcvbuf:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(
                sock, ("127.0.0.1", port))
            c._reader, c._writer = await asyncio.open_connection(sock=sock)
        else:
            c._reader, c._writer = await asyncio.open_connection(
                "127.0.0.1", port)
        _OPEN_CLIENTS.add(c)
        c._writer.write(_request_bytes(method, path, headers, body, False,
                                       True))
        head = await asyncio.wait_for(c._reader.readuntil(b"\r\n\r\n"),
                                      timeout)
        c.status, c.headers = _parse_head(head)
        h = dict(c.headers)
        if method == "HEAD" or c.status in (204, 304):
            c.ended = StreamEnd(True)
        elif c.status != 200 or "text/event-stream" not in h.get(
                "content-type", ""):
            # An error: read it whole.
            if "content-length" in h:
                c.body = await asyncio.wait_for(
                    c._reader.readexactly(int(h["content-length"])), timeout)
            elif "chunked" in h.get("transfer-encoding", ""):
                c.body = await asyncio.wait_for(_read_chunked(c._reader),
                                                timeout)
            c.ended = StreamEnd(True)
        else:
            assert "chunked" in h.get("transfer-encoding", ""), c.headers
            c._task = asyncio.ensure_future(c._pump())
        return c

    def header(self, name):
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None

    @property
    def local_port(self):
        return self._writer.get_extra_info("sockname")[1]

    def _decode(self, data):
        """The event-stream bytes of one HTTP chunk (a subclass inflates)."""
        return data

    async def _pump(self):
        parser = SSEParser()
        r = self._reader
        clean = False
        try:
            while True:
                line = await r.readuntil(b"\r\n")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while await r.readuntil(b"\r\n") != b"\r\n":
                        pass
                    clean = True
                    break
                data = await r.readexactly(size)
                if await r.readexactly(2) != b"\r\n":
                    raise AssertionError("bad chunk framing")
                self.chunks.append(data)
                for b in parser.feed(self._decode(data)):
                    self._queue.put_nowait(b)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            clean = False
        self._queue.put_nowait(StreamEnd(clean))

    async def next_block(self, timeout=5):
        """The next block; raises StreamEnd at the end of the stream and
        asyncio.TimeoutError when none comes in time."""
        if self.ended is not None:
            raise self.ended
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, StreamEnd):
            self.ended = item
            raise item
        self.blocks.append(item)
        if item.id is not None:
            self.last_id = item.id
        return item

    async def next_event(self, timeout=5):
        """The next block with data (heartbeats and retry lines skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            b = await self.next_block(max(0.01, deadline - time.monotonic()))
            if b.is_event:
                return b

    async def events(self, n, timeout=10):
        deadline = time.monotonic() + timeout
        return [await self.next_event(max(0.01, deadline - time.monotonic()))
                for _ in range(n)]

    async def until_end(self, timeout=5):
        """Every block up to the end of the stream; `ended` says how."""
        out = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                out.append(await self.next_block(
                    max(0.01, deadline - time.monotonic())))
        except StreamEnd:
            return out

    async def no_block(self, wait):
        """Asserts nothing arrives within `wait` seconds."""
        try:
            b = await self.next_block(wait)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected {b!r}")

    def close(self):
        _OPEN_CLIENTS.discard(self)
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            try:
                self._writer.transport.abort()
            except Exception:
                pass


# ---------------------------------------------------------------- /proc

def proc_children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
    return sorted(out)


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def proc_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def established_inodes(port):
    """Socket inodes of established TCP connections whose local port is
    `port` (the server side of connections to it)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    lport = int(cols[1].rsplit(":", 1)[1], 16)
                    if lport == port and cols[3] == "01":
                        inodes.add(int(cols[9]))
        except OSError:
            pass
    return inodes


def server_side_inode(server_port, client_port):
    """Inode of the server side of the connection from client_port."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    lport = int(cols[1].rsplit(":", 1)[1], 16)
                    rport = int(cols[2].rsplit(":", 1)[1], 16)
                    if lport == server_port and rport == client_port:
                        return int(cols[9])
        except OSError:
            pass
    return None


def socket_inodes(pid):
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


# ---------------------------------------------------------------- nginx

_HANDED_PORTS = set()


def free_port():
    """A free 127.0.0.1 port, never one this process handed out before (the
    kernel may offer a just-closed port again, and two servers of one
    config on one port would merge)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_PORTS:
            _HANDED_PORTS.add(port)
            return port
    raise RuntimeError("no fresh free port")


def free_ports(n):
    """n distinct free ports."""
    return [free_port() for _ in range(n)]


def _wait_port(port, deadline):
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.01)
    return False


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


class PortTaken(RuntimeError):
    pass


class Nginx:
    def __init__(self, d, allow_log=(), **opts):
        # allow_log: regexes of error.log lines a test expects (a worker it
        # SIGKILLed, say); only those are spared by the bad-log check.
        self.allow_log = [re.compile(p) for p in allow_log]
        self.dir = Path(d)
        self.sub_port, self.pub_port = free_ports(2)
        self.nworkers = opts.get("workers", 2)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(render_conf(self.dir, self.sub_port,
                                         self.pub_port, **opts))
        self.error_log = self.dir / "error.log"
        self.master = None
        self.output = ""  # what the nginx command printed

    # ---- process control

    def start(self):
        p = subprocess.run(
            [NGINX_BIN, "-p", f"{self.dir}/", "-c", str(self.conf),
             "-e", str(self.error_log)],
            capture_output=True, text=True, timeout=30,
            env=nginx_env(self.dir))
        self.output = p.stdout + p.stderr
        if p.returncode != 0:
            # A free port can be taken by someone else before nginx binds.
            cls = PortTaken if "Address already in use" in p.stderr + \
                self.log_text() else RuntimeError
            raise cls(f"nginx failed to start: {p.stderr}\n"
                      f"{self.log_text()}")
        deadline = time.monotonic() + 10
        pid_file = self.dir / "nginx.pid"
        while time.monotonic() < deadline:
            try:
                self.master = int(pid_file.read_text().strip())
                break
            except (OSError, ValueError):
                time.sleep(0.02)
        if self.master is None:
            raise RuntimeError("nginx wrote no pid file")
        for port in (self.sub_port, self.pub_port):
            if not _wait_port(port, deadline):
                raise RuntimeError(f"port {port} never accepted")
        self.wait_workers(deadline - time.monotonic())
        return self

    def workers(self):
        """Pids of the current (not shutting down) worker processes."""
        return [p for p in proc_children(self.master)
                if proc_cmdline(p) == "nginx: worker process"]

    def wait_workers(self, timeout=10, exclude=()):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            w = [p for p in self.workers() if p not in exclude]
            if len(w) == self.nworkers:
                return w
            time.sleep(0.02)
        raise RuntimeError(f"workers did not start: {self.workers()}")

    def reload(self):
        """SIGHUP to the master; returns the old workers' pids once the new
        workers run."""
        old = self.workers()
        os.kill(self.master, signal.SIGHUP)
        self.wait_workers(10, exclude=old)
        return old

    def stop(self):
        """Graceful stop; returns False if SIGKILL was needed."""
        if self.master is None or not proc_alive(self.master):
            return True
        procs = [self.master] + proc_children(self.master)
        os.kill(self.master, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not any(proc_alive(p) for p in procs):
                return True
            time.sleep(0.01)
        for p in procs:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return False

    def log_text(self):
        try:
            return self.error_log.read_text(errors="replace")
        except OSError:
            return ""

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
