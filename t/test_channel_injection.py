"""Channel injection (issue 8): the channel a request reaches is exactly what
the configuration wrote. A value is one id, byte for byte: never decoded a
second time, never split unless the location says `split=SEP`, decoded once
(after splitting) only with `unescape`; what auth_request checked is the id
used."""

import pytest

from conftest import nginx_test_config, render_conf

BAD_CHAR = (b"invalid channel: channel id may only contain "
            b"A-Z a-z 0-9 _ . : @ ~ - /\n")
BAD_ESCAPE = b"invalid channel: malformed %-escape in channel id\n"

LOCATIONS = r"""
        location ~ ^/v/(?<uid>[^/,]+)$ {
            sse_subscribe;
            sse_channel user:$uid;
        }
        location = /q {
            sse_subscribe;
            sse_channel user:$arg_id;
        }
        location = /qu {
            sse_subscribe;
            sse_channel user:$arg_id unescape;
        }
        location = /two {
            sse_subscribe;
            sse_channel user:$arg_id news;
        }
        location = /semi {
            sse_subscribe;
            sse_channel $arg_ids "split=;" unescape;
        }
        # A deny-list check: it must see the id that will be used.
        location ~ ^/guarded/(?<uid>[^/]+)$ {
            auth_request /auth-not-admin;
            sse_subscribe;
            sse_channel user:$uid;
        }
        location = /auth-not-admin {
            internal;
            if ($uid = admin) {
                return 403;
            }
            return 204;
        }
        # An allow-list check on the same variable the channel is made of.
        location ~ ^/alice/(?<uid>[^/]+)$ {
            auth_request /auth-alice;
            sse_subscribe;
            sse_channel user:$uid;
        }
        location = /auth-alice {
            internal;
            if ($uid != alice) {
                return 403;
            }
            return 204;
        }
"""


@pytest.fixture
def n(start_nginx):
    return start_nginx(sub_locations=LOCATIONS)


async def assert_refused(n, path, status=400, body=BAD_CHAR):
    """The subscribe is refused and no channel gained a subscriber."""
    c = await n.subscribe(path)
    try:
        assert c.status == status, (path, c.status, c.body)
        if body is not None:
            assert c.body == body, (path, c.body)
    finally:
        c.close()
    for ch in ("admin", "user:admin", "user:x"):
        r = await n.publish(ch, "probe")
        assert r.status == 202, r
        assert r.json()["subscribers"] == 0, (path, ch)


# Each of these subscribed to `admin` (or `user:admin`) before the fix.
INJECTIONS = [
    "/v/x%252Cadmin",          # $uid = "x%2Cadmin": decoded, then split
    "/q?id=x,admin",           # $arg_id split on its comma
    "/q?id=x%2Cadmin",         # $arg_id decoded, then split
    "/v/%2561dmin",            # $uid = "%61dmin": decoded a second time
    "/q?id=%61dmin",           # $arg_id decoded without `unescape`
    "/qu?id=%2561dmin",        # `unescape` decodes once, never twice
    "/qu?id=x%2Cadmin",        # a decoded comma is not a separator
    "/qu?id=x,admin",          # no split= here: one id with a comma
    "/multi?channels=x%2Cadmin",   # split=, unescape: split first
    "/multi?channels=%2561dmin",
]


@pytest.mark.parametrize("path", INJECTIONS)
async def test_a_variable_never_adds_or_rewrites_a_channel(n, path):
    await assert_refused(n, path)


async def test_auth_request_sees_the_id_used_deny_list(n):
    # auth_request sees $uid = "%61dmin" and lets it through; the channel
    # must then be "user:%61dmin" (invalid), never "user:admin".
    await assert_refused(n, "/guarded/%2561dmin")
    await assert_refused(n, "/guarded/admin", status=403, body=None)
    # nginx decodes the path once: auth_request and the channel both see
    # "admin".
    await assert_refused(n, "/guarded/%61dmin", status=403, body=None)
    c = await n.stream("/guarded/bob")
    eid = await n.publish_ok("user:bob", "hi bob")
    ev = await c.next_event()
    assert (ev.id, ev.data) == (eid, "hi bob")


async def test_auth_request_sees_the_id_used_allow_list(n):
    for path in ("/alice/alice", "/alice/%61lice"):
        c = await n.stream(path)
        eid = await n.publish_ok("user:alice", path)
        ev = await c.next_event()
        assert (ev.id, ev.data) == (eid, path)
        c.close()
    # "%61lice" is not alice to auth_request, so no stream at all.
    await assert_refused(n, "/alice/%2561lice", status=403, body=None)


async def test_exact_value_reaches_its_one_channel(n):
    c = await n.stream("/q?id=x")
    r = await n.publish("user:x", "only")
    assert r.json()["subscribers"] == 1
    assert (await c.next_event()).data == "only"


async def test_unescape_decodes_once(n):
    c = await n.stream("/qu?id=%61dmin")   # user:admin, decoded once
    eid = await n.publish_ok("user:admin", "ok")
    assert (await c.next_event()).id == eid


