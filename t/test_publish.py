"""Publishing: the 202, event types, data lines, channel info and delete."""

import re

import pytest

from conftest import (PUBLISH_ALLOW, SSEParser, epoch_of, nginx_built_with,
                      overload_end, seq_of)

ID_RE = re.compile(r"^[0-9]+-[0-9]+$")


async def test_publish_answers_202_json(nginx):
    r = await nginx.publish("p1", "hello")
    assert r.status == 202
    assert r.header("content-type") == "application/json"
    j = r.json()
    assert set(j) == {"channel", "id", "subscribers"}
    assert j["channel"] == "p1"
    assert ID_RE.match(j["id"]), j
    assert j["subscribers"] == 0


async def test_put_publishes_like_post(nginx):
    c = await nginx.stream("put")
    r = await nginx.publish("put", "by put", method="PUT")
    assert r.status == 202
    b = await c.next_event()
    assert (b.id, b.data) == (r.json()["id"], "by put")


async def test_ids_share_one_epoch_and_grow_across_channels(nginx):
    ids = [await nginx.publish_ok(ch, "x") for ch in ("a", "b", "a", "c")]
    assert len({epoch_of(i) for i in ids}) == 1
    seqs = [seq_of(i) for i in ids]
    assert seqs == list(range(seqs[0], seqs[0] + 4))


async def test_publish_counts_subscribers(nginx):
    cs = [await nginx.stream("cnt") for _ in range(3)]
    r = await nginx.publish("cnt", "x")
    assert r.json()["subscribers"] == 3
    for c in cs:
        assert (await c.next_event()).data == "x"


async def test_event_type_from_header(nginx):
    c = await nginx.stream("ev")
    eid = await nginx.publish_ok("ev", "d", event="chat")
    b = await c.next_event()
    assert b.fields == [("id", eid), ("event", "chat"), ("data", "d")]


async def test_event_type_from_arg_is_unescaped(nginx):
    c = await nginx.stream("ev")
    eid = await nginx.publish_ok("ev", "d", query="event=chat%20msg")
    b = await c.next_event()
    assert b.fields == [("id", eid), ("event", "chat msg"), ("data", "d")]


async def test_event_header_wins_over_arg(nginx):
    c = await nginx.stream("ev")
    await nginx.publish_ok("ev", "d", event="hdr", query="event=arg")
    assert (await c.next_event()).event == "hdr"


async def test_no_event_type_means_no_event_field(nginx):
    c = await nginx.stream("ev")
    eid = await nginx.publish_ok("ev", "plain")
    b = await c.next_event()
    assert b.fields == [("id", eid), ("data", "plain")]
    assert c.chunks[-1] == f"id: {eid}\ndata: plain\n\n".encode()


async def test_event_name_with_colon_and_spaces_is_one_field(nginx):
    c = await nginx.stream("ev")
    eid = await nginx.publish_ok("ev", "d", event="a: b c")
    b = await c.next_event()
    assert b.fields == [("id", eid), ("event", "a: b c"), ("data", "d")]


# (published data, the data: lines expected)
DATA_CASES = [
    ("one line", ["one line"]),
    ("a\nb", ["a", "b"]),
    ("a\rb", ["a", "b"]),
    ("a\r\nb", ["a", "b"]),
    ("a\n\nb", ["a", "", "b"]),
    ("a\r\rb", ["a", "", "b"]),
    ("a\r\n\r\nb", ["a", "", "b"]),
    ("a\r\r\nb", ["a", "", "b"]),
    ("a\n\rb", ["a", "", "b"]),
    ("a\r\n\nb", ["a", "", "b"]),
    ("x\r", ["x", ""]),
    ("x\n", ["x", ""]),
    ("x\r\n", ["x", ""]),
    ("\n", ["", ""]),
    ("\r\n\r", ["", "", ""]),
    ("", [""]),
    ("a\rb\r\nc\nd\n\re", ["a", "b", "c", "d", "", "e"]),
    (" leading space", [" leading space"]),
    ("  two", ["  two"]),
    (": not a comment", [": not a comment"]),
    ("data: nested", ["data: nested"]),
    ("id: 1", ["id: 1"]),
    ("tab\there", ["tab\there"]),
    ("héllo ✓ 日本", ["héllo ✓ 日本"]),
]


def normalised(data):
    return data.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("data,lines", DATA_CASES,
                         ids=[repr(d) for d, _ in DATA_CASES])
async def test_data_lines(nginx, data, lines):
    c = await nginx.stream("lines")
    eid = await nginx.publish_ok("lines", data.encode())
    b = await c.next_event()
    assert b.fields == [("id", eid)] + [("data", ln) for ln in lines]
    assert b.data == normalised(data)
    wire = f"id: {eid}\n" + "".join(f"data: {ln}\n" for ln in lines) + "\n"
    assert c.chunks[-1] == wire.encode()


