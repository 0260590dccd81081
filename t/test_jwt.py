"""sse_auth_jwt against a real nginx (2 workers): tokens and JWK Sets are
made here with PyJWT and cryptography, an implementation independent of
ours. Every refusal is a 401 with WWW-Authenticate (or a 403 naming the
channel), never a stream and never a 5xx."""

import asyncio
import base64
import hashlib
import hmac
import json
import random
import subprocess
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from clienthelp import tls_server
from conftest import STREAM_TYPE, nginx_test_config, proc_alive, render_conf


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Keys:
    """Private keys by kid, and the public JWK Set of all of them."""

    def __init__(self):
        self.secret = bytes(random.getrandbits(8) for _ in range(32))
        self.priv = {
            "hs": self.secret,
            "rsa1": rsa.generate_private_key(public_exponent=65537,
                                             key_size=2048),
            "rsa2": rsa.generate_private_key(public_exponent=65537,
                                             key_size=2048),
            "p256": ec.generate_private_key(ec.SECP256R1()),
            "p384": ec.generate_private_key(ec.SECP384R1()),
            "ed": ed25519.Ed25519PrivateKey.generate(),
        }
        keys = [{"kty": "oct", "k": b64(self.secret), "kid": "hs"}]
        for kid, alg in (("rsa1", RSAAlgorithm), ("rsa2", RSAAlgorithm),
                         ("p256", ECAlgorithm), ("p384", ECAlgorithm),
                         ("ed", OKPAlgorithm)):
            pub = self.priv[kid].public_key()
            k = json.loads(alg.to_jwk(pub))
            if alg is ECAlgorithm:
                # RFC 7518 6.2.1.2: x and y are full length; Debian's PyJWT
                # drops leading zero bytes (1 key in ~128), which the
                # module rightly refuses.
                size = (pub.curve.key_size + 7) // 8
                n = pub.public_numbers()
                k["x"] = b64(n.x.to_bytes(size, "big"))
                k["y"] = b64(n.y.to_bytes(size, "big"))
            k["kid"] = kid
            keys.append(k)
        self.jwks = {"keys": keys}


KID_OF = {"HS256": "hs", "RS256": "rsa1", "PS256": "rsa1", "ES256": "p256",
          "ES384": "p384", "EdDSA": "ed"}

RIGHTS = {"subscribe": ["chat:room-1", "chat:public:*"],
          "publish": ["chat:room-1", "ai:*"]}


def claims(**over):
    c = {"sub": "alice", "exp": int(time.time()) + 600, "aud": "chat",
         "iss": "https://issuer", "role": "admin", "sse": RIGHTS}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


@pytest.fixture(scope="module")
def keys():
    return Keys()


def token(keys, alg="HS256", kid=None, **over):
    kid = kid or KID_OF[alg]
    return jwt.encode(claims(**over), keys.priv[kid], algorithm=alg,
                      headers={"kid": kid})


def bearer(t):
    return {"Authorization": f"Bearer {t}"}


LOG_FORMAT = "log_format jwt '$sse_jwt_sub|$sse_jwt_claim_role|$status';"

COOKIE_LOCATION = """
        location ~ ^/c/(?<cch>.+)$ {
            sse_subscribe;
            sse_channel $cch;
            sse_auth_jwt sse token=$cookie_sse_token;
        }
        location ~ ^/lee/(?<lch>.+)$ {
            sse_subscribe;
            sse_channel $lch;
            sse_auth_jwt_leeway 30s;
        }
        location ~ ^/open/(?<och>.+)$ {
            sse_subscribe;
            sse_channel $och;
            sse_auth_jwt off;
        }"""


@pytest.fixture
def guarded(start_nginx, keys, tmp_path):
    f = tmp_path / "jwks.json"
    f.write_text(json.dumps(keys.jwks))
    return start_nginx(
        http=(f"    sse_auth_jwt_key_file {f};\n"
              "    sse_auth_jwt_require_aud chat;\n"
              "    sse_auth_jwt_require_iss https://issuer;\n"
              f"    {LOG_FORMAT}"),
        sub=("            sse_auth_jwt sse token=$arg_token;\n"
             "            access_log jwt.log jwt;"),
        pub="            sse_auth_jwt publishers;",
        sub_locations=COOKIE_LOCATION)


