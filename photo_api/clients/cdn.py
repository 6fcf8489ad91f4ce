"""NHN Cloud CDN auth tokens: signed image URLs from the auth-token API or computed locally.

Two modes (docs/nhn-cloud.md, "CDN auth tokens", has the exact requests and the algorithm):

* ``api`` — POST ``{api_url}/v2.0/appKeys/{appKey}/auth-token`` with ``Authorization: {secret key}`` and
  ``{encryptKey, durationSeconds, singlePath}``. The HTTP status is always 200 when the API answered;
  ``header.isSuccessful=false`` is a failure. Every call goes through `Resilient` (the "cdn" policy).
* ``local`` — the same token format computed here with HMAC-SHA256, as NHN's console guide documents it;
  no network at all.

The token travels in the query string (``https://{domain}{path}?token=…``), so the CDN console's
"Token Location" must be set to **Query String**. The path is the object's path on the CDN:
``{path_prefix}/{object key}``, percent-encoded as UTF-8 — with an Object Storage origin on the account
root that prefix is ``/{container}``; with the container URL itself as origin it is empty.

Any failure raises `CdnUnavailableError`, which the image routes answer by streaming from storage instead.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import quote, quote_plus

import requests

from ..resilience import DependencyUnavailableError, Resilient, TransientError, raise_for_transient

log = logging.getLogger(__name__)

TokenMode = Literal["api", "local"]
DEFAULT_API_URL = "https://cdn.api.nhncloudservice.com"
# NHN's API rejects these in paths (resultCode 10038); `~` also separates the token's own fields.
FORBIDDEN_PATH_CHARS = frozenset("!~")
# resultCodes that say "try again": processing failure, unknown error, generic FAIL. Everything
# else (bad app key, bad secret, missing field, bad path) is a configuration or input error that a retry
# cannot fix.
RETRYABLE_RESULT_CODES = frozenset({30000, 80500, -1})
# resultCodes that say this whole client is misconfigured, not just one path.
CONFIG_RESULT_CODES = frozenset({10033, 10034, 20001, 20002})
# After a configuration error, further API calls would fail the same way: stream for a while instead of
# paying one failed round trip (and one error line) per image request.
CONFIG_ERROR_COOLDOWN_S = 60.0
# A cached token is not handed out during the last 10 % of its life, and never with less than 30 s
# left (a client follows the redirect at once, but clocks drift and NHN asks for ~10 s of slack).
SAFETY_MARGIN_FRACTION = 0.1
MIN_SAFETY_MARGIN_S = 30.0

_ESCAPE_SEQUENCE = re.compile(r"%[0-9A-Fa-f]{2}")
_TOKEN_EXP = re.compile(r"(?:^|~)exp=(\d+)(?:~|$)")


class CdnUnavailableError(Exception):
    """No signed CDN URL can be given now (API failure, open circuit, bad path): stream instead."""

    def __init__(self, reason: str, retry_after: int = 5):
        super().__init__(f"CDN unavailable: {reason}")
        # circuit_open | deadline | exhausted (from Resilient), rejected | misconfigured (API), invalid_path
        self.reason = reason
        self.retry_after = retry_after


class InvalidCdnPathError(CdnUnavailableError):
    """The object path contains a character NHN's token API refuses (`!` or `~`)."""

    def __init__(self) -> None:
        super().__init__("invalid_path")


class CdnApiError(Exception):
    """The token API answered with a failure that a retry will not fix (never counted by the breaker)."""

    def __init__(self, code: Any, message: Any):
        super().__init__(f"CDN token API failure {code}: {message}")
        self.code = code
        self.message = message


def escape(value: str) -> str:
    """NHN's token escaping: Java ``URLEncoder.encode(value, "UTF-8")`` with lower-case escapes."""
    # quote_plus differs from URLEncoder only on `~` (kept here, %7E in Java), which paths may not contain.
    return _ESCAPE_SEQUENCE.sub(lambda m: m.group(0).lower(), quote_plus(value, safe="*"))


