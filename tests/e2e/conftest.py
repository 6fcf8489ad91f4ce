"""Fixtures for end-to-end tests: a fresh migrated PostgreSQL database, and servers that are always killed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from photo_api import migrate
from tests.conftest import TEST_SECRET, create_pg_database, drop_pg_database, pg_url_for
from tests.e2e.server import ServeProcess

StartServer = Callable[..., ServeProcess]


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database of this test alone, migrated to head; dropped afterwards."""
    name = create_pg_database("photo_api_e2e")
    url = pg_url_for(name)
    migrate.upgrade(url)
    yield url
    drop_pg_database(name)


@pytest.fixture
def production_env(pg_database_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a production instance on the test database (local storage in tmp_path)."""
    return {
        "ENVIRONMENT": "production",
        "DATABASE_URL": pg_database_url,
        "JWT_SECRET_KEY": TEST_SECRET,
        "LOCAL_STORAGE_DIR": str(tmp_path / "storage"),
    }


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    """Start `photo-api serve` with an environment (and workers, cwd); every server is killed at teardown."""
    servers: list[ServeProcess] = []

    def start(env: Mapping[str, str], *, workers: int = 1, cwd: Path | None = None) -> ServeProcess:
        server = ServeProcess(env, cwd=cwd or tmp_path, log_dir=tmp_path / f"serve-{len(servers)}", workers=workers)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.close()
