"""Fixtures for end-to-end tests: a production environment on a fresh database, and servers that are always killed.

The pieces are the harness's (tests/harness/); `pg_database_url` comes from tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.env import production_env as build_production_env
from tests.harness.server import ServeProcess, Servers

StartServer = Callable[..., ServeProcess]


@pytest.fixture
def production_env(pg_database_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a production instance on the test database (local storage in tmp_path)."""
    return build_production_env(pg_database_url, tmp_path / "storage")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    """Start `photo-api serve` with an environment (and workers, cwd); every server is killed at teardown."""
    with Servers(tmp_path) as servers:
        yield servers.start
