"""Where resilience reports what happens: the `Events` protocol, and log lines as its default."""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("photo_api.resilience")


class Events(Protocol):
    """Where resilience events go (logs by default; the composition root attaches metrics here).

    An implementation may also have `finished(service, operation, outcome, seconds)`, called once per
    logical call with its duration and `failures.outcome_of` its exception (ok, timeout, ...);
    `Resilient` looks it up, so a plain log sink needs no timing.
    """

    def retry(self, service: str, exc: BaseException, wait: float) -> None: ...
    def giveup(self, service: str, exc: BaseException) -> None: ...
    def state_change(self, service: str, old: str, new: str) -> None: ...
    def rejected(self, service: str) -> None: ...


class LogEvents:
    """Resilience events as structured log lines."""

    def retry(self, service: str, exc: BaseException, wait: float) -> None:
        """A failed attempt that will be tried again after `wait` seconds."""
        log.info("retrying", extra={"service": service, "error": type(exc).__name__, "wait_s": round(wait, 3)})

    def giveup(self, service: str, exc: BaseException) -> None:
        """The last failed attempt of a call."""
        log.warning("giving up", extra={"service": service, "error": type(exc).__name__})

    def state_change(self, service: str, old: str, new: str) -> None:
        """The breaker moved from `old` to `new`."""
        log.warning("circuit breaker state change", extra={"service": service, "from": old, "to": new})

    def rejected(self, service: str) -> None:
        """A call refused without I/O because the circuit is open."""
        log.debug("circuit open: call rejected", extra={"service": service})
