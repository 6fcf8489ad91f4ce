"""The one place where deadlines, retries and circuit breakers are composed around outbound calls.

Order: total deadline outermost → `backoff` retries → circuit breaker → the call (docs/operations.md,
"Resilience of outbound calls"). The breaker sees every real attempt, so it trips on real failures;
once open, the inner call raises at once, which `backoff` does not retry, so a dead dependency costs no
I/O and no sleeps. (With the breaker outside the retries, it would count one failure per request, not
per attempt, trip RETRY_MAX_TRIES times later, and every request would keep retrying a dead dependency
for its whole retry budget.) Callers see one exception type, `DependencyUnavailable` (with a
`retry_after` hint), which the storage/CDN/log layers translate into their own vocabulary.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import backoff
import requests
from circuitbreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, CircuitBreaker, CircuitBreakerError

from .greenlets import deadline

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Numeric codes of the breaker state gauge (photo_api_circuit_breaker_state: 0 closed, 1 open, 2 half-open).
STATE_CODES = {STATE_CLOSED: 0, STATE_OPEN: 1, STATE_HALF_OPEN: 2}
# Statuses worth another try: the dependency may answer differently a moment later.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class TransientError(Exception):
    """A failure worth retrying (5xx, 429, 408, a dropped connection); may carry the server's Retry-After."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class DependencyUnavailable(Exception):
    """The dependency could not serve this call: deadline passed, retries exhausted, or circuit open."""

    def __init__(self, service: str, reason: str, retry_after: int = 5):
        super().__init__(f"{service} unavailable: {reason}")
        self.service = service
        self.reason = reason  # "circuit_open" | "deadline" | "exhausted"
        self.retry_after = retry_after


# Failures that count against a dependency (and, for idempotent calls, are retried).
TRANSIENT_EXCEPTIONS: tuple[type[Exception], ...] = (
    TransientError,
    requests.ConnectionError,
    requests.Timeout,
)


def _is_timeout(exc: BaseException) -> bool:
    try:
        import gevent
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return isinstance(exc, gevent.Timeout)


def counts_as_failure(exc_type: type[BaseException], exc: BaseException) -> bool:
    """Breaker predicate: transient errors and gevent timeouts are failures; anything else is an answer.

    gevent.Timeout is a BaseException, which the stock breaker (circuitbreaker 2.1) treats like a success:
    it would *reset* the failure count instead of adding to it, so it is listed explicitly.
    """
    return issubclass(exc_type, TRANSIENT_EXCEPTIONS) or _is_timeout(exc)


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


