"""The SSE/HTTP client of the tests and the bench: an incremental
text/event-stream parser (WHATWG rules), one-shot and keep-alive HTTP/1.1
requests on raw asyncio connections, and an event-stream subscriber that
keeps every HTTP chunk as received. Everything it opens is listed in
OPEN_CLIENTS so that a harness can close what a test left open."""

import asyncio
import json
import re
import socket
import time

# Every open client; the harness closes what is left when a test ends.
OPEN_CLIENTS = set()


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

    def last(self, name):
        """The field's last value (EventSource keeps the last); None."""
        v = self.values(name)
        return v[-1] if v else None

    @property
    def id(self):
        return self.last("id")

    @property
    def event(self):
        return self.last("event")

    @property
    def retry(self):
        return self.last("retry")

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


class Headers:
    """header() and header_all() over self.headers, a list of (lower-case
    name, value) in the order received."""

    def header(self, name):
        """The first value of the header `name`, or None."""
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_all(self, name):
        return [v for n, v in self.headers if n == name.lower()]


class Response(Headers):
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (lower-case name, value)
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Response({self.status}, {self.headers!r}, {self.body!r})"


def request_bytes(method, path, headers, body, chunked, keepalive):
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


def parse_head(raw):
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


async def read_chunks(reader):
    """Each chunk of a chunked body as it comes, up to the last chunk (its
    trailers read and skipped)."""
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return
        data = await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise AssertionError("bad chunk framing")
        yield data


async def read_chunked(reader):
    return b"".join([data async for data in read_chunks(reader)])


async def http(port, method, path, headers=None, body=None, chunked=False,
               timeout=10):
    """One request on a fresh connection; the whole response."""
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request_bytes(method, path, headers, body, chunked,
                                        False))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status, hdrs = parse_head(head)
            h = dict(hdrs)
            if method == "HEAD" or status in (204, 304):
                data = b""
            elif "chunked" in h.get("transfer-encoding", ""):
                data = await read_chunked(reader)
            elif "content-length" in h:
                data = await reader.readexactly(int(h["content-length"]))
            else:
                data = await reader.read()
            return Response(status, hdrs, data)
        finally:
            writer.close()
    return await asyncio.wait_for(go(), timeout)


class Connection:
    """A raw connection (asyncio reader and writer), listed in OPEN_CLIENTS
    until closed."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        OPEN_CLIENTS.add(self)

    @property
    def local_port(self):
        return self.writer.get_extra_info("sockname")[1]

    def close(self):
        OPEN_CLIENTS.discard(self)
        try:
            self.writer.transport.abort()
        except Exception:
            pass


class KeepAlive(Connection):
    """Several requests on one connection (responses with Content-Length)."""

    @classmethod
    async def open(cls, port):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def request(self, method, path, headers=None, body=None,
                      timeout=10):
        async def go():
            self.writer.write(request_bytes(method, path, headers, body,
                                             False, True))
            status, hdrs = parse_head(
                await self.reader.readuntil(b"\r\n\r\n"))
            n = int(dict(hdrs).get("content-length", 0))
            return Response(status, hdrs, await self.reader.readexactly(n))
        return await asyncio.wait_for(go(), timeout)


class SSEClient(Headers):
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
        OPEN_CLIENTS.add(c)
        c._writer.write(request_bytes(method, path, headers, body, False,
                                       True))
        head = await asyncio.wait_for(c._reader.readuntil(b"\r\n\r\n"),
                                      timeout)
        c.status, c.headers = parse_head(head)
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
                c.body = await asyncio.wait_for(read_chunked(c._reader),
                                                timeout)
            c.ended = StreamEnd(True)
        else:
            assert "chunked" in h.get("transfer-encoding", ""), c.headers
            c._task = asyncio.ensure_future(c._pump())
        return c

    @property
    def local_port(self):
        return self._writer.get_extra_info("sockname")[1]

    def _decode(self, data):
        """The event-stream bytes of one HTTP chunk (a subclass inflates)."""
        return data

    async def _pump(self):
        parser = SSEParser()
        try:
            async for data in read_chunks(self._reader):
                self.chunks.append(data)
                for b in parser.feed(self._decode(data)):
                    self._queue.put_nowait(b)
            clean = True
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
        OPEN_CLIENTS.discard(self)
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            try:
                self._writer.transport.abort()
            except Exception:
                pass
