"""The adapter that resilience reports to: breaker state, retries, rejections and call durations as metrics.

`ResilienceMetrics` has the shape of `resilience.Events` (mypy checks it where the composition root hands
it to `Resilient`) without importing resilience: neither layer knows the other, the composition root
connects them, and the adapter needs only plain values (service and state names, an outcome string that
resilience.outcome_of computed).
"""

from __future__ import annotations

from typing import Protocol

from . import recording
from .catalogue import BREAKER_STATE_CODES, OUTCOMES, bounded


class EventSink(Protocol):
    """The events ResilienceMetrics passes on (resilience.LogEvents in production: the log lines)."""

    def retry(self, service: str, exc: BaseException, wait: float) -> None: ...
    def giveup(self, service: str, exc: BaseException) -> None: ...
    def state_change(self, service: str, old: str, new: str) -> None: ...
    def rejected(self, service: str) -> None: ...


class ResilienceMetrics:
    """Events that record retries, give-ups, rejections, breaker state and call durations, then pass each on.

    Built by the composition root with every service name its policies use (e.g. `storage` and
    `storage_auth`), so that each dependency's breaker and retry series exist at 0 from boot:
    `Resilient(policy, events=ResilienceMetrics(policy.service, inner=LogEvents()))`.
    """

    def __init__(self, *services: str, inner: EventSink | None):
        # No default: a composition root that forgot LogEvents would silently lose the log lines.
        self.inner = inner
        for service in services:
            recording.announce(service)

    def retry(self, service: str, exc: BaseException, wait: float) -> None:
        """A failed attempt that will be tried again after `wait` seconds."""
        if (cat := recording.current()) is not None:
            cat.retry_attempts.labels(service, "retry").inc()
        if self.inner is not None:
            self.inner.retry(service, exc, wait)

    def giveup(self, service: str, exc: BaseException) -> None:
        """The last failed attempt: tries, time or deadline used up."""
        if (cat := recording.current()) is not None:
            cat.retry_attempts.labels(service, "giveup").inc()
        if self.inner is not None:
            self.inner.giveup(service, exc)

    def state_change(self, service: str, old: str, new: str) -> None:
        """The breaker moved from `old` to `new` (closed | open | half_open)."""
        if (cat := recording.current()) is not None:
            # An unknown state counts as open: the gauge must never claim health it cannot vouch for.
            cat.breaker_state.labels(service).set(BREAKER_STATE_CODES.get(new, BREAKER_STATE_CODES["open"]))
            cat.breaker_transitions.labels(service, new).inc()
        if self.inner is not None:
            self.inner.state_change(service, old, new)

    def rejected(self, service: str) -> None:
        """A call refused without I/O because the circuit is open."""
        if (cat := recording.current()) is not None:
            cat.breaker_rejected.labels(service).inc()
        if self.inner is not None:
            self.inner.rejected(service)

    def finished(self, service: str, operation: str, outcome: str, seconds: float) -> None:
        """One logical outbound call ended with `outcome` (ok, error, timeout, ...): its duration."""
        if (cat := recording.current()) is not None:
            cat.external_duration.labels(service, operation, bounded(outcome, OUTCOMES)).observe(seconds)
