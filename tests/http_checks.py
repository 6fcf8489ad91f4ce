"""Assertions and direct database access shared by the HTTP test suites (not a test module)."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy import Engine, func, select
from werkzeug.test import TestResponse

from photo_api.api.context import collaborators_of
from photo_api.models import User

PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}


def assert_problem(response: TestResponse, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with `status`, carrying the response's request ID; return its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json", response.headers
    body: dict[str, Any] = response.get_json(force=True)
    assert set(body) >= PROBLEM_KEYS, body
    assert set(body) <= PROBLEM_KEYS | {"errors"}, body
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] and body["request_id"] == response.headers["X-Request-ID"]
    if status == 422:
        assert body["errors"], body  # every failing field is listed
    elif status != 409:  # a 409 may name the field that conflicts
        assert "errors" not in body, body
    return body


def error_fields(body: dict[str, Any]) -> set[str]:
    """The fields named in a problem's `errors` list."""
    return {e["field"] for e in body.get("errors", [])}


def engine_of(app: Flask) -> Engine:
    """The app's engine, for reading and changing rows behind the API's back."""
    engine: Engine = collaborators_of(app).db.engine
    return engine


def count_users(app: Flask) -> int:
    """How many rows the users table holds."""
    with engine_of(app).connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(User)) or 0)
