"""Health checks: what the load balancer's probe is answered from. No Flask here."""

from __future__ import annotations

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
    try:
        latency = db.ping(timeout)
    except BaseException as exc:  # gevent.Timeout is a BaseException
        if type(exc).__name__ == "Timeout":
            return {"status": TIMEOUT, "latency_ms": round(timeout * 1000, 1)}
        if not isinstance(exc, Exception):
            raise
        return {"status": UNHEALTHY}
    return {"status": HEALTHY, "latency_ms": round(latency, 1)}


def readiness(
    db: Database, timeout: float, *, draining: bool, informational: dict[str, dict[str, Any]]
) -> HealthReport:
    """Can this instance serve? Only draining and the database decide; other checks are informational."""
    checks = {"database": check_database(db, timeout), **informational}
    if draining:
        status = "draining"
    else:
        status = "healthy" if checks["database"]["status"] == HEALTHY else "unhealthy"
    return HealthReport(status=status, timestamp=utcnow(), checks=checks)
