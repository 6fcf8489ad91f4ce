"""Health checks: what the load balancer's probe is answered from. No Flask here."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .db import Database
from .models import utcnow

HEALTHY, UNHEALTHY, TIMEOUT, UNKNOWN, DISABLED = "healthy", "unhealthy", "timeout", "unknown", "disabled"


@dataclass
class HealthReport:
    status: str  # healthy | unhealthy | draining
    timestamp: datetime
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the instance should receive traffic."""
        return self.status == "healthy"


def check_database(db: Database, timeout: float) -> dict[str, Any]:
    """`SELECT 1` bounded by `timeout`: healthy with its latency, timeout, or unhealthy."""
    started = time.perf_counter()
    try:
        latency = db.ping(timeout)
    except BaseException as exc:  # gevent.Timeout is a BaseException
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        if type(exc).__name__ == "Timeout":
            return {"status": TIMEOUT, "latency_ms": elapsed_ms}
        if not isinstance(exc, Exception):
            raise
        return {"status": UNHEALTHY, "latency_ms": elapsed_ms}
    return {"status": HEALTHY, "latency_ms": round(latency, 1)}


class DatabaseProbe:
    """The database check of one worker, shared for `max_age` seconds and run by one caller at a time.

    Several load balancers probing every second, each over its own connections, then cost one
    `SELECT 1` per worker per `max_age`. While a probe runs, other callers wait for its result instead
    of starting their own (so a blackholed database does not get one hanging connect per probe); the
    probe itself is bounded by `timeout`, so nobody waits longer than that.
    """

    def __init__(
        self, db: Database, timeout: float, max_age: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self.timeout = timeout
        self.max_age = max_age
        self._clock = clock
        # A plain lock: under gevent it is monkey-patched and a waiting greenlet yields.
        self._lock = threading.Lock()
        self._result: dict[str, Any] | None = None
        self._checked_at = 0.0
        self.runs = 0  # how many probes actually reached the database

    def last(self) -> dict[str, Any] | None:
        """The latest result, however old, without probing (None before the first probe)."""
        return self._result

    def check(self) -> dict[str, Any]:
        """A result at most `max_age` old: the shared one, or a new probe."""
        if (fresh := self._fresh()) is not None:
            return fresh
        with self._lock:
            if (fresh := self._fresh()) is not None:  # another caller probed while we waited
                return fresh
            result = check_database(self.db, self.timeout)
            self.runs += 1
            self._result, self._checked_at = result, self._clock()
            return result

    def _fresh(self) -> dict[str, Any] | None:
        if self._result is not None and self._clock() - self._checked_at < self.max_age:
            return self._result
        return None


def readiness(probe: DatabaseProbe, *, draining: bool, informational: dict[str, dict[str, Any]]) -> HealthReport:
    """Can this instance serve? Only draining and the database decide; other checks are informational.

    A draining instance answers at once, with the last database result it has: the load balancer
    must see the 503 without waiting for a database that may be down too.
    """
    if draining:
        database = probe.last() or {"status": UNKNOWN}
        return HealthReport(status="draining", timestamp=utcnow(), checks={"database": database, **informational})
    database = probe.check()
    status = "healthy" if database["status"] == HEALTHY else "unhealthy"
    return HealthReport(status=status, timestamp=utcnow(), checks={"database": database, **informational})


def _from_circuit(circuit: str) -> dict[str, Any]:
    status = {"closed": HEALTHY, "open": UNHEALTHY}.get(circuit, UNKNOWN)
    return {"status": status, "circuit": circuit}


def storage_status(storage: Any) -> dict[str, Any]:
    """Object storage as the probe reports it, without network I/O: from its circuit breaker when it has
    one (Swift), else from its cheap local check (LocalStorage: the directory is usable)."""
    circuit = getattr(storage, "breaker_state", None)
    if isinstance(circuit, str):
        return _from_circuit(circuit)
    try:
        storage.check()
    except Exception:
        return {"status": UNHEALTHY, "circuit": "closed"}
    return {"status": HEALTHY, "circuit": "closed"}


def cdn_status(cdn: Any) -> dict[str, Any]:
    """The CDN token client's state: disabled when no CDN is configured, else from its circuit breaker."""
    if cdn is None:
        return {"status": DISABLED, "circuit": "closed"}
    return _from_circuit(str(cdn.breaker_state))
