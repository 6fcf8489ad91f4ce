"""The one place where deadlines, retries, circuit breakers, bulkheads and the connect gate live.

Order around an outbound call: total deadline outermost → `backoff` retries → circuit breaker → the call
(docs/operations.md, "Resilience of outbound calls"); `resilient.py` says why. The modules:

- `policy`: each dependency's timeouts, retry and breaker values, built from Settings in one place;
- `resilient`: the composition (`Resilient.call`);
- `breaker`: the adapter around the `circuitbreaker` package (one half-open trial, injectable clock);
- `failures`: what counts as a failure, and `DependencyUnavailableError`, the one exception callers see;
- `events`: where all of it is reported (`Events`; the composition root connects metrics to it);
- `bulkhead`: a bounded number of calls in flight per worker;
- `gate`: the database connect gate that db.py's engine puts in front of every new connection.
"""

from .breaker import Breaker
from .bulkhead import BULKHEAD_RETRY_AFTER_S, Bulkhead, BulkheadFullError
from .events import Events, LogEvents
from .failures import (
    RETRYABLE_STATUSES,
    TRANSIENT_EXCEPTIONS,
    CallerSideError,
    DependencyUnavailableError,
    TransientError,
    counts_as_failure,
    is_timeout,
    outcome_of,
    raise_for_transient,
    retry_after_seconds,
)
from .gate import CONNECT_RETRY_INTERVAL_S, REFUSAL_REASONS, ConnectGate, capacity_refusal
from .policy import Policies, Policy
from .resilient import Resilient

__all__ = [
    "BULKHEAD_RETRY_AFTER_S",
    "CONNECT_RETRY_INTERVAL_S",
    "REFUSAL_REASONS",
    "RETRYABLE_STATUSES",
    "TRANSIENT_EXCEPTIONS",
    "Breaker",
    "Bulkhead",
    "BulkheadFullError",
    "CallerSideError",
    "ConnectGate",
    "DependencyUnavailableError",
    "Events",
    "LogEvents",
    "Policies",
    "Policy",
    "Resilient",
    "TransientError",
    "capacity_refusal",
    "counts_as_failure",
    "is_timeout",
    "outcome_of",
    "raise_for_transient",
    "retry_after_seconds",
]
