"""Errors outside the happy path (404, 405, 500, 503), request IDs on every answer, and the JSON log lines."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from photo_api import create_app
from photo_api.api.context import collaborators_of
from photo_api.config import Settings
from photo_api.models import User
from photo_api.security import Tokens
from tests.harness.users import DEFAULT_PASSWORD, Users
from tests.http_checks import assert_problem, engine_of

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
UNREACHABLE_DB = "postgresql://postgres@127.0.0.1:1/photo_api_nowhere"
LEAKY_MESSAGE = "secret /etc/passwd SELECT * FROM users WHERE password_hash = 'x'"


def add_failing_route(app: Flask) -> None:
    """A route that raises an exception whose text must never reach the client."""

    def boom() -> NoReturn:
        raise RuntimeError(LEAKY_MESSAGE)

    app.add_url_rule("/test-only/boom", "test_only_boom", boom)


@pytest.fixture
def unreachable_app(make_settings: Callable[..., Settings]) -> Iterator[Flask]:
    """An app whose database refuses connections (nothing listens on port 1)."""
    application = create_app(make_settings(database_url=UNREACHABLE_DB, db_connect_timeout=1))
    yield application
    collaborators_of(application).db.dispose()


def token_for(settings: Settings, user_id: int) -> str:
    """A valid access token signed with the app's secret, without asking the (maybe unreachable) DB."""
    assert settings.jwt_secret_key is not None
    secret = settings.jwt_secret_key.get_secret_value()
    return Tokens(secret, settings.jwt_algorithm, 600).issue(user_id).access_token


# ---------------------------------------------------------------- 404 / 405 / trailing slash


@pytest.mark.parametrize("path", ["/nope", "/auth", "/auth/me/extra", "/photos-not-really/1/image", "/%ff%fe"])
def test_unknown_route_is_404_problem(client: FlaskClient, path: str) -> None:
    body = assert_problem(client.get(path), 404)
    assert body["title"] == "Not Found"


def test_unknown_route_with_post_is_404(client: FlaskClient) -> None:
    assert_problem(client.post("/nope", json={"a": 1}), 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("DELETE", "/auth/login", "POST"), ("GET", "/auth/register", "POST"), ("POST", "/auth/me", "GET")],
)
def test_wrong_method_is_405_with_allow(client: FlaskClient, method: str, path: str, allowed: str) -> None:
    r = client.open(path, method=method)
    assert_problem(r, 405)
    allow = {m.strip() for m in r.headers["Allow"].split(",")}
    assert allowed in allow
    assert method not in allow


def test_trailing_slash_answers_without_redirect(client: FlaskClient, users: Users) -> None:
    user = users.create()
    r = client.get("/auth/me/", headers=user["headers"])
    assert r.status_code == 200
    assert "Location" not in r.headers
    assert r.get_json()["id"] == user["id"]
    r = client.post("/auth/login/", json={"email": user["email"], "password": DEFAULT_PASSWORD})
    assert r.status_code == 200  # a POST body would be lost across a redirect
    assert client.get("/health/liveness/").status_code == 200


# ---------------------------------------------------------------- 500


def test_unexpected_exception_is_a_generic_500(app: Flask) -> None:
    add_failing_route(app)
    r = app.test_client().get("/test-only/boom")
    body = assert_problem(r, 500)
    text = r.get_data(as_text=True)
    for leak in ("secret", "/etc/passwd", "SELECT", "password_hash", "RuntimeError", "Traceback", "boom", ".py"):
        assert leak not in text
    assert body["title"] == "Internal Server Error"
    assert "debug" not in body


# ---------------------------------------------------------------- database unreachable: 503


def test_login_with_database_down_is_503(unreachable_app: Flask) -> None:
    r = unreachable_app.test_client().post("/auth/login", json={"email": "ann@example.com", "password": "whatever1"})
    body = assert_problem(r, 503)
    assert int(r.headers["Retry-After"]) > 0
    assert "127.0.0.1" not in json.dumps(body)
    assert "psycopg2" not in json.dumps(body)


