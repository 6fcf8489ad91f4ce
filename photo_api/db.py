"""Engine and sessions: pool and timeout settings, the connect deadline under gevent, the slow-query log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings
from .greenlets import deadline, is_green

log = logging.getLogger(__name__)

APPLICATION_NAME = "photo-api"
# Abandoned transactions hold locks and a connection; PostgreSQL ends them after this long.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
SLOW_QUERY_TEXT_LIMIT = 500
SQLITE_BUSY_TIMEOUT_S = 5


class Database:
    """One engine per process (created lazily: nothing connects until the first query) and its sessions."""

    def __init__(self, settings: Settings):
        assert settings.database_url, "development_defaults() fills DATABASE_URL before the app is built"
        self.url = settings.database_url
        self.engine = make_engine(settings)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.slow_query_hooks: list[Callable[[float, str], None]] = []
        _install_slow_query_log(self.engine, settings.db_slow_query_ms / 1000, self.slow_query_hooks)

    @property
    def is_postgresql(self) -> bool:
        """True on PostgreSQL, False on SQLite."""
        return self.engine.dialect.name == "postgresql"

    def session(self) -> Session:
        """A new session; the caller closes it."""
        return self.sessions()

    def ping(self, timeout: float) -> float:
        """Run `SELECT 1` within `timeout` seconds and return the latency in ms; raise on failure or timeout."""
        start = time.perf_counter()
        # Under gevent the deadline interrupts a blackholed connect or a hung query; SQLAlchemy then
        # invalidates only that connection (research notes §6). The server-side timeout is the backstop.
        with deadline(timeout), self.engine.connect() as conn:
            if self.is_postgresql:
                conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout * 1000)}"))
            conn.execute(text("SELECT 1"))
            conn.rollback()
        return (time.perf_counter() - start) * 1000

    def pool_status(self) -> dict[str, int]:
        """Connections checked out and overflow in use, for metrics and health."""
        pool: Any = self.engine.pool
        if not hasattr(pool, "checkedout"):
            return {"checked_out": 0, "overflow": 0}
        return {"checked_out": int(pool.checkedout()), "overflow": max(0, int(pool.overflow()))}

    def dispose(self) -> None:
        """Close every pooled connection (shutdown)."""
        self.engine.dispose()


def driver_url(url: str) -> str:
    """Pin the psycopg2 driver: SQLAlchemy 2.1 maps a bare postgresql:// URL to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def make_engine(settings: Settings) -> Engine:
    """Create the engine for DATABASE_URL with the configured pool and timeouts."""
    url = make_url(driver_url(settings.database_url or ""))
    if url.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            pool_pre_ping=True,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine

    options = (
        f"-c statement_timeout={settings.db_statement_timeout_ms} "
        f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
    )
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        pool_pre_ping=True,
        connect_args={
            "application_name": APPLICATION_NAME,
            # libpq rounds anything below 2 s up to 2 s, and ignores it entirely on a green connection.
            "connect_timeout": max(2, int(settings.db_connect_timeout + 0.999)),
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "options": options,
        },
    )
    connect_timeout = settings.db_connect_timeout

    @event.listens_for(engine, "do_connect")
    def _connect_with_deadline(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
        # With psycogreen, libpq connects asynchronously and `connect_timeout` is not applied, so a
        # SYN-dropping host would hang the greenlet: bound it ourselves (research notes §6).
        if not is_green():
            return None
        with deadline(connect_timeout, dialect.loaded_dbapi.OperationalError("connect timeout")):
            return dialect.loaded_dbapi.connect(*cargs, **cparams)

    return engine


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    # WAL lets readers work while a writer commits; several workers share the file in development.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


def _install_slow_query_log(engine: Engine, threshold_s: float, hooks: list[Callable[[float, str], None]]) -> None:
    if threshold_s <= 0:
        return

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        context.photo_api_started = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _end(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        elapsed = time.perf_counter() - context.photo_api_started
        if elapsed >= threshold_s:
            # The statement only: parameters can hold password hashes or share tokens.
            log.warning(
                "slow query",
                extra={"duration_ms": round(elapsed * 1000, 1), "statement": statement[:SLOW_QUERY_TEXT_LIMIT]},
            )
            for hook in hooks:
                hook(elapsed, statement)
