"""Shared fixtures: real PostgreSQL and SQLite databases migrated the way production migrates them,
the application on them, and users registered through its API.

The databases come from tests/harness/databases.py: PostgreSQL from TEST_POSTGRES_URL (default: the local
server, trust auth), skipped on a developer machine when unreachable but FAILING when `CI` is set.
`PHOTO_API_TEST_BACKENDS=sqlite` (or `postgresql`) narrows the run while developing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from photo_api import create_app
from photo_api.api.context import collaborators_of
from photo_api.config import Settings, load_settings
from photo_api.db import driver_url
from photo_api.models import Base
from tests.harness.databases import BACKENDS, migrated_sqlite, pg_database
from tests.harness.env import TEST_SECRET
from tests.harness.users import Users


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every end-to-end (`slow`) test in one pytest-xdist group: one process runs them, one at a time.

    They start servers of their own that other end-to-end tests would meet (Swift's session instance, the
    Redis databases' workers, processes found by port), and timing bounds that hold for one of them at a
    time; the other tests (Flask's test client on a database of their process's own) run beside them.
    """
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.xdist_group("end-to-end"))


@pytest.fixture(scope="session")
def postgresql_database_url() -> Iterator[str]:
    """A PostgreSQL database for this test session, migrated with `photo-api db upgrade`'s code path."""
    with pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite database file for this test session."""
    return migrated_sqlite(tmp_path_factory.mktemp("sqlite") / "photo_api.db")


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database of this test alone, migrated to head; dropped afterwards."""
    with pg_database("photo_api_instance") as url:
        yield url


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
            # Tests register and log in hundreds of times from one address; tests/test_throttle.py turns it on.
            "rate_limit_enabled": False,
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
    collaborators_of(application).db.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def users(client: FlaskClient) -> Users:
    return Users(client)
