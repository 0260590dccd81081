"""Helpers for the client-facing tests (streaming publish, gzip, HTTP/2,
real JS clients). Built on conftest's fixtures; nothing here starts a
server of its own except throwaway certificates and node scripts, and every
wait is bounded."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pylib"))
from sselib.client import (Connection, Response,  # noqa: E402
                           SSEClient, parse_head, read_chunked)

JS_DIR = Path(__file__).resolve().parent / "js"
NODE = "/usr/bin/node"


# ---------------------------------------------------------------- stalled

def stalled_subscriber(port, path, headers=None, rcvbuf=2048):
    """A subscriber on a plain socket that sends its request and reads
    nothing until the test does: a small receive buffer, so that the
    server soon owes it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    req = f"GET {path} HTTP/1.1\r\nHost: x\r\n"
    for k, v in (headers or {}).items():
        req += f"{k}: {v}\r\n"
    s.sendall((req + "\r\n").encode())
    return s


# ---------------------------------------------------------------- waiting

async def wait_until(pred, timeout=5, interval=0.02, what="condition"):
    """Awaits until `await pred()` (or pred()) is truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


async def wait_subscribers(n, channel, want, timeout=5):
    """Polls the channel's info until it counts `want` subscribers."""
    async def check():
        r = await n.info(channel)
        return r.status == 200 and r.json()["subscribers"] == want
    await wait_until(check, timeout, 0.03,
                     f"{want} subscribers on {channel!r}")


async def status_json(n, path="/status"):
    r = await n.pub_http("GET", path)
    assert r.status == 200, r
    return r.json()["zones"][0]


# ---------------------------------------------------------------- publish

class StreamPublisher(Connection):
    """A `Content-Type: text/event-stream` POST whose chunked body is sent
    piece by piece: send() writes one HTTP chunk, finish() the last one
    and returns the answer."""

    @classmethod
    async def open(cls, port, path, headers=None,
                   content_type="text/event-stream"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1",
                 "Connection: close", "Transfer-Encoding: chunked",
                 f"Content-Type: {content_type}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        return cls(reader, writer)

    async def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        assert data, "an empty chunk would end the body"
        self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.writer.drain()

    async def finish(self, timeout=10):
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()
        return await self.response(timeout)

    async def response(self, timeout=10):
        """The answer (it may come before the body ends, on a fault)."""
        async def go():
            head = await self.reader.readuntil(b"\r\n\r\n")
            status, hdrs = parse_head(head)
            h = dict(hdrs)
            if "content-length" in h:
                body = await self.reader.readexactly(int(h["content-length"]))
            elif "chunked" in h.get("transfer-encoding", ""):
                body = await read_chunked(self.reader)
            else:
                body = await self.reader.read()
            return Response(status, hdrs, body)
        try:
            return await asyncio.wait_for(go(), timeout)
        finally:
            self.close()


# ---------------------------------------------------------------- raw reads

class RawResponse(Connection):
    """A response read raw: the head parsed, the body as it came on the
    wire (chunk framing included) so that its end can be judged."""

    def __init__(self, reader, writer):
        super().__init__(reader, writer)
        self.status = None
        self.headers = []
        self.wire = b""

    @classmethod
    async def get(cls, port, path, headers=None, method="GET", timeout=10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        c = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        c.status, c.headers = parse_head(head)
        return c

    def header(self, name):
        return dict(self.headers).get(name.lower())

    async def read_until(self, pred, timeout=5):
        """Reads until pred(wire) holds or the peer closes; returns
        whether pred held."""
        deadline = time.monotonic() + timeout
        while not pred(self.wire):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except asyncio.TimeoutError:
                return False
            except (ConnectionError, OSError):
                return pred(self.wire)
            if not data:
                return pred(self.wire)
            self.wire += data
        return True

    async def read_to_last_chunk(self, timeout=5):
        """Reads up to the terminating 0-chunk; True if it came."""
        return await self.read_until(
            lambda w: w.endswith(b"\r\n0\r\n\r\n") or w == b"0\r\n\r\n",
            timeout)

    def dechunk(self):
        """(list of chunk payloads, complete?) of what was read."""
        out, w, i = [], self.wire, 0
        while True:
            j = w.find(b"\r\n", i)
            if j < 0:
                return out, False
            size = int(w[i:j].split(b";")[0], 16)
            if size == 0:
                return out, w[j + 2:j + 4] == b"\r\n"
            out.append(w[j + 2:j + 2 + size])
            if w[j + 2 + size:j + 4 + size] != b"\r\n":
                return out, False
            i = j + 4 + size


class GzipSSEClient(SSEClient):
    """A subscriber that asks for gzip: it de-chunks, inflates each chunk
    as it comes (zlib stream, gzip header) and parses the text."""

    def __init__(self):
        super().__init__()
        self.plain = b""  # everything inflated so far
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)

    @classmethod
    async def open(cls, port, path, headers=None, timeout=10):
        return await super().open(
            port, path, {"Accept-Encoding": "gzip", **(headers or {})},
            timeout=timeout)

    @property
    def wire_chunks(self):
        """The compressed HTTP chunks."""
        return self.chunks

    @property
    def gzip_eof(self):
        return self._z.eof

    def _decode(self, data):
        text = self._z.decompress(data)
        self.plain += text
        return text


# ---------------------------------------------------------------- sockets

def kill_client_connections(port):
    """Destroys (RST) every established client socket connected to
    127.0.0.1:port, as a network failure would; the server side sees a
    reset. Needs ss with kernel SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)."""
    p = subprocess.run(
        ["ss", "-K", "-t", "-n", "state", "established", "dst", "127.0.0.1",
         "dport", "=", str(port)],
        capture_output=True, text=True, timeout=10)
    if p.returncode != 0:
        raise RuntimeError(f"ss -K failed: {p.stderr}")
    # Header line, then one line per socket destroyed.
    return max(0, len(p.stdout.strip().splitlines()) - 1)


def ss_kill_works():
    """True when ss -K can destroy a socket here."""
    import socket
    srv = socket.socket()
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port), timeout=2)
        s, _ = srv.accept()
        try:
            kill_client_connections(port)
            c.settimeout(1)
            try:
                c.recv(1)
            except OSError:
                return True
            return False
        finally:
            c.close()
            s.close()
    except Exception:
        return False
    finally:
        srv.close()


