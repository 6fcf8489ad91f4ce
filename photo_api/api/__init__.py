"""HTTP layer: blueprints, request IDs, access log and error handlers."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from flask import Flask, Response, g, has_request_context, request

from . import albums, auth, errors, health, photos, shares, uploads
from . import docs as docs_api
from . import throttle as throttle  # the composition root builds the limiter and installs it
from .common import close_db_session

access_log = logging.getLogger("photo_api.access")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def log_context() -> dict[str, Any]:
    """Fields added to every log line emitted while a request is handled."""
    if not has_request_context():
        return {}
    rule = request.url_rule
    return {"request_id": g.get("request_id"), "method": request.method, "endpoint": rule.rule if rule else None}


def _start_request() -> None:
    g.started = time.perf_counter()
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


def _finish_request(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
    duration_ms = round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2)
    # Probes arrive every second from every load balancer: keep them out of the INFO stream when healthy.
    quiet = request.path.startswith("/health") and response.status_code < 400
    access_log.log(
        logging.DEBUG if quiet else logging.INFO,
        "request",
        extra={"status": response.status_code, "duration_ms": duration_ms},
    )
    return response


def init_app(app: Flask, *, docs: bool, direct_uploads: bool) -> None:
    """Register request hooks, blueprints and error handlers; `/openapi.json` and `/docs` when `docs`, the
    signed `PUT /uploads/...` route when `direct_uploads` (a storage backend whose upload URLs point here)."""
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.teardown_request(close_db_session)
    errors.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(photos.bp)
    app.register_blueprint(albums.bp)
    app.register_blueprint(shares.bp)
    app.register_blueprint(uploads.bp)
    if direct_uploads:
        app.add_url_rule(uploads.UPLOAD_RULE, view_func=uploads.receive_upload, methods=["PUT"])
    if docs:
        app.register_blueprint(docs_api.bp)
