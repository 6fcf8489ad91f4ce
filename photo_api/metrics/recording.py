"""This process's catalogue, and what the application records into it besides requests and outbound calls:
uploads, image deliveries, share views, readiness, the database pool, the log queue.

Under gunicorn each worker writes its values to mmap files of its own (prometheus_client's multiprocess
mode) and the master sums them (master.py). Outside gunicorn (the Flask test client, `flask run`) the
same metrics go to an in-process registry that nothing serves: the code paths are identical and tests
read it with `render()`. Until `enable` has run (never, with METRICS_ENABLED=false) every helper here
does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from .. import lifecycle
from ..errors import AppError
from .catalogue import (
    DELIVERY_PATHS,
    DELIVERY_RESULTS,
    JOB_NAMES,
    JOB_RESULTS,
    POOL_REJECTIONS,
    REFUSAL_REASONS,
    THROTTLE_SCOPES,
    THROTTLED_ROUTES,
    UPLOAD_METHODS,
    UPLOAD_RESULTS,
    Catalogue,
    InstanceCollector,
    bounded,
    multiprocess_mode,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from sqlalchemy import Engine

    from ..config import Settings

_catalogue: Catalogue | None = None  # this process's, once an app with metrics enabled was built
_local_registry: CollectorRegistry | None = None  # single-process mode only
# Dependencies announced by the resilience adapters, which the composition root builds before `enable`.
_services: set[str] = set()


def enable(settings: Settings) -> Catalogue:
    """Start recording in this process (once; `init_app` calls it): to the worker's files, or in-process."""
    global _catalogue, _local_registry
    if _catalogue is None:
        if multiprocess_mode():
            # Values go to this worker's files; the master's collector reads them. No registry here.
            _catalogue = Catalogue(None)
        else:
            from prometheus_client import CollectorRegistry

            _local_registry = CollectorRegistry()
            _catalogue = Catalogue(_local_registry)
            _local_registry.register(instance_collector(settings))
        for service in _services:
            _catalogue.watch_service(service)
    return _catalogue


def current() -> Catalogue | None:
    """This process's catalogue, or None while nothing records (not enabled yet, or METRICS_ENABLED off)."""
    return _catalogue


def announce(service: str) -> None:
    """Create dependency `service`'s breaker and retry series at 0 now, or as soon as `enable` runs."""
    _services.add(service)
    if _catalogue is not None:
        _catalogue.watch_service(service)


def instance_collector(settings: Settings) -> InstanceCollector:
    """`photo_api_app_info` and `photo_api_draining` of the instance these settings describe."""
    identity = {
        "version": settings.app_version,
        "instance": settings.instance_id,
        "node": settings.node_name,
        "region": settings.region,
    }
    return InstanceCollector(identity, lifecycle.is_draining)


def registry() -> CollectorRegistry:
    """What a scrape of this instance returns: every worker's files in multiprocess mode, else this process."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if _local_registry is not None:
        return _local_registry
    if not multiprocess_mode():
        return CollectorRegistry()  # metrics disabled: an empty scrape
    aggregate = CollectorRegistry()
    MultiProcessCollector(aggregate)
    return aggregate


def render() -> bytes:
    """The Prometheus text exposition of `registry()`."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(registry()))


class PooledDatabase(Protocol):
    """What `watch_database` needs of db.Database: its engine and its slow-query callbacks."""

    engine: Engine
    slow_query_hooks: list[Callable[[float, str], None]]
    refusal_hooks: list[Callable[[str], None]]


def watch_database(db: PooledDatabase, settings: Settings) -> None:
    """Pool usage from the pool's own checkout/checkin events, and the slow-query count from db.py's hook."""
    from sqlalchemy import event

    if not settings.metrics_enabled:
        return
    cat = enable(settings)
    pool_size = settings.db_pool_size
    cat.db_pool_max.set(pool_size + settings.db_max_overflow)
    # Counted here rather than read from pool.checkedout() in the event: the pool updates its own counts
    # after the checkin event, so a read there is one behind.
    in_use = 0

    def moved(delta: int) -> None:
        nonlocal in_use
        overflow_before = max(0, in_use - pool_size)
        in_use += delta
        cat.db_pool_in_use.inc(delta)
        cat.db_pool_overflow.inc(max(0, in_use - pool_size) - overflow_before)

    event.listen(db.engine, "checkout", lambda *_args: moved(1))
    event.listen(db.engine, "checkin", lambda *_args: moved(-1))
    db.slow_query_hooks.append(lambda _elapsed, _statement: cat.db_slow_queries.inc())
    db.refusal_hooks.append(lambda reason: cat.db_connect_refusals.labels(bounded(reason, REFUSAL_REASONS)).inc())


def upload(method: str, result: str, size_bytes: int = 0) -> None:
    """Count one upload (`multipart` | `presigned`, `ok` | `rejected` | `failed`) and, if ok, its bytes."""
    if _catalogue is None:
        return
    method = bounded(method, UPLOAD_METHODS)
    _catalogue.uploads.labels(method, bounded(result, UPLOAD_RESULTS)).inc()
    if result == "ok" and size_bytes > 0:
        _catalogue.upload_bytes.labels(method).inc(size_bytes)


