"""The connect gate: after a failed connect, this process's connects fail at once until one succeeds again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .failures import is_timeout

log = logging.getLogger("photo_api.db")

# While connects fail, how often one background attempt checks whether the database answers again.
CONNECT_RETRY_INTERVAL_S = 1.0

# The server answered but will not take one more session now: it is full (SQLSTATE 53300
# too_many_connections: max_connections, a role's or a database's CONNECTION LIMIT, the reserved slots)
# or not accepting connections yet or any more (57P03 cannot_connect_now: starting up, shutting down,
# in recovery). libpq reports a refusal at connect without its SQLSTATE (psycopg2 2.9 leaves `pgcode`
# None, checked against PostgreSQL 15), so the server's message decides when the code is missing; the
# texts are PostgreSQL's English ones (lc_messages = C or en_*, the default of managed servers), plus
# PgBouncer's when it is full (max_client_conn).
CAPACITY_SQLSTATES = {"53300": "too_many_connections", "57P03": "cannot_connect_now"}
CAPACITY_MESSAGES = (
    ("too many connections", "too_many_connections"),  # for role "x" / for database "y"
    ("too many clients already", "too_many_connections"),  # max_connections
    ("connection slots are reserved", "too_many_connections"),  # reserved / superuser_reserved
    ("no more connections allowed", "too_many_connections"),  # PgBouncer max_client_conn
    ("the database system is starting up", "cannot_connect_now"),
    ("the database system is shutting down", "cannot_connect_now"),
    ("the database system is in recovery mode", "cannot_connect_now"),
    ("the database system is not yet accepting connections", "cannot_connect_now"),
    ("the database system is not accepting connections", "cannot_connect_now"),
)
REFUSAL_REASONS = ("too_many_connections", "cannot_connect_now")


def capacity_refusal(exc: BaseException) -> str | None:
    """Why the server refused this connect for capacity (a REFUSAL_REASONS value), or None if it did not.

    None for everything else, including the database being unreachable (refused TCP, timeout, DNS) and
    a wrong password: those are failures of the connect, not a full server.
    """
    code = getattr(exc, "pgcode", None)
    if code in CAPACITY_SQLSTATES:
        return CAPACITY_SQLSTATES[code]
    if not isinstance(exc, Exception):
        return None
    text = str(exc).lower()
    for fragment, reason in CAPACITY_MESSAGES:
        if fragment in text:
            return reason
    return None


class ConnectGate:
    """Once a connect has failed, this process's connects fail at once until one in the background succeeds.

    Without it, while the database host blackholes packets every request would wait the whole connect
    deadline before its 503. With it, the request whose connect failed is the last one to wait: the
    following ones get their 503 at once, without any I/O, while one background thread (a greenlet in a
    gevent worker) tries to connect every `retry_interval`; its first success opens the gate again, so
    the instance recovers within about `retry_interval` of the database coming back, with or without
    traffic. The engine (db.py) puts it in the pool's `do_connect` event, the one place every new
    connection passes through: it guards connection *establishment* only, and pooled connections are
    checked by the (bounded) pre-ping. `clock` only measures how long connects have been failing.

    A server that *answers* with a refusal because it is full or starting up (`capacity_refusal()`) is
    not unreachable: that connect fails, but the gate stays open and the pool (db.py) makes the request
    wait for a pooled connection instead. Tripping here would turn a full server, whose pooled
    connections are all healthy, into 503s for every request needing a new connection.
    """

    def __init__(
        self, retry_interval: float = CONNECT_RETRY_INTERVAL_S, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.retry_interval = retry_interval
        self._clock = clock
        self._failed_at: float | None = None
        self._retrier: threading.Thread | None = None
        self._closed = threading.Event()

    @property
    def is_open(self) -> bool:
        """True unless the last connect failed and no later one has succeeded."""
        return self._failed_at is None

    def attempt(self, connect: Callable[[], Any], unavailable: Callable[[str], Exception]) -> Any:
        """Run `connect()`, or raise `unavailable(...)` at once while the database is known to be unreachable."""
        if self._failed_at is not None:
            raise unavailable(f"database unreachable (connect failing for {self._clock() - self._failed_at:.1f}s)")
        try:
            return connect()
        except BaseException as exc:
            # An outer deadline (the health probe's gevent.Timeout) ending the connect is a failed connect
            # too; a greenlet being killed says nothing about the database.
            if (isinstance(exc, Exception) and capacity_refusal(exc) is None) or is_timeout(exc):
                self._fail(connect)
            raise

    def close(self) -> None:
        """Stop the background retries (the engine is being disposed)."""
        self._closed.set()

    def _fail(self, connect: Callable[[], Any]) -> None:
        if self._failed_at is None:
            self._failed_at = self._clock()
            log.warning("database connect failed; failing fast until it answers again")
        if self._retrier is None and not self._closed.is_set():
            # A plain daemon thread: monkey-patched into a greenlet in a gevent worker.
            self._retrier = threading.Thread(target=self._retry, args=(connect,), name="db-connect-retry", daemon=True)
            self._retrier.start()

    def _retry(self, connect: Callable[[], Any]) -> None:
        while not self._closed.wait(self.retry_interval):
            try:
                connect().close()
            except Exception as exc:
                if capacity_refusal(exc) is None:
                    continue
                # Refused because it is full: it answers, so it is reachable again; the pool waits.
            down_for = self._clock() - (self._failed_at or self._clock())
            # In this order: a connect failing from here on finds no retrier and starts a new one.
            self._retrier = None
            self._failed_at = None
            log.warning("database answers again", extra={"down_s": round(down_for, 1)})
            return
        self._retrier = None
