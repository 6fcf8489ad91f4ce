"""NHN Cloud CDN doubles, written from the documented contract (docs/nhn-cloud.md), not from our client.

`CdnApiDouble` is the auth-token API: always HTTP 200 once it answers, `header.isSuccessful=false`
with the documented result codes, tokens computed with the documented algorithm.
`CdnEdgeDouble` is an edge serving `GET /<path>?token=…` (or the `token` header / cookie), checking the
token with the same HMAC and answering 403 when it is missing, forged or expired.

The algorithm is implemented here on its own (Java `URLEncoder` emulated character by character) so
that a mistake in the client's implementation is caught rather than mirrored.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import unquote

from .http import LoopbackServer, Reply, Request

_JAVA_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_")
_TOKEN_PATH = re.compile(r"^/v2\.0/appKeys/(?P<app_key>[^/]+)/auth-token$")
MAX_DURATION = 2_147_483_647


def java_urlencode_lower(text: str) -> str:
    """`URLEncoder.encode(text, "UTF-8")` followed by lower-casing every `%XX`, as NHN's Java sample does."""
    out = []
    for ch in text:
        if ch in _JAVA_UNRESERVED:
            out.append(ch)
        elif ch == " ":
            out.append("+")
        else:
            out.extend(f"%{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def nhn_token(encrypt_key: str, expires: int, *, url: str | None = None, acl: list[str] | None = None) -> str:
    """NHN's token for one single path (`url`, signed but not included) or wildcard paths (`acl`)."""
    fields = [f"exp={expires}"]
    if acl:
        fields.append("acl=" + java_urlencode_lower("!".join(acl)))
    message = "~".join(fields + ([f"url={java_urlencode_lower(url)}"] if url is not None else []))
    digest = hmac.new(bytes.fromhex(encrypt_key), message.encode("utf-8"), hashlib.sha256).hexdigest()
    return "~".join([*fields, f"hmac={digest}"])


def _result(code: int, message: str, **extra: Any) -> Reply:
    body = {"header": {"isSuccessful": code == 0, "resultCode": code, "resultMessage": message}, **extra}
    return Reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})


class CdnApiDouble:
    """The CDN auth-token API with failure switches and a request counter."""

    def __init__(self, *, app_key: str, secret_key: str, clock: Callable[[], float] = time.time):
        self.app_key = app_key
        self.secret_key = secret_key
        self.clock = clock
        self.requests = 0  # auth-token calls received (answered or not)
        self.received: list[dict[str, Any]] = []
        self.force_result: tuple[int, str] | None = None  # e.g. (30000, "processing failure")
        self.http_failures: list[int] = []  # statuses to answer the next calls with, e.g. [500, 500]
        self.server = LoopbackServer(self.handle)

    def handle(self, request: Request) -> Reply:
        """Answer one request as the documented API would."""
        m = _TOKEN_PATH.match(request.path)
        if request.method != "POST" or not m:
            return Reply(404, b'{"error":"not found"}', {"Content-Type": "application/json"})
        self.requests += 1
        if self.http_failures:
            status = self.http_failures.pop(0)
            return Reply(status, b"<html>upstream error</html>", {"Content-Type": "text/html"})
        if unquote(m["app_key"]) != self.app_key:
            return _result(20001, "Invalid appKey")
        if request.headers.get("Authorization") != self.secret_key:
            return _result(20002, "Invalid SecretKey")
        try:
            body = json.loads(request.body)
        except ValueError:
            return _result(-1, "FAIL")
        self.received.append(body)
        if self.force_result is not None:
            return _result(*self.force_result)
        encrypt_key = body.get("encryptKey")
        if not encrypt_key:
            return _result(10033, "encryptKey is required")
        duration = body.get("durationSeconds")
        if not isinstance(duration, int) or isinstance(duration, bool) or not 0 <= duration <= MAX_DURATION:
            return _result(10034, "durationSeconds is required")
        single = body.get("singlePath")
        wildcard = body.get("singleWildcardPath")
        multiple = body.get("multipleWildcardPath")
        paths = [p for p in [single, wildcard, *(multiple or [])] if p is not None]
        if not paths:
            return _result(10036, "a path is required")
        if any(not isinstance(p, str) or not p.startswith("/") for p in paths):
            return _result(10037, "path must start with /")
        if any("!" in p or "~" in p for p in paths):
            return _result(10038, "path must not contain ! or ~")
        try:
            bytes.fromhex(encrypt_key)
        except ValueError:
            return _result(-1, "FAIL")
        expires = int(self.clock()) + duration
        tokens: dict[str, str] = {}
        if single is not None:
            tokens["singlePathToken"] = nhn_token(encrypt_key, expires, url=single)
        if wildcard is not None:
            tokens["singleWildcardPathToken"] = nhn_token(encrypt_key, expires, acl=[wildcard])
        if multiple:
            tokens["multipleWildcardPathToken"] = nhn_token(encrypt_key, expires, acl=list(multiple))
        return _result(0, "SUCCESS", authToken=tokens)


class CdnEdgeDouble:
    """A CDN edge with token auth: serves `objects` (keyed by decoded path) only with a valid token."""

    def __init__(self, *, encrypt_key: str, clock: Callable[[], float] = time.time):
        self.encrypt_key = encrypt_key
        self.clock = clock
        self.objects: dict[str, bytes] = {}
        self.requests = 0
        self.server = LoopbackServer(self.handle)

    def _token(self, request: Request) -> str | None:
        token = request.query_param("token") or request.headers.get("token")
        if token:
            return token
        cookie = SimpleCookie(request.headers.get("Cookie") or "")
        return cookie["token"].value if "token" in cookie else None

    def token_is_valid(self, token: str, raw_path: str) -> bool:
        """Check `token` for `raw_path` (as sent on the wire, still percent-encoded) at the double's clock."""
        fields = dict(part.split("=", 1) for part in token.split("~") if "=" in part)
        if set(fields) - {"exp", "acl", "id", "hmac"} or "exp" not in fields or "hmac" not in fields:
            return False
        if not fields["exp"].isdigit() or int(fields["exp"]) <= self.clock():
            return False
        signed = [f"exp={fields['exp']}"]
        if "acl" in fields:
            signed.append(f"acl={fields['acl']}")
            patterns = unquote(fields["acl"]).split("!")
            if not any(fnmatch.fnmatchcase(raw_path, p) for p in patterns):
                return False
        if "id" in fields:
            signed.append(f"id={fields['id']}")
        if "acl" not in fields:
            signed.append(f"url={java_urlencode_lower(raw_path)}")
        expected = hmac.new(bytes.fromhex(self.encrypt_key), "~".join(signed).encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, fields["hmac"])

    def handle(self, request: Request) -> Reply:
        """403 without a valid token, 404 for an unknown object, else the bytes."""
        self.requests += 1
        if request.method not in ("GET", "HEAD"):
            return Reply(405)
        token = self._token(request)
        if not token or not self.token_is_valid(token, request.path):
            return Reply(403, b"Forbidden", {"Content-Type": "text/plain"})
        data = self.objects.get(unquote(request.path))
        if data is None:
            return Reply(404, b"Not Found", {"Content-Type": "text/plain"})
        return Reply(200, data, {"Content-Type": "application/octet-stream"})
