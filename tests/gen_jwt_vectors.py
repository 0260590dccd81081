#!/usr/bin/python3
"""Writes tests/jwt_vectors.hpp: a JWK Set and tokens made by an independent
implementation (PyJWT + cryptography), so the GoogleTest checks our verifier
against it. Run at development time only; the output is committed:
    /usr/bin/python3 tests/gen_jwt_vectors.py > tests/jwt_vectors.hpp
Keys are generated afresh on each run; the tests need no particular key."""

import base64
import hashlib
import hmac
import json

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

NOW = 1700000000


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


secret = bytes(range(1, 65))
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
rsa2_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
p256 = ec.generate_private_key(ec.SECP256R1())
p384 = ec.generate_private_key(ec.SECP384R1())
ed = ed25519.Ed25519PrivateKey.generate()


def jwk(s, kid, alg=None):
    d = json.loads(s) if isinstance(s, str) else s
    d["kid"] = kid
    if alg:
        d["alg"] = alg
    return d


keys = [
    {"kty": "oct", "k": b64(secret), "kid": "hmac"},
    jwk(RSAAlgorithm.to_jwk(rsa_key.public_key()), "rsa"),
    jwk(RSAAlgorithm.to_jwk(rsa2_key.public_key()), "rsa2", "RS256"),
    jwk(ECAlgorithm.to_jwk(p256.public_key()), "p256"),
    jwk(ECAlgorithm.to_jwk(p384.public_key()), "p384"),
    jwk(OKPAlgorithm.to_jwk(ed.public_key()), "ed"),
]
# PyJWT writes "use"/"key_ops" for some; keep what it gives.
jwks = json.dumps({"keys": keys})

CLAIMS = {"sub": "alice", "exp": NOW + 3600, "nbf": NOW - 60,
          "iat": NOW - 60, "aud": "chat", "iss": "https://issuer",
          "sse": {"subscribe": ["chat:room-1", "chat:public:*"],
                  "publish": ["ai:session-42"]}}

tokens = {}
for alg, key, kid in [
        ("HS256", secret, "hmac"), ("HS384", secret, "hmac"),
        ("HS512", secret, "hmac"),
        ("RS256", rsa_key, "rsa"), ("RS384", rsa_key, "rsa"),
        ("RS512", rsa_key, "rsa"),
        ("PS256", rsa_key, "rsa"), ("PS384", rsa_key, "rsa"),
        ("PS512", rsa_key, "rsa"),
        ("ES256", p256, "p256"), ("ES384", p384, "p384"),
        ("EdDSA", ed, "ed")]:
    tokens[alg] = jwt.encode(CLAIMS, key, algorithm=alg,
                             headers={"kid": kid})

# Without kid: the verifier tries every key that fits the alg.
tokens["RS256_nokid"] = jwt.encode(CLAIMS, rsa2_key, algorithm="RS256")
tokens["ES256_nokid"] = jwt.encode(CLAIMS, p256, algorithm="ES256")
# Signed by a key that is not in the set, under a known kid.
other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
tokens["RS256_foreign"] = jwt.encode(CLAIMS, other, algorithm="RS256",
                                     headers={"kid": "rsa"})
tokens["unknown_kid"] = jwt.encode(CLAIMS, rsa_key, algorithm="RS256",
                                   headers={"kid": "nope"})
# rsa2 is pinned to RS256 in the set.
tokens["PS256_pinned"] = jwt.encode(CLAIMS, rsa2_key, algorithm="PS256",
                                    headers={"kid": "rsa2"})
tokens["expired"] = jwt.encode(dict(CLAIMS, exp=NOW - 10), secret,
                               algorithm="HS256", headers={"kid": "hmac"})
tokens["future"] = jwt.encode(dict(CLAIMS, nbf=NOW + 30), secret,
                              algorithm="HS256", headers={"kid": "hmac"})
tokens["no_sse"] = jwt.encode({"sub": 7}, secret, algorithm="HS256",
                              headers={"kid": "hmac"})
tokens["sse_wrong"] = jwt.encode({"sse": {"subscribe": "chat:x"}}, secret,
                                 algorithm="HS256", headers={"kid": "hmac"})
tokens["exp_string"] = jwt.encode({"exp": "tomorrow"}, secret,
                                  algorithm="HS256", headers={"kid": "hmac"})
tokens["aud_list"] = jwt.encode(dict(CLAIMS, aud=["x", "chat"]), secret,
                                algorithm="HS256", headers={"kid": "hmac"})
tokens["minimal"] = jwt.encode({}, secret, algorithm="HS256",
                               headers={"kid": "hmac"})

# alg none, and the classic confusion: HS256 keyed with the RSA public key's
# PEM (PyJWT refuses to make these, so they are made by hand).
def manual(header, payload, sig):
    return (b64(json.dumps(header).encode()) + "." +
            b64(json.dumps(payload).encode()) + "." + sig)

tokens["alg_none"] = manual({"alg": "none", "kid": "hmac"}, CLAIMS, "")
tokens["alg_none_sig"] = manual({"alg": "none"}, CLAIMS, "AAAA")
pem = rsa_key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
for name, kid in (("confusion", "rsa"), ("confusion_nokid", None)):
    h = {"alg": "HS256", "typ": "JWT"}
    if kid:
        h["kid"] = kid
    si = (b64(json.dumps(h).encode()) + "." +
          b64(json.dumps(CLAIMS).encode()))
    tokens[name] = si + "." + b64(hmac.new(pem, si.encode(),
                                           hashlib.sha256).digest())

print("// Generated by tests/gen_jwt_vectors.py (PyJWT %s): do not edit."
      % jwt.__version__)
print("#pragma once\n")
print("namespace jwt_vectors {\n")
print("constexpr long long now = %d;\n" % NOW)
print('constexpr const char *jwks = R"JWKS(%s)JWKS";\n' % jwks)
for name, t in tokens.items():
    print('constexpr const char *%s = "%s";' % (name, t))
print("\n}  // namespace jwt_vectors")
