"""Configuration: wrong values fail `nginx -t` in nginx's own words."""

import re

import pytest

from conftest import nginx_test_config, render_conf


def conf(tmp_path, **opts):
    opts.setdefault("retry", None)
    return render_conf(tmp_path, 1, 2, **opts)


def num_msg(value, directive, lo, hi):
    return (f'invalid value "{value}" in "{directive}" directive, '
            f"it must be a number from {lo} to {hi}")


def size_msg(value, directive, lo, hi):
    return (f'invalid value "{value}" in "{directive}" directive, '
            f"it must be a size from {lo} to {hi} bytes")


def time_msg(value, directive, off_ok):
    why = ('it must be a positive time or "off"' if off_ok
           else "it must be a positive time")
    return f'invalid value "{value}" in "{directive}" directive, {why}'


INVALID_VALUES = [
    ("sse_buffer_length", "0", num_msg("0", "sse_buffer_length", 1, 1000000)),
    ("sse_buffer_length", "1000001",
     num_msg("1000001", "sse_buffer_length", 1, 1000000)),
    ("sse_buffer_length", "x", num_msg("x", "sse_buffer_length", 1, 1000000)),
    ("sse_buffer_length", "-1",
     num_msg("-1", "sse_buffer_length", 1, 1000000)),
    ("sse_message_ttl", "off",
     'invalid value "off" in "sse_message_ttl" directive, it cannot be off'),
    ("sse_message_ttl", "0", time_msg("0", "sse_message_ttl", False)),
    ("sse_message_ttl", "soon", time_msg("soon", "sse_message_ttl", False)),
    ("sse_heartbeat", "0", time_msg("0", "sse_heartbeat", True)),
    ("sse_heartbeat", "1x", time_msg("1x", "sse_heartbeat", True)),
    ("sse_retry", "x", num_msg("x", "sse_retry", 0, 86400000)),
    ("sse_retry", "3s", num_msg("3s", "sse_retry", 0, 86400000)),
    ("sse_retry", "86400001", num_msg("86400001", "sse_retry", 0, 86400000)),
    ("sse_retry", "-1", num_msg("-1", "sse_retry", 0, 86400000)),
    ("sse_last_event_id", '""',
     'invalid value "" in "sse_last_event_id" directive, it is empty'),
    ("sse_initial_events", "-1",
     num_msg("-1", "sse_initial_events", 0, 1000000)),
    ("sse_initial_events", "1000001",
     num_msg("1000001", "sse_initial_events", 0, 1000000)),
    ("sse_initial_events", "ten",
     num_msg("ten", "sse_initial_events", 0, 1000000)),
    ("sse_max_message_size", "0",
     size_msg("0", "sse_max_message_size", 1, 268435456)),
    ("sse_max_message_size", "1g",
     size_msg("1g", "sse_max_message_size", 1, 268435456)),
    ("sse_max_message_size", "big",
     size_msg("big", "sse_max_message_size", 1, 268435456)),
    ("sse_max_pending", "100",
     size_msg("100", "sse_max_pending", 1024, 2147483647)),
    ("sse_max_pending", "1q",
     size_msg("1q", "sse_max_pending", 1024, 2147483647)),
    ("sse_max_subscribers", "-1",
     num_msg("-1", "sse_max_subscribers", 0, 100000000)),
    ("sse_max_subscribers", "many",
     num_msg("many", "sse_max_subscribers", 0, 100000000)),
    ("sse_stream_timeout", "0", time_msg("0", "sse_stream_timeout", True)),
    ("sse_stream_timeout", "forever",
     time_msg("forever", "sse_stream_timeout", True)),
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
    "sse_initial_events 0;", "sse_initial_events 1000000;",
    "sse_max_message_size 1;", "sse_max_message_size 256m;",
    "sse_max_pending 1k;", "sse_max_pending 1m;",
    "sse_max_subscribers 0;", "sse_max_subscribers 100000000;",
    "sse_stream_timeout off;", "sse_stream_timeout 1d;",
]


@pytest.mark.parametrize("line", VALID_VALUES)
def test_valid_value_passes_nginx_t(tmp_path, line):
    ok, out = nginx_test_config(tmp_path, conf(tmp_path, http=line))
    assert ok, out
    assert "test is successful" in out


@pytest.mark.parametrize("retry", ["0", "86400000", "off"])
def test_sse_retry_takes_ms_or_off(tmp_path, retry):
    ok, out = nginx_test_config(tmp_path, conf(tmp_path, retry=retry))
    assert ok, out


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


def test_undeclared_zone_fails(tmp_path):
    ok, out = nginx_test_config(tmp_path, conf(
        tmp_path, sub_locations="""
        location = /nozone { sse_subscribe zone=nope; sse_channel x; }"""))
    assert not ok, out
    assert 'zero size shared memory zone "nope"' in out, out


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