def test_authenticated_request_with_database_down_is_503(unreachable_app: Flask, settings: Settings) -> None:
    token = token_for(settings, 1)
    r = unreachable_app.test_client().get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert_problem(r, 503)
    assert int(r.headers["Retry-After"]) > 0


def test_register_with_database_down_is_503(unreachable_app: Flask) -> None:
    body = {"email": "ann@example.com", "username": "ann", "password": DEFAULT_PASSWORD}
    r = unreachable_app.test_client().post("/auth/register", json=body)
    assert_problem(r, 503)
    assert int(r.headers["Retry-After"]) > 0


def test_health_with_database_down(unreachable_app: Flask) -> None:
    client = unreachable_app.test_client()
    for path in ("/health", "/health/readiness"):
        r = client.get(path)
        assert r.status_code == 503
        body = r.get_json()
        assert body["status"] == "unhealthy"
        assert body["checks"]["database"]["status"] == "unhealthy"
        assert "127.0.0.1" not in r.get_data(as_text=True)
        assert REQUEST_ID.match(r.headers["X-Request-ID"])
    r = client.get("/health/liveness")
    assert r.status_code == 200
    assert r.get_json()["status"] == "alive"


# ---------------------------------------------------------------- request IDs


@pytest.mark.parametrize("incoming", ["abc-123.XYZ_9", "a", "x" * 128, "0f3e2d1c-aaaa-bbbb-cccc-0123456789ab"])
def test_valid_request_id_is_echoed(client: FlaskClient, incoming: str) -> None:
    r = client.get("/health/liveness", headers={"X-Request-ID": incoming})
    assert r.headers["X-Request-ID"] == incoming


@pytest.mark.parametrize(
    "incoming",
    ["x" * 129, "has spaces", "", "slash/in/it", "semi;colon", "ünïcode", "<script>", "a,b"],
    ids=["too-long", "spaces", "empty", "slash", "semicolon", "unicode", "markup", "comma"],
)
def test_invalid_request_id_is_replaced(client: FlaskClient, incoming: str) -> None:
    r = client.get("/nope", headers={"X-Request-ID": incoming})
    body = assert_problem(r, 404)
    generated = r.headers["X-Request-ID"]
    assert generated != incoming
    assert REQUEST_ID.match(generated)
    assert body["request_id"] == generated


def test_generated_request_ids_are_unique(client: FlaskClient) -> None:
    ids = {client.get("/health/liveness").headers["X-Request-ID"] for _ in range(20)}
    assert len(ids) == 20


def test_request_id_is_on_every_kind_of_answer(app: Flask, unreachable_app: Flask) -> None:
    add_failing_route(app)
    client = app.test_client()
    answers = {
        "404": client.get("/nope", headers={"X-Request-ID": "rid-404"}),
        "405": client.delete("/auth/login", headers={"X-Request-ID": "rid-405"}),
        "500": client.get("/test-only/boom", headers={"X-Request-ID": "rid-500"}),
        "health": client.get("/health", headers={"X-Request-ID": "rid-health"}),
        "liveness": client.get("/health/liveness", headers={"X-Request-ID": "rid-liveness"}),
        "503": unreachable_app.test_client().post(
            "/auth/login", json={"email": "a@example.com", "password": "x"}, headers={"X-Request-ID": "rid-503"}
        ),
        "503-health": unreachable_app.test_client().get("/health", headers={"X-Request-ID": "rid-503-health"}),
    }
    for name, r in answers.items():
        assert r.headers.get("X-Request-ID") == f"rid-{name}", (name, r.status_code)
        if r.mimetype == "application/problem+json":
            assert r.get_json()["request_id"] == f"rid-{name}"
    assert answers["500"].status_code == 500
    assert answers["503"].status_code == 503


# ---------------------------------------------------------------- logs


