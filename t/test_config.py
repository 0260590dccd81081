"""Configuration: wrong values fail `nginx -t` in nginx's own words."""

import re

import pytest

from conftest import nginx_test_config, render_conf


def conf(tmp_path, **opts):
    opts.setdefault("retry", None)
    return render_conf(tmp_path, 1, 2, **opts)


# nginx's own slots parse numbers, sizes and times, in nginx's words.
def not_num(directive):
    return f'"{directive}" directive invalid number'


def not_value(directive):
    return f'"{directive}" directive invalid value'


def num_msg(lo, hi):
    return f"value must be between {lo} and {hi}"


def size_msg(value, directive, lo, hi):
    return (f'invalid value "{value}" in "{directive}" directive, '
            f"it must be a size from {lo} to {hi} bytes")


def time_msg(value, directive, off_ok):
    why = ('it must be a positive time or "off"' if off_ok
           else "it must be a positive time")
    return f'invalid value "{value}" in "{directive}" directive, {why}'


def retry_msg(value):
    return (f'invalid value "{value}" in "sse_retry" directive, it must be '
            'a time up to 24h (a bare number is milliseconds) or "off"')


def wait_msg(value):
    return (f'invalid value "{value}" in "sse_publish_wait" directive, it '
            'must be a time from 1ms to 60s or "off"')


INVALID_VALUES = [
    ("sse_buffer_length", "0", num_msg(1, 1000000)),
    ("sse_buffer_length", "1000001", num_msg(1, 1000000)),
    ("sse_buffer_length", "x", not_num("sse_buffer_length")),
    ("sse_buffer_length", "-1", not_num("sse_buffer_length")),
    ("sse_message_ttl", "off", not_value("sse_message_ttl")),
    ("sse_message_ttl", "0", time_msg("0", "sse_message_ttl", False)),
    ("sse_message_ttl", "soon", not_value("sse_message_ttl")),
    ("sse_heartbeat", "0", time_msg("0", "sse_heartbeat", True)),
    ("sse_heartbeat", "0s", time_msg("0s", "sse_heartbeat", True)),
    ("sse_heartbeat", "1x", not_value("sse_heartbeat")),
    ("sse_publish_wait", "0", wait_msg("0")),
    ("sse_publish_wait", "61s", wait_msg("61s")),
    ("sse_publish_wait", "soon", not_value("sse_publish_wait")),
    ("sse_retry", "x", not_value("sse_retry")),
    ("sse_retry", "3q", not_value("sse_retry")),
    ("sse_retry", "86400001", retry_msg("86400001")),
    ("sse_retry", "25h", retry_msg("25h")),
    ("sse_retry", "-1", not_value("sse_retry")),
    ("sse_initial_events", "-1", not_num("sse_initial_events")),
    ("sse_initial_events", "1000001", num_msg(0, 1000000)),
    ("sse_initial_events", "ten", not_num("sse_initial_events")),
    ("sse_max_message_size", "0",
     size_msg("0", "sse_max_message_size", 1, 268435456)),
    ("sse_max_message_size", "300m",
     size_msg("300m", "sse_max_message_size", 1, 268435456)),
    ("sse_max_message_size", "big", not_value("sse_max_message_size")),
    ("sse_max_pending", "100",
     size_msg("100", "sse_max_pending", 1024, 2147483647)),
    ("sse_max_pending", "1q", not_value("sse_max_pending")),
    ("sse_max_subscribers", "-1", not_num("sse_max_subscribers")),
    ("sse_max_subscribers", "many", not_num("sse_max_subscribers")),
    ("sse_stream_timeout", "0", time_msg("0", "sse_stream_timeout", True)),
    ("sse_stream_timeout", "forever", not_value("sse_stream_timeout")),
]


@pytest.mark.parametrize(
    "directive,value,message", INVALID_VALUES,
    ids=[f"{d}={v}" for d, v, _ in INVALID_VALUES])
@pytest.mark.parametrize("level", ["http", "location"])
def test_invalid_value_fails_nginx_t(tmp_path, directive, value, message,
                                     level):
    line = f"{directive} {value};"
    opts = {"http": line} if level == "http" else {"sub": line}
    ok, out = nginx_test_config(tmp_path, conf(tmp_path, **opts))
    assert not ok, out
    assert f"[emerg] {message} in {tmp_path}/nginx.conf:" in out, out


