"""The demo's login: HS256 tokens (JWT) for the chat, signed with the
`oct` key of examples/jwks.json, which nginx verifies with
`sse_auth_jwt_key_file` (a demo key: make your own for anything real).

POST /token with JSON {"name": "alice"} answers {"token", "sub", "exp"}
and sets the cookie `sse_token` (HttpOnly, Path=/, SameSite=Strict) that
the chat's subscriber location reads. The token grants `subscribe` on
`chat:*` for `--token-ttl` seconds (a request may ask for fewer with
"ttl", which the browser tests use to watch a token expire mid-stream).

Standard library only."""

import base64
import hashlib
import hmac
import json
import re
import time
from pathlib import Path

JWKS = Path(__file__).resolve().parent / "jwks.json"
NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,32}$")


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def load_key(path=JWKS):
    """(kid, secret bytes) of the set's first HS256 key."""
    for k in json.loads(Path(path).read_text())["keys"]:
        if k.get("kty") == "oct":
            pad = "=" * (-len(k["k"]) % 4)
            return k.get("kid"), base64.urlsafe_b64decode(k["k"] + pad)
    raise ValueError(f"{path}: no oct key")


def sign(claims, kid, secret):
    head = {"alg": "HS256", "typ": "JWT"}
    if kid:
        head["kid"] = kid
    signing = (b64url(json.dumps(head, separators=(",", ":")).encode()) + "."
               + b64url(json.dumps(claims, separators=(",", ":")).encode()))
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


class Issuer:
    def __init__(self, path=JWKS, ttl=600):
        self.kid, self.secret = load_key(path)
        self.ttl = ttl

    def issue(self, req):
        """(status, answer dict, headers) for a POST /token body."""
        name = req.get("name") if isinstance(req, dict) else None
        if not isinstance(name, str) or not NAME_RE.match(name.strip()):
            return 400, {"error": "name: 1 to 32 characters"}, []
        ttl = req.get("ttl", self.ttl)
        if not isinstance(ttl, (int, float)) or ttl < 1:
            return 400, {"error": "ttl: seconds, at least 1"}, []
        exp = int(time.time() + min(ttl, self.ttl))
        token = sign({"sub": name.strip(), "exp": exp,
                      "sse": {"subscribe": ["chat:*"]}}, self.kid, self.secret)
        cookie = (f"sse_token={token}; Path=/; HttpOnly; SameSite=Strict; "
                  f"Max-Age={int(min(ttl, self.ttl))}")
        return 200, {"token": token, "sub": name.strip(), "exp": exp}, \
            [("Set-Cookie", cookie)]