async def publish_as(n, t, channel, data, **kw):
    return await n.publish(channel, data, headers=bearer(t), **kw)


def assert_401(c, description=None):
    assert c.status == 401, (c.status, c.body)
    h = c.header("www-authenticate")
    if description is None:
        assert h == 'Bearer realm="sse"', h
    else:
        assert h.startswith('Bearer realm="sse", error="invalid_token", '
                            'error_description="'), h
        assert description in h, h
    body = c.body.decode()
    assert body.endswith("\n") and body.count("\n") == 1, body
    assert "text/event-stream" not in (c.header("content-type") or "")


@pytest.mark.parametrize("alg", list(KID_OF))
async def test_each_algorithm_streams(guarded, keys, alg):
    t = token(keys, alg)
    c = await guarded.subscribe("chat:room-1", headers=bearer(t))
    assert c.status == 200, c.body
    assert c.header("content-type") == STREAM_TYPE
    eid = (await publish_as(guarded, t, "chat:room-1", alg)).json()["id"]
    b = await c.next_event()
    assert (b.id, b.data) == (eid, alg)


@pytest.mark.parametrize("source", ["header", "query", "cookie"])
async def test_token_sources(guarded, keys, source):
    t = token(keys, "ES256")
    path, headers = {
        "header": ("/events/chat:public:x", bearer(t)),
        "query": (f"/events/chat:public:x?token={t}", {}),
        "cookie": ("/c/chat:public:x",
                   {"Cookie": f"a=b; sse_token={t}"}),
    }[source]
    c = await guarded.stream(path, headers=headers)
    r = await publish_as(guarded, token(keys, sse={"publish": ["chat:*"]}),
                         "chat:public:x", "hello")
    assert r.status == 202, r
    assert (await c.next_event()).data == "hello"


def alg_none(keys):
    h = b64(json.dumps({"alg": "none", "kid": "hs"}).encode())
    return h + "." + b64(json.dumps(claims()).encode()) + "."


def confused(keys):
    """HS256 keyed with the RSA public key's PEM (PyJWT refuses to)."""
    pem = keys.priv["rsa1"].public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo)
    si = (b64(json.dumps({"alg": "HS256", "kid": "rsa1"}).encode()) + "." +
          b64(json.dumps(claims()).encode()))
    return si + "." + b64(hmac.new(pem, si.encode(), hashlib.sha256).digest())


def forged(keys):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims(), other, algorithm="RS256",
                      headers={"kid": "rsa1"})


REFUSALS = {
    "malformed": (lambda k: "abc", "three dot-separated parts"),
    "not base64url": (lambda k: "a+b.c.d", "not base64url"),
    "bad signature": (forged, "bad signature"),
    "tampered": (lambda k: token(k)[:-4] + "AAAA", "bad signature"),
    "expired": (lambda k: token(k, exp=int(time.time()) - 5),
                "token expired"),
    "nbf in future": (lambda k: token(k, nbf=int(time.time()) + 60),
                      "not valid yet"),
    "alg none": (alg_none, "alg none"),
    "alg confusion": (confused, "does not fit alg"),
    "unknown kid": (lambda k: jwt.encode(claims(), k.priv["rsa1"],
                                         algorithm="RS256",
                                         headers={"kid": "gone"}),
                    "unknown kid"),
    "wrong aud": (lambda k: token(k, aud="other"), "audience"),
    "no aud": (lambda k: token(k, aud=None), "audience"),
    "wrong iss": (lambda k: token(k, iss="https://evil"), "issuer"),
    "sse not object": (lambda k: token(k, sse=["chat:room-1"]),
                       "'sse' claim is not an object"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_bad_token_is_401_with_reason(guarded, keys, case):
    make, why = REFUSALS[case]
    t = make(keys)
    c = await guarded.subscribe("chat:room-1", headers=bearer(t))
    assert_401(c, why)
    c = await guarded.subscribe(f"/events/chat:room-1?token={t}")
    assert_401(c, why)
    r = await guarded.publish("chat:room-1", "x", headers=bearer(t))
    assert r.status == 401 and why in r.header("www-authenticate")
    assert "publishers" in r.header("www-authenticate")
    # Never subscribed, never published: the channel was not even made.
    r = await guarded.pub_http("GET", "/publish/chat:room-1",
                               headers=bearer(token(keys)))
    assert r.status == 404, r


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "},
])
async def test_missing_token_is_401_without_error_code(guarded, headers):
    c = await guarded.subscribe("chat:room-1", headers=headers)
    assert_401(c)
    assert c.body == b"token missing\n"


