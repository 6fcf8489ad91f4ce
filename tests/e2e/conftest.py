"""Fixtures for end-to-end tests: a fresh migrated PostgreSQL database, and servers that are always killed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from photo_api import migrate
from tests.conftest import TEST_SECRET, create_pg_database, drop_pg_database, pg_url_for
from tests.e2e.server import ServeProcess

StartServer = Callable[..., ServeProcess]


def lifecycle_env(
    drain_s: float,
    graceful_s: int,
    *,
    check_interval_s: float = 0.5,
    unhealthy_threshold: int = 2,
    check_timeout_s: float = 1.0,
    health_check_timeout_s: float = 0.5,
) -> dict[str, str]:
    """Settings for a short drain and graceful stop, with the load balancer values they must cover.

    Production refuses DRAIN_DELAY_SECONDS below LB_HEALTH_CHECK_INTERVAL x LB_UNHEALTHY_THRESHOLD +
    LB_HEALTH_CHECK_TIMEOUT, and GRACEFUL_TIMEOUT below the statement timeout: the values go together.
    """
    assert drain_s >= check_interval_s * unhealthy_threshold + check_timeout_s, "the config rule would refuse it"
    return {
        "DRAIN_DELAY_SECONDS": str(drain_s),
        "GRACEFUL_TIMEOUT": str(graceful_s),
        "DB_STATEMENT_TIMEOUT_MS": str(graceful_s * 1000),
        "LB_HEALTH_CHECK_INTERVAL": str(check_interval_s),
        "LB_UNHEALTHY_THRESHOLD": str(unhealthy_threshold),
        "LB_HEALTH_CHECK_TIMEOUT": str(check_timeout_s),
        "HEALTH_CHECK_TIMEOUT": str(health_check_timeout_s),
    }


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
