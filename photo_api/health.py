"""Health checks: what the load balancer's probe is answered from. No Flask here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import migrate
from .db import Database
from .models import utcnow

log = logging.getLogger(__name__)

HEALTHY, UNHEALTHY, TIMEOUT, UNKNOWN, DISABLED = "healthy", "unhealthy", "timeout", "unknown", "disabled"
# The checks that decide readiness; the others (object storage, CDN) are informational.
READINESS_CHECKS = ("database", "schema")


@dataclass
class HealthReport:
    status: str  # healthy | unhealthy | draining
    timestamp: datetime
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the instance should receive traffic."""
        return self.status == "healthy"


def check_database(db: Database, timeout: float) -> tuple[dict[str, dict[str, Any]], migrate.SchemaState | None]:
    """The `database` and `schema` checks, from one connection bounded by `timeout`, and the schema's state.

    database: healthy with its latency, timeout, or unhealthy. schema: healthy when this version can
    serve on the database's revision (migrate.SchemaState, None when the database did not answer),
    unhealthy when not, unknown when the database did not answer.
    """
    expected = migrate.expectation()
    started = time.perf_counter()
    try:
        latency, (revision, epoch) = db.ping(timeout, migrate.read_schema)
    except BaseException as exc:  # gevent.Timeout is a BaseException
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        if type(exc).__name__ == "Timeout":
            database = {"status": TIMEOUT, "latency_ms": elapsed_ms}
        elif not isinstance(exc, Exception):
            raise
        else:
            database = {"status": UNHEALTHY, "latency_ms": elapsed_ms}
        return {"database": database, "schema": {"status": UNKNOWN, "expected": expected.head}}, None
    state = expected.judge(revision, epoch)
    schema = {"status": HEALTHY if state.serving else UNHEALTHY, "current": state.current, "expected": state.expected}
    return {"database": {"status": HEALTHY, "latency_ms": round(latency, 1)}, "schema": schema}, state


class DatabaseProbe:
    """The database and schema checks of one worker, shared for `max_age` seconds and run by one caller at a time.

    Several load balancers probing every second, each over its own connections, then cost one query
    per worker per `max_age`. While a probe runs, other callers wait for its result instead of starting
    their own (so a blackholed database does not get one hanging connect per probe); the probe itself is
    bounded by `timeout`, so nobody waits longer than that. The schema's state is logged when first seen
    (if this version cannot serve on it) and whenever it changes.
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
        self._result: dict[str, dict[str, Any]] | None = None
        self._checked_at = 0.0
        self._schema: migrate.SchemaState | None = None
        self.runs = 0  # how many probes actually reached the database

    def last(self) -> dict[str, dict[str, Any]] | None:
        """The latest checks, however old, without probing (None before the first probe)."""
        return self._result

    def check(self) -> dict[str, dict[str, Any]]:
        """Checks at most `max_age` old: the shared ones, or a new probe."""
        if (fresh := self._fresh()) is not None:
            return fresh
        with self._lock:
            if (fresh := self._fresh()) is not None:  # another caller probed while we waited
                return fresh
            result, state = check_database(self.db, self.timeout)
            self.runs += 1
            if state is not None:
                self._note_schema(state)
            self._result, self._checked_at = result, self._clock()
            return result

    def _note_schema(self, state: migrate.SchemaState) -> None:
        previous, self._schema = self._schema, state
        if previous is None and state.serving:
            return  # the normal start: nothing to say
        if previous is not None and (previous.status, previous.current) == (state.status, state.current):
            return
        extra = {"schema_status": state.status, "current": state.current, "expected": state.expected}
        if state.serving:
            log.info("schema: %s; ready", state.describe(), extra=extra)
        else:
            log.warning("schema: %s; not ready until then", state.describe(), extra=extra)

    def _fresh(self) -> dict[str, dict[str, Any]] | None:
        if self._result is not None and self._clock() - self._checked_at < self.max_age:
            return self._result
        return None


def readiness(
    probe: DatabaseProbe, *, draining: Callable[[], bool], informational: dict[str, dict[str, Any]]
) -> HealthReport:
    """Can this instance serve? Only draining, the database and its schema decide; other checks are informational.

    A draining instance answers at once, with the last database result it has: the load balancer
    must see the 503 without waiting for a database that may be down too. `draining` is asked again after
    the database probe: a probe that was slow (a worker's first connection) and began before SIGTERM must
    not record "ready" after a draining answer from another worker has recorded "not ready".
    """
    if draining():
        return _draining(probe, informational)
    checks = probe.check()
    if draining():
        return _draining(probe, informational)
    ok = all(checks[name]["status"] == HEALTHY for name in READINESS_CHECKS)
    return HealthReport(status="healthy" if ok else "unhealthy", timestamp=utcnow(), checks={**checks, **informational})


def _draining(probe: DatabaseProbe, informational: dict[str, dict[str, Any]]) -> HealthReport:
    checks = probe.last() or {"database": {"status": UNKNOWN}}
    return HealthReport(status="draining", timestamp=utcnow(), checks={**checks, **informational})


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
