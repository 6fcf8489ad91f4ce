"""Pooled connections that PostgreSQL closed behind the pool's back: users see no error.

`pg_terminate_backend` (an operator, a failover, PostgreSQL restarting) closes every session the pool
holds. With the pre-ping on (the default, DB_POOL_PRE_PING), each checkout finds its connection dead
before the request uses it, and the pool replaces it: no request fails. Without it the first use of
each dead connection fails: the test shows both, so that it shows what the setting is for.

The pre-ping skips its round trip for a connection returned to the pool a moment ago whose socket has
nothing to read (db.PRE_PING_SKIP_WITHIN_S): the terminated connections below are reused at once, so the
first test also shows that the socket check finds them dead; the next one shows when a ping is made.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from photo_api.config import load_settings
from photo_api.db import PRE_PING_SKIP_WITHIN_S, TCP_USER_TIMEOUT_MS, Database
from tests.harness.databases import PostgresServer, pg_database
from tests.harness.env import TEST_SECRET

POOL = 4
QUERIES = 40


def _server(database_url: str) -> PostgresServer:
    return PostgresServer(make_url(database_url).set(database="postgres").render_as_string(hide_password=False))


def _terminate_pooled(database_url: str) -> int:
    """Terminate every photo-api session on the database and wait until they are gone; how many there were."""
    conn = _server(database_url).connect()
    name = make_url(database_url).database
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = 'photo-api'",
                (name,),
            )
            terminated = int(cur.fetchone()[0])
            # pg_terminate_backend only signals: the sessions' sockets are closed once they have exited.
            for _ in range(100):
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'photo-api'",
                    (name,),
                )
                if cur.fetchone()[0] == 0:
                    return terminated
                time.sleep(0.05)
            raise AssertionError("the terminated sessions did not exit within 5 s")
    finally:
        conn.close()


def _last_statement(database_url: str) -> str:
    """The statement the photo-api session on the database ran last (pg_stat_activity; one session only)."""
    conn = _server(database_url).connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT query FROM pg_stat_activity WHERE datname = %s AND application_name = 'photo-api'",
                (make_url(database_url).database,),
            )
            rows = cur.fetchall()
            assert len(rows) == 1, rows
            return str(rows[0][0])
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


@pytest.mark.parametrize("pause", [0.0, PRE_PING_SKIP_WITHIN_S + 0.2], ids=["back-to-back", "idle"])
def test_pre_ping_round_trips(pause: float) -> None:
    """One pooled connection used 4 times: pinged before each reuse after a pause, never back-to-back.

    Whether a checkout pinged is read from PostgreSQL: the session's last statement, once the pool has
    handed the connection out and before it is used, is the ping's `SELECT 1`, or still the previous use's
    ROLLBACK.
    """
    uses = 4
    with pg_database("photo_api_ping", migrated=False) as url:
        db = Database(load_settings(environ={}, database_url=url, jwt_secret_key=TEST_SECRET, db_pool_size=1))
        pinged = []
        try:
            for _ in range(uses):
                with db.engine.connect() as conn:  # checked out (and pinged or not), nothing run yet
                    pinged.append(_last_statement(url).strip().lower() == "select 1")
                    conn.execute(text("SELECT 2")).scalar()
                    conn.rollback()
                time.sleep(pause)
        finally:
            db.dispose()
    # The first checkout opens a new connection, never pinged; a reuse is pinged after a pause only.
    assert pinged == [False] + [bool(pause)] * (uses - 1)


def test_unacknowledged_statements_time_out() -> None:
    """Pooled connections carry TCP_USER_TIMEOUT: a statement sent into a silent network fails in seconds."""
    with pg_database("photo_api_tcp", migrated=False) as url:
        db = Database(load_settings(environ={}, database_url=url, jwt_secret_key=TEST_SECRET))
        try:
            raw = db.engine.raw_connection()
            try:
                with socket.socket(fileno=os.dup(raw.driver_connection.fileno())) as sock:
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == TCP_USER_TIMEOUT_MS
            finally:
                raw.close()
        finally:
            db.dispose()