def compute_token(
    encrypt_key: str,
    *,
    expires: int,
    path: str | None = None,
    acl: Sequence[str] = (),
    session_id: str | None = None,
) -> str:
    """The token NHN's API would issue: ``exp=…[~acl=…][~id=…]~hmac=…``, HMAC-SHA256 with the hex key.

    Give either `path` (single path: signed as ``url=…`` but not copied into the token) or `acl`
    (wildcard paths such as ``/dir/*``, joined with ``!`` before escaping).
    """
    if (path is None) == (not acl):
        raise ValueError("give exactly one of path or acl")
    fields = [f"exp={int(expires)}"]
    if acl:
        fields.append(f"acl={escape('!'.join(acl))}")
    if session_id is not None:
        fields.append(f"id={escape(session_id)}")
    signed = fields + ([f"url={escape(path)}"] if path is not None else [])
    mac = hmac.new(bytes.fromhex(encrypt_key), "~".join(signed).encode(), hashlib.sha256).hexdigest()
    return "~".join([*fields, f"hmac={mac}"])


def token_expiry(token: str) -> int | None:
    """The ``exp`` Unix time written in a token, or None when it has none."""
    m = _TOKEN_EXP.search(token)
    return int(m.group(1)) if m else None


def safety_margin(duration: int) -> float:
    """Seconds before expiry from which a cached token of `duration` is no longer handed out."""
    return min(max(MIN_SAFETY_MARGIN_S, duration * SAFETY_MARGIN_FRACTION), duration / 2)


