"""Object-storage tokens: Keystone v2 password auth (as NHN Cloud uses it) and Swift v1 auth (tempauth).

One `TokenSource` per process caches the token and the storage URL that goes with it. Refreshing is
done by one caller at a time: while the token is still valid but inside its refresh margin, other
callers keep using it instead of queueing; once it is missing or expired they wait for that one
refresh. Keystone's own failures come out as `StorageUnavailableError`; a credential rejection is the
subclass `AuthRejectedError` and is not retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import requests

from photo_api.resilience import DependencyUnavailableError, Resilient, raise_for_transient
from photo_api.storage.errors import StorageUnavailableError

log = logging.getLogger(__name__)

# NHN documents no fixed token lifetime, and Swift v1 only sends one with tempauth
# (X-Auth-Token-Expires); an hour is what NHN's examples show, so assume it when nothing is said.
DEFAULT_TOKEN_LIFETIME_S = 3600.0
# Refresh this long before expiry (the old service used 5 min) but never more than a tenth of a
# short-lived token's life, or a 60 s token would be refreshed on every call.
REFRESH_MARGIN_MAX_S = 300.0
REFRESH_MARGIN_FRACTION = 0.1
# An auth failure is handed to every caller arriving within this window instead of each of them
# asking Keystone again (a wrong password under load would otherwise become a request storm).
FAILURE_HOLD_S = 1.0
# Keystone's error messages are echoed into our errors and logs; keep them short.
MAX_MESSAGE_CHARS = 200


class AuthRejectedError(StorageUnavailableError):
    """The auth service refused our credentials (HTTP 401/403): fixing them needs an operator."""


@dataclass(frozen=True)
class Credentials:
    """Where and how to authenticate; `storage_url` overrides the one the auth service names."""

    auth_url: str
    version: Literal["1", "2"]
    username: str
    password: str
    tenant_id: str | None = None
    region: str = ""
    storage_url: str | None = None


@dataclass(frozen=True)
class Token:
    """A token, the account URL it is valid for, and when (on the monotonic clock) to refresh it."""

    id: str
    storage_url: str
    expires_at: float
    refresh_at: float


class TokenSource:
    """Hands out a cached token, authenticating when it is missing, stale or rejected."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        session: requests.Session,
        resilient: Resilient,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials = credentials
        self._session = session
        self._resilient = resilient
        self._clock = clock
        self._wall_clock = wall_clock
        # threading primitives are gevent's own in a gevent worker (monkey-patched before the app is
        # built), so waiting here yields to other greenlets instead of blocking the worker.
        self._refresh_lock = threading.Lock()
        self._state_lock = threading.Lock()  # held only for compare-and-set, never across I/O
        self._token: Token | None = None
        self._failure: tuple[float, StorageUnavailableError] | None = None

    def token(self) -> Token:
        """A valid token, authenticating first when needed (one caller at a time)."""
        current = self._token
        now = self._clock()
        if current is not None and now < current.refresh_at:
            return current
        if current is not None and now < current.expires_at:
            # Inside the refresh margin: one caller refreshes, the others carry on with the old token.
            if not self._refresh_lock.acquire(blocking=False):
                return current
            try:
                if self._token is not current and self._token is not None:
                    return self._token
                try:
                    return self._refresh()
                except StorageUnavailableError as exc:
                    log.warning("storage token refresh failed; using the current token", extra={"error": str(exc)})
                    return current
            finally:
                self._refresh_lock.release()
        # Missing or expired: everybody waits for the one refresh. The holder is bounded by the auth
        # policy's timeouts and deadline, so waiting that long (plus a little) is enough.
        wait = self._resilient.policy.deadline + self._resilient.policy.connect_timeout
        if not self._refresh_lock.acquire(timeout=wait):
            raise StorageUnavailableError("timed out waiting for the storage token", retry_after=1)
        try:
            fresh = self._token
            if fresh is not None and self._clock() < fresh.expires_at:
                return fresh
            held = self._failure
            if held is not None and self._clock() - held[0] < FAILURE_HOLD_S:
                raise type(held[1])(str(held[1]), retry_after=held[1].retry_after)
            return self._refresh()
        finally:
            self._refresh_lock.release()

    def storage_url(self) -> str:
        """The account URL: the configured override, else the one that came with the token."""
        if self._credentials.storage_url:
            return self._credentials.storage_url.rstrip("/")
        return self.token().storage_url

    def invalidate(self, token: Token) -> None:
        """Forget `token` after the storage rejected it (unless a newer one already replaced it)."""
        with self._state_lock:
            if self._token is not None and self._token.id == token.id:
                self._token = None

    def _refresh(self) -> Token:
        try:
            token = self._authenticate()
        except StorageUnavailableError as exc:
            self._failure = (self._clock(), exc)
            raise
        with self._state_lock:
            self._token = token
            self._failure = None
        return token

    def _authenticate(self) -> Token:
        attempt = self._keystone_v2 if self._credentials.version == "2" else self._swift_v1
        try:
            # Auth has no side effects, so it is retried like any idempotent call.
            return self._resilient.call(attempt, idempotent=True, operation="auth")
        except DependencyUnavailableError as exc:
            raise StorageUnavailableError(
                f"storage auth service unavailable ({exc.reason})", retry_after=exc.retry_after
            ) from exc
        except requests.RequestException as exc:
            raise StorageUnavailableError(f"storage auth request failed: {type(exc).__name__}") from exc

    def _keystone_v2(self) -> Token:
        creds = self._credentials
        body = {
            "auth": {
                "tenantId": creds.tenant_id,
                "passwordCredentials": {"username": creds.username, "password": creds.password},
            }
        }
        url = creds.auth_url.rstrip("/") + "/tokens"
        with self._session.post(url, json=body, timeout=self._resilient.policy.timeout) as response:
            raise_for_transient(response)
            if response.status_code in (400, 401, 403):
                raise AuthRejectedError(f"Keystone refused the credentials: {_keystone_message(response)}")
            if response.status_code != 200:
                raise StorageUnavailableError(f"Keystone answered HTTP {response.status_code}")
            try:
                access = response.json()["access"]
                token = access["token"]
                token_id = str(token["id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise StorageUnavailableError("Keystone sent a token response without access.token.id") from exc
        lifetime = self._keystone_lifetime(token)
        storage_url = creds.storage_url or _catalog_url(access, creds.region)
        return self._make_token(token_id, storage_url, lifetime)

    def _swift_v1(self) -> Token:
        creds = self._credentials
        headers = {"X-Auth-User": creds.username, "X-Auth-Key": creds.password}
        with self._session.get(creds.auth_url, headers=headers, timeout=self._resilient.policy.timeout) as response:
            raise_for_transient(response)
            if response.status_code in (401, 403):
                raise AuthRejectedError(f"Swift auth refused the credentials (HTTP {response.status_code})")
            if response.status_code not in (200, 204):
                raise StorageUnavailableError(f"Swift auth answered HTTP {response.status_code}")
            token_id = response.headers.get("X-Auth-Token") or response.headers.get("X-Storage-Token")
            storage_url = creds.storage_url or response.headers.get("X-Storage-Url")
            expires_in = response.headers.get("X-Auth-Token-Expires")
        if not token_id or not storage_url:
            raise StorageUnavailableError("Swift auth sent no X-Auth-Token or X-Storage-Url")
        lifetime = DEFAULT_TOKEN_LIFETIME_S
        if expires_in is not None:
            try:
                lifetime = float(expires_in)
            except ValueError:
                log.warning("ignoring an unparseable X-Auth-Token-Expires header")
        return self._make_token(token_id, storage_url, lifetime)

    def _keystone_lifetime(self, token: dict[str, Any]) -> float:
        """Seconds the token lives, measured on Keystone's own clock when it says when it issued it."""
        expires = _parse_time(token.get("expires"))
        if expires is None:
            return DEFAULT_TOKEN_LIFETIME_S
        # expires - issued_at is immune to skew between Keystone's clock and ours.
        issued = _parse_time(token.get("issued_at"))
        start = issued.timestamp() if issued is not None else self._wall_clock()
        return expires.timestamp() - start

    def _make_token(self, token_id: str, storage_url: str, lifetime: float) -> Token:
        lifetime = max(lifetime, 1.0)
        now = self._clock()
        margin = min(REFRESH_MARGIN_MAX_S, lifetime * REFRESH_MARGIN_FRACTION)
        return Token(
            id=token_id,
            storage_url=storage_url.rstrip("/"),
            expires_at=now + lifetime,
            refresh_at=now + lifetime - margin,
        )


def _catalog_url(access: dict[str, Any], region: str) -> str:
    """The object-store publicURL of the catalog: the endpoint of `region`, or the first one."""
    for service in access.get("serviceCatalog") or []:
        if not isinstance(service, dict) or service.get("type") != "object-store":
            continue
        for endpoint in service.get("endpoints") or []:
            if not isinstance(endpoint, dict) or not endpoint.get("publicURL"):
                continue
            if not region or str(endpoint.get("region", "")).lower() == region.lower():
                return str(endpoint["publicURL"])
    where = f" for region {region!r}" if region else ""
    raise StorageUnavailableError(f"the Keystone service catalog has no object-store endpoint{where}")


def _keystone_message(response: requests.Response) -> str:
    """Keystone's `error.message` (`{"error": {"code", "title", "message"}}`), or the status line."""
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}"
    return message[:MAX_MESSAGE_CHARS]


def _parse_time(value: Any) -> datetime | None:
    """Keystone timestamps: `2026-01-01T00:00:00Z`, or with microseconds and no zone (meaning UTC)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
