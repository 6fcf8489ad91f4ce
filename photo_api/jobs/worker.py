"""`photo-api worker`: RQ worker processes that run the jobs of the Redis queue.

Each process runs jobs one at a time, in-process (RQ's SimpleWorker: no fork per job, so the database pool
and the storage token are built once per process and reused). Graceful stop (RQ's warm shutdown): the
first SIGTERM lets the job in hand finish and then exits; a second one (or SIGINT twice) stops at once,
and the interrupted job is run again later (RQ's abandoned-job cleanup after JOB_TIMEOUT + 60 s, or the
reaper after PROCESSING_STALE_SECONDS). Scaling is more processes (`--processes`) or more machines: the
workers share nothing but Redis and the database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from .queue import QUEUE_NAME
from .renditions import JobContext, process_photo

log = logging.getLogger(__name__)

# How often an idle worker wakes up to heartbeat and to clean RQ's registries (abandoned jobs go back
# to the queue): RQ waits worker_ttl - 15 s on an empty queue.
WORKER_TTL_S = 60
MAINTENANCE_INTERVAL_S = 60

_builder: Callable[[], JobContext] | None = None
_context: tuple[int, JobContext] | None = None  # (pid, context): never used across a fork


def configure(builder: Callable[[], JobContext]) -> None:
    """Say how this process (and every worker process forked from it) builds its job context."""
    global _builder, _context
    _builder, _context = builder, None


def _current() -> JobContext:
    global _context
    pid = os.getpid()
    if _context is None or _context[0] != pid:
        if _builder is None:
            raise RuntimeError("photo_api.jobs.worker.configure() was not called in this worker")
        _context = (pid, _builder())
    return _context[1]


def renditions_job(photo_id: int) -> str:
    """The RQ job: the renditions of one photo (a TransientJobError it raises makes RQ retry it after its backoff)."""
    return process_photo(_current(), photo_id)


def worker_class() -> type[Any]:
    """RQ's SimpleWorker with our heartbeat and maintenance intervals (also for the processes of a pool)."""
    from rq import SimpleWorker

    class MediaWorker(SimpleWorker):
        """Runs jobs in its own process, one at a time; wakes up every WORKER_TTL_S - 15 s when idle."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("worker_ttl", WORKER_TTL_S)
            kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL_S)
            super().__init__(*args, **kwargs)

    return MediaWorker


def run(redis_url: str, *, processes: int, burst: bool) -> bool:
    """Work the queue until told to stop (or, with `burst`, until it is empty); True if a job ran.

    With several processes, RQ's WorkerPool forks them, restarts one that dies, and on SIGTERM asks each
    for a warm shutdown and waits for all of them.
    """
    from redis import Redis
    from rq import Queue
    from rq.worker_pool import WorkerPool

    connection = Redis.from_url(redis_url)
    if processes > 1:
        pool = WorkerPool([QUEUE_NAME], connection=connection, num_workers=processes, worker_class=worker_class())
        pool.start(burst=burst, logging_level=_level())
        return True
    worker = worker_class()([Queue(QUEUE_NAME, connection=connection)], connection=connection)
    # with_scheduler: retries wait in RQ's scheduled registry; one scheduler per queue (a Redis lock)
    # moves them back when their backoff is over.
    worked: bool = worker.work(burst=burst, with_scheduler=True, logging_level=_level())
    return worked


def _level() -> Any:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel())
