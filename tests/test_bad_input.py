"""Hostile and sloppy request bodies: each gets the right 4xx problem, never a 5xx, and creates nothing."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder, TestResponse, run_wsgi_app
from werkzeug.wrappers import Request

from photo_api import create_app
from photo_api.api.context import collaborators_of
from photo_api.config import Settings
from tests.harness.users import Users
from tests.http_checks import assert_problem, count_users, error_fields

GOOD = {"email": "ann@example.com", "username": "ann", "password": "correct horse battery"}
SMALL_JSON_LIMIT = 2048


def post_json(client: FlaskClient, path: str, body: Any) -> Any:
    """POST `body` serialised as JSON (anything json.dumps accepts, not only objects)."""
    return client.post(path, data=json.dumps(body), content_type="application/json")


def register(client: FlaskClient, **changes: Any) -> Any:
    """POST /auth/register with GOOD plus `changes` (a value of None drops the field)."""
    body = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    return post_json(client, "/auth/register", body)


# ---------------------------------------------------------------- not JSON at all: 400


UNREADABLE = {
    "truncated": ('{"email": "ann@example.com", ', "application/json"),
    "single-quotes": ("{'email': 'ann@example.com'}", "application/json"),
    "empty": ("", "application/json"),
    "garbage": ("NaN-ish garbage", "application/json"),
    "not-utf8": (b'{"email": "\xff\xfe"}', "application/json"),
    "huge-integer": ('{"email": ' + "1" * 5000 + "}", "application/json"),
    "text-plain": (json.dumps(GOOD), "text/plain"),
    "form": ("email=ann%40example.com&username=ann", "application/x-www-form-urlencoded"),
    "no-content-type": (json.dumps(GOOD), None),
}


@pytest.mark.parametrize("path", ["/auth/register", "/auth/login"])
def test_unreadable_body_is_400(app: Flask, client: FlaskClient, subtests: pytest.Subtests, path: str) -> None:
    for name, (data, content_type) in UNREADABLE.items():
        with subtests.test(body=name):
            assert_problem(client.post(path, data=data, content_type=content_type), 400)
    assert count_users(app) == 0


def test_multipart_form_is_400(app: Flask, client: FlaskClient) -> None:
    r = client.post("/auth/register", data=dict(GOOD), content_type="multipart/form-data")
    assert_problem(r, 400)
    assert count_users(app) == 0


def test_deeply_nested_json_is_a_client_error(app: Flask, client: FlaskClient) -> None:
    # json.loads raises RecursionError (not ValueError) on this; it must still be a 4xx, not a 500.
    depth = 100_000
    r = client.post(
        "/auth/register",
        data='{"email": ' + "[" * depth + "]" * depth + "}",
        content_type="application/json",
    )
    assert r.status_code in (400, 422), r.get_data(as_text=True)
    assert_problem(r, r.status_code)
    assert count_users(app) == 0


def test_json_content_type_with_charset_is_accepted(client: FlaskClient) -> None:
    r = client.post("/auth/register", data=json.dumps(GOOD), content_type="application/json; charset=utf-8")
    assert r.status_code == 201, r.get_json()


# ---------------------------------------------------------------- JSON, but not the right shape: 422


@pytest.mark.parametrize(
    "body", [[GOOD], "ann@example.com", 42, None, True], ids=["array", "string", "number", "null", "bool"]
)
def test_json_that_is_not_an_object_is_422(app: Flask, client: FlaskClient, body: Any) -> None:
    problem = assert_problem(post_json(client, "/auth/register", body), 422)
    assert error_fields(problem) == {"body"}
    assert count_users(app) == 0


@pytest.mark.parametrize(
    ("path", "fields"),
    [("/auth/register", {"email", "username", "password"}), ("/auth/login", {"email", "password"})],
)
def test_every_missing_field_is_listed(app: Flask, client: FlaskClient, path: str, fields: set[str]) -> None:
    problem = assert_problem(post_json(client, path, {}), 422)
    assert error_fields(problem) == fields
    assert count_users(app) == 0


def test_one_missing_field_is_named_alone(client: FlaskClient) -> None:
    problem = assert_problem(register(client, password=None), 422)
    assert error_fields(problem) == {"password"}


WRONG_TYPES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "number-email": ({"email": 12345}, {"email"}),
    "list-password": ({"password": ["correct", "horse"]}, {"password"}),
    "bool-username": ({"username": True}, {"username"}),
    "number-username": ({"username": 123456}, {"username"}),
    "object-email": ({"email": {"address": "ann@example.com"}}, {"email"}),
    "null-password": ({"password": None}, {"password"}),
    "all-three-at-once": ({"email": 1, "username": False, "password": ["x"]}, {"email", "username", "password"}),
}


def test_wrong_types_are_422(app: Flask, client: FlaskClient, subtests: pytest.Subtests) -> None:
    for name, (changes, fields) in WRONG_TYPES.items():
        with subtests.test(case=name):
            problem = assert_problem(post_json(client, "/auth/register", {**GOOD, **changes}), 422)
            assert error_fields(problem) == fields
    assert count_users(app) == 0


def test_wrong_types_at_login_are_422(client: FlaskClient) -> None:
    problem = assert_problem(post_json(client, "/auth/login", {"email": 1, "password": True}), 422)
    assert error_fields(problem) == {"email", "password"}


OUT_OF_RANGE: dict[str, tuple[dict[str, Any], str]] = {
    "username-101": ({"username": "u" * 101}, "username"),
    "username-2": ({"username": "ab"}, "username"),
    "username-empty": ({"username": ""}, "username"),
    "password-129": ({"password": "p" * 129}, "password"),
    "password-7": ({"password": "p" * 7}, "password"),
    "email-257": ({"email": "a" * 245 + "@example.com"}, "email"),
    "email-long-domain": ({"email": "a" * 64 + "@" + ("b" * 63 + ".") * 4 + "com"}, "email"),
    "email-no-at": ({"email": "not-an-email"}, "email"),
    "email-no-domain": ({"email": "ann@"}, "email"),
    "email-empty": ({"email": ""}, "email"),
}


def test_out_of_range_values_are_422(app: Flask, client: FlaskClient, subtests: pytest.Subtests) -> None:
    for name, (changes, field) in OUT_OF_RANGE.items():
        with subtests.test(case=name):
            problem = assert_problem(register(client, **changes), 422)
            assert error_fields(problem) == {field}
            assert all(e["message"] for e in problem["errors"])
    assert count_users(app) == 0


def test_boundary_lengths_are_accepted(client: FlaskClient) -> None:
    longest = "pw" * 64  # 128 characters, and not one character repeated (refused for another reason)
    r = register(client, username="u" * 100, password=longest)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["username"] == "u" * 100
    assert post_json(client, "/auth/login", {"email": GOOD["email"], "password": longest}).status_code == 200


def test_oversize_login_fields_are_422(client: FlaskClient) -> None:
    problem = assert_problem(post_json(client, "/auth/login", {"email": "a" * 300, "password": "p" * 500}), 422)
    assert error_fields(problem) == {"email", "password"}


# ---------------------------------------------------------------- text content


def test_unicode_usernames_round_trip(client: FlaskClient, subtests: pytest.Subtests) -> None:
    for n, username in enumerate(["김철수", "😀😀😀", "Zoë Ørsted", "名前テスト"]):
        with subtests.test(username=username):
            email = f"unicode{n}@example.com"
            r = register(client, email=email, username=username)
            assert r.status_code == 201, r.get_json()
            assert r.get_json()["username"] == username
            login = post_json(client, "/auth/login", {"email": email, "password": GOOD["password"]})
            me = client.get("/auth/me", headers={"Authorization": f"Bearer {login.get_json()['access_token']}"})
            assert me.get_json()["username"] == username


def test_control_characters_in_username_are_422(app: Flask, client: FlaskClient, subtests: pytest.Subtests) -> None:
    for username in ["ab\x00cd", "ab\x01cd", "ab\ncd", "ab\tcd", "ab\x1bcd", "ab\x7fcd"]:
        with subtests.test(username=repr(username)):
            problem = assert_problem(register(client, username=username), 422)
            assert error_fields(problem) == {"username"}
    assert count_users(app) == 0


def test_nul_in_password_is_handled(client: FlaskClient) -> None:
    password = "correct\x00horse battery"
    r = register(client, password=password)
    assert r.status_code in (201, 422), r.get_data(as_text=True)
    if r.status_code == 422:
        assert_problem(r, 422)
        return
    login = {"email": GOOD["email"], "password": password}
    assert post_json(client, "/auth/login", login).status_code == 200
    # Never truncated at the NUL (the way bcrypt implementations in C do).
    assert post_json(client, "/auth/login", {**login, "password": "correct"}).status_code == 401


def test_nul_in_login_email_is_not_a_server_error(client: FlaskClient, subtests: pytest.Subtests) -> None:
    # PostgreSQL cannot take a NUL in a query parameter at all; that must not become a 500.
    assert register(client).status_code == 201
    for email in ["ann\x00@example.com", "ann@exa\x00mple.com", "\x00"]:
        with subtests.test(email=repr(email)):
            r = post_json(client, "/auth/login", {"email": email, "password": GOOD["password"]})
            assert r.status_code in (401, 422), r.get_data(as_text=True)
            assert_problem(r, r.status_code)


def test_lone_surrogates_are_422(app: Flask, client: FlaskClient, subtests: pytest.Subtests) -> None:
    # "\ud800" is valid JSON but cannot be encoded as UTF-8: the DB driver or the hasher would fail on it.
    surrogate = {"email": "ann\\ud800@example.com", "username": "ann\\ud800", "password": "correct\\ud800 horse"}
    for field, value in surrogate.items():
        with subtests.test(field=field):
            raw = json.dumps({**GOOD, field: "PLACEHOLDER"}).replace("PLACEHOLDER", value)
            for path in ("/auth/register", "/auth/login"):
                if path == "/auth/login" and field == "username":
                    continue
                problem = assert_problem(client.post(path, data=raw, content_type="application/json"), 422)
                assert error_fields(problem) == {field}
    assert count_users(app) == 0


# ---------------------------------------------------------------- size limit: 413


@pytest.fixture
def small_limit_app(make_settings: Callable[..., Settings]) -> Iterator[Flask]:
    application = create_app(make_settings(max_json_bytes=SMALL_JSON_LIMIT))
    yield application
    collaborators_of(application).db.dispose()


@pytest.mark.parametrize("path", ["/auth/register", "/auth/login"])
def test_body_over_the_json_limit_is_413(small_limit_app: Flask, path: str) -> None:
    client = small_limit_app.test_client()
    body = {**GOOD, "padding": "x" * SMALL_JSON_LIMIT}
    r = post_json(client, path, body)
    assert_problem(r, 413)
    assert count_users(small_limit_app) == 0
    # Just under the limit is fine: the limit is the configured one, not some other.
    fits = {**GOOD, "padding": "x" * (SMALL_JSON_LIMIT - len(json.dumps(GOOD)) - 20)}
    assert len(json.dumps(fits)) <= SMALL_JSON_LIMIT
    assert post_json(client, path, fits).status_code in (200, 201, 401)


def test_body_over_the_limit_without_content_length_is_413(small_limit_app: Flask) -> None:
    # A chunked body announces no length; the limit must hold while it is read. gunicorn marks such a
    # body with wsgi.input_terminated. The test client always computes a Content-Length, so the WSGI
    # environ is built by hand here.
    payload = json.dumps({**GOOD, "padding": "x" * SMALL_JSON_LIMIT}).encode()
    environ = EnvironBuilder(
        "/auth/register", method="POST", headers={"Transfer-Encoding": "chunked"}, content_type="application/json"
    ).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": io.BytesIO(payload), "wsgi.input_terminated": True})
    app_iter, status, headers = run_wsgi_app(small_limit_app, environ, buffered=True)
    assert_problem(TestResponse(app_iter, status, headers, request=Request(environ)), 413)
    assert count_users(small_limit_app) == 0


def test_rejected_requests_create_nothing(app: Flask, client: FlaskClient) -> None:
    # A mixed volley of bad requests, then a check that the table is still empty and a good one still works.
    bad: list[tuple[Any, ...]] = [
        ('{"email": ', "application/json"),
        (json.dumps(GOOD), "text/plain"),
        (json.dumps([GOOD]), "application/json"),
        (json.dumps({**GOOD, "password": "short"}), "application/json"),
        (json.dumps({**GOOD, "username": "x\x00y"}), "application/json"),
        (json.dumps({**GOOD, "email": 5}), "application/json"),
    ]
    for data, content_type in bad:
        assert 400 <= client.post("/auth/register", data=data, content_type=content_type).status_code < 500
    assert count_users(app) == 0
    assert register(client).status_code == 201
    assert count_users(app) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/photos/9223372036854775808",
        "/albums/9223372036854775808",
        "/albums/1/share/9223372036854775808",
        "/albums/2147483648/photos",
        "/share/some-token/photos/9223372036854775808/image",
        "/photos/0",
        "/albums/0",
    ],
)
def test_ids_out_of_the_integer_range_are_404_on_every_route(client: FlaskClient, path: str) -> None:
    # Ids are 32-bit INTEGER keys: anything past the range names no row (and SQLite cannot even bind a
    # number past 2**63: this was a 500), so it is refused before any query.
    user = Users(client).create()
    for method in ("GET", "POST", "PATCH", "DELETE"):
        for headers in ({}, user["headers"]):
            r = client.open(path, method=method, headers=headers, json={"photo_ids": [1]})
            if r.status_code in (405, 422):  # a method the path never allows; a body that route refuses
                assert_problem(r, r.status_code)
                continue
            # Without a token the auth check answers first (401, like any protected route); with one, 404.
            assert_problem(r, 401 if not headers and not path.startswith("/share/") else 404)