async def test_malformed_escape_with_unescape_is_400(n):
    for path in ("/qu?id=a%zz", "/qu?id=a%4", "/multi?channels=ok,a%"):
        await assert_refused(n, path, body=BAD_ESCAPE)


async def test_several_arguments_are_several_channels(n):
    c = await n.stream("/two?id=x")
    a = await n.publish_ok("news", "1")
    b = await n.publish_ok("user:x", "2")
    assert [e.id for e in await c.events(2)] == [a, b]


async def test_split_on_another_separator(n):
    c = await n.stream("/semi?ids=s1;s%3A2")
    a = await n.publish_ok("s1", "1")
    b = await n.publish_ok("s:2", "2")
    assert [e.id for e in await c.events(2)] == [a, b]
    await assert_refused(n, "/semi?ids=s1,s2")


async def test_split_unescape_list_keeps_working(n):
    c = await n.stream("/multi?channels=esc%3Aa,esc%2Fb,esc%3Aa")
    a = await n.publish_ok("esc:a", "1")
    b = await n.publish_ok("esc/b", "2")
    assert [e.id for e in await c.events(2)] == [a, b]


async def test_publisher_value_is_one_channel(n):
    # /pub has `sse_channel $arg_channel;`: no split, no decoding.
    for q in ("a,b", "a%2Cb", "%61"):
        r = await n.pub_http("POST", f"/pub?channel={q}", body=b"x")
        assert r.status == 400, (q, r)
        assert r.body == BAD_CHAR
    for ch in ("a", "b"):
        assert (await n.info(ch)).status == 404


# ---- nginx -t

def conf_with(tmp_path, body):
    return render_conf(tmp_path, 1, 2, retry=None,
                       sub_locations=f"\n        location = /c {{ {body} }}")


CONFIG_ERRORS = [
    ("sse_subscribe; sse_channel a,b;",
     'invalid value "a,b" in "sse_channel" directive, channel id may only '
     "contain"),
    ("sse_subscribe; sse_channel a%2Cb;",
     'invalid value "a%2Cb" in "sse_channel" directive, channel id may only '
     "contain"),
    ("sse_subscribe; sse_channel a,,b split=,;",
     'invalid value "a,,b" in "sse_channel" directive, empty channel id'),
    ("sse_subscribe; sse_channel a%zz unescape;",
     'invalid value "a%zz" in "sse_channel" directive, malformed %-escape'),
    ("sse_subscribe; sse_channel %2561 unescape;",
     'invalid value "%2561" in "sse_channel" directive, channel id may only '
     "contain"),
    ("sse_subscribe; sse_channel $arg_c split=;",
     'invalid value "split=" in "sse_channel" directive, the separator must '
     "be a single byte"),
    ("sse_subscribe; sse_channel $arg_c split=ab;",
     'invalid value "split=ab" in "sse_channel" directive, the separator '
     "must be a single byte"),
    ('sse_subscribe; sse_channel $arg_c split=, "split=;";',
     'invalid value "split=;" in "sse_channel" directive, split= is '
     "duplicate"),
    ("sse_subscribe; sse_channel $arg_c unescape unescape;",
     'invalid value "unescape" in "sse_channel" directive, it is duplicate'),
    ("sse_subscribe; sse_channel a \"\";",
     'invalid value "" in "sse_channel" directive, it is empty'),
    ("sse_publish; sse_channel a b;",
     '"sse_channel" takes one value where "sse_publish" is'),
    ("sse_subscribe; sse_channel "
     + ",".join(f"c{i}" for i in range(65)) + " split=,;",
     'invalid value "' + ",".join(f"c{i}" for i in range(65))
     + '" in "sse_channel" directive, more than 64 channels'),
    ("sse_subscribe; sse_channel "
     + " ".join(f"c{i}" for i in range(65)) + ";",
     '"sse_channel" directive names more than 64 channels'),
]


@pytest.mark.parametrize("body,message", CONFIG_ERRORS,
                         ids=[b[:50] for b, _ in CONFIG_ERRORS])
def test_bad_constant_channel_fails_nginx_t(tmp_path, body, message):
    ok, out = nginx_test_config(tmp_path, conf_with(tmp_path, body))
    assert not ok, out
    assert f"[emerg] {message}" in out, out
    assert f"{tmp_path}/nginx.conf:" in out, out


CONFIG_OK = [
    "sse_subscribe; sse_channel a,b split=,;",
    "sse_subscribe; sse_channel a%3Ab unescape;",
    "sse_subscribe; sse_channel user:$arg_id news;",
    "sse_subscribe; sse_channel $arg_c unescape split=,;",
    "sse_subscribe; sse_channel unescape;",       # first argument: a value
    "sse_publish; sse_channel $arg_c unescape;",
]


@pytest.mark.parametrize("body", CONFIG_OK)
def test_channel_options_pass_nginx_t(tmp_path, body):
    ok, out = nginx_test_config(tmp_path, conf_with(tmp_path, body))
    assert ok, out