async def test_key_rotation_accepts_every_kid_of_the_set(guarded, keys):
    for kid in ("rsa1", "rsa2"):
        t = jwt.encode(claims(), keys.priv[kid], algorithm="RS256",
                       headers={"kid": kid})
        c = await guarded.subscribe("chat:room-1", headers=bearer(t))
        assert c.status == 200, (kid, c.body)
    # Without kid, every RSA key of the set is tried.
    t = jwt.encode(claims(), keys.priv["rsa2"], algorithm="RS256")
    c = await guarded.subscribe("chat:room-1", headers=bearer(t))
    assert c.status == 200, c.body


@pytest.mark.parametrize("path,channel", [
    ("/events/chat:room-2", "chat:room-2"),
    ("/events/chat:public", "chat:public"),
    ("/multi?channels=chat:room-1,chat:secret,chat:public:a", "chat:secret"),
])
async def test_no_right_is_403_naming_the_channel(guarded, keys, path,
                                                  channel):
    c = await guarded.subscribe(path, headers=bearer(token(keys)))
    assert c.status == 403, (c.status, c.body)
    assert c.body == f"no subscribe right to channel {channel}\n".encode()
    h = c.header("www-authenticate")
    assert 'error="insufficient_scope"' in h and channel in h, h


async def test_multiplexed_stream_with_every_right(guarded, keys):
    t = token(keys)
    c = await guarded.stream("/multi?channels=chat:room-1,chat:public:a",
                             headers=bearer(t))
    await publish_as(guarded, t, "chat:room-1", "one")
    assert (await c.next_event()).data == "one"


@pytest.mark.parametrize("with_token", [False, True])
async def test_bad_channel_is_400(guarded, keys, with_token):
    headers = bearer(token(keys)) if with_token else {}
    c = await guarded.subscribe("/events/bad*id", headers=headers)
    assert c.status == 400, (c.status, c.body)
    assert c.body.startswith(b"invalid channel:")


async def test_token_without_sse_claim_has_no_rights(guarded, keys):
    c = await guarded.subscribe("chat:room-1",
                                headers=bearer(token(keys, sse=None)))
    assert c.status == 403


async def test_publisher_rights(guarded, keys):
    sub_only = token(keys, sse={"subscribe": ["ai:x"]})
    r = await guarded.publish("ai:x", "x")
    assert r.status == 401
    r = await guarded.publish("ai:x", "x", headers=bearer(sub_only))
    assert r.status == 403 and r.text == "no publish right to channel ai:x\n"
    r = await publish_as(guarded, token(keys), "ai:x", "x")
    assert r.status == 202, r
    # Channel info and DELETE need the publish right too.
    for method in ("GET", "DELETE"):
        r = await guarded.pub_http(method, "/publish/ai:x",
                                   headers=bearer(sub_only))
        assert r.status == 403, (method, r)
    r = await guarded.pub_http("GET", "/publish/ai:x",
                               headers=bearer(token(keys)))
    assert r.status == 200 and r.json()["channel"] == "ai:x"


async def test_options_preflight_is_never_refused(guarded):
    r = await guarded.sub_http("OPTIONS", "/events/chat:room-1")
    assert r.status == 204
    r = await guarded.pub_http("OPTIONS", "/publish/chat:room-1")
    assert r.status == 204


async def test_head_is_checked_and_answers_no_body(guarded, keys):
    r = await guarded.sub_http("HEAD", "/events/chat:room-1")
    assert r.status == 401 and r.header("www-authenticate")
    r = await guarded.sub_http("HEAD", "/events/chat:room-1",
                               headers=bearer(token(keys)))
    assert r.status == 200


