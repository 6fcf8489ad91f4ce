"""Login and registration throttling (Flask-Limiter): which limits apply to which route, keyed by what.

The composition root (`photo_api.app`) builds the `Limiter` (its storage: Redis when REDIS_URL is set, so
that every instance behind the load balancer counts against one limit; else this worker's memory) and
calls `install`. This module knows the routes and the keys:

* `POST /auth/login`: per account (the normalised e-mail, hashed: no address is written to Redis) and per
  client address;
* `POST /auth/register`: per client address.

The client address is `request.remote_addr` after ProxyFix, i.e. the address our own TRUSTED_PROXY_COUNT
proxies saw: an X-Forwarded-For the client wrote itself is never believed, so changing it does not move a
client to another bucket.

A refused request is a 429 problem+json with `Retry-After` (the seconds until the oldest counted attempt
leaves the window). When the store fails, Flask-Limiter falls back to counting in this worker's memory and
re-checks Redis with a backoff (1 s, 2 s, ... 32 s): a login never fails, nor waits more than the store's
socket timeout, because Redis is down (docs/operations.md, "Throttling").
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, request
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from limits.storage import RedisStorage

from ..errors import TooManyRequestsError
from ..services.users import normalise_email
from .errors import app_error_response

# The Redis URL given to the limiter is REDIS_URL behind this prefix, which selects ObservedRedisStorage.
STORE_SCHEME_PREFIX = "photo-api+"
# Keys of the limiter in Redis start with this (limits adds its own "LIMITS:" in front): REDIS_URL's
# database is shared with the job queue, whose keys start with "rq:".
KEY_PREFIX = "photo-api"
# The longest e-mail LoginIn accepts: anything longer is refused with 422 before any hashing, and is not
# worth normalising (email-validator on a megabyte of text) to count it.
MAX_EMAIL_LENGTH = 254
LOGIN_ENDPOINT = "auth.login"
REGISTER_ENDPOINT = "auth.register"
RATE_LIMITED_DETAIL = "Too many attempts; retry after the number of seconds in Retry-After"


@dataclass(frozen=True)
class Throttles:
    """The limits, as Flask-Limiter strings ("10 per minute;50 per hour"), checked at start by config.rules."""

    login_per_account: str
    login_per_address: str
    register_per_address: str


class ObservedRedisStorage(RedisStorage):
    """limits' Redis storage, reporting every failed call to `on_error` before Flask-Limiter falls back.

    Selected by the `photo-api+redis://` (`+rediss://`, `+unix://`) scheme; the rest of the URL is REDIS_URL.
    Only the calls of the moving-window strategy are observed (the strategy the limiter is built with),
    and the health check Flask-Limiter makes while it runs on the fallback.
    """

    STORAGE_SCHEME = [f"{STORE_SCHEME_PREFIX}redis", f"{STORE_SCHEME_PREFIX}rediss", f"{STORE_SCHEME_PREFIX}unix"]

    def __init__(self, uri: str, *, on_error: Callable[[str], None] | None = None, **options: Any) -> None:
        self.on_error = on_error or (lambda _error: None)
        super().__init__(uri.removeprefix(STORE_SCHEME_PREFIX), **options)

    @contextlib.contextmanager
    def _observed(self) -> Iterator[None]:
        try:
            yield
        except self.base_exceptions as exc:
            self.on_error(type(exc).__name__)
            raise

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Count one attempt in the moving window of `key`, if there is room."""
        with self._observed():
            return super().acquire_entry(key, limit, expiry, amount)

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """The start of the window of `key` and the attempts in it."""
        with self._observed():
            return super().get_moving_window(key, limit, expiry)

    def check(self) -> bool:
        """Whether Redis answers (Flask-Limiter asks, with a backoff, while it counts in memory)."""
        healthy = super().check()
        if not healthy:
            self.on_error("unreachable")
        return healthy


def client_address() -> str:
    """The client's address as our trusted proxies saw it (ProxyFix has applied TRUSTED_PROXY_COUNT)."""
    return request.remote_addr or "unknown"


def _address_key() -> str:
    return f"address:{client_address()}"


def _login_email() -> str | None:
    body = request.get_json(silent=True)
    email = body.get("email") if isinstance(body, dict) else None
    if not isinstance(email, str) or not email.strip() or len(email) > MAX_EMAIL_LENGTH:
        return None
    return email


def _account_key() -> str:
    # The form registration stores and login looks up: `Alice@EXAMPLE.com` and `alice@example.com` are
    # one account, and so one bucket. Hashed, so that no e-mail address is written to Redis.
    email = _login_email() or ""
    return "account:" + hashlib.sha256(normalise_email(email).encode()).hexdigest()[:32]


def _without_account() -> bool:
    # A body without a usable e-mail is refused with 422 before any hashing: no account to count against
    # (the per-address limit still counts it).
    return _login_email() is None


def install(app: Flask, limiter: Limiter, throttles: Throttles, *, on_limited: Callable[[str, str], None]) -> None:
    """Attach `limiter` to `app` and limit the login and register views; `on_limited(route, scope)` per 429."""
    limiter.init_app(app)
    # Flask-Limiter checks every request in a before_request hook; while Redis is down that check pings
    # Redis (with its backoff) on whatever request comes: a health probe must never be the one to wait.
    limiter.request_filter(lambda: request.endpoint not in (LOGIN_ENDPOINT, REGISTER_ENDPOINT))

    def breached(route: str, scope: str) -> Callable[[RequestLimit], None]:
        def note(_limit: RequestLimit) -> None:
            on_limited(route, scope)

        return note

    login: Any = app.view_functions[LOGIN_ENDPOINT]  # Flask's view type is a union flask-limiter's wrapper is not
    login = limiter.limit(
        throttles.login_per_account,
        key_func=_account_key,
        scope="login-account",
        exempt_when=_without_account,
        on_breach=breached("login", "account"),
    )(login)
    login = limiter.limit(
        throttles.login_per_address,
        key_func=_address_key,
        scope="login-address",
        on_breach=breached("login", "address"),
    )(login)
    app.view_functions[LOGIN_ENDPOINT] = login
    register: Any = limiter.limit(
        throttles.register_per_address,
        key_func=_address_key,
        scope="register-address",
        on_breach=breached("register", "address"),
    )(app.view_functions[REGISTER_ENDPOINT])
    app.view_functions[REGISTER_ENDPOINT] = register

    def too_many(exc: RateLimitExceeded) -> Response:
        return app_error_response(TooManyRequestsError(RATE_LIMITED_DETAIL, retry_after=_retry_after(limiter, exc)))

    app.register_error_handler(RateLimitExceeded, too_many)


def _retry_after(limiter: Limiter, exc: RateLimitExceeded) -> int:
    """Whole seconds until the breached limit lets one more attempt through (at least 1)."""
    # When the store fails after counting, the whole window is a safe answer.
    with contextlib.suppress(Exception):
        current = limiter.current_limit
        if current is not None and current.breached:
            return max(1, math.ceil(current.window.reset_time - time.time()))
    return max(1, int(exc.limit.limit.get_expiry()))
