"""Temporary databases: PostgreSQL databases created and dropped on the test server, SQLite files.

PostgreSQL comes from TEST_POSTGRES_URL (default: the local server, trust auth), read when a database is
made, so a caller may set it first. `pg_database` applies the suite's rule when the server cannot be
reached (skip locally, fail in CI: tests/harness/ci.py); the benchmarks use `PostgresServer` directly and
get the driver's error instead. `PHOTO_API_TEST_BACKENDS=sqlite` (or
`postgresql`) narrows the backends the suite runs against while developing.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy.engine import make_url

from photo_api import migrate
from tests.harness.ci import unavailable

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ALL_BACKENDS = ("postgresql", "sqlite")
BACKENDS = [b for b in os.environ.get("PHOTO_API_TEST_BACKENDS", ",".join(ALL_BACKENDS)).split(",") if b]
CONNECT_TIMEOUT_S = 3
DEFAULT_PREFIX = "photo_api_test"


def admin_url_from_env() -> str:
    """The URL of the test server's maintenance database (TEST_POSTGRES_URL, or the local server)."""
    return os.environ.get("TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL server on which databases are created and dropped, reached through `admin_url`."""

    admin_url: str = field(default_factory=admin_url_from_env)

    def connect(self, dbname: str | None = None) -> Any:
        """An autocommit connection to `dbname` (default: the admin URL's database); raises if unreachable."""
        url = make_url(self.admin_url)
        conn = psycopg2.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            dbname=dbname or url.database or "postgres",
            connect_timeout=CONNECT_TIMEOUT_S,
        )
        conn.autocommit = True
        return conn

    def url_for(self, name: str) -> str:
        """The URL of database `name` on this server."""
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def create(self, prefix: str = DEFAULT_PREFIX) -> str:
        """Create an empty database named `<prefix>_<random>` and return its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def drop(self, name: str) -> None:
        """Drop database `name`, even with connections still open."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()

    def version(self) -> str:
        """The server's version string (SHOW server_version)."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                return str(cur.fetchone()[0])
        finally:
            conn.close()

    @contextlib.contextmanager
    def temporary(self, prefix: str = DEFAULT_PREFIX, *, migrated: bool = True) -> Iterator[str]:
        """A new database (migrated to head with `db upgrade`'s code path unless `migrated` is False); its URL.

        It is dropped afterwards, connections and all.
        """
        name = self.create(prefix)
        try:
            url = self.url_for(name)
            if migrated:
                migrate.upgrade(url)
            yield url
        finally:
            self.drop(name)


@contextlib.contextmanager
def pg_database(prefix: str = DEFAULT_PREFIX, *, migrated: bool = True) -> Iterator[str]:
    """A database of the caller's alone on the test server (migrated to head unless told not to); its URL.

    Skipped (failed in CI) when the server is unreachable; dropped afterwards.
    """
    server = PostgresServer()
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(server.temporary(prefix, migrated=migrated))
        except psycopg2.OperationalError as exc:
            unavailable(f"PostgreSQL unreachable at {server.admin_url}: {exc}")
        yield url


def sqlite_url(path: Path) -> str:
    """The URL of the SQLite database file `path` (created on first use)."""
    return f"sqlite:///{path}"


def migrated_sqlite(path: Path) -> str:
    """A SQLite database file at `path`, migrated to head; its URL."""
    url = sqlite_url(path)
    migrate.upgrade(url)
    return url


@contextlib.contextmanager
def limited_role(database_url: str, connection_limit: int) -> Iterator[str]:
    """A login role of its own with `CONNECTION LIMIT connection_limit` and full rights on the database's
    tables; the database URL as that role. The role is dropped afterwards.

    PostgreSQL refuses the role's connection beyond the limit with SQLSTATE 53300, exactly as a full
    server does (max_connections): the way to make "the server is full" without filling the shared server.
    """
    url = make_url(database_url)
    server = PostgresServer(url.set(database="postgres").render_as_string(hide_password=False))
    role = f"photo_api_limited_{uuid.uuid4().hex[:10]}"
    conn = server.connect(url.database)
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT {int(connection_limit)}')
            cur.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
            cur.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
        yield url.set(username=role, password=None).render_as_string(hide_password=False)
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            cur.execute(f'DROP OWNED BY "{role}"')
            cur.execute(f'DROP ROLE "{role}"')
        conn.close()