FORGERIES = [
    "x\n\nid: 999\nevent: evil\ndata: y",
    "x\r\rid: 999\r\revent: evil\r\rdata: y\r\r",
    "x\r\n\r\nid: 999\r\nretry: 1\r\n\r\n",
    "\n\nevent: evil\ndata: z\n\n",
    "\r\n\r\n:comment\r\n\r\n",
    "x\n\n\n\n\ndata: y\n\n",
]


@pytest.mark.parametrize("data", FORGERIES, ids=repr)
async def test_data_cannot_forge_fields_or_events(nginx, data):
    c = await nginx.stream("forge")
    eid = await nginx.publish_ok("forge", data)
    end = await nginx.publish_ok("forge", "sentinel")
    b = await c.next_event()
    assert b.id == eid
    assert b.data == normalised(data)
    assert {name for name, _ in b.fields} == {"id", "data"}
    assert b.event is None and b.retry is None and not b.comments
    # The very next block is the sentinel: nothing was injected between.
    nxt = await c.next_block()
    assert (nxt.id, nxt.data) == (end, "sentinel")
    assert [blk.retry for blk in c.blocks] == ["3000", None, None]


async def test_many_lines(nginx):
    c = await nginx.stream("many")
    data = "\n".join(f"line {i}" for i in range(2000))
    eid = await nginx.publish_ok("many", data)
    b = await c.next_event()
    assert (b.id, b.data) == (eid, data)
    assert len(b.values("data")) == 2000


@pytest.mark.parametrize("size", [16 * 1024 + 1, 63 * 1024, 64 * 1024])
async def test_large_body_arrives_intact(nginx, size):
    # Over client_body_buffer_size the body is read from a temp file.
    c = await nginx.stream("big")
    data = bytes(ord("a") + i % 26 for i in range(size))
    eid = await nginx.publish_ok("big", data)
    b = await c.next_event(timeout=10)
    assert (b.id, b.data) == (eid, data.decode())


async def test_chunked_body(nginx):
    c = await nginx.stream("chunked")
    data = "x" * 10000 + "\n" + "y" * 10000
    r = await nginx.publish("chunked", data, chunked=True)
    assert r.status == 202, r
    b = await c.next_event()
    assert (b.id, b.data) == (r.json()["id"], data)


async def test_channel_info(nginx):
    ids = [await nginx.publish_ok("info", str(i)) for i in range(3)]
    c = await nginx.stream("info")
    r = await nginx.info("info")
    assert r.status == 200
    assert r.header("content-type") == "application/json"
    assert r.json() == {"channel": "info", "messages": 3, "subscribers": 1,
                        "published": 3, "first_id": ids[0],
                        "last_id": ids[2]}
    c.close()


async def test_channel_info_of_a_channel_with_no_messages(nginx):
    await nginx.stream("empty")
    r = await nginx.info("empty")
    assert r.status == 200
    assert r.json() == {"channel": "empty", "messages": 0, "subscribers": 1,
                        "published": 0, "first_id": None, "last_id": None}


async def test_channel_info_404(nginx):
    r = await nginx.info("nobody-here")
    assert r.status == 404
    assert r.body == b"no such channel\n"


async def test_head_on_publisher_is_info_without_body(nginx):
    await nginx.publish_ok("hd", "x")
    r = await nginx.pub_http("HEAD", "/publish/hd")
    assert r.status == 200
    assert r.header("content-type") == "application/json"
    assert r.body == b""


async def test_delete_ends_streams_cleanly(nginx):
    cs = [await nginx.stream("del") for _ in range(3)]
    multi = await nginx.stream("/multi?channels=other,del")
    bystander = await nginx.stream("other")
    await nginx.publish_ok("del", "before")
    for c in cs + [multi]:
        assert (await c.next_event()).data == "before"
    r = await nginx.pub_http("DELETE", "/publish/del")
    assert r.status == 200
    assert r.header("content-type") == "application/json"
    assert r.json() == {"channel": "del", "deleted": True, "subscribers": 4}
    for c in cs + [multi]:
        rest = await c.until_end(timeout=5)
        assert [b.fields for b in rest] == overload_end("deleted")
        assert c.ended.clean
        assert c.chunks[-1].endswith(b"retry: 3000\n\n")
    # Other channels go on.
    eid = await nginx.publish_ok("other", "still")
    b = await bystander.next_event()
    assert (b.id, b.data) == (eid, "still")
    assert (await nginx.info("del")).status == 404


async def test_delete_absent_404(nginx):
    r = await nginx.pub_http("DELETE", "/publish/never")
    assert r.status == 404
    assert r.body == b"no such channel\n"


async def test_delete_then_publish_starts_a_new_channel(nginx):
    await nginx.publish_ok("again", "1")
    await nginx.publish_ok("again", "2")
    assert (await nginx.pub_http("DELETE", "/publish/again")).status == 200
    eid = await nginx.publish_ok("again", "3")
    j = (await nginx.info("again")).json()
    assert (j["messages"], j["published"]) == (1, 1)
    assert j["first_id"] == j["last_id"] == eid