@pytest.fixture
def logging_app(make_settings: Callable[..., Settings]) -> Iterator[Callable[[], Flask]]:
    """Build (inside the test) an app logging at INFO to stdout.

    It must be built during the test's call phase: capfd replaces stdout anew for each phase, and the
    log handler keeps the stream that was current when create_app ran.
    """
    built: list[Flask] = []

    def build() -> Flask:
        built.append(create_app(make_settings(log_level="INFO")))
        return built[-1]

    yield build
    for application in built:
        collaborators_of(application).db.dispose()
    root = logging.getLogger()
    for handler in list(root.handlers):  # its stream dies with capfd; the next create_app adds a fresh one
        if getattr(handler, "_photo_api", False):
            root.removeHandler(handler)


def parse_lines(output: str) -> list[dict[str, Any]]:
    """Every non-empty line of `output`, each of which must be one JSON object."""
    lines = []
    for line in output.splitlines():
        if line.strip():
            record = json.loads(line)  # a line that is not JSON fails the test here
            assert isinstance(record, dict), line
            lines.append(record)
    return lines


def test_access_log_lines_and_no_secrets(logging_app: Callable[[], Flask], capfd: pytest.CaptureFixture[str]) -> None:
    app = logging_app()
    client = app.test_client()
    password = "Unique-Passw0rd-For-Log-Test"
    responses = {
        "register": client.post(
            "/auth/register", json={"email": "logs@example.com", "username": "logger", "password": password}
        ),
        "login": client.post(
            "/auth/login", json={"email": "logs@example.com", "password": password}, headers={"X-Request-ID": "my-rid"}
        ),
    }
    token = responses["login"].get_json()["access_token"]
    responses["me"] = client.get("/auth/me/", headers={"Authorization": f"Bearer {token}"})
    responses["bad-login"] = client.post("/auth/login", json={"email": "logs@example.com", "password": password + "x"})
    responses["404"] = client.get("/nope/SECRETPATHTOKEN123")
    assert [r.status_code for r in responses.values()] == [201, 200, 200, 401, 404]
    assert responses["login"].headers["X-Request-ID"] == "my-rid"
    with engine_of(app).connect() as conn:
        password_hash = conn.scalar(select(User.password_hash).where(User.email == "logs@example.com"))
    assert password_hash

    captured = capfd.readouterr()
    output = captured.out + captured.err
    for secret in (password, password_hash, token, token.split(".")[2], "SECRETPATHTOKEN123"):
        assert secret not in output

    records = parse_lines(captured.out)
    expected = {
        "register": ("POST", "/auth/register", 201),
        "login": ("POST", "/auth/login", 200),
        "me": ("GET", "/auth/me", 200),  # the route template, not the raw path "/auth/me/"
        "bad-login": ("POST", "/auth/login", 401),
        "404": ("GET", None, 404),
    }
    for name, (method, endpoint, status) in expected.items():
        request_id = responses[name].headers["X-Request-ID"]
        mine = [rec for rec in records if rec.get("request_id") == request_id]
        access = [rec for rec in mine if rec.get("logger") == "photo_api.access"]
        assert len(access) == 1, (name, mine)
        line = access[0]
        assert line["timestamp"].endswith("Z")
        assert line["level"] == "INFO"
        assert line["message"]
        assert line["instance"] == collaborators_of(app).identity.instance
        assert line["method"] == method
        assert line["endpoint"] == endpoint
        assert line["status"] == status
        assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
    # Every line emitted while a request was handled carries that request's ID.
    request_ids = {r.headers["X-Request-ID"] for r in responses.values()}
    assert all(rec.get("request_id") in request_ids for rec in records if "method" in rec), records


def test_unhandled_exception_is_logged_with_its_request_id(
    logging_app: Callable[[], Flask], capfd: pytest.CaptureFixture[str]
) -> None:
    app = logging_app()
    add_failing_route(app)
    r = app.test_client().get("/test-only/boom", headers={"X-Request-ID": "rid-boom"})
    assert r.status_code == 500
    records = parse_lines(capfd.readouterr().out)
    errors = [rec for rec in records if rec["level"] == "ERROR" and rec.get("request_id") == "rid-boom"]
    assert errors, records
    # The operator gets the details the client did not.
    assert "RuntimeError" in errors[0]["exception"]
