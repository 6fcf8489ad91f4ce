"""A bounded queue drained in batches by one background worker: a greenlet under gevent, else a daemon thread.

`put` never blocks: when the queue is full the new item is dropped and counted ("queue_full"). The
worker hands `send` a batch when `batch_size` items are waiting, `flush_interval` seconds after the
oldest of them was queued, or at once when `drain` asks. The queue is a `queue.Queue`, whose locks
gevent's monkey-patching makes cooperative in a worker process (the app is built after the patch).
Every item ends up sent by `send` or counted in `dropped_by_reason`; `send` counts its own failures
through `drop`, and anything it raises drops the batch as "error".
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DRAIN_TIMEOUT_S = 5.0
# A thread worker that was drained is idle, so it sees the stop at once; this only bounds a surprise.
THREAD_JOIN_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class _Flush:
    """Queued behind the items to send now: the worker sends up to it, then sets `done` (None only wakes it)."""

    done: threading.Event | None


@dataclass(slots=True)
class _Batch(Generic[T]):
    items: list[T] = field(default_factory=list)
    flushed: list[threading.Event] = field(default_factory=list)


class BatchWorker(Generic[T]):
    """Items put from any thread or greenlet, sent in batches by one background worker; never blocks a caller."""

    def __init__(
        self,
        send: Callable[[list[T]], None],
        *,
        name: str,
        queue_size: int,
        batch_size: int,
        flush_interval: float,
        on_dropped: Callable[[str, int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.name = name
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._send = send
        # Hooks: (reason, count) for every drop; the queue depth after each batch.
        self._on_dropped = on_dropped
        self._on_batch = on_batch
        # Items as (monotonic time queued, item), and _Flush markers, which take no part in the depth.
        self._queue: queue.Queue[tuple[float, T] | _Flush] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()  # the counters below; never held across a wait or I/O
        self._markers = 0
        self._in_flight = 0  # items taken off the queue and not yet sent or counted as dropped
        self._closing = False
        self._runner: Any = None  # threading.Thread or gevent.Greenlet
        self._ident: int | None = None
        self.dropped_by_reason: collections.Counter[str] = collections.Counter()

    @property
    def runner(self) -> Any:
        """The background worker: a gevent.Greenlet under gevent, else a threading.Thread; None before start."""
        return self._runner

    @property
    def depth(self) -> int:
        """Items waiting in the queue."""
        return max(0, self._queue.qsize() - self._markers)

    @property
    def closed(self) -> bool:
        """True once close() has begun: nothing more is accepted."""
        return self._closing

    def is_current(self) -> bool:
        """True when called from the worker itself."""
        return threading.get_ident() == self._ident

    def full(self) -> bool:
        """True when a put would be dropped (a cheap check before preparing an item)."""
        return self._queue.full()

    def drop(self, reason: str, count: int = 1) -> None:
        """Count `count` items that will never be sent, under `reason`."""
        if not count:
            return
        with self._lock:
            self.dropped_by_reason[reason] += count
        if self._on_dropped is not None:
            self._on_dropped(reason, count)

    def put(self, item: T) -> bool:
        """Queue `item`; when the queue is full, drop it (counted as "queue_full") and return False."""
        try:
            self._queue.put_nowait((time.monotonic(), item))
        except queue.Full:
            self.drop("queue_full")
            return False
        return True

    def start(self, *, green: bool) -> None:
        """Start the background worker: a greenlet when `green` (gevent worker), else a daemon thread; idempotent."""
        if self._runner is not None:
            return
        if green:
            import gevent

            self._runner = gevent.spawn(self._run)
        else:
            self._runner = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._runner.start()

    def alive(self) -> bool:
        """True while the worker runs."""
        runner = self._runner
        if runner is None:
            return False
        if isinstance(runner, threading.Thread):
            return runner.is_alive()
        return not runner.dead

    def drain(self, timeout: float | None = None) -> bool:
        """Send everything queued now; wait at most `timeout` seconds. True when all of it was sent or counted."""
        end = time.monotonic() + (timeout if timeout is not None else DEFAULT_DRAIN_TIMEOUT_S)
        if not self.alive():
            with self._lock:
                return self.depth == 0 and self._in_flight == 0
        done = threading.Event()
        if not self._put_marker(_Flush(done), timeout=end - time.monotonic()):
            return False  # the queue stayed full: the worker is stuck
        return done.wait(max(0.0, end - time.monotonic()))

    def close(self, timeout: float | None = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        """Drain within `timeout`, then stop the worker and count whatever is left as dropped ("shutdown")."""
        drained = self.drain(timeout)
        self._closing = True
        runner = self._runner
        if isinstance(runner, threading.Thread):
            self._put_marker(_Flush(None), timeout=0)  # wakes an idle worker, which then sees `_closing`
            if drained:
                runner.join(THREAD_JOIN_TIMEOUT_S)
            # else it is stuck in a send: a daemon thread cannot be killed, and it ends with the process
        elif runner is not None:
            # A batch stuck on a blackholed collector must not outlive the worker; it is lost, so count it.
            runner.kill(block=False)
            self._lose_in_flight()
        left = 0
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(entry, _Flush):
                with self._lock:
                    self._markers -= 1
            else:
                left += 1
        self.drop("shutdown", left)

    def _put_marker(self, marker: _Flush, *, timeout: float) -> bool:
        with self._lock:
            self._markers += 1
        try:
            self._queue.put(marker, timeout=max(0.0, timeout))  # waits only while the queue is full
        except queue.Full:
            with self._lock:
                self._markers -= 1
            return False
        return True

    def _lose_in_flight(self) -> None:
        with self._lock:
            lost, self._in_flight = self._in_flight, 0
        self.drop("shutdown", lost)

    def _run(self) -> None:
        self._ident = threading.get_ident()
        while (batch := self._next_batch()) is not None:
            if batch.items:
                try:
                    self._send(batch.items)
                except Exception:
                    self.drop("error", len(batch.items))
                    log.exception("batch could not be sent; dropped", extra={"worker": self.name})
                finally:
                    with self._lock:
                        self._in_flight = 0
                if self._on_batch is not None:
                    self._on_batch(self.depth)
            for done in batch.flushed:
                done.set()

    def _next_batch(self) -> _Batch[T] | None:
        """Wait until a batch is due (full, old enough, or a flush reached) and take it; None when closing."""
        batch: _Batch[T] = _Batch()
        due = math.inf
        while len(batch.items) < self.batch_size:
            if self._closing:
                self._lose_in_flight()
                return None
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                if batch.flushed:
                    break
                # Idle (no items yet): wait for the first one without a timeout.
                wait = due - time.monotonic() if batch.items else None
                if wait is not None and wait <= 0:
                    break
                try:
                    entry = self._queue.get(timeout=wait)
                except queue.Empty:
                    break  # the oldest item has waited flush_interval
            if isinstance(entry, _Flush):
                with self._lock:
                    self._markers -= 1
                if entry.done is not None:
                    batch.flushed.append(entry.done)
                continue
            queued_at, item = entry
            with self._lock:
                self._in_flight += 1
            if not batch.items:
                due = queued_at + self.flush_interval
            batch.items.append(item)
        return batch
