"""One error shape, one place: every error leaves as RFC 9457 application/problem+json."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, g
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from ..errors import (
    AppError,
    ConflictError,
    RangeNotSatisfiableError,
    ServiceUnavailableError,
    TooManyRequestsError,
    ValidationFailedError,
)
from ..storage import StorageUnavailableError
from .context import current_limits

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"
DB_RETRY_AFTER_S = 5
# Used when the storage layer gives no hint of its own (its breaker's remaining open time, a Retry-After).
STORAGE_RETRY_AFTER_S = 5


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """Build a problem+json response carrying the request ID."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": g.get("request_id", ""),
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_TYPE, headers=headers)


def _app_error(exc: AppError) -> Response:
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, ServiceUnavailableError | TooManyRequestsError):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, RangeNotSatisfiableError):
        headers["Content-Range"] = f"bytes */{exc.size}"
    if isinstance(exc, ValidationFailedError):
        extra["errors"] = [{"field": e.field, "message": e.message} for e in exc.errors]
    if isinstance(exc, ConflictError) and exc.field:
        extra["errors"] = [{"field": exc.field, "message": exc.detail}]
    return problem(exc.status, exc.title, exc.detail, headers, **extra)


def app_error_response(exc: AppError) -> Response:
    """The problem+json answer to `exc` (for handlers registered elsewhere, e.g. the throttling's 429)."""
    return _app_error(exc)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = {k: v for k, v in exc.get_headers() if k.lower() not in {"content-type", "content-length"}}
    detail = {
        404: "The requested resource was not found",
        405: "Method not allowed for this resource",
        413: "Request body is too large",
    }.get(status, exc.name)
    return problem(status, exc.name, detail, headers)


def _db_unavailable(exc: Exception) -> Response:
    # Pool exhausted, connection refused or dropped: the DB is the dependency that is failing.
    log.warning("database unavailable", extra={"error": type(exc).__name__})
    return _app_error(ServiceUnavailableError("Database unavailable", retry_after=DB_RETRY_AFTER_S))


def _storage_unavailable(exc: StorageUnavailableError) -> Response:
    log.warning("object storage unavailable", extra={"error": type(exc).__name__})
    retry_after = getattr(exc, "retry_after", None) or STORAGE_RETRY_AFTER_S
    return _app_error(ServiceUnavailableError("Object storage unavailable", retry_after=int(retry_after)))


def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return _db_unavailable(exc)
    log.exception("unhandled error")
    debug = None
    if current_limits().debug_errors:
        debug = f"{type(exc).__name__}: {exc}"
    return problem(500, "Internal Server Error", "An unexpected error occurred", debug=debug)


def init_app(app: Flask) -> None:
    """Register the handlers that turn every exception into a problem+json response."""
    app.register_error_handler(AppError, _app_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(sa_exc.OperationalError, _db_unavailable)
    app.register_error_handler(sa_exc.TimeoutError, _db_unavailable)  # QueuePool checkout timeout
    app.register_error_handler(sa_exc.InterfaceError, _db_unavailable)
    app.register_error_handler(StorageUnavailableError, _storage_unavailable)
    app.register_error_handler(Exception, _unexpected)
