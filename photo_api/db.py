"""Engine and sessions: pool and timeout settings, the connect deadline under gevent, the slow-query log."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool
from sqlalchemy.util import queue as sqla_queue

from .config import Settings
from .greenlets import deadline, has_input
from .resilience import CONNECT_RETRY_INTERVAL_S, ConnectGate, capacity_refusal

log = logging.getLogger(__name__)
T = TypeVar("T")

APPLICATION_NAME = "photo-api"
# Abandoned transactions hold locks and a connection; PostgreSQL ends them after this long.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
SLOW_QUERY_TEXT_LIMIT = 500
SQLITE_BUSY_TIMEOUT_S = 5
# The pool's pre-ping gets this share of HEALTH_CHECK_TIMEOUT: within one health probe a silent pooled
# connection is then found out *and* one reconnect is tried, so the probe's result says "unreachable".
PING_SHARE_OF_HEALTH_TIMEOUT = 0.5
# A connection handed back to the pool less than this long ago, with nothing waiting on its socket, is handed
# out again without the pre-ping's round trip (HikariCP's `aliveBypassWindowMs`, whose default this is).
PRE_PING_SKIP_WITHIN_S = 0.5
# Sent bytes that the database host has not acknowledged after this long close the connection (TCP_USER_TIMEOUT):
# a statement sent into a silent network fails instead of waiting for TCP to give up (about 15 minutes).
# A slow query is not affected (the host's kernel acknowledges the statement at once).
TCP_USER_TIMEOUT_MS = 5_000


class CapacityAwarePool(QueuePool):
    """QueuePool that treats a server refusing a new connection for capacity as "wait", not "fail".

    QueuePool opens an overflow connection when no pooled one is free; if that connect raises, it gives
    the overflow slot back and the checkout fails with the driver's error at once (a 503), although the
    worker's pooled connections are healthy and one will be returned within milliseconds. Here a
    refusal for capacity (`resilience.capacity_refusal`: too many connections, starting up) makes the
    checkout wait on the pool's queue for a returned connection, within the same DB_POOL_TIMEOUT as any
    checkout, and then fail with the pool's TimeoutError (503 with Retry-After). While the server keeps
    refusing, this pool tries a new connection at most once per `refusal_backoff` seconds: PostgreSQL
    forks a backend for every connect before it refuses it, so hammering a full server costs it CPU.
    Every other connect failure propagates unchanged (the ConnectGate has already judged it).
    `on_refusal(reason)` is called for each refusal (the metric).
    """

    # Set by watch_refusals() after create_engine() built the pool (it passes only QueuePool's arguments).
    _refusal_backoff = CONNECT_RETRY_INTERVAL_S
    _on_refusal: Callable[[str], None] | None = None
    _refused_until = 0.0

    def watch_refusals(self, on_refusal: Callable[[str], None], backoff: float = CONNECT_RETRY_INTERVAL_S) -> None:
        """Call `on_refusal(reason)` for every refusal; try a new connection at most every `backoff` s after one."""
        self._on_refusal, self._refusal_backoff = on_refusal, backoff

    def recreate(self) -> QueuePool:
        """The same pool, new (SQLAlchemy calls this on engine.dispose() and invalidation)."""
        pool = super().recreate()
        assert isinstance(pool, CapacityAwarePool)
        pool._refusal_backoff, pool._on_refusal = self._refusal_backoff, self._on_refusal
        return pool

    def _do_get(self) -> ConnectionPoolEntry:
        # QueuePool._do_get, with a refused overflow connect turned into waiting on the queue.
        give_up = time.monotonic() + self._timeout
        while True:
            remaining = give_up - time.monotonic()
            overflow_full = self._max_overflow > -1 and self._overflow >= self._max_overflow
            refusing = time.monotonic() < self._refused_until
            wait = max(0.0, min(remaining, self._refused_until - time.monotonic())) if refusing else remaining
            try:
                # Block when no new connection may be opened: overflow used up, or refused a moment ago.
                return self._pool.get(overflow_full or refusing, wait)
            except sqla_queue.Empty:
                pass
            if time.monotonic() >= give_up:
                raise exc.TimeoutError(
                    f"QueuePool limit of size {self.size()} overflow {self.overflow()} reached, connection "
                    f"timed out, timeout {self._timeout:0.2f}",
                    code="3o7r",
                )
            if time.monotonic() < self._refused_until or not self._inc_overflow():
                continue
            try:
                return self._create_connection()
            except BaseException as error:
                self._dec_overflow()
                reason = capacity_refusal(error)
                if reason is None:
                    raise
                self._refused_until = time.monotonic() + self._refusal_backoff
                if self._on_refusal is not None:
                    self._on_refusal(reason)
                log.warning(
                    "database refused a connection for capacity; waiting for a pooled one",
                    extra={"reason": reason, "pool_size": self.size(), "checked_out": self.checkedout()},
                )


class Database:
    """One engine per process (created lazily: nothing connects until the first query) and its sessions."""

    def __init__(self, settings: Settings, connect_gate: ConnectGate | None = None):
        """`connect_gate` (PostgreSQL only) makes connects fail fast while the database is unreachable."""
        assert settings.database_url, "create_app refuses settings without DATABASE_URL"
        self.connect_gate = connect_gate if connect_gate is not None else ConnectGate()
        self.engine = make_engine(settings, self.connect_gate)
        # Called with the reason of every connect the server refused for capacity (metrics).
        self.refusal_hooks: list[Callable[[str], None]] = []
        if isinstance(self.engine.pool, CapacityAwarePool):
            self.engine.pool.watch_refusals(self._refused)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.slow_query_hooks: list[Callable[[float, str], None]] = []
        _install_slow_query_log(self.engine, settings.db_slow_query_ms / 1000, self.slow_query_hooks)

    def _refused(self, reason: str) -> None:
        for hook in self.refusal_hooks:
            hook(reason)

    @property
    def is_postgresql(self) -> bool:
        """True on PostgreSQL, False on SQLite."""
        return self.engine.dialect.name == "postgresql"

    def session(self) -> Session:
        """A new session; the caller closes it."""
        return self.sessions()

    def ping(self, timeout: float, query: Callable[[Connection], T]) -> tuple[float, T]:
        """Run `query` on a connection within `timeout` seconds: (latency in ms, its result); raise on failure.

        `query` is the health probe's (the schema revision): it proves the database answers, like a
        `SELECT 1` would, in the same round trip.
        """
        start = time.perf_counter()
        # Under gevent the deadline interrupts a blackholed connect or a hung query; SQLAlchemy then
        # invalidates only that connection (a gevent.Timeout is one of its "exit exceptions"). The
        # server-side statement timeout is the backstop when the deadline cannot fire (outside gevent).
        with deadline(timeout), self.engine.connect() as conn:
            if self.is_postgresql:
                conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout * 1000)}"))
            result = query(conn)
            conn.rollback()
        return (time.perf_counter() - start) * 1000, result

    def pool_status(self) -> dict[str, int]:
        """Connections checked out and overflow in use, for metrics and health."""
        pool: Any = self.engine.pool
        if not hasattr(pool, "checkedout"):
            return {"checked_out": 0, "overflow": 0}
        return {"checked_out": int(pool.checkedout()), "overflow": max(0, int(pool.overflow()))}

    def dispose(self) -> None:
        """Close every pooled connection (shutdown)."""
        self.connect_gate.close()
        self.engine.dispose()


def driver_url(url: str) -> str:
    """Pin the psycopg2 driver: SQLAlchemy 2.1 maps a bare postgresql:// URL to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def make_engine(settings: Settings, gate: ConnectGate | None = None) -> Engine:
    """Create the engine for DATABASE_URL with the configured pool and timeouts.

    `gate` (PostgreSQL only) makes connects fail fast while the database is unreachable.
    """
    url = make_url(driver_url(settings.database_url or ""))
    if url.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            pool_pre_ping=True,
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine

    timeouts = {
        "statement_timeout": settings.db_statement_timeout_ms,
        "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT_MS,
    }
    # Directly to PostgreSQL the timeouts are session settings given at connect (startup `options`): free.
    # PgBouncer refuses `options` (and in transaction pooling a session's settings would leak to whichever
    # client gets that server connection next), so there they are set per transaction (SET LOCAL, below).
    startup = {} if settings.db_pgbouncer else {"options": " ".join(f"-c {k}={v}" for k, v in timeouts.items())}
    engine = create_engine(
        url,
        # Error messages (logged with the traceback of a 500) would otherwise carry the bound values:
        # share tokens, password hashes.
        hide_parameters=True,
        poolclass=CapacityAwarePool,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        pool_pre_ping=settings.db_pool_pre_ping,
        connect_args={
            "application_name": APPLICATION_NAME,
            # libpq rounds anything below 2 s up to 2 s, and ignores it entirely on a green connection.
            "connect_timeout": max(2, int(settings.db_connect_timeout + 0.999)),
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
            **startup,
        },
    )
    if settings.db_pgbouncer:
        _set_timeouts_per_transaction(engine, timeouts)
    connect_timeout = settings.db_connect_timeout
    dbapi = engine.dialect.loaded_dbapi

    @event.listens_for(engine, "do_connect")
    def _connect_with_deadline(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
        def connect() -> Any:
            # With psycogreen, libpq connects asynchronously and `connect_timeout` is not applied, so a
            # SYN-dropping host would hang the greenlet: bound it ourselves.
            with deadline(connect_timeout, dbapi.OperationalError(f"connect timeout ({connect_timeout:g}s)")):
                return dbapi.connect(*cargs, **cparams)

        return connect() if gate is None else gate.attempt(connect, dbapi.OperationalError)

    _bound_pre_ping(engine, settings.health_check_timeout * PING_SHARE_OF_HEALTH_TIMEOUT, PRE_PING_SKIP_WITHIN_S)
    return engine


def _set_timeouts_per_transaction(engine: Engine, timeouts: dict[str, int]) -> None:
    """`SET LOCAL` the timeouts at the start of every transaction: one round trip (both in one statement).

    Through a transaction-pooling PgBouncer a transaction is the only unit that stays on one server
    connection, so this is the only place where a setting is sure to apply to our own statements, and
    SET LOCAL ends with the transaction: nothing leaks to the next client of that server connection.
    """
    statement = "; ".join(f"SET LOCAL {name} = {int(value)}" for name, value in timeouts.items())

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(statement)


def _bound_pre_ping(engine: Engine, timeout: float, skip_within: float) -> None:
    """Give the pool's pre-ping a deadline, and skip it for a connection that is known to be alive.

    The ping is a `SELECT 1` on a connection the pool hands out: a database that answers takes
    milliseconds, and one that does not answer within (half) the health check timeout is down for the
    load balancer too. On timeout the connection is closed, so SQLAlchemy sees a disconnect,
    invalidates every pooled connection and reconnects (through the ConnectGate) instead of hanging
    until TCP keepalive gives up (about a minute).

    Under load every connection comes back to the pool milliseconds before it is handed out again, and
    a ping each time is a round trip per request, on both sides (a fifth of a worker's CPU on
    `/auth/me`, ops/bench/RESULTS.md). So a connection returned less than `skip_within` seconds ago is
    not pinged when its socket has nothing to read: a server that closed it (restart,
    `pg_terminate_backend`, failover, PgBouncer restarting) has sent its goodbye or end of file, which
    `greenlets.has_input` sees without a round trip, and the ping then runs and finds it dead. What is not
    seen is a host that vanished silently within that half second: its first statement then fails after
    TCP_USER_TIMEOUT_MS, as it would have in the middle of the request.
    """
    dialect: Any = engine.dialect
    ping = dialect.do_ping
    dbapi = dialect.loaded_dbapi
    returned_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None:  # None: invalidated on its way back
            returned_at[dbapi_connection] = time.monotonic()

    def do_ping_with_deadline(dbapi_connection: Any) -> bool:
        last = returned_at.get(dbapi_connection)
        if last is not None and time.monotonic() - last < skip_within and not _has_input(dbapi_connection):
            return True
        try:
            with deadline(timeout, dbapi.OperationalError(f"ping timeout ({timeout:g}s)")):
                return bool(ping(dbapi_connection))
        except dbapi.OperationalError:
            dbapi_connection.close()  # closed → SQLAlchemy's is_disconnect() is True → invalidate, reconnect
            raise

    dialect.do_ping = do_ping_with_deadline


def _has_input(dbapi_connection: Any) -> bool:
    """Whether an idle connection's socket has something to read: a server's notice, error or end of file."""
    try:
        return has_input(dbapi_connection.fileno())
    except Exception:  # closed (the driver's InterfaceError), no socket: let the ping decide
        return True


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
