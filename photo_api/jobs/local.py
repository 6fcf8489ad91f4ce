"""Where the CPU-heavy step of a job runs inside an app process: never on a gevent worker's event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def native_offload() -> Callable[[Callable[[], T]], T]:
    """A function that runs work on a native OS thread when gevent has patched this process, else inline.

    Under gevent, `threading` makes greenlets, so a job's decoding would run on the event loop and stall
    every request of the worker; gevent's hub thread pool is made of real threads, and Pillow releases the
    GIL while it decodes, scales and encodes, so the loop keeps serving (tests/test_jobs_local.py measures
    it). A process pool was the alternative: fork from a gevent worker copies a running hub, and spawning a
    fresh interpreter per worker costs ~150 MB of memory for a job that takes a second.
    """
    from gevent import monkey

    if not monkey.is_module_patched("threading"):
        return _inline
    import gevent

    pool = gevent.get_hub().threadpool

    def offload(work: Callable[[], T]) -> T:
        result: T = pool.apply(work)
        return result

    return offload


def _inline(work: Callable[[], T]) -> T:
    return work()
