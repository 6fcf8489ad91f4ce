"""The multiprocess directory: where every worker of one instance writes its values (PROMETHEUS_MULTIPROC_DIR).

`photo-api serve` decides and exports it before it execs gunicorn (prometheus_client reads the variable
when first imported, in each worker); the master claims it in `on_starting` (a lock, so two instances
never share one), empties it, and removes a default one on a clean stop.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A default directory is /dev/shm/photo-api-metrics-<uid>-<master pid>: tmpfs (the workers write to these
# mmaps on every request), private to one user and to one running instance.
AUTO_DIR_PREFIX = "photo-api-metrics-"
LOCK_FILE = ".lock"  # not *.db: the collector reads every *.db file of the directory


def _default_base() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def default_multiproc_dir(pid: int) -> Path:
    """The directory used when PROMETHEUS_MULTIPROC_DIR is not set: one per user and master pid."""
    return _default_base() / f"{AUTO_DIR_PREFIX}{os.getuid()}-{pid}"


def is_default_dir(path: Path) -> bool:
    """True for this process's default directory (which a clean stop removes)."""
    return path == default_multiproc_dir(os.getpid())


def export_multiproc_dir(settings: Settings, environ: Any = os.environ) -> Path:
    """Decide this instance's multiprocess directory, create it, and export it as PROMETHEUS_MULTIPROC_DIR.

    `photo-api serve` calls this before it execs gunicorn (so the pid in the default name is the master's)
    and the master again in `on_starting`, which keeps what is already exported. An env file's value is
    exported too: prometheus_client reads only the real environment.
    """
    chosen = environ.get(MULTIPROC_ENV) or settings.prometheus_multiproc_dir
    path = Path(chosen) if chosen else default_multiproc_dir(os.getpid())
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if is_default_dir(path):
        # /dev/shm is writable by everyone: never use a directory someone else made (or a link to one).
        info = path.lstat()
        if path.is_symlink() or info.st_uid != os.getuid():
            raise RuntimeError(f"{path} is not a directory of this user; set {MULTIPROC_ENV}")
    environ[MULTIPROC_ENV] = str(path)
    return path


def claim(directory: Path) -> int:
    """Lock `directory` for this instance and empty it; the lock's file descriptor (held until exit).

    Refuses when another running instance holds it: emptying it would make that instance's counters go
    backwards, and both would report each other's workers.
    """
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(
            f"prometheus_client was imported before {MULTIPROC_ENV} was set: every worker would keep its "
            "metrics to itself. Set it in the environment of the process that starts gunicorn."
        )
    lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise RuntimeError(f"{MULTIPROC_ENV}={directory} is in use by another running instance") from None
    # Files of an earlier run (its dead workers' counters, its gauges) would be summed into this one.
    for stale in directory.glob("*.db"):
        stale.unlink()
    _sweep_default_dirs()
    return lock_fd


def _sweep_default_dirs() -> None:
    """Remove default directories of this user whose master is gone (killed, so never cleaned up)."""
    for path in _default_base().glob(f"{AUTO_DIR_PREFIX}{os.getuid()}-*"):
        pid_text = path.name.rsplit("-", 1)[-1]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True