VALID_VALUES = [
    "sse_buffer_length 1;", "sse_buffer_length 1000000;",
    "sse_message_ttl 1h30m;", "sse_message_ttl 500ms;",
    "sse_heartbeat off;", "sse_heartbeat 15s;",
    "sse_last_event_id $http_x_resume;",
    'sse_last_event_id "";',            # no resume point at all
    "sse_allow_origin $http_origin;", 'sse_allow_origin "";',
    "sse_initial_events 0;", "sse_initial_events 1000000;",
    "sse_max_message_size 1;", "sse_max_message_size 256m;",
    "sse_max_pending 1k;", "sse_max_pending 1m;",
    "sse_max_subscribers 0;", "sse_max_subscribers 100000000;",
    "sse_stream_timeout off;", "sse_stream_timeout 1d;",
    "sse_publish_wait off;", "sse_publish_wait 1ms;", "sse_publish_wait 60s;",
]


@pytest.mark.parametrize("line", VALID_VALUES)
def test_valid_value_passes_nginx_t(tmp_path, line):
    ok, out = nginx_test_config(tmp_path, conf(tmp_path, http=line))
    assert ok, out
    assert "test is successful" in out


@pytest.mark.parametrize("retry", ["0", "86400000", "off", "3s", "1500ms",
                                   "1m30s", "24h", "0s"])
def test_sse_retry_takes_ms_a_time_or_off(tmp_path, retry):
    ok, out = nginx_test_config(tmp_path, conf(tmp_path, retry=retry))
    assert ok, out


@pytest.mark.parametrize("retry,line", [("3s", "retry: 3000"),
                                        ("3000", "retry: 3000"),
                                        ("1m30s", "retry: 90000"),
                                        ("250ms", "retry: 250")])
async def test_sse_retry_time_is_sent_in_ms(start_nginx, retry, line):
    n = start_nginx(retry=retry)
    c = await n.stream("r")
    assert (await c.next_block()).retry == line.split(" ")[1]


@pytest.mark.parametrize("line", ["sse_retry off; sse_retry 5;",
                                  "sse_retry 5; sse_retry 5s;",
                                  "sse_heartbeat off; sse_heartbeat 5s;",
                                  "sse_heartbeat 5s; sse_heartbeat off;",
                                  "sse_buffer_length 1; sse_buffer_length 2;",
                                  "sse_allow_origin a; sse_allow_origin b;"])
def test_duplicates_fail_nginx_t(tmp_path, line):
    ok, out = nginx_test_config(tmp_path, conf(tmp_path, http=line))
    assert not ok, out
    assert "directive is duplicate" in out, out


def test_every_directive_at_once_passes(tmp_path):
    everything = """
        sse_buffer_length 10;
        sse_message_ttl 10m;
        sse_heartbeat 5s;
        sse_last_event_id $arg_from;
        sse_initial_events 3;
        sse_max_message_size 8k;
        sse_max_pending 256k;
        sse_max_subscribers 100;
        sse_stream_timeout 1h;
    """
    ok, out = nginx_test_config(
        tmp_path, conf(tmp_path, server=everything, sub="sse_heartbeat off;"))
    assert ok, out


ZONE_ERRORS = [
    ("sse_zone zone=sse;",
     'invalid value "zone=sse" in "sse_zone" directive, '
     "expected zone=NAME:SIZE"),
    ("sse_zone sse:16m;",
     'invalid value "sse:16m" in "sse_zone" directive, '
     "expected zone=NAME:SIZE"),
    ("sse_zone zone=:16m;",
     'invalid value "zone=:16m" in "sse_zone" directive, '
     "expected zone=NAME:SIZE"),
    ("sse_zone zone=sse:lots;",
     'invalid value "zone=sse:lots" in "sse_zone" directive, '
     'invalid zone size "lots"'),
    ("sse_zone zone=sse:;",
     'invalid value "zone=sse:" in "sse_zone" directive, '
     'invalid zone size ""'),
    ("sse_zone zone=sse:1k;", 'zone "sse" is too small, it must be at least'),
    # nginx takes 8 pages; the zone's own tables leave that no room.
    ("sse_zone zone=sse:40k;",
     'zone "sse" is too small, it must be at least 65536 bytes'),
    ("sse_zone zone=sse:16m; sse_zone zone=sse:16m;", 'duplicate zone "sse"'),
    ("", '"sse_subscribe" and "sse_publish" need an "sse_zone"'),
    ("sse_zone zone=a:1m; sse_zone zone=b:1m;",
     '"sse_subscribe" and "sse_publish" need "zone=NAME" when there are '
     'several "sse_zone"s'),
]