def policy_for(settings: Settings, service: str, *, read_timeout: float, deadline: float | None = None) -> Policy:
    """Build `service`'s Policy from the global RETRY_*/BREAKER_* settings and its own overrides.

    `deadline` defaults to `read_timeout`: the configured timeout is the budget of one logical call, so
    quick failures (refused connections, 5xx) are retried within it while a stalled read is not repeated.
    """
    values = settings.resilience_values(service)  # type: ignore[arg-type]
    return Policy(
        service=service,
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


class Events(Protocol):
    """Where resilience events go (logs now; metrics attach here too)."""

    def retry(self, service: str, exc: BaseException, wait: float) -> None: ...
    def giveup(self, service: str, exc: BaseException) -> None: ...
    def state_change(self, service: str, old: str, new: str) -> None: ...
    def rejected(self, service: str) -> None: ...


class LogEvents:
    """Resilience events as structured log lines."""

    def retry(self, service: str, exc: BaseException, wait: float) -> None:
        log.info("retrying", extra={"service": service, "error": type(exc).__name__, "wait_s": round(wait, 3)})

    def giveup(self, service: str, exc: BaseException) -> None:
        log.warning("giving up", extra={"service": service, "error": type(exc).__name__})

    def state_change(self, service: str, old: str, new: str) -> None:
        log.warning("circuit breaker state change", extra={"service": service, "from": old, "to": new})

    def rejected(self, service: str) -> None:
        log.debug("circuit open: call rejected", extra={"service": service})


class Breaker(CircuitBreaker):
    """fabfuel's breaker with three fixes: one trial call when half-open, an injectable clock, state events.

    The stock breaker admits every caller while half-open (a stampede on a dependency that is just
    recovering) and reads `time.monotonic` directly, so tests could not move its clock.
    """

    def __init__(
        self,
        service: str,
        *,
        failure_threshold: int,
        recovery_timeout: float,
        events: Events,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            expected_exception=counts_as_failure,
            name=service,
        )
        self._clock = clock
        self._opened = clock()
        self._events = events
        self._trial_in_flight = False
        self._reported_state = STATE_CLOSED

    @property
    def open_remaining(self) -> float:
        """Seconds until an open circuit lets a trial call through (≤ 0 once it may)."""
        return float(self._opened + self._recovery_timeout - self._clock())

    def _report(self) -> None:
        state = self.state
        if state != self._reported_state:
            old, self._reported_state = self._reported_state, state
            self._events.state_change(self._name or "?", old, state)

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `func` under the breaker; raise CircuitBreakerError at once when it may not run."""
        state = self.state
        self._report()
        if state == STATE_OPEN or (state == STATE_HALF_OPEN and self._trial_in_flight):
            self._events.rejected(self._name or "?")
            raise CircuitBreakerError(self)
        if state == STATE_HALF_OPEN:
            self._trial_in_flight = True
        with self:
            return func(*args, **kwargs)
        raise AssertionError("unreachable: __exit__ never swallows")  # pragma: no cover

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> Literal[False]:
        self._trial_in_flight = False
        if exc_type is not None and exc is not None and counts_as_failure(exc_type, exc):
            self._last_failure = exc
            self._failure_count += 1
            if self._failure_count >= self._failure_threshold:
                self._state = STATE_OPEN
                self._opened = self._clock()
        elif exc_type is None or issubclass(exc_type, Exception):
            # The dependency answered (a 404 is an answer): close and forget earlier failures.
            self.reset()
        # Anything else (GreenletExit, KeyboardInterrupt) says nothing about the dependency.
        self._report()
        return False


def _wait_gen(policy: Policy, rand: Callable[[float, float], float]) -> Generator[float, Any, None]:
    """Exponential backoff with full jitter, or the server's Retry-After when it sent one.

    backoff sends each failure's exception into the generator, which is how Retry-After reaches it.
    """
    exc = yield 0.0  # primed by backoff with send(None)
    attempt = 0
    while True:
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            value = float(retry_after)
        else:
            value = rand(0, min(policy.max_delay, policy.base_delay * (2**attempt)))
        attempt += 1
        exc = yield value


class Resilient:
    """Calls to one dependency: deadline → retries (idempotent calls only) → breaker → call."""

    def __init__(
        self,
        policy: Policy,
        *,
        events: Events | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[float, float], float] = random.uniform,
    ):
        self.policy = policy
        self.events: Events = events or LogEvents()
        self.breaker = Breaker(
            policy.service,
            failure_threshold=policy.failure_threshold,
            recovery_timeout=policy.recovery_timeout,
            events=self.events,
            clock=clock,
        )
        self._rand = rand

    @property
    def state(self) -> str:
        """closed | open | half_open."""
        return str(self.breaker.state)

    def _retry_after(self) -> int:
        return max(1, int(self.breaker.open_remaining + 0.999))

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        idempotent: bool = True,
        deadline_s: float | None = None,
        operation: str = "call",
        **kwargs: Any,
    ) -> T:
        """Run `fn(*args, **kwargs)` under the policy; raise DependencyUnavailable when it cannot succeed.

        Non-idempotent calls (a POST that creates something) get one attempt: a retry could do it twice.
        `deadline_s` replaces the policy's deadline for this call (one dependency, one breaker, but an
        upload may need a longer budget than a HEAD). `operation` names the call for the events' timing
        (a small fixed vocabulary: get, put, head, delete, auth, token, ship).
        """
        finished = getattr(self.events, "finished", None)
        if finished is None:
            return self._call(fn, args, kwargs, idempotent, deadline_s)
        started = time.perf_counter()
        outcome: BaseException | None = None
        try:
            return self._call(fn, args, kwargs, idempotent, deadline_s)
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            finished(self.policy.service, operation, outcome, time.perf_counter() - started)

    def _call(self, fn: Callable[..., T], args: Any, kwargs: Any, idempotent: bool, deadline_s: float | None) -> T:
        policy = self.policy
        total = policy.deadline if deadline_s is None else deadline_s

        def attempt() -> T:
            return self.breaker.call(fn, *args, **kwargs)

        retrying = backoff.on_exception(
            lambda: _wait_gen(policy, self._rand),
            TRANSIENT_EXCEPTIONS,
            max_tries=policy.max_tries if idempotent else 1,
            max_time=policy.max_time,
            jitter=None,  # applied by _wait_gen, so a Retry-After is honoured as sent
            on_backoff=lambda d: self.events.retry(policy.service, d["exception"], d["wait"]),
            on_giveup=lambda d: self.events.giveup(policy.service, d["exception"]),
            logger=None,
        )(attempt)
        try:
            with deadline(total):
                return retrying()
        except CircuitBreakerError:
            raise DependencyUnavailable(policy.service, "circuit_open", self._retry_after()) from None
        except TRANSIENT_EXCEPTIONS as exc:
            retry_after = getattr(exc, "retry_after", None)
            hint = int(retry_after + 0.999) if retry_after else max(1, int(policy.recovery_timeout // 6))
            raise DependencyUnavailable(policy.service, "exhausted", hint) from exc
        except BaseException as exc:
            if _is_timeout(exc):
                self.events.giveup(policy.service, exc)
                raise DependencyUnavailable(policy.service, "deadline", max(1, int(total))) from None
            raise