async def test_leeway_covers_a_recently_expired_token(guarded, keys):
    t = token(keys, exp=int(time.time()) - 5)
    c = await guarded.subscribe("/lee/chat:room-1", headers=bearer(t))
    assert c.status == 200, c.body
    c = await guarded.subscribe("/events/chat:room-1", headers=bearer(t))
    assert c.status == 401


async def test_off_in_a_location_lifts_the_check(guarded):
    c = await guarded.subscribe("/open/chat:room-1")
    assert c.status == 200


async def test_variables_reach_the_access_log(guarded, keys):
    c = await guarded.stream("chat:room-1", headers=bearer(token(keys)))
    c.close()
    c = await guarded.subscribe("chat:room-1")
    assert c.status == 401
    log = guarded.dir / "jwt.log"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= 2:
            break
        await asyncio.sleep(0.05)
    assert sorted(lines) == ["-|-|401", "alice|admin|200"], lines


async def test_random_tokens_never_5xx(guarded, keys):
    rng = random.Random(5)
    good = token(keys, "ES256")
    alphabet = ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                "0123456789-_.")
    for i in range(150):
        if i % 3 == 0:
            t = "".join(rng.choice(alphabet)
                        for _ in range(rng.randrange(1, 400)))
        elif i % 3 == 1:
            t = list(good)
            t[rng.randrange(len(t))] = rng.choice(alphabet)
            t = "".join(t)
        else:
            t = good[:rng.randrange(len(good))]
        r = await guarded.sub_http("HEAD", f"/events/chat:room-1?token={t}")
        assert r.status in (200, 401), (t, r)
        assert r.status == 200 or t != good
    r = await guarded.sub_http("GET", "/events/chat:room-1?token=" +
                               "A" * 7000)
    assert r.status in (401, 414, 400), r


@pytest.mark.timeout_s(20)
async def test_stream_ends_at_token_expiry(guarded, keys):
    t = token(keys, exp=int(time.time()) + 2)
    c = await guarded.stream("chat:room-1", headers=bearer(t))
    blocks = await c.until_end(timeout=8)
    assert c.ended.clean
    events = [b for b in blocks if b.is_event]
    assert events and events[-1].event == "sse-error"
    assert json.loads(events[-1].data) == {"reason": "token_expired"}
    assert events[-1].id is None
    assert blocks[-1].retry is not None


# ---------------------------------------------------------------- nginx -t

def conf(tmp_path, http="", sub=""):
    return render_conf(tmp_path, 1, 2, http=http, sub=sub, retry=None)


@pytest.fixture
def jwks_file(tmp_path, keys):
    f = tmp_path / "good.json"
    f.write_text(json.dumps(keys.jwks))
    return f


@pytest.mark.parametrize("content,message", [
    ("{", "not valid JSON"),
    ('{"keys": []}', "no signature key"),
    ('{"keys": [{"kty": "RSA", "kid": "x", "n": "AQAB", "e": "AQAB"}]}',
     'key 0 (kid "x"): RSA modulus shorter than 2048 bits'),
    ('{"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}',
     'key 0: "k" is shorter than 32 bytes'),
])
def test_bad_key_file_fails_nginx_t(tmp_path, content, message):
    f = tmp_path / "bad.json"
    f.write_text(content)
    ok, out = nginx_test_config(tmp_path, conf(
        tmp_path, http=f"sse_auth_jwt_key_file {f};",
        sub="sse_auth_jwt sse;"))
    assert not ok
    assert f'invalid JWK Set "{f}": {message}' in out, out