def upload_result(exc: BaseException) -> str:
    """The upload result an exception means: `rejected` for the client's errors (4xx), else `failed`."""
    return "rejected" if isinstance(exc, AppError) and exc.status < 500 else "failed"


class UploadAttempt:
    """Handed out by `upload_attempt`: the route reports the stored size once the upload succeeded."""

    def __init__(self) -> None:
        self.size_bytes = 0
        self.duplicate = False

    def stored(self, size_bytes: int) -> None:
        """The photo is stored and committed: this many bytes."""
        self.size_bytes = size_bytes

    def found_duplicate(self) -> None:
        """The bytes were the owner's already: nothing stored (no bytes counted), one duplicate counted."""
        self.duplicate = True
        self.size_bytes = 0


@contextlib.contextmanager
def upload_attempt(method: str) -> Iterator[UploadAttempt]:
    """Count the upload around the route's work: ok when the block completes, else rejected or failed."""
    attempt = UploadAttempt()
    try:
        yield attempt
    except BaseException as exc:
        upload(method, upload_result(exc))
        raise
    upload(method, "ok", attempt.size_bytes)
    if attempt.duplicate and _catalogue is not None:
        _catalogue.duplicate_uploads.labels(bounded(method, UPLOAD_METHODS)).inc()


def delivery_result(status: int) -> str:
    """The delivery result of an image response's status (200/302 ok, 206 partial, 304, 404, else error)."""
    return {200: "ok", 302: "ok", 307: "ok", 206: "partial", 304: "not_modified", 404: "not_found"}.get(status, "error")


def image_delivery(path: str, result: str) -> None:
    """Count one image request by how it was served (`cdn` | `stream`) and its result."""
    if _catalogue is not None:
        _catalogue.image_deliveries.labels(bounded(path, DELIVERY_PATHS), bounded(result, DELIVERY_RESULTS)).inc()


def share_view() -> None:
    """Count one view of a shared album (never the token: it is the credential)."""
    if _catalogue is not None:
        _catalogue.share_views.inc()


def fallback(service: str) -> None:
    """Count one request served by the fallback of an unavailable dependency (e.g. `cdn`: streamed)."""
    if _catalogue is not None:
        _catalogue.fallbacks.labels(service).inc()


def log_queue_depth(depth: int) -> None:
    """The number of log lines this process has waiting to be shipped."""
    if _catalogue is not None:
        _catalogue.log_queue_depth.set(depth)


def log_dropped(count: int = 1) -> None:
    """Count log lines dropped (queue full, log service down)."""
    if _catalogue is not None and count > 0:
        _catalogue.log_dropped.inc(count)


def health_report(ok: bool, checks: Mapping[str, bool]) -> None:
    """Record a readiness answer: `photo_api_ready`, and 1/0 per check (healthy or not) that is enabled."""
    if _catalogue is None:
        return
    _catalogue.ready.set(1 if ok else 0)
    for name, healthy in checks.items():
        _catalogue.health_check_status.labels(name).set(1 if healthy else 0)


class JobMetrics:
    """What background jobs report (photo_api.jobs.JobEvents): runs by result, their durations, enqueues."""

    def job_finished(self, job: str, result: str, seconds: float) -> None:
        """One run of `job` ended with `result` after `seconds`."""
        if _catalogue is None:
            return
        job = bounded(job, JOB_NAMES)
        _catalogue.jobs.labels(job, bounded(result, JOB_RESULTS)).inc()
        _catalogue.job_duration.labels(job).observe(seconds)

    def enqueued(self, ok: bool) -> None:
        """A job was handed to the queue, or the queue was unavailable."""
        if _catalogue is not None:
            _catalogue.job_enqueues.labels("ok" if ok else "failed").inc()


def rate_limited(route: str, scope: str) -> None:
    """Count one request refused by the throttling (`login`/`register`, `account`/`address`)."""
    if _catalogue is not None:
        _catalogue.rate_limited.labels(bounded(route, THROTTLED_ROUTES), bounded(scope, THROTTLE_SCOPES)).inc()


def rate_limit_store_error() -> None:
    """Count one failed call to the throttling's Redis."""
    if _catalogue is not None:
        _catalogue.rate_limit_store_errors.inc()


class PasswordHashMetrics:
    """What the password hashing pool reports (photo_api.greenlets.PoolEvents): queue waits, refusals."""

    def waited(self, seconds: float) -> None:
        """A hash got a thread after `seconds` in the queue."""
        if _catalogue is not None:
            _catalogue.password_hash_wait.observe(seconds)

    def rejected(self, reason: str) -> None:
        """A hash was refused (`queue_full` or `timeout`)."""
        if _catalogue is not None:
            _catalogue.password_hash_rejected.labels(bounded(reason, POOL_REJECTIONS)).inc()
