"""Each dependency's timeouts, retries and breaker settings, built from Settings in this one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from photo_api.config import Service, Settings


@dataclass(frozen=True)
class Policy:
    """Timeouts, retry and breaker settings of one dependency."""

    service: str
    connect_timeout: float
    read_timeout: float
    deadline: float  # total for one logical call: every attempt and every backoff sleep
    max_tries: int
    max_time: float
    base_delay: float
    max_delay: float
    failure_threshold: int
    recovery_timeout: float

    @property
    def timeout(self) -> tuple[float, float]:
        """The (connect, read) pair for requests; read bounds each gap between bytes, not the total."""
        return (self.connect_timeout, self.read_timeout)


@dataclass(frozen=True)
class Policies:
    """The policy of every outbound dependency (docs/operations.md, "Resilience of outbound calls")."""

    storage: Policy  # Swift's object API
    storage_auth: Policy  # Keystone v2 or Swift v1 auth, its own breaker
    cdn: Policy  # the CDN auth-token API
    log: Policy  # the Log & Crash collector

    @classmethod
    def from_settings(cls, settings: Settings) -> Policies:
        """Every dependency's Policy: its timeouts, and the RETRY_*/BREAKER_* values with its own overrides.

        A deadline defaults to the read timeout: the configured timeout is the budget of one logical
        call, so quick failures (refused connections, 5xx) are retried within it while a stalled read
        is not repeated.
        """
        read_log = settings.log_service_timeout
        return cls(
            # Object calls: STORAGE_DOWNLOAD_TIMEOUT is the read timeout and the deadline of GET/HEAD/DELETE
            # (for a GET: until the headers arrive); uploads get STORAGE_UPLOAD_TIMEOUT for both, per call.
            storage=_policy(settings, "storage", "storage", read_timeout=settings.storage_download_timeout),
            # The auth service has a breaker of its own, with the STORAGE_ overrides.
            storage_auth=_policy(settings, "storage_auth", "storage", read_timeout=settings.storage_auth_timeout),
            # On the request path with a streaming fallback, so CDN_TIMEOUT is both the read timeout of one
            # attempt and the total deadline of the lookup: past it, the image is streamed instead.
            cdn=_policy(settings, "cdn", "cdn", read_timeout=settings.cdn_timeout),
            # In the background, so the deadline leaves room for the whole retry budget (RETRY_MAX_TIME)
            # plus one last attempt (backoff checks max_time only before an attempt, so the last one may
            # start just before the budget runs out and then take its whole timeout).
            log=_policy(
                settings,
                "log",
                "log",
                read_timeout=read_log,
                deadline=settings.retry_max_time + settings.http_timeout_connect + read_log,
            ),
        )


def _policy(
    settings: Settings, name: str, service: Service, *, read_timeout: float, deadline: float | None = None
) -> Policy:
    values = settings.resilience_values(service)
    return Policy(
        service=name,
        connect_timeout=settings.http_timeout_connect,
        read_timeout=read_timeout,
        deadline=read_timeout if deadline is None else deadline,
        max_tries=values.retry_max_tries,
        max_time=values.retry_max_time,
        base_delay=values.retry_base_delay,
        max_delay=values.retry_max_delay,
        failure_threshold=values.breaker_failure_threshold,
        recovery_timeout=values.breaker_recovery_timeout,
    )
