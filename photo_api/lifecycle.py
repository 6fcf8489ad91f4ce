"""Instance lifecycle: the draining flag shared by the gunicorn master and its workers, the SIGTERM drain,
and the shutdown hooks.

The flag lives in an anonymous shared mmap created in the master before it forks (the gunicorn config
calls `init_shared_state()` in `on_starting`): every worker inherits the same page, so when the master
flips "draining" on SIGTERM every worker sees it at once, and a worker that replaces a crashed one
during the drain inherits it too. (A flag set by each worker would flip readiness on every worker
restart, and a flag file can go stale across restarts.) Outside gunicorn the page is simply private to
the process.

Stopping an instance (docs/operations.md, "Instance lifecycle"):

1. first SIGTERM → `Drain.handle_term`: the flag flips, readiness answers 503 `draining` in every
   worker, the listeners stay open for `DRAIN_DELAY_SECONDS` while the load balancer notices, and every
   response closes its connection (`pre_request` → `req.force_close()`), so no idle keep-alive
   connection is left when the listeners close;
2. then gunicorn's own graceful stop: listeners closed, workers get `GRACEFUL_TIMEOUT` for the requests
   in flight;
3. each worker runs `worker_shutdown` on its way out (DB pool close, log queue flush), and the master
   runs `master_shutdown` once every worker has gone (final metrics push); exit 0.

A second SIGTERM, SIGINT or SIGQUIT stops quickly (gunicorn's quick stop, about 2 s). Only the master
flips the flag: a worker recycled by `max_requests` or replaced after a crash does not.
"""

from __future__ import annotations

import logging
import mmap
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

_DRAINING = 0
_PAGE_SIZE = 16
_page: mmap.mmap | None = None


def init_shared_state() -> None:
    """Create the shared page; must run in the gunicorn master before the first fork."""
    global _page
    if _page is None:
        _page = mmap.mmap(-1, _PAGE_SIZE)  # MAP_SHARED | MAP_ANONYMOUS: survives fork as the same memory


def _shared() -> mmap.mmap:
    init_shared_state()
    assert _page is not None
    return _page


def set_draining(value: bool = True) -> None:
    """Mark this instance as draining (or not): readiness answers 503 in every worker."""
    _shared()[_DRAINING] = 1 if value else 0


def is_draining() -> bool:
    """True once the instance has been asked to stop."""
    return _shared()[_DRAINING] == 1


# -- shutdown hooks ------------------------------------------------------------------------------------


@dataclass
class ShutdownHooks:
    """Named callables run once, in the order added, when a process stops; one failing does not stop the rest."""

    where: str
    hooks: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def add(self, name: str, hook: Callable[[], None]) -> None:
        """Run `hook` at shutdown, after the hooks added before it."""
        self.hooks.append((name, hook))

    def run(self) -> None:
        """Run every hook once (the list is emptied), logging each failure."""
        hooks, self.hooks = self.hooks, []
        for name, hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("shutdown hook failed", extra={"hook": name, "in": self.where})


# The places where a stopping instance cleans up; gunicorn_conf.py and metrics/master.py fill them.
# In each worker, after its last request (gunicorn `worker_exit`): close the DB pool, then flush the
# log queue last, so that the shipper also carries the lines written while closing.
worker_shutdown = ShutdownHooks("worker")
# In the master, after every worker has exited (gunicorn `on_exit`): the final metrics push, whose
# counters are complete only then.
master_shutdown = ShutdownHooks("master")


# -- the drain (gunicorn master) -----------------------------------------------------------------------


class Drain:
    """The master's SIGTERM handling: drain for `delay` seconds, then gunicorn's graceful stop.

    Installed by `install(server)` from the `when_ready` hook, i.e. in the master's main thread after
    gunicorn has set up its signal handlers. gunicorn only queues signals and dispatches them from its
    main loop to `getattr(server, "handle_<name>")`, so an instance attribute `handle_term` replaces the
    default. A second SIGTERM is queued as SIGQUIT instead, which gunicorn honours both in
    its main loop and while it waits for workers in a graceful stop.
    """

    def __init__(self, delay: float, *, clock: Callable[[], float] = time.monotonic):
        self.delay = delay
        self._clock = clock
        self.requested_at: float | None = None  # first SIGTERM received (signal context)
        self.expired = False  # the drain delay is over: the next queued SIGTERM stops gracefully
        self._server: Any = None
        self._graceful_stop: Callable[[], None] | None = None
        self._timer: threading.Timer | None = None

    def install(self, server: Any) -> None:
        """Take over SIGTERM in the gunicorn master `server` (an Arbiter)."""
        self._server = server
        self._graceful_stop = server.handle_term
        server.handle_term = self.handle_term
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # Signal context: no logging, no locks; like gunicorn's own handler, only queue.
        if self.requested_at is None:
            self.requested_at = self._clock()
            self._server.SIG_QUEUE.put_nowait(signal.SIGTERM)
        else:
            self._server.SIG_QUEUE.put_nowait(signal.SIGQUIT)  # second SIGTERM: stop now

    def handle_term(self) -> None:
        """gunicorn main loop: start the drain, or (once it is over) run the graceful stop."""
        assert self._graceful_stop is not None, "install() first"
        if self.expired or self.delay <= 0:
            set_draining()  # a zero delay still closes every connection after its current response
            self._graceful_stop()  # raises StopIteration: gunicorn halts, stop(graceful=True) runs
            return
        if self._timer is not None:
            return  # already draining
        set_draining()
        self._server.log.info(
            "SIGTERM: draining for %gs (readiness 503, listeners open); then graceful stop", self.delay
        )
        self._timer = threading.Timer(self.delay, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        # Timer thread: queue the SIGTERM that the main loop turns into the graceful stop. Queued
        # directly, not signalled, so that it is not mistaken for an operator's second SIGTERM.
        self.expired = True
        self._server.SIG_QUEUE.put_nowait(signal.SIGTERM)


def force_close_while_draining(req: Any) -> None:
    """gunicorn `pre_request`: while draining, answer this request and then close its connection.

    The app cannot do this itself: gunicorn drops a `Connection` header set by the app (hop-by-hop).
    """
    if is_draining():
        req.force_close()
