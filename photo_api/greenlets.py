"""gevent helpers that also work (as no-ops) outside a gevent worker: tests, `flask run`, the CLI."""

from __future__ import annotations

import contextlib
import functools
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, NoReturn, ParamSpec, Protocol, TypeVar

from .errors import ServiceUnavailableError

P = ParamSpec("P")
T = TypeVar("T")

# How long a caller refused by a full NativePool is told to wait: a hash takes ~0.3 s of CPU (production cost,
# ops/bench/RESULTS.md), so a second sees several hashes end.
POOL_RETRY_AFTER_S = 1


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


class PoolBusyError(ServiceUnavailableError):
    """A NativePool had no thread free within its queue timeout, or its queue was full: the work did not run."""

    def __init__(self, name: str, reason: str, retry_after: int = POOL_RETRY_AFTER_S) -> None:
        super().__init__(f"{name} is busy, retry shortly", retry_after=retry_after)
        self.reason = reason  # "queue_full" | "timeout"


class PoolEvents(Protocol):
    """What a NativePool reports (the composition root turns it into metrics)."""

    def waited(self, seconds: float) -> None:
        """A call got a thread after waiting `seconds` in the queue (0 when one was free)."""

    def rejected(self, reason: str) -> None:
        """A call was refused: `queue_full` or `timeout`."""


class _NoEvents:
    def waited(self, seconds: float) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass


class NativePool:
    """At most `threads` calls at once on OS threads of this pool's own, the rest waiting in a bounded queue.

    For CPU work that releases the GIL (argon2): under gevent the calling greenlet waits cooperatively
    while a real thread computes, so the event loop keeps serving. The threads are not gevent's hub
    threadpool, which also resolves host names for every outbound connection: a flood of such work must
    not delay DNS. A call waits at most `queue_timeout` for a thread, and is refused without waiting when
    `queue_size` calls already wait (PoolBusyError, a 503 with Retry-After): under a flood the excess is
    answered in well under a second instead of piling up until every client has timed out. That refusal
    comes after `refusal_delay` seconds (the caller's greenlet sleeps; the loop serves others): clients
    that retry a 503 at once, ignoring Retry-After, would otherwise spin through refusals as fast as the
    instance answers them, and those answers took the CPU the pool's threads needed (ops/bench/RESULTS.md).

    Outside gevent (tests, `flask run`) the calling thread does the work itself, within the same bounds.
    The threads are started at the first call, in the process that makes it (after gunicorn's fork).
    """

    def __init__(
        self,
        threads: int,
        *,
        queue_size: int,
        queue_timeout: float,
        name: str = "pool",
        nice: int = 0,
        refusal_delay: float = 0.0,
        events: PoolEvents | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("a pool needs at least one thread")
        if queue_size < 0 or queue_timeout < 0 or refusal_delay < 0:
            raise ValueError("queue_size, queue_timeout and refusal_delay must not be negative")
        self.name = name
        self.threads = threads
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.nice = nice
        self.refusal_delay = refusal_delay
        self.waiting = 0
        self.in_flight = 0
        self._events: PoolEvents = events or _NoEvents()
        # gevent's semaphore in a worker (threading is patched before the app is built), a real one elsewhere.
        self._slots = threading.BoundedSemaphore(threads)
        self._pool: Any = None
        self._niced: set[int] = set()  # native ids of the pool's threads whose priority was lowered

    def refuse_if_full(self) -> None:
        """Raise PoolBusyError now if a call made now would be refused for a full queue.

        For callers with work to do before their call (a database query before a password check): under a
        flood of clients that retry at once, the refused requests' own work took the CPU the pool needed.
        """
        if self.in_flight >= self.threads and self.waiting >= self.queue_size:
            self._refuse_full()

    def _refuse_full(self) -> NoReturn:
        self._events.rejected("queue_full")
        if self.refusal_delay:
            time.sleep(self.refusal_delay)  # gevent's sleep in a worker: only this request waits
        raise PoolBusyError(self.name, "queue_full")

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on one of the pool's threads and return its result (its exception is raised here)."""
        started = time.monotonic()
        if not self._slots.acquire(blocking=False):
            if self.waiting >= self.queue_size:
                self._refuse_full()
            self.waiting += 1
            try:
                got = self._slots.acquire(timeout=self.queue_timeout)
            finally:
                self.waiting -= 1
            if not got:
                self._events.rejected("timeout")
                raise PoolBusyError(self.name, "timeout")
        self._events.waited(time.monotonic() - started)
        self.in_flight += 1
        try:
            if not is_green():
                return fn(*args, **kwargs)
            result: T = self._threadpool().apply(self._call, (fn, args, kwargs))
            return result
        finally:
            self.in_flight -= 1
            self._slots.release()

    def _threadpool(self) -> Any:
        if self._pool is None:
            from gevent.threadpool import ThreadPool

            self._pool = ThreadPool(self.threads)
        return self._pool

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        # Runs on the pool's thread. A lower priority than the event loop's thread: when the cores are
        # busy hashing, the kernel still runs the loop (health probes, every other request) first.
        tid = threading.get_native_id()
        if self.nice and tid not in self._niced:
            with contextlib.suppress(OSError):  # a lower priority is always allowed; never fail the call for it
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.nice)
            self._niced.add(tid)
        return fn(*args, **kwargs)


@functools.cache
def _os_poll() -> Callable[[], Any]:
    from gevent import monkey

    poll: Callable[[], Any] = monkey.get_original("select", "poll")
    return poll


def has_input(fd: int) -> bool:
    """True when file descriptor `fd` has something to read right now (bytes, an end of file, an error).

    Never waits and never yields to another greenlet: the operating system's own `poll` with a zero
    timeout (gevent's patched one would hand over to the event loop), one system call.
    """
    poller = _os_poll()()
    poller.register(fd, select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, as a container or taskset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


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
