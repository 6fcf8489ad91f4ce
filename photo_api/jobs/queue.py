"""Where jobs go: a Redis queue that `photo-api worker` processes consume (RQ), or, with no REDIS_URL, a
runner inside the app process (the embedded default, and any single-instance deployment).

Enqueueing never fails an upload: a queue that cannot take the job says so (False), the photo's
`processing_enqueued_at` stays empty, and `photo-api reap-uploads` enqueues it later
(services/processing.py). Job ids are fixed by the photo, so a job enqueued twice is one job's work.
"""

from __future__ import annotations

import logging
import queue as stdlib_queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .events import JobEvents, NoEvents

log = logging.getLogger(__name__)

QUEUE_NAME = "photo-api-media"
# What the RQ worker imports and calls with the photo id (photo_api/jobs/worker.py).
RENDITIONS_JOB = "photo_api.jobs.worker.renditions_job"
# A finished job's record is useless (the photo row is the result); a failed one is kept for operators
# (`rq info`, the failed job registry) for a week.
RESULT_TTL_S = 0
FAILURE_TTL_S = 7 * 24 * 3600
# After Redis refused an enqueue, the next ones are not tried for this long: the uploads of those seconds
# do not each wait for a connect timeout; the reaper enqueues their jobs.
ENQUEUE_PAUSE_S = 5.0
# /health shows the queue from a probe at most this old, refreshed in the background: a probe never waits
# on Redis (which is informational and must not slow the load balancer's answer).
STATUS_MAX_AGE_S = 5.0


def queue_depth_reader(url: str, timeout: float) -> Callable[[], int]:
    """A function returning the queue's depth (queued + scheduled retries) from Redis, raising when it cannot.

    Imports nothing of the project: the gunicorn master calls it at scrape time.
    """
    from redis import Redis

    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)

    def depth() -> int:
        pipe = client.pipeline(transaction=False)
        pipe.llen(f"rq:queue:{QUEUE_NAME}")
        pipe.zcard(f"rq:scheduled:{QUEUE_NAME}")
        queued, scheduled = pipe.execute()
        return int(queued) + int(scheduled)

    return depth


def job_id(photo_id: int) -> str:
    """The id of a photo's renditions job: the same every time it is enqueued."""
    return f"renditions-{photo_id}"


def backoff_intervals(base_seconds: int, max_attempts: int) -> list[int]:
    """Seconds before each retry: `base`, then four times longer each time (30 s, 2 min, 8 min, 32 min...)."""
    return [base_seconds * 4**n for n in range(max(0, max_attempts - 1))]


