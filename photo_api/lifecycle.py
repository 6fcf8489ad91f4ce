"""Instance lifecycle state shared by the gunicorn master and all its workers (draining, readiness).

The state lives in an anonymous shared mmap: created in the master before it forks (gunicorn config
calls `init_shared_state()`), every worker inherits the same page, so when the master flips "draining"
on SIGTERM every worker sees it at once (research notes §1.6). Outside gunicorn the page is simply
private to the process.
"""

from __future__ import annotations

import mmap

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
