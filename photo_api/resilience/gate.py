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
            if isinstance(exc, Exception) or is_timeout(exc):
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
            except Exception:
                continue
            down_for = self._clock() - (self._failed_at or self._clock())
            # In this order: a connect failing from here on finds no retrier and starts a new one.
            self._retrier = None
            self._failed_at = None
            log.warning("database answers again", extra={"down_s": round(down_for, 1)})
            return
        self._retrier = None
