"""The bulkhead: at most `capacity` calls to one dependency in flight per worker, then a short wait, then no."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

# How long callers are told to wait when the bulkhead is full.
BULKHEAD_RETRY_AFTER_S = 1


class BulkheadFullError(Exception):
    """Every slot stayed taken for the whole queue timeout: the call was not made."""

    def __init__(self, name: str, capacity: int, retry_after: int = BULKHEAD_RETRY_AFTER_S):
        super().__init__(f"{name}: all {capacity} slots busy")
        self.retry_after = retry_after


class Bulkhead:
    """A bounded number of concurrent calls, so a slow dependency cannot hold every greenlet of a worker.

    A caller waits up to `queue_timeout` for a slot (0: not at all). The wait is the semaphore's own
    timed acquire (gevent's in a worker: threading is patched before the app is built), so there is no
    clock to inject; tests use a queue timeout of 0 for an immediate refusal.
    """

    def __init__(self, capacity: int, queue_timeout: float, *, name: str = "bulkhead") -> None:
        if capacity < 1:
            raise ValueError("a bulkhead needs at least one slot")
        if queue_timeout < 0:
            raise ValueError("queue_timeout must not be negative")
        self.name = name
        self.capacity = capacity
        self.queue_timeout = queue_timeout
        self.in_flight = 0
        self._slots = threading.BoundedSemaphore(capacity)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the block; raise BulkheadFullError when none frees up within the queue timeout."""
        if not self._slots.acquire(timeout=self.queue_timeout):
            raise BulkheadFullError(self.name, self.capacity)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()