@pytest.mark.parametrize("http,sub,message", [
    ("sse_auth_jwt_key_file /nonexistent/jwks.json;", "",
     'cannot open JWK Set "/nonexistent/jwks.json"'),
    ("", "sse_auth_jwt sse;",
     '"sse_auth_jwt" needs "sse_auth_jwt_key_file"'),
    ("KEYS", "sse_auth_jwt sse cookie=$cookie_t;",
     'invalid value "cookie=$cookie_t" in "sse_auth_jwt" directive, '
     "expected token=VALUE"),
    ("KEYS", 'sse_auth_jwt \'a"b\';',
     "a realm cannot hold quotes"),
    ("KEYS", "sse_auth_jwt off token=$arg_t;",
     '"sse_auth_jwt" directive takes nothing after "off"'),
    ("KEYS sse_auth_jwt_leeway soon;", "",
     '"sse_auth_jwt_leeway" directive invalid value'),
    ("KEYS sse_auth_jwt_key_file /x;", "",
     '"sse_auth_jwt_key_file" directive is duplicate'),
])
def test_bad_directives_fail_nginx_t(tmp_path, jwks_file, http, sub,
                                     message):
    http = http.replace("KEYS", f"sse_auth_jwt_key_file {jwks_file};")
    ok, out = nginx_test_config(tmp_path, conf(tmp_path, http=http, sub=sub))
    assert not ok
    assert message in out, out


def test_good_config_passes_nginx_t(tmp_path, jwks_file):
    ok, out = nginx_test_config(tmp_path, conf(
        tmp_path, http=f"sse_auth_jwt_key_file {jwks_file};",
        sub="sse_auth_jwt sse token=$cookie_t; sse_auth_jwt_leeway 5s;"))
    assert ok, out


async def test_key_rotation_by_reload(start_nginx, keys, tmp_path):
    """A key added to the file is used after `nginx -s reload`; one taken
    out is refused."""
    f = tmp_path / "rotating.json"
    old, new = keys.jwks["keys"][1], keys.jwks["keys"][2]  # rsa1, rsa2
    f.write_text(json.dumps({"keys": [old]}))
    n = start_nginx(http=f"    sse_auth_jwt_key_file {f};",
                    sub="            sse_auth_jwt sse;")

    def signed(kid):
        return bearer(jwt.encode(claims(), keys.priv[kid], algorithm="RS256",
                                 headers={"kid": kid}))

    async def reload():
        # Only the new workers, with the new key set, accept from now on.
        old = n.reload()
        deadline = time.monotonic() + 10
        while any(proc_alive(p) for p in old):
            assert time.monotonic() < deadline, "old workers never left"
            await asyncio.sleep(0.02)

    assert (await n.subscribe("chat:room-1", headers=signed("rsa1"))).status \
        == 200
    c = await n.subscribe("chat:room-1", headers=signed("rsa2"))
    assert_401(c, "unknown kid")
    f.write_text(json.dumps({"keys": [old, new]}))
    await reload()
    for kid in ("rsa1", "rsa2"):
        c = await n.subscribe("chat:room-1", headers=signed(kid))
        assert c.status == 200, (kid, c.body)
    f.write_text(json.dumps({"keys": [new]}))
    await reload()
    c = await n.subscribe("chat:room-1", headers=signed("rsa1"))
    assert_401(c, "unknown kid")
    assert (await n.subscribe("chat:room-1", headers=signed("rsa2"))).status \
        == 200


def test_http2_refusals_and_admission(start_nginx, keys, tmp_path):
    tls, port, cert = tls_server(tmp_path, http2=True)
    f = tmp_path / "jwks.json"
    f.write_text(json.dumps(keys.jwks))
    n = start_nginx(http=f"    sse_auth_jwt_key_file {f};",
                    sub="            sse_auth_jwt sse;",
                    server=tls)

    def head(*headers):
        args = ["/usr/bin/curl", "--http2", "--cacert", str(cert), "-sS",
                "-I", "-o", "/dev/null", "-w",
                "%{http_version} %{response_code}", "--max-time", "10"]
        for h in headers:
            args += ["-H", h]
        args.append(f"https://127.0.0.1:{port}/events/chat:room-1")
        p = subprocess.run(args, capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, p.stderr
        return p.stdout

    assert head() == "2 401"
    assert head("Authorization: Bearer x.y.z") == "2 401"
    t = token(keys, "EdDSA")
    assert head(f"Authorization: Bearer {t}") == "2 200"
    t = token(keys, "EdDSA", sse={"subscribe": ["other"]})
    assert head(f"Authorization: Bearer {t}") == "2 403"
    assert n.bad_log_lines() == []
