"""gevent helpers that also work (as no-ops) outside a gevent worker: tests, `flask run`, the CLI."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def is_green() -> bool:
    """True inside a gevent worker (sockets monkey-patched), where blocking I/O yields to other greenlets."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("socket"))


class _Deadline:
    """One gevent timeout whose clock can be stopped and restarted: only the time it runs counts."""

    def __init__(self, seconds: float, exception: BaseException | None) -> None:
        import gevent

        self._gevent = gevent
        self._remaining = seconds
        self._exception = exception
        self._timer: Any = None
        self._started = 0.0

    def start(self) -> None:
        # A fresh gevent.Timeout each time: its loop timer cannot be re-armed with another duration.
        self._timer = self._gevent.Timeout(max(self._remaining, 0.0), self._exception)
        self._timer.start()
        self._started = time.monotonic()

    def stop(self) -> None:
        self._timer.close()
        self._remaining -= time.monotonic() - self._started


# The deadlines running in the current greenlet, innermost last (greenlets each have their own context).
_running: ContextVar[tuple[_Deadline, ...]] = ContextVar("photo_api_deadlines", default=())


@contextlib.contextmanager
def deadline(seconds: float, exception: BaseException | None = None) -> Iterator[None]:
    """Interrupt the block after `seconds` when running under gevent (raises gevent.Timeout or `exception`).

    Time the block spends inside `outside_deadlines()` does not count. Outside gevent nothing can
    interrupt blocking I/O this way, so the block simply runs; callers keep their own socket or
    server-side timeouts as the backstop.
    """
    if not is_green():
        yield
        return
    timer = _Deadline(seconds, exception)
    token = _running.set((*_running.get(), timer))
    timer.start()
    try:
        yield
    finally:
        timer.stop()
        _running.reset(token)


@contextlib.contextmanager
def outside_deadlines() -> Iterator[None]:
    """Stop the clocks of the deadlines running in this greenlet for the block, and restart them after it.

    For waits that are someone else's doing: reading a slow client's request body in the middle of a
    storage upload must not use up the storage call's deadline (nor count against the dependency).
    """
    paused = _running.get()
    for timer in paused:
        timer.stop()
    token = _running.set(())
    try:
        yield
    finally:
        _running.reset(token)
        for timer in paused:
            timer.start()


def offload(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run CPU-heavy `fn` on gevent's native thread pool so the worker's other greenlets keep running.

    Used for password hashing: argon2 releases the GIL, so the hub keeps serving while a thread hashes.
    """
    if not is_green():
        return fn(*args, **kwargs)
    import gevent

    return gevent.get_hub().threadpool.apply(fn, args, kwargs)


# The longest a connection waits for its turn after a response: a few requests' worth of other connections.
FAIR_TURN_MAX_WAIT_S = 0.005


def let_other_connections_run() -> None:
    """Under gevent, wait until every greenlet that is ready to run (ready sockets included) has had its turn.

    gunicorn's gevent worker serves a keep-alive connection in a loop, and a socket read that finds the
    next request already waiting does not yield: a client that always has its next request in flight is
    served back-to-back while the worker's other connections wait (1 to 2 s maxima on a 7 ms route under wrk).
    `gevent.sleep(0)` is not enough: it yields only within the current loop iteration, before sockets are
    polled again (tests/e2e/test_fair_keepalive.py: another connection's one request waited for 51 of 300
    pipelined ones with it, 300 with nothing, 1 to 2 with this). `gevent.idle()` waits until the loop has
    processed every pending event, so each ready connection is served before this one goes on; when
    nothing else is ready it returns at once. A loop that is never idle (new connections arriving faster
    than they are served) would hold this connection back indefinitely, so the wait is capped at
    FAIR_TURN_MAX_WAIT_S. (A short positive `gevent.sleep` is not used instead: libev's epoll waits at
    least 1 ms for a timer, which would add up to 1 ms to every keep-alive request of an idle worker.)
    """
    if is_green():
        import gevent

        with gevent.Timeout(FAIR_TURN_MAX_WAIT_S, False):
            gevent.idle()