async def test_publisher_options(nginx):
    r = await nginx.pub_http("OPTIONS", "/publish/o")
    assert r.status == 204
    assert r.header("allow") == PUBLISH_ALLOW


@pytest.mark.parametrize("method", ["PATCH", "FOO"])
async def test_publisher_405(nginx, method):
    r = await nginx.pub_http(method, "/publish/m", body=b"x")
    assert r.status == 405
    assert r.header("allow") == PUBLISH_ALLOW
    assert r.body == b"method not allowed here\n"
    assert (await nginx.info("m")).status == 404


@pytest.mark.parametrize("size,status", [(1024, 202), (1025, 413)])
@pytest.mark.parametrize("chunked", [False, True])
async def test_max_message_size(start_nginx, size, status, chunked):
    n = start_nginx(pub="sse_max_message_size 1k;")
    r = await n.publish("sz", b"x" * size, chunked=chunked)
    assert r.status == status, r
    if status == 413:
        assert r.body == b"message larger than sse_max_message_size\n"
        assert (await n.info("sz")).status == 404


@pytest.mark.parametrize("size,status", [(65536, 202), (65537, 413)])
async def test_default_max_message_size_is_64k(nginx, size, status):
    r = await nginx.publish("sz", b"x" * size)
    assert r.status == status, r


EVENT_NAME_ERRORS = ["a%0Ab", "a%0Db", "a%00b", "%0A", "x" * 256]


@pytest.mark.parametrize("arg", EVENT_NAME_ERRORS,
                         ids=lambda a: a if len(a) < 20 else "256-bytes")
async def test_bad_event_name_400(nginx, arg):
    c = await nginx.stream("evn")
    r = await nginx.publish("evn", "d", query=f"event={arg}")
    assert r.status == 400
    assert r.body == (b"invalid event name: it may not contain CR, LF or NUL, "
                      b"nor exceed 255 bytes\n")
    j = (await nginx.info("evn")).json()
    assert j["published"] == 0
    assert (await c.next_block()).retry == "3000"
    await c.no_block(0.3)


async def test_event_name_of_255_bytes(nginx):
    c = await nginx.stream("evn")
    eid = await nginx.publish_ok("evn", "d", event="e" * 255)
    assert (await c.next_event()).fields == [("id", eid), ("event", "e" * 255),
                                             ("data", "d")]


async def test_publish_to_several_channels_400(start_nginx):
    nginx = start_nginx(pub_locations="""
        location = /pubsplit {
            sse_publish;
            sse_channel $arg_channel split=,;
        }""")
    r = await nginx.pub_http("POST", "/pubsplit?channel=a,b", body=b"x")
    assert r.status == 400
    assert r.body == b"invalid channel: publish to one channel at a time\n"
    # Without split= the comma is a bad byte of one id.
    r = await nginx.pub_http("POST", "/pub?channel=a,b", body=b"x")
    assert r.status == 400
    assert r.body.startswith(b"invalid channel: channel id may only contain")
    assert (await nginx.info("a")).status == 404
    assert (await nginx.pub_http("POST", "/pubsplit?channel=a,a",
                                 body=b"x")).status == 202


async def test_parser_splits_crlf_across_chunks():
    # The client parser used by every test: CRLF cut between two reads.
    p = SSEParser()
    out = p.feed(b"id: 1\r")
    out += p.feed(b"\ndata: a\r")
    out += p.feed(b"\n\r")
    out += p.feed(b"\n")
    assert len(out) == 1
    assert out[0].fields == [("id", "1"), ("data", "a")]


@pytest.mark.skipif(not nginx_built_with("--with-debug"),
                    reason="this nginx is built without --with-debug")
async def test_publish_refusals_are_logged_at_debug(start_nginx):
    # Debian's nginx is built --with-debug: "error_log FILE debug" in the
    # publisher location shows why each publish was refused.
    n = start_nginx(pub="error_log pub-debug.log debug; "
                        "sse_max_message_size 1k;")
    refusals = [
        (dict(method="PATCH", path="/publish/dbg"), 405,
         "sse publish refused: 405 method PATCH"),
        (dict(method="POST", path="/publish/dbg", body=b"x" * 2000), 413,
         "sse publish refused: 413 message larger than sse_max_message_size"),
        (dict(method="POST", path="/publish/dbg?event=a%0Ab", body=b"x"),
         400, "sse publish refused: 400 invalid event name"),
        (dict(method="GET", path="/publish/none"), 404,
         "sse publish refused: 404 no such channel"),
        (dict(method="POST", path="/publish/a%20b", body=b"x"), 400,
         "sse: invalid channel: channel id may only contain"),
    ]
    for req, status, _ in refusals:
        r = await n.pub_http(req.pop("method"), req.pop("path"), **req)
        assert r.status == status, r
    log = (n.dir / "pub-debug.log").read_text(errors="replace")
    for _, _, line in refusals:
        assert line in log, line