@pytest.mark.parametrize("zone,message", ZONE_ERRORS,
                         ids=[z or "no-zone" for z, _ in ZONE_ERRORS])
def test_bad_zone_fails_nginx_t(tmp_path, zone, message):
    ok, out = nginx_test_config(tmp_path, conf(tmp_path, zone=zone))
    assert not ok, out
    assert f"[emerg] {message}" in out, out


def test_zone_too_small_names_the_minimum(tmp_path):
    ok, out = nginx_test_config(
        tmp_path, conf(tmp_path, zone="sse_zone zone=sse:1k;"))
    assert not ok
    m = re.search(r'zone "sse" is too small, it must be at least (\d+) bytes',
                  out)
    assert m, out
    assert int(m.group(1)) > 1024


async def test_the_smallest_zone_works(start_nginx):
    n = start_nginx(zone="sse_zone zone=sse:64k;")
    c = await n.stream("demo")
    assert (await n.publish("demo", "small")).status == 202
    ev = await c.next_event()
    assert ev.data == "small"


def test_zone_sizes_accept_nginx_sizes(tmp_path):
    ok, out = nginx_test_config(
        tmp_path, conf(tmp_path, zone="sse_zone zone=sse:1048576;"))
    assert ok, out


def test_named_zones(tmp_path):
    text = conf(
        tmp_path, zone="sse_zone zone=a:1m; sse_zone zone=b:2m;",
        sub_locations="""
        location = /a { sse_subscribe zone=a; sse_channel x; }
        location = /b { sse_subscribe zone=b; sse_channel x; }""",
        pub_locations="""
        location = /pa { sse_publish zone=a; sse_channel x; }
        location = /pb { sse_publish zone=b; sse_channel x; }""")
    # The default locations name no zone; two zones make that an error, so
    # drop them from this config.
    text = re.sub(r"location ~ .*?\n        }\n", "", text, flags=re.S)
    text = re.sub(r"location = /(multi|pub) \{.*?\n        }\n", "", text,
                  flags=re.S)
    ok, out = nginx_test_config(tmp_path, text)
    assert ok, out


LOCATION_ERRORS = [
    ("sse_subscribe;", '"sse_channel" is required where "sse_subscribe" is'),
    ("sse_publish;", '"sse_channel" is required where "sse_publish" is'),
    ("sse_subscribe; sse_publish; sse_channel x;",
     '"sse_publish" directive is duplicate, or combined with another sse '
     "role"),
    ("sse_subscribe; sse_subscribe; sse_channel x;",
     '"sse_subscribe" directive is duplicate'),
    ("sse_subscribe zone; sse_channel x;",
     'invalid value "zone" in "sse_subscribe" directive, expected zone=NAME'),
    ("sse_subscribe; sse_channel x; sse_channel y;",
     '"sse_channel" directive is duplicate'),
    ('sse_subscribe; sse_channel "";',
     'invalid value "" in "sse_channel" directive, it is empty'),
    ('sse_subscribe; sse_channel "a b";',
     'invalid value "a b" in "sse_channel" directive, channel id may only '
     "contain"),
    ("sse_subscribe; sse_channel a,,b split=,;",
     'invalid value "a,,b" in "sse_channel" directive, empty channel id'),
    ("sse_subscribe; sse_channel x; sse_buffer_length 5; "
     "sse_buffer_length 6;", '"sse_buffer_length" directive is duplicate'),
    ("sse_subscribe; sse_channel x; sse_message_ttl 5s; sse_message_ttl 6s;",
     '"sse_message_ttl" directive is duplicate'),
    ("sse_subscribe; sse_channel x; sse_max_pending 5k; sse_max_pending 6k;",
     '"sse_max_pending" directive is duplicate'),
    ("sse_subscribe; sse_channel x; sse_last_event_id $arg_a; "
     "sse_last_event_id $arg_b;",
     '"sse_last_event_id" directive is duplicate'),
]


