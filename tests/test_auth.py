"""Register, login and /auth/me through HTTP: shapes, conflicts, races, the login oracle and every bad token."""

from __future__ import annotations

import base64
import json
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete, func, select, update

from photo_api import create_app
from photo_api.config import Settings
from photo_api.models import User
from photo_api.security import InvalidTokenError, Tokens
from tests.harness.users import DEFAULT_PASSWORD, Users
from tests.http_checks import assert_problem, engine_of, error_fields

USER_KEYS = {"id", "email", "username", "is_active", "created_at"}
TOKEN_KEYS = {"access_token", "token_type", "expires_in"}
RACERS = 8
TIMING_TRIES = 5
# The unknown-e-mail answer verifies a dummy hash; without it, it would be ~100x faster than a wrong password.
MAX_TIMING_RATIO = 3


def register(client: FlaskClient, email: str, username: str, password: str = DEFAULT_PASSWORD) -> Any:
    """POST /auth/register."""
    return client.post("/auth/register", json={"email": email, "username": username, "password": password})


def login(client: FlaskClient, email: str, password: str = DEFAULT_PASSWORD) -> Any:
    """POST /auth/login."""
    return client.post("/auth/login", json={"email": email, "password": password})


def me(client: FlaskClient, token: str | None = None, header: str | None = None) -> Any:
    """GET /auth/me with `Authorization: Bearer token` (or a raw header value)."""
    if header is None and token is not None:
        header = f"Bearer {token}"
    return client.get("/auth/me", headers={"Authorization": header} if header is not None else {})


def secret_of(settings: Settings) -> str:
    """The JWT secret the app under test signs with."""
    assert settings.jwt_secret_key is not None
    return settings.jwt_secret_key.get_secret_value()


def b64url(data: dict[str, Any]) -> str:
    """Base64url without padding of a JSON object, as JWT segments are encoded."""
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def valid_claims(user_id: int | str) -> dict[str, Any]:
    """The claims our tokens carry, currently valid."""
    now = int(time.time())
    return {"sub": str(user_id), "iat": now, "exp": now + 600, "type": "access"}


# ---------------------------------------------------------------- register


def test_register_returns_the_user(client: FlaskClient) -> None:
    r = register(client, "Ann.Lee@Example.COM", "ann")
    assert r.status_code == 201
    assert r.mimetype == "application/json"
    body = r.get_json()
    assert set(body) == USER_KEYS
    assert isinstance(body["id"], int) and body["id"] > 0
    assert body["email"] == "ann.lee@example.com"
    assert body["username"] == "ann"
    assert body["is_active"] is True
    assert body["created_at"].endswith("Z")
    created = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    assert abs(time.time() - created.timestamp()) < 60
    assert DEFAULT_PASSWORD not in r.get_data(as_text=True)
    assert "$argon2" not in r.get_data(as_text=True)


def test_duplicate_email_is_409_naming_only_email(client: FlaskClient) -> None:
    assert register(client, "ann@example.com", "ann").status_code == 201
    body = assert_problem(register(client, "ann@example.com", "someone-else"), 409)
    assert error_fields(body) == {"email"}


def test_duplicate_email_is_case_insensitive(client: FlaskClient) -> None:
    assert register(client, "Ann@Example.com", "ann").status_code == 201
    body = assert_problem(register(client, "ANN@example.COM", "ann2"), 409)
    assert error_fields(body) == {"email"}


def fullwidth(text: str) -> str:
    """`text` in full-width letters (U+FF21...), as some keyboards and phones type them."""
    return "".join(chr(ord(char) + 0xFEE0) for char in text)


def test_the_address_that_registered_is_the_one_that_logs_in(client: FlaskClient) -> None:
    # One normalisation for both: the domain's full-width letters become plain ones, case is ignored.
    r = register(client, f"carol@{fullwidth('EXAMPLE')}.com", "carol")
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["email"] == "carol@example.com"
    for typed in (f"carol@{fullwidth('EXAMPLE')}.com", "carol@example.com", " CAROL@Example.COM "):
        assert login(client, typed).status_code == 200, typed
    assert register(client, f"Carol@{fullwidth('example')}.com", "carol2").status_code == 409


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("12345678", "most common"),
        ("password", "most common"),
        ("PassWord1", "most common"),  # the list is compared case-insensitively
        ("iloveyou", "most common"),
        (" " * 8, "repeated"),
        ("a" * 40, "repeated"),
    ],
)
def test_common_and_repeated_passwords_are_refused(app: Flask, client: FlaskClient, password: str, why: str) -> None:
    problem = assert_problem(register(client, "weak@example.com", "weak", password=password), 422)
    assert error_fields(problem) == {"password"}
    assert why in problem["errors"][0]["message"]
    with engine_of(app).connect() as conn:
        assert conn.execute(select(func.count()).select_from(User)).scalar() == 0
    # Length alone does not decide: a long passphrase that is on no list is fine.
    assert register(client, "strong@example.com", "strong", password="pink elephants dance").status_code == 201


