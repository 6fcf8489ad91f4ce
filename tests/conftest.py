"""Shared fixtures: real PostgreSQL and SQLite databases migrated the way production migrates them.

PostgreSQL comes from TEST_POSTGRES_URL (default: the local server, trust auth). When it cannot be
reached the PostgreSQL half of the suite is skipped on a developer machine but FAILS when `CI` is set.
`PHOTO_API_TEST_BACKENDS=sqlite` (or `postgresql`) narrows the run while developing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from photo_api import create_app, migrate
from photo_api.config import Settings, load_settings
from photo_api.db import driver_url
from photo_api.models import Base

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
ALL_BACKENDS = ("postgresql", "sqlite")
BACKENDS = [b for b in os.environ.get("PHOTO_API_TEST_BACKENDS", ",".join(ALL_BACKENDS)).split(",") if b]
DEFAULT_PASSWORD = "correct horse battery"


def _pg_connect(dbname: str = "postgres") -> Any:
    url = make_url(PG_ADMIN_URL)
    return psycopg2.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=dbname,
        connect_timeout=3,
    )


def pg_url_for(dbname: str) -> str:
    """The URL of database `dbname` on the test server."""
    return make_url(PG_ADMIN_URL).set(database=dbname).render_as_string(hide_password=False)


def create_pg_database(prefix: str = "photo_api_test") -> str:
    """Create an empty database on the test server and return its name (fails or skips if unreachable)."""
    try:
        conn = _pg_connect()
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and unreachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name


def drop_pg_database(name: str) -> None:
    """Drop a database created by create_pg_database, even with connections still open."""
    conn = _pg_connect()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture(scope="session")
def postgresql_database_url() -> Iterator[str]:
    """A PostgreSQL database for this test session, migrated with `photo-api db upgrade`'s code path."""
    name = create_pg_database()
    url = pg_url_for(name)
    migrate.upgrade(url)
    yield url
    drop_pg_database(name)


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite database file for this test session."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'photo_api.db'}"
    migrate.upgrade(url)
    return url


def _empty_tables(url: str) -> None:
    engine = create_engine(driver_url(url))
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test runs against every backend, on emptied tables (ids start at 1 again)."""
    url: str = request.getfixturevalue(f"{request.param}_database_url")
    _empty_tables(url)
    return url


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Build Settings for the test database from a clean environment plus overrides."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "jwt_secret_key": TEST_SECRET,
            "local_storage_dir": str(tmp_path / "storage"),
            "log_level": "WARNING",
            # Cheap argon2 so hundreds of registrations stay fast; the timing test sets production costs.
            "password_hash_time_cost": 1,
            "password_hash_memory_kib": 1024,
            "password_hash_parallelism": 1,
        }
        values.update(overrides)
        return load_settings(environ={}, **values)

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    yield application
    application.extensions["photo_api"].db.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Users:
    """Registers users through the API and hands out their auth headers."""

    def __init__(self, client: FlaskClient):
        self.client = client
        self.count = 0

    def create(
        self, email: str | None = None, username: str | None = None, password: str = DEFAULT_PASSWORD
    ) -> dict[str, Any]:
        """Register a user and log in; return the user body plus `headers` for authenticated calls."""
        self.count += 1
        email = email or f"user{self.count}@example.com"
        username = username or f"user{self.count}"
        r = self.client.post("/auth/register", json={"email": email, "username": username, "password": password})
        assert r.status_code == 201, r.get_json()
        user: dict[str, Any] = r.get_json()
        r = self.client.post("/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.get_json()
        user["token"] = r.get_json()["access_token"]
        user["headers"] = {"Authorization": f"Bearer {user['token']}"}
        return user


@pytest.fixture
def users(client: FlaskClient) -> Users:
    return Users(client)