@pytest.mark.parametrize("body,message", LOCATION_ERRORS,
                         ids=[b for b, _ in LOCATION_ERRORS])
def test_bad_location_fails_nginx_t(tmp_path, body, message):
    ok, out = nginx_test_config(tmp_path, conf(
        tmp_path, sub_locations=f"\n        location = /bad {{ {body} }}"))
    assert not ok, out
    assert f"[emerg] {message}" in out, out


def test_sse_zone_outside_http_fails(tmp_path):
    text = conf(tmp_path, sub_locations="""
        location = /z { sse_zone zone=z:1m; }""")
    ok, out = nginx_test_config(tmp_path, text)
    assert not ok
    assert '"sse_zone" directive is not allowed here' in out, out


def test_default_config_passes(tmp_path):
    ok, out = nginx_test_config(tmp_path, conf(tmp_path))
    assert ok, out


# ---- configuration errors a user can act on (issue 12)

def test_undeclared_zone_names_directive_zone_file_and_line(tmp_path):
    text = conf(tmp_path, sub_locations="""
        location = /nozone { sse_subscribe zone=zz; sse_channel x; }""")
    ok, out = nginx_test_config(tmp_path, text)
    assert not ok, out
    line = next(i for i, ln in enumerate(text.splitlines(), 1)
                if "zone=zz" in ln)
    assert ('[emerg] "sse_subscribe" directive names zone "zz", but no '
            '"sse_zone zone=zz:SIZE" declares it in '
            f"{tmp_path}/nginx.conf:{line}") in out, out
    assert "zero size" not in out, out


def test_zone_declared_after_its_use_is_fine(tmp_path):
    text = conf(tmp_path, pub_locations="""
        location = /later { sse_publish zone=sse; sse_channel x; }""")
    # Move sse_zone to the end of the http block.
    text = text.replace("sse_zone zone=sse:16m;", "", 1)
    text = text.rstrip()[:-1] + "    sse_zone zone=sse:16m;\n}\n"
    ok, out = nginx_test_config(tmp_path, text)
    assert ok, out


HANDLER_CONFLICTS = [
    "sse_subscribe; sse_channel x; proxy_pass http://127.0.0.1:9;",
    "proxy_pass http://127.0.0.1:9; sse_subscribe; sse_channel x;",
    "sse_publish; sse_channel x; fastcgi_pass 127.0.0.1:9;",
    "uwsgi_pass 127.0.0.1:9; sse_publish; sse_channel x;",
    "sse_status; proxy_pass http://127.0.0.1:9;",
    "empty_gif; sse_subscribe; sse_channel x;",
]


@pytest.mark.parametrize("body", HANDLER_CONFLICTS)
def test_another_content_handler_fails_nginx_t(tmp_path, body):
    text = conf(tmp_path,
                sub_locations=f"\n        location = /both {{ {body} }}")
    ok, out = nginx_test_config(tmp_path, text)
    assert not ok, out
    line = next(i for i, ln in enumerate(text.splitlines(), 1)
                if "location = /both" in ln)
    assert "[emerg]" in out, out
    assert ("directive cannot be combined with another content handler "
            "(proxy_pass, fastcgi_pass, ...) in one location") in out, out
    assert f"{tmp_path}/nginx.conf:{line}\n" in out, out


def test_content_handler_in_a_nested_location_is_fine(tmp_path):
    ok, out = nginx_test_config(tmp_path, conf(tmp_path, sub_locations="""
        location /outer {
            sse_subscribe;
            sse_channel x;
            location /outer/api { proxy_pass http://127.0.0.1:9; }
        }"""))
    assert ok, out


def test_credentials_without_origin_warns(tmp_path):
    ok, out = nginx_test_config(tmp_path, conf(
        tmp_path, sub_locations="""
        location = /cred { sse_subscribe; sse_channel x;
                           sse_allow_credentials on; }"""))
    assert ok, out
    assert ('[warn] "sse_allow_credentials" is ignored in location "/cred": '
            f'it needs "sse_allow_origin" ({tmp_path}/nginx.conf:') in out, out


def test_credentials_with_origin_does_not_warn(tmp_path):
    ok, out = nginx_test_config(tmp_path, conf(
        tmp_path, http="sse_allow_credentials on; sse_allow_origin $http_origin;"))
    assert ok, out
    assert "[warn]" not in out, out