@pytest.mark.parametrize("username", ["bob", "email_fan", "my-email-address"])
def test_duplicate_username_is_409_naming_only_username(client: FlaskClient, username: str) -> None:
    # Usernames that contain "email" must not be mistaken for an e-mail conflict.
    assert register(client, "first@example.com", username).status_code == 201
    body = assert_problem(register(client, "second@example.com", username), 409)
    assert error_fields(body) == {"username"}
    assert "email" not in body["detail"].lower()


@pytest.mark.parametrize("field", ["email", "username"])
def test_concurrent_registrations_give_one_201_and_409s(app: Flask, database_url: str, field: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers; the unique-index race needs PostgreSQL")
    barrier = threading.Barrier(RACERS)
    answers: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def racer(n: int) -> None:
        client = app.test_client()
        email = "race@example.com" if field == "email" else f"racer{n}@example.com"
        username = "racer" if field == "username" else f"racer{n}"
        barrier.wait()
        r = register(client, email, username)
        with lock:
            answers.append((r.status_code, r.get_json(force=True)))

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(status for status, _ in answers) == [201] + [409] * (RACERS - 1), answers
    for status, body in answers:
        if status == 409:
            assert error_fields(body) == {field}


# ---------------------------------------------------------------- login


def test_login_returns_a_token(client: FlaskClient, settings: Settings) -> None:
    assert register(client, "ann@example.com", "ann").status_code == 201
    r = login(client, "ANN@example.com")  # e-mails are case-insensitive at login too
    assert r.status_code == 200
    body = r.get_json()
    assert set(body) == TOKEN_KEYS
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_expire_minutes * 60
    r = me(client, body["access_token"])
    assert r.status_code == 200
    assert set(r.get_json()) == USER_KEYS
    assert r.get_json()["email"] == "ann@example.com"


def test_unknown_email_and_wrong_password_look_the_same(client: FlaskClient) -> None:
    assert register(client, "ann@example.com", "ann").status_code == 201
    wrong_password = login(client, "ann@example.com", "not the password")
    unknown_email = login(client, "nobody@example.com", "not the password")
    bodies = []
    for r in (wrong_password, unknown_email):
        body = assert_problem(r, 401)
        assert r.headers["WWW-Authenticate"] == "Bearer"
        bodies.append({k: v for k, v in body.items() if k != "request_id"})
    assert bodies[0] == bodies[1]


def test_unknown_email_takes_about_as_long_as_wrong_password(make_settings: Callable[..., Settings]) -> None:
    # The default (production) argon2 cost: with the suite's cheap hashing, noise would dominate.
    app = create_app(
        make_settings(password_hash_time_cost=3, password_hash_memory_kib=65_536, password_hash_parallelism=4)
    )
    client = app.test_client()
    assert register(client, "ann@example.com", "ann").status_code == 201

    def median_seconds(email: str) -> float:
        times = []
        for _ in range(TIMING_TRIES):
            start = time.perf_counter()
            assert login(client, email, "not the password").status_code == 401
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    login(client, "warm@example.com", "up the code paths")
    wrong_password = median_seconds("ann@example.com")
    unknown_email = median_seconds("nobody@example.com")
    assert unknown_email * MAX_TIMING_RATIO >= wrong_password, (unknown_email, wrong_password)
    assert wrong_password * MAX_TIMING_RATIO >= unknown_email, (unknown_email, wrong_password)


def set_active(app: Flask, user_id: int, active: bool) -> None:
    """Flip users.is_active directly in the database."""
    with engine_of(app).begin() as conn:
        conn.execute(update(User).where(User.id == user_id).values(is_active=active))


def test_inactive_user_cannot_log_in_and_gets_403_on_me(app: Flask, client: FlaskClient, users: Users) -> None:
    user = users.create()
    set_active(app, user["id"], False)

    r = login(client, user["email"])
    body = assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"] == "Bearer"
    unknown = assert_problem(login(client, "nobody@example.com"), 401)
    assert body["detail"] == unknown["detail"]  # no oracle for "account exists but is disabled" either

    assert_problem(me(client, user["token"]), 403)

    set_active(app, user["id"], True)
    assert me(client, user["token"]).status_code == 200


# ---------------------------------------------------------------- /auth/me and bad tokens

TokenFactory = Callable[[Settings, int], str | None]


def _other_secret(settings: Settings, user_id: int) -> str:
    return Tokens("another-secret-0123456789-abcdefghijklmnop", settings.jwt_algorithm, 600).issue(user_id).access_token


def _expired(settings: Settings, user_id: int) -> str:
    # Issued an hour ago with the configured 30-minute lifetime: expired for half an hour, far past the leeway.
    tokens = Tokens(secret_of(settings), settings.jwt_algorithm, 1800, clock=lambda: time.time() - 3600)
    return tokens.issue(user_id).access_token


def _alg_none(settings: Settings, user_id: int) -> str:
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(valid_claims(user_id))}."