class JobQueue(Protocol):
    """What the API and the reaper hand photos to."""

    kind: str  # "redis" or "local"

    def enqueue(self, photo_id: int) -> bool:
        """Hand the photo's renditions job over; False when it could not be (it is enqueued again later)."""
        ...

    def status(self) -> dict[str, Any]:
        """The queue as /health reports it: status and depth; never raises, bounded in time."""
        ...

    def close(self, timeout: float) -> None:
        """Stop taking jobs; wait up to `timeout` seconds for those in hand."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """How often and when a job is run again after a transient failure."""

    max_attempts: int
    base_delay_s: int
    timeout_s: int  # the longest one run may take before the worker stops it


class RedisQueue:
    """Jobs on Redis, for `photo-api worker` processes on any number of machines (RQ)."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        policy: RetryPolicy,
        *,
        timeout: float,
        events: JobEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis import Redis
        from rq import Queue

        self.url = url
        self.policy = policy
        # Short socket timeouts: an enqueue happens inside an upload request.
        self.redis = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        self.queue = Queue(QUEUE_NAME, connection=self.redis)
        self._depth = queue_depth_reader(url, timeout)
        self.events = events or NoEvents()
        self._clock = clock
        self._paused_until = 0.0
        self._status: dict[str, Any] = {"status": "unknown"}
        self._status_at: float | None = None
        self._status_lock = threading.Lock()
        self._refreshing = False

    def enqueue(self, photo_id: int) -> bool:
        """Put the job on the Redis queue, with its retry policy; False (logged, counted) when Redis fails."""
        from redis.exceptions import RedisError
        from rq import Retry

        if self._clock() < self._paused_until:
            self.events.enqueued(False)
            return False
        try:
            self.queue.enqueue(
                RENDITIONS_JOB,
                photo_id,
                job_id=job_id(photo_id),
                retry=Retry(
                    max=self.policy.max_attempts - 1,
                    interval=backoff_intervals(self.policy.base_delay_s, self.policy.max_attempts),
                )
                if self.policy.max_attempts > 1
                else None,
                job_timeout=self.policy.timeout_s,
                result_ttl=RESULT_TTL_S,
                failure_ttl=FAILURE_TTL_S,
                description=f"renditions of photo {photo_id}",
            )
        except (RedisError, OSError) as exc:
            self._paused_until = self._clock() + ENQUEUE_PAUSE_S
            log.warning(
                "job queue unavailable; the reaper enqueues the job later",
                extra={"photo_id": photo_id, "error": type(exc).__name__},
            )
            self.events.enqueued(False)
            return False
        self.events.enqueued(True)
        return True

    def depth(self) -> int:
        """Jobs waiting: queued, plus scheduled for a retry (raises RedisError)."""
        return self._depth()

    def probe(self) -> dict[str, Any]:
        """Ask Redis now: healthy with the depth, or unhealthy when it does not answer within the socket timeout."""
        from redis.exceptions import RedisError

        started = time.perf_counter()
        try:
            depth = self.depth()
        except (RedisError, OSError):
            return {"status": "unhealthy", "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
        return {
            "status": "healthy",
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            "queue_depth": depth,
        }

    def status(self) -> dict[str, Any]:
        """The latest probe (`unknown` before the first), refreshed in the background once it is stale."""
        with self._status_lock:
            stale = self._status_at is None or self._clock() - self._status_at >= STATUS_MAX_AGE_S
            if stale and not self._refreshing:
                self._refreshing = True
                # A greenlet under gevent, a daemon thread otherwise.
                threading.Thread(target=self._refresh, name="photo-api-queue-probe", daemon=True).start()
            return dict(self._status)

    def _refresh(self) -> None:
        try:
            found = self.probe()
        finally:
            with self._status_lock:
                self._refreshing = False
        with self._status_lock:
            self._status, self._status_at = found, self._clock()

    def close(self, timeout: float) -> None:
        """Close the connection pool."""
        self.redis.close()


class LocalQueue:
    """Jobs run inside this process, one at a time, outside the request that enqueued them.

    `run` does the job's work for a photo id. Under gevent the consumer is a greenlet (threading is
    patched) whose I/O is cooperative; the job's CPU-heavy step is handed to a native thread by the job
    context's `offload`, so the event loop keeps serving requests. Without gevent it is a daemon thread.
    Jobs that have not run when the process stops are found again by the reaper, like any job whose
    enqueue was lost.
    """

    kind = "local"

    def __init__(self, run: Callable[[int], object], *, events: JobEvents | None = None) -> None:
        self._run = run
        self.events = events or NoEvents()
        self._waiting: stdlib_queue.SimpleQueue[int | None] = stdlib_queue.SimpleQueue()
        self._lock = threading.Lock()
        self._consumer: threading.Thread | None = None
        self._pending = 0
        self._idle = threading.Event()
        self._idle.set()

    def enqueue(self, photo_id: int) -> bool:
        """Queue the job for this process's consumer (started on first use)."""
        with self._lock:
            if self._consumer is None:
                self._consumer = threading.Thread(target=self._consume, name="photo-api-jobs", daemon=True)
                self._consumer.start()
            self._pending += 1
            self._idle.clear()
        self._waiting.put(photo_id)
        self.events.enqueued(True)
        return True

    def _consume(self) -> None:
        while (photo_id := self._waiting.get()) is not None:
            try:
                self._run(photo_id)
            except Exception:
                # Transient: the photo stays pending; the reaper enqueues it again after a while.
                log.warning("local job failed; the reaper retries it", extra={"photo_id": photo_id}, exc_info=True)
            finally:
                with self._lock:
                    self._pending -= 1
                    if self._pending == 0:
                        self._idle.set()

    def status(self) -> dict[str, Any]:
        """Always healthy: the queue is this process's memory."""
        return {"status": "healthy", "queue_depth": self._pending}

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every job enqueued so far has run; False after `timeout` seconds."""
        return self._idle.wait(timeout)

    def close(self, timeout: float) -> None:
        """Let the consumer finish what it holds (up to `timeout` seconds), then stop it."""
        self.wait_idle(timeout)
        self._waiting.put(None)
