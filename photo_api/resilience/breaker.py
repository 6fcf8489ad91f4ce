"""The circuit breaker: fabfuel's `circuitbreaker` package, adapted in this one class (checked against 2.1.3).

What the adapter needs, and which part of the library each behaviour rests on:

- Counting consecutive failures, opening at the threshold, closing on an answer: the library, through
  its context manager (`with self:`), `failure_count` and `reset()`. Relied on: `__exit__` adds one to
  `failure_count` for a failure and calls `reset()` (count 0) for anything else; the circuit is open
  exactly while `failure_count >= failure_threshold` (the library never sets a state of its own otherwise).
- gevent's Timeout counted as a failure: the predicate form of `expected_exception`, which the
  library's `__exit__` consults for *every* exception, BaseExceptions included (not documented).
- GreenletExit or KeyboardInterrupt, and a `CallerSideError` (the caller's own upload source failed or
  stalled), neither counted nor resetting the count: the library would `reset()` on them, so `__exit__`
  below does not hand them to it.
- An injectable clock: the library reads `time.monotonic`, imported into its module, with no
  parameter. So `state` and `open_remaining` are recomputed here from the public `failure_count` and
  the time this class saw the count reach the threshold, on its own clock.
- One trial call while half-open, and state-change events: not in the library (its half-open state
  admits every caller; it has no listeners), so `call()` below does both.

No private attribute of the library is read or written. tests/test_breaker_pin.py checks the
installed version and each "relied on" above against the library itself: after an upgrade, re-check
them there before changing the pinned version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from circuitbreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, CircuitBreaker, CircuitBreakerError

from .events import Events
from .failures import CallerSideError, counts_as_failure

T = TypeVar("T")

CHECKED_VERSION = "2.1.3"


class Breaker(CircuitBreaker):
    """One dependency's breaker: a single trial call when half-open, an injectable clock, state events."""

    def __init__(
        self,
        service: str,
        *,
        failure_threshold: int,
        recovery_timeout: float,
        events: Events,
        clock: Callable[[], float] = time.monotonic,
    ):
        # The library replaces a 0 with its own default (5 failures, 30 s); refuse instead.
        if failure_threshold < 1 or recovery_timeout <= 0:
            raise ValueError("failure_threshold must be at least 1 and recovery_timeout positive")
        super().__init__(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            expected_exception=counts_as_failure,
            name=service,
        )
        self.service = service
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self._clock = clock
        self._opened_at = clock()
        self._events = events
        self._trial_in_flight = False
        self._reported_state = STATE_CLOSED

    @property
    def state(self) -> str:
        """closed | open | half_open, on this breaker's clock."""
        if self.failure_count < self.failure_threshold:
            return STATE_CLOSED
        return STATE_OPEN if self.open_remaining > 0 else STATE_HALF_OPEN

    @property
    def open_remaining(self) -> float:
        """Seconds until an open circuit lets a trial call through (≤ 0 once it may)."""
        return self._opened_at + self.recovery_timeout - self._clock()

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `func` under the breaker; raise CircuitBreakerError at once when it may not run."""
        state = self.state
        self._report(state)
        if state == STATE_OPEN or (state == STATE_HALF_OPEN and self._trial_in_flight):
            self._events.rejected(self.service)
            raise CircuitBreakerError(self)
        trial = state == STATE_HALF_OPEN
        if trial:
            # Until this call ends, every other caller is refused: a recovering dependency is not stampeded.
            self._trial_in_flight = True
        try:
            with self:
                return func(*args, **kwargs)
        finally:
            if trial:
                self._trial_in_flight = False

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is not None and _says_nothing(exc):
            return False
        before = self.failure_count
        super().__exit__(exc_type, exc, tb)  # a failure adds one; anything else resets (closes)
        if self.failure_count > before and self.failure_count >= self.failure_threshold:
            self._opened_at = self._clock()  # opened now, or re-opened by a failed trial
        self._report(self.state)
        return False

    def _report(self, state: str) -> None:
        if state != self._reported_state:
            old, self._reported_state = self._reported_state, state
            self._events.state_change(self.service, old, state)


def _says_nothing(exc: BaseException) -> bool:
    """GreenletExit, KeyboardInterrupt or the caller's own failure: nothing said about the dependency."""
    if isinstance(exc, CallerSideError):
        return True
    return not isinstance(exc, Exception) and not counts_as_failure(type(exc), exc)