def _hs512(settings: Settings, user_id: int) -> str:
    assert settings.jwt_algorithm == "HS256"
    with warnings.catch_warnings():  # PyJWT warns that the test secret is short for SHA-512; that is not the point
        warnings.simplefilter("ignore")
        return Tokens(secret_of(settings), "HS512", 600).issue(user_id).access_token


def _claims(**changes: Any) -> TokenFactory:
    def build(settings: Settings, user_id: int) -> str:
        claims = {**valid_claims(user_id), **changes}
        return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret_of(settings), algorithm="HS256")

    return build


BAD_TOKENS: dict[str, TokenFactory] = {
    "garbage": lambda s, u: "garbage",
    "three-garbage-segments": lambda s, u: "a.b.c",
    "other-secret": _other_secret,
    "expired": _expired,
    "alg-none": _alg_none,
    "hs512-when-hs256": _hs512,
    "sub-not-numeric": _claims(sub="abc"),
    "sub-negative": _claims(sub="-1"),
    "sub-zero": _claims(sub="0"),
    "sub-out-of-range": _claims(sub="99999999999999999999"),
    "sub-unicode-digit": _claims(sub="\u00b2"),  # "²".isdigit() is True, int("²") raises
    "sub-not-a-string": _claims(sub=7),
    "no-sub": _claims(sub=None),
    "no-exp": _claims(exp=None),
    "wrong-type": _claims(type="refresh"),
}
FOREIGN_AUTHORIZATION = {
    "empty": "",
    "bearer-without-token": "Bearer",
    "bearer-blank": "Bearer    ",
    "basic": "Basic YW5uQGV4YW1wbGUuY29tOmNvcnJlY3QgaG9yc2UgYmF0dGVyeQ==",
    "other-scheme": "Token abc",
}


def test_bad_tokens_are_401(client: FlaskClient, settings: Settings, subtests: pytest.Subtests) -> None:
    # One user for the whole table (argon2 is slow); each forged token names that existing user.
    user = register(client, "ann@example.com", "ann").get_json()
    for name, make_token in BAD_TOKENS.items():
        with subtests.test(token=name):
            r = me(client, make_token(settings, user["id"]))
            body = assert_problem(r, 401)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert "ann" not in json.dumps(body)
    # The control for the table: the same hand-built construction, validly signed, is accepted.
    assert me(client, _claims()(settings, user["id"])).status_code == 200


def test_missing_or_foreign_authorization_is_401(client: FlaskClient, subtests: pytest.Subtests) -> None:
    for name, header in {"no-header": None, **FOREIGN_AUTHORIZATION}.items():
        with subtests.test(authorization=name):
            r = me(client, header=header)
            assert_problem(r, 401)
            assert r.headers["WWW-Authenticate"] == "Bearer"


def test_a_token_accepted_before_still_expires() -> None:
    # Tokens remembers the tokens it has verified (a client sends the same one with every request): the
    # remembered answer must end when the token does, and a token refused is never remembered.
    tokens = Tokens("a-secret-0123456789-abcdefghijklmnopqrstuv", "HS256", 2, leeway=0)
    issued_at = time.time()
    token = tokens.issue(7).access_token
    assert tokens.user_id(token) == 7
    assert tokens.user_id(token) == 7  # the remembered answer
    expires = int(issued_at) + 2
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(InvalidTokenError):
        tokens.user_id(token)
    with pytest.raises(InvalidTokenError):
        tokens.user_id(token)
    with pytest.raises(InvalidTokenError):
        tokens.user_id(token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))


def test_token_of_a_deleted_user_is_401(app: Flask, client: FlaskClient, users: Users) -> None:
    user = users.create()
    assert me(client, user["token"]).status_code == 200
    with engine_of(app).begin() as conn:
        conn.execute(delete(User).where(User.id == user["id"]))
    r = me(client, user["token"])
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"] == "Bearer"


def test_bearer_scheme_is_case_insensitive(client: FlaskClient, users: Users) -> None:
    user = users.create()
    assert me(client, header=f"bearer {user['token']}").status_code == 200
