"""Health routes probed by the load balancer and the autoscaler."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app
from flask.blueprints import BlueprintSetupState

from .. import health, lifecycle, metrics
from ..models import utcnow
from .common import runtime
from .openapi import doc
from .schemas import CheckOut, HealthOut, LivenessOut

bp = Blueprint("health", __name__, url_prefix="/health")
PROBE_KEY = "photo_api.health_probe"


@bp.record_once
def _create_probe(state: BlueprintSetupState) -> None:
    # One probe per app, i.e. per worker: its result is shared by every LB probing this worker.
    settings = state.app.extensions["photo_api"].settings
    state.app.extensions[PROBE_KEY] = health.DatabaseProbe(
        state.app.extensions["photo_api"].db, settings.health_check_timeout, settings.health_check_cache_seconds
    )


def readiness_report(app: Flask) -> health.HealthReport:
    """Evaluate `app`'s readiness (probing the database unless its last probe is fresh) and record the gauges.

    The gunicorn config calls it once as each worker boots, before the worker accepts a request, so that
    `photo_api_ready` and `photo_api_health_check_status` exist from a worker's first moment.
    """
    rt = app.extensions["photo_api"]
    # Storage and CDN never fail the probe: one broken dependency must not empty the whole fleet.
    informational = {
        "object_storage": health.storage_status(rt.storage),
        "cdn": health.cdn_status(rt.cdn),
    }
    report = health.readiness(app.extensions[PROBE_KEY], draining=lifecycle.is_draining(), informational=informational)
    # Healthy or not, per check; a disabled check (no CDN configured) has no series at all.
    statuses = {name: check.get("status") for name, check in report.checks.items()}
    metrics.health_report(
        report.ok, {name: s == health.HEALTHY for name, s in statuses.items() if s != health.DISABLED}
    )
    return report


def _readiness() -> Response:
    rt = runtime()
    report = readiness_report(current_app)
    body = HealthOut(
        status=report.status,  # type: ignore[arg-type]
        timestamp=report.timestamp,
        instance=rt.settings.instance_id,
        version=rt.settings.app_version,
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
    rt = runtime()
    body = LivenessOut(
        status="alive", timestamp=utcnow(), instance=rt.settings.instance_id, version=rt.settings.app_version
    )
    return Response(body.model_dump_json(), mimetype="application/json", headers={"Cache-Control": "no-store"})