# ---------------------------------------------------------------- node

def run_node(script, config, timeout=60):
    """Runs t/js/SCRIPT with the JSON config as its argument; returns the
    JSON it prints last on stdout. Fails with its stderr otherwise. The
    script runs in a session of its own, so that on a timeout it and
    whatever it started (a browser) are killed together."""
    env = dict(os.environ)
    env["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    env.pop("NODE_OPTIONS", None)
    p = subprocess.Popen([NODE, str(JS_DIR / script), json.dumps(config)],
                         cwd=JS_DIR, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
        raise AssertionError(f"{script} ran over {timeout}s\nstdout: "
                             f"{out[-4000:]}\nstderr: {err[-4000:]}") \
            from None
    # split("\n"), not splitlines(): JSON may hold U+2028 and friends.
    lines = [ln for ln in out.split("\n") if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise AssertionError(f"{script} failed ({p.returncode})\n"
                             f"stdout: {out[-4000:]}\n"
                             f"stderr: {err[-4000:]}")
    return json.loads(lines[-1])


async def run_node_async(script, config, timeout=60):
    return await asyncio.get_running_loop().run_in_executor(
        None, run_node, script, config, timeout)


# ---------------------------------------------------------------- TLS

def make_cert(d):
    """A throwaway self-signed certificate for 127.0.0.1; (cert, key)."""
    d = Path(d)
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30)
    return cert, key


def tls_server(d, http2=False):
    """A TLS listener on a free port with a throwaway certificate, for
    start_nginx(server=...): (its lines, port, certificate file)."""
    from sselib.nginx import free_port
    cert, key = make_cert(d)
    port = free_port()
    return (f"""
        listen 127.0.0.1:{port} ssl{" http2" if http2 else ""};
        ssl_certificate {cert};
        ssl_certificate_key {key};""", port, cert)