class TokenCache:
    """A bounded LRU of tokens keyed by (path, duration); an entry stops being served a margin before expiry.

    Keying by duration keeps a 7200 s share token from being handed out where a 600 s one was asked
    for (and the other way round). Size 0 disables caching.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float]):
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, int], tuple[str, float]] = OrderedDict()
        # Dict operations only: held for microseconds, never across I/O.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str, duration: int) -> str | None:
        """The cached token if it is still comfortably valid, else None (and the entry is forgotten)."""
        if self.max_entries == 0:
            return None
        key = (path, duration)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            token, usable_until = entry
            if self._clock() >= usable_until:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return token

    def put(self, path: str, duration: int, token: str, expires_at: float) -> None:
        """Remember a token valid until `expires_at` (Unix time), evicting the least recently used beyond the bound."""
        if self.max_entries == 0:
            return
        usable_until = expires_at - safety_margin(duration)
        if usable_until <= self._clock():
            return
        with self._lock:
            self._entries[(path, duration)] = (token, usable_until)
            self._entries.move_to_end((path, duration))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class CdnTokens:
    """Signed CDN URLs for stored objects, with a token cache; raises CdnUnavailableError when it cannot sign."""

    def __init__(
        self,
        *,
        domain: str,
        encrypt_key: str,
        mode: TokenMode = "api",
        app_key: str | None = None,
        secret_key: str | None = None,
        api_url: str = DEFAULT_API_URL,
        resilient: Resilient | None = None,
        session: requests.Session | None = None,
        path_prefix: str = "",
        cache_size: int = 1000,
        scheme: str = "https",
        clock: Callable[[], float] = time.time,
    ):
        if mode not in ("api", "local"):
            raise ValueError(f"unknown CDN token mode {mode!r}")
        if mode == "api" and not (app_key and secret_key and resilient is not None):
            raise ValueError("api mode needs app_key, secret_key and a Resilient policy")
        bytes.fromhex(encrypt_key)  # the console shows a hex string; anything else can never sign
        self.domain = domain
        self.mode = mode
        self.scheme = scheme
        self.path_prefix = "/" + path_prefix.strip("/") if path_prefix.strip("/") else ""
        self._encrypt_key = encrypt_key
        self._secret_key = secret_key
        self._token_url = f"{api_url.rstrip('/')}/v2.0/appKeys/{quote(app_key or '', safe='')}/auth-token"
        self._resilient = resilient
        self._session = session or requests.Session()
        self._clock = clock  # Unix time: token expiries are Unix times
        self.cache = TokenCache(cache_size, clock)
        self._misconfigured_until = 0.0

    @property
    def breaker_state(self) -> str:
        """closed | open | half_open for api mode; local mode has no dependency and is always closed."""
        return self._resilient.state if self._resilient is not None and self.mode == "api" else "closed"

    def cdn_path(self, key: str) -> str:
        """The percent-encoded path of object `key` on the CDN; raises InvalidCdnPathError for `!` or `~`."""
        path = f"{self.path_prefix}/{key.lstrip('/')}"
        if FORBIDDEN_PATH_CHARS.intersection(path):
            raise InvalidCdnPathError()
        return quote(path, safe="/")

    def signed_url(self, key: str, duration: int) -> str:
        """``{scheme}://{domain}{encoded path}?token={token}`` for object `key`, valid for about `duration` s."""
        path = self.cdn_path(key)
        return f"{self.scheme}://{self.domain}{path}?token={self.token(path, duration)}"

    def token(self, path: str, duration: int) -> str:
        """A token for the already-encoded CDN `path`: from the cache, computed locally, or from the API."""
        cached = self.cache.get(path, duration)
        if cached is not None:
            return cached
        now = self._clock()
        if self.mode == "local":
            expires = int(now) + duration
            token = compute_token(self._encrypt_key, expires=expires, path=path)
        else:
            token = self._token_from_api(path, duration)
            # Trust the API's own expiry, but never longer than what was asked for.
            expires = min(token_expiry(token) or int(now) + duration, int(now) + duration)
        self.cache.put(path, duration, token, expires)
        return token

    def _token_from_api(self, path: str, duration: int) -> str:
        if self._clock() < self._misconfigured_until:
            raise CdnUnavailableError("misconfigured", retry_after=int(CONFIG_ERROR_COOLDOWN_S))
        assert self._resilient is not None
        try:
            # Issuing a token has no side effect, so retrying the POST is safe.
            return self._resilient.call(self._request_token, path, duration, idempotent=True, operation="token")
        except DependencyUnavailableError as exc:
            raise CdnUnavailableError(exc.reason, exc.retry_after) from exc
        except CdnApiError as exc:
            log.error(
                "CDN token API refused the request",
                extra={"service": "cdn", "result_code": exc.code, "result_message": exc.message},
            )
            if exc.code in CONFIG_RESULT_CODES:
                self._misconfigured_until = self._clock() + CONFIG_ERROR_COOLDOWN_S
                raise CdnUnavailableError("misconfigured", retry_after=int(CONFIG_ERROR_COOLDOWN_S)) from exc
            raise CdnUnavailableError("rejected") from exc

    def _request_token(self, path: str, duration: int) -> str:
        assert self._resilient is not None and self._secret_key is not None
        response = self._session.post(
            self._token_url,
            json={"encryptKey": self._encrypt_key, "durationSeconds": duration, "singlePath": path},
            headers={"Authorization": self._secret_key, "Content-Type": "application/json"},
            timeout=self._resilient.policy.timeout,
        )
        raise_for_transient(response)
        if response.status_code != 200:
            raise CdnApiError(f"HTTP {response.status_code}", None)
        try:
            payload = response.json()
        except ValueError:
            # A 200 that is not the API's JSON comes from something in between (a proxy error page).
            raise TransientError("CDN token API answered 200 without JSON", status=200) from None
        header = payload.get("header") if isinstance(payload, dict) else None
        header = header if isinstance(header, dict) else {}
        if header.get("isSuccessful") is not True:
            code, message = header.get("resultCode"), header.get("resultMessage")
            if code in RETRYABLE_RESULT_CODES:
                raise TransientError(f"CDN token API resultCode {code}: {message}")
            raise CdnApiError(code, message)
        tokens = payload.get("authToken")
        token = tokens.get("singlePathToken") if isinstance(tokens, dict) else None
        if not isinstance(token, str) or not token:
            raise CdnApiError(None, "no authToken.singlePathToken in a successful answer")
        return token
