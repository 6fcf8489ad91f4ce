"""gevent helpers that also work (as no-ops) outside a gevent worker: tests, `flask run`, the CLI."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def is_green() -> bool:
    """True inside a gevent worker (sockets monkey-patched), where blocking I/O yields to other greenlets."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("socket"))


@contextlib.contextmanager
def deadline(seconds: float, exception: BaseException | None = None) -> Iterator[None]:
    """Interrupt the block after `seconds` when running under gevent (raises gevent.Timeout or `exception`).

    Outside gevent nothing can interrupt blocking I/O this way, so the block simply runs; callers keep
    their own socket or server-side timeouts as the backstop.
    """
    if not is_green():
        yield
        return
    import gevent

    with gevent.Timeout(seconds, exception):
        yield


def offload(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run CPU-heavy `fn` on gevent's native thread pool so the worker's other greenlets keep running.

    Used for password hashing: argon2 releases the GIL, so the hub keeps serving while a thread hashes.
    """
    if not is_green():
        return fn(*args, **kwargs)
    import gevent

    return gevent.get_hub().threadpool.apply(fn, args, kwargs)
