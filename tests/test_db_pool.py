"""Pooled connections that PostgreSQL closed behind the pool's back: users see no error.

`pg_terminate_backend` (an operator, a failover, PostgreSQL restarting) closes every session the pool
holds. With the pre-ping on (the default, DB_POOL_PRE_PING), each checkout finds its connection dead
before the request uses it, and the pool replaces it: no request fails. Without it the first use of
each dead connection fails: the test shows both, so that it shows what the setting is for.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from photo_api.config import load_settings
from photo_api.db import Database
from tests.harness.databases import PostgresServer, pg_database
from tests.harness.env import TEST_SECRET

POOL = 4
QUERIES = 40


def _terminate_pooled(database_url: str) -> int:
    """Terminate every photo-api session on the database; how many there were."""
    server = PostgresServer(make_url(database_url).set(database="postgres").render_as_string(hide_password=False))
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = 'photo-api'",
                (make_url(database_url).database,),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def _queries(db: Database) -> list[str]:
    def one(_: int) -> str:
        try:
            with db.session() as session:
                session.execute(text("SELECT 1")).scalar()
            return "ok"
        except DBAPIError as exc:
            return type(exc.orig).__name__

    with ThreadPoolExecutor(POOL) as pool:
        return list(pool.map(one, range(QUERIES)))


@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre-ping", "no-pre-ping"])
def test_terminated_pooled_connections(pre_ping: bool) -> None:
    with pg_database("photo_api_pool", migrated=False) as url:
        settings = load_settings(
            environ={}, database_url=url, jwt_secret_key=TEST_SECRET, db_pool_size=POOL, db_max_overflow=0
        )
        db = Database(settings.model_copy(update={"db_pool_pre_ping": pre_ping}))
        try:
            assert set(_queries(db)) == {"ok"}  # the pool holds its connections
            assert _terminate_pooled(url) >= 1
            results = _queries(db)
            print(
                f"\nafter pg_terminate_backend, pre-ping {pre_ping}: {QUERIES - results.count('ok')}/{QUERIES} failed"
            )
            if pre_ping:
                assert set(results) == {"ok"}, results
            else:
                # What the pre-ping prevents: the first use of a dead connection fails (then SQLAlchemy
                # invalidates the pool, and the connections made after that work again).
                assert results.count("ok") < QUERIES, results
            assert set(_queries(db)) == {"ok"}
        finally:
            db.dispose()
