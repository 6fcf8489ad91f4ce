"""Calls to one dependency: total deadline outermost → `backoff` retries → circuit breaker → the call.

The breaker sees every real attempt, so it trips on real failures; once open, the inner call raises at
once, which `backoff` does not retry, so a dead dependency costs no I/O and no sleeps. (With the breaker
outside the retries, it would count one failure per request, not per attempt, trip RETRY_MAX_TRIES times
later, and every request would keep retrying a dead dependency for its whole retry budget.) Callers see
one exception type, `DependencyUnavailableError` (with a `retry_after` hint), which the storage/CDN/log layers
translate into their own vocabulary.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import backoff
from circuitbreaker import CircuitBreakerError

from photo_api.greenlets import deadline

from .breaker import Breaker
from .events import Events, LogEvents
from .failures import TRANSIENT_EXCEPTIONS, DependencyUnavailableError, is_timeout, outcome_of
from .policy import Policy

T = TypeVar("T")


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
        timer: Callable[[], float] = time.perf_counter,
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
        self._timer = timer

    @property
    def state(self) -> str:
        """closed | open | half_open."""
        return self.breaker.state

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
        """Run `fn(*args, **kwargs)` under the policy; raise DependencyUnavailableError when it cannot succeed.

        Non-idempotent calls (a POST that creates something) get one attempt: a retry could do it twice.
        `deadline_s` replaces the policy's deadline for this call (one dependency, one breaker, but an
        upload may need a longer budget than a HEAD). `operation` names the call for the events' timing
        (a small fixed vocabulary: get, put, copy, head, delete, auth, token, ship).
        """
        finished = getattr(self.events, "finished", None)
        if finished is None:
            return self._call(fn, args, kwargs, idempotent, deadline_s)
        started = self._timer()
        outcome: BaseException | None = None
        try:
            return self._call(fn, args, kwargs, idempotent, deadline_s)
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            finished(self.policy.service, operation, outcome_of(outcome), self._timer() - started)

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
            raise DependencyUnavailableError(policy.service, "circuit_open", self._retry_after()) from None
        except TRANSIENT_EXCEPTIONS as exc:
            retry_after = getattr(exc, "retry_after", None)
            hint = int(retry_after + 0.999) if retry_after else max(1, int(policy.recovery_timeout // 6))
            raise DependencyUnavailableError(policy.service, "exhausted", hint) from exc
        except BaseException as exc:
            if is_timeout(exc):
                self.events.giveup(policy.service, exc)
                raise DependencyUnavailableError(policy.service, "deadline", max(1, int(total))) from None
            raise
