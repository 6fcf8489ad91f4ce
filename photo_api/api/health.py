"""Health routes probed by the load balancer and the autoscaler."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app

from .. import health, lifecycle, metrics
from ..models import utcnow
from .context import collaborators_of, current_identity
from .openapi import doc
from .schemas import CheckOut, HealthOut, LivenessOut

bp = Blueprint("health", __name__, url_prefix="/health")


def readiness_report(app: Flask) -> health.HealthReport:
    """Evaluate `app`'s readiness (probing the database unless its last probe is fresh) and record the gauges.

    The gunicorn config calls it once as each worker boots, before the worker accepts a request, so that
    `photo_api_ready` and `photo_api_health_check_status` exist from a worker's first moment.
    """
    found = collaborators_of(app)
    # Storage, CDN and the job queue never fail the probe: one broken dependency must not empty the whole
    # fleet (uploads still succeed without the queue; their jobs are enqueued later).
    informational = {
        "object_storage": health.storage_status(found.storage),
        "cdn": health.cdn_status(found.cdn),
        "jobs": found.jobs.status(),
    }
    report = health.readiness(found.probe, draining=lifecycle.is_draining, informational=informational)
    # Healthy or not, per check; a disabled check (no CDN configured) has no series at all.
    statuses = {name: check.get("status") for name, check in report.checks.items()}
    metrics.health_report(
        report.ok, {name: s == health.HEALTHY for name, s in statuses.items() if s != health.DISABLED}
    )
    return report


def _readiness() -> Response:
    identity = current_identity()
    report = readiness_report(current_app)
    body = HealthOut(
        status=report.status,  # type: ignore[arg-type]
        timestamp=report.timestamp,
        instance=identity.instance,
        version=identity.version,
        checks={name: CheckOut(**c) for name, c in report.checks.items()},
    )
    return Response(
        body.model_dump_json(exclude_none=True),
        status=200 if report.ok else 503,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )


@bp.get("")
@doc("Can this instance serve traffic (load balancer probe)", tag="health", responses={200: HealthOut, 503: HealthOut})
def health_root() -> Response:
    return _readiness()


@bp.get("/readiness")
@doc("Same as /health", tag="health", responses={200: HealthOut, 503: HealthOut})
def readiness() -> Response:
    return _readiness()


@bp.get("/liveness")
@doc("The process answers (200 while it serves, draining included)", tag="health", responses={200: LivenessOut})
def liveness() -> Response:
    identity = current_identity()
    body = LivenessOut(status="alive", timestamp=utcnow(), instance=identity.instance, version=identity.version)
    return Response(body.model_dump_json(), mimetype="application/json", headers={"Cache-Control": "no-store"})
