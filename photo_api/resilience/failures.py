"""What counts as a dependency failing: the exceptions retried and counted by the breaker, and the one raised."""

from __future__ import annotations

import requests

# Statuses worth another try: the dependency may answer differently a moment later.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class TransientError(Exception):
    """A failure worth retrying (5xx, 429, 408, a dropped connection); may carry the server's Retry-After."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class DependencyUnavailableError(Exception):
    """The dependency could not serve this call: deadline passed, retries exhausted, or circuit open."""

    def __init__(self, service: str, reason: str, retry_after: int = 5):
        super().__init__(f"{service} unavailable: {reason}")
        self.service = service
        self.reason = reason  # "circuit_open" | "deadline" | "exhausted"
        self.retry_after = retry_after


class CallerSideError(Exception):
    """Raised through a dependency call by the caller's own side (its upload source failed or stalled).

    Says nothing about the dependency: the breaker neither counts it as a failure nor takes it as a
    success (which would reset the count of failures before it), and it is not retried.
    """


# Failures that count against a dependency (and, for idempotent calls, are retried).
TRANSIENT_EXCEPTIONS: tuple[type[Exception], ...] = (
    TransientError,
    requests.ConnectionError,
    requests.Timeout,
)


def is_timeout(exc: BaseException) -> bool:
    """True for gevent's Timeout: a deadline ended the call (a BaseException, not an Exception)."""
    try:
        import gevent
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return isinstance(exc, gevent.Timeout)


def counts_as_failure(exc_type: type[BaseException], exc: BaseException) -> bool:
    """Breaker predicate: transient errors and gevent timeouts are failures; anything else is an answer."""
    return issubclass(exc_type, TRANSIENT_EXCEPTIONS) or is_timeout(exc)


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a Retry-After header given in seconds (HTTP dates are rare from APIs; treated as absent)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def raise_for_transient(response: requests.Response) -> requests.Response:
    """Turn a retryable HTTP status into TransientError; other responses pass through unchanged."""
    if response.status_code in RETRYABLE_STATUSES:
        raise TransientError(
            f"HTTP {response.status_code}",
            status=response.status_code,
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    return response


def outcome_of(exc: BaseException | None) -> str:
    """How a logical call ended, for its duration metric: ok, circuit_open, timeout, unavailable, error, cancelled."""
    if exc is None:
        return "ok"
    if isinstance(exc, DependencyUnavailableError):
        return {"circuit_open": "circuit_open", "deadline": "timeout"}.get(exc.reason, "unavailable")
    if isinstance(exc, requests.Timeout) or is_timeout(exc):
        return "timeout"
    # The caller's side gave up (its upload source failed), or something that is not an Exception
    # (GreenletExit, KeyboardInterrupt) stopped the caller: either way not the call's outcome.
    return "error" if isinstance(exc, Exception) and not isinstance(exc, CallerSideError) else "cancelled"
