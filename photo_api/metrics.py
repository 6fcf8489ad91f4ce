"""Prometheus metrics: the catalogue (docs/operations.md, "Metrics"), what feeds it, and the gunicorn master
that serves it.

Under gunicorn (`photo-api serve`) prometheus_client runs in multiprocess mode, because each worker is a
process of its own with its own values; the master sums them:

* every worker writes its values to mmap files in a directory private to the instance
  (`PROMETHEUS_MULTIPROC_DIR`; by default a fresh one under /dev/shm named after the master's pid),
  exported by `photo-api serve` before it execs gunicorn and emptied by the master in `on_starting`;
* the master serves the sum over all workers on `METRICS_BIND_HOST:METRICS_PORT` (never the public port)
  from a thread started in `when_ready`, so a scrape never waits on a worker's event loop and keeps
  answering through the drain and the graceful stop;
* `child_exit` marks a dead worker, which removes its `live*` gauges; its counters stay, so totals never
  go backwards;
* with `PROMETHEUS_PUSHGATEWAY_URL` the master also pushes that same aggregate, grouped by instance.

Outside gunicorn (the Flask test client, `flask run`) the same metrics are recorded in an in-process
registry that nothing serves: the code paths are identical and tests read it with `render()`.
`METRICS_ENABLED=false` turns all of it off (no hooks, no directory, no port).

prometheus-flask-exporter provides the master's server and the dead-worker bookkeeping
(`GunicornPrometheusMetrics`), but not the HTTP metrics: its defaults are named
`<prefix>_http_request_total{method,status}` (singular, no endpoint label), which cannot give the names of
the catalogue. The request hooks below record them instead, labelled like its `group_by="url_rule"`: by the
route template, never the raw path. This module is the one place outside `api/` that reads Flask's
`request`; it is a Flask extension, like the exporter it stands in for.

prometheus_client is imported lazily, inside functions: it picks single- or multi-process mode when it is
first imported, and the gunicorn master imports this module (with its config) before `on_starting` has
decided the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import lifecycle

if TYPE_CHECKING:
    from flask import Flask
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from .config import Settings
    from .db import Database
    from .resilience import Events
    from .runtime import Runtime

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A default directory is /dev/shm/photo-api-metrics-<uid>-<master pid>: tmpfs (the workers write to these
# mmaps on every request), private to one user and to one running instance.
AUTO_DIR_PREFIX = "photo-api-metrics-"
LOCK_FILE = ".lock"  # not *.db: the collector reads every *.db file of the directory

# Bounded label vocabularies: anything else is recorded as OTHER, so a programming slip or a client's
# odd HTTP method can never add series without bound.
OTHER = "other"
UNMATCHED_ENDPOINT = "unmatched"  # no route matched (404, 405): the raw path is never a label
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UPLOAD_METHODS = ("multipart", "presigned")
UPLOAD_RESULTS = ("ok", "rejected", "failed")  # rejected: the client's fault (4xx); failed: ours (5xx)
DELIVERY_PATHS = ("cdn", "stream")
DELIVERY_RESULTS = ("ok", "partial", "not_modified", "not_found", "error")
RETRY_RESULTS = ("retry", "giveup")
BREAKER_STATES = ("closed", "open", "half_open")
FALLBACK_SERVICES = ("cdn",)  # cdn: the image was streamed from storage instead of redirected
OUTCOMES = ("ok", "error", "timeout", "unavailable", "circuit_open", "cancelled")

# Request latency: an API answer takes milliseconds, an upload's handler receives the whole body (minutes
# for a slow client), hence the long tail.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
EXTERNAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# A push that takes longer than this is abandoned; the next interval tries again. The push runs in its
# own thread in the master, so a slow Pushgateway delays nothing else.
PUSH_TIMEOUT_S = 10.0
# At shutdown, how long the master waits for a periodic push still in flight before the final one.
PUSH_THREAD_JOIN_S = PUSH_TIMEOUT_S + 1


# -- the catalogue (every process that serves requests) --------------------------------------------------


class Catalogue:
    """Every metric of the catalogue that a worker records (the master adds app info and draining).

    Gauges say how the workers' values combine (`multiprocess_mode`): `livesum` for amounts (in flight,
    pool, queue), `livemax` for the breaker state (the worst worker), `livemostrecent` for the latest
    probe answer. `live*` gauges of a dead worker disappear with it (`worker_exited`).
    """

    def __init__(self, registry: CollectorRegistry | None):
        from prometheus_client import Counter, Gauge, Histogram

        r = registry
        self.http_requests = Counter(
            "photo_api_http_requests_total",
            "HTTP requests answered, by method, route template and status",
            ["method", "endpoint", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "photo_api_http_request_duration_seconds",
            "Time to produce the response (a streamed body's transfer time to the client is not included)",
            ["method", "endpoint"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "photo_api_http_requests_in_flight",
            "HTTP requests being handled now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ready = Gauge(
            "photo_api_ready",
            "1 if the latest readiness probe answered 200, 0 if 503 (each worker probes once as it boots)",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.health_check_status = Gauge(
            "photo_api_health_check_status",
            "Latest result of each health check: 1 healthy, 0 unhealthy, timed out or unknown",
            ["check"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.breaker_state = Gauge(
            "photo_api_circuit_breaker_state",
            "Circuit breaker state per dependency: 0 closed, 1 open, 2 half-open (the worst worker)",
            ["service"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.breaker_transitions = Counter(
            "photo_api_circuit_breaker_transitions_total",
            "Circuit breaker state changes, by the state entered",
            ["service", "state"],
            registry=r,
        )
        self.breaker_rejected = Counter(
            "photo_api_circuit_breaker_rejected_total",
            "Calls refused at once because the circuit was open",
            ["service"],
            registry=r,
        )
        self.retry_attempts = Counter(
            "photo_api_retry_attempts_total",
            "Failed attempts of outbound calls: retried, or the last one (giveup)",
            ["service", "result"],
            registry=r,
        )
        self.external_duration = Histogram(
            "photo_api_external_request_duration_seconds",
            "Outbound calls (retries and backoff included), by dependency, operation and outcome",
            ["service", "operation", "outcome"],
            buckets=EXTERNAL_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "photo_api_fallbacks_total",
            "Requests served by a fallback because a dependency was unavailable (cdn: streamed instead)",
            ["service"],
            registry=r,
        )
        self.db_pool_in_use = Gauge(
            "photo_api_db_pool_connections_in_use",
            "Database connections checked out of the pools",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.db_pool_overflow = Gauge(
            "photo_api_db_pool_connections_overflow",
            "Checked-out connections beyond DB_POOL_SIZE (taken from DB_MAX_OVERFLOW)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.db_pool_max = Gauge(
            "photo_api_db_pool_connections_max",
            "Connections the pools may open (DB_POOL_SIZE + DB_MAX_OVERFLOW per worker)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.db_slow_queries = Counter(
            "photo_api_db_slow_queries_total",
            "Statements slower than DB_SLOW_QUERY_MS",
            registry=r,
        )
        self.log_queue_depth = Gauge(
            "photo_api_log_queue_depth",
            "Log lines waiting to be shipped to Log & Crash Search",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.log_dropped = Counter(
            "photo_api_log_dropped_total",
            "Log lines dropped (queue full or log service unavailable)",
            registry=r,
        )
        self.uploads = Counter(
            "photo_api_uploads_total",
            "Photo uploads by method (multipart, presigned) and result (ok, rejected, failed)",
            ["method", "result"],
            registry=r,
        )
        self.upload_bytes = Counter(
            "photo_api_upload_bytes_total",
            "Bytes of successfully uploaded photos",
            ["method"],
            registry=r,
        )
        self.image_deliveries = Counter(
            "photo_api_image_deliveries_total",
            "Image requests by path (cdn: redirect to a signed URL, stream: bytes from storage) and result",
            ["path", "result"],
            registry=r,
        )
        self.share_views = Counter(
            "photo_api_share_views_total",
            "Views of shared albums through a share link",
            registry=r,
        )
        # Every series of a bounded vocabulary exists from the start at 0: rate() then sees the first
        # event, and an absent series means "not recorded by this version", never "nothing happened yet".
        for method in UPLOAD_METHODS:
            self.upload_bytes.labels(method)
            for result in UPLOAD_RESULTS:
                self.uploads.labels(method, result)
        for path in DELIVERY_PATHS:
            for result in DELIVERY_RESULTS:
                self.image_deliveries.labels(path, result)
        for service in FALLBACK_SERVICES:
            self.fallbacks.labels(service)

    def watch_service(self, service: str) -> None:
        """Create the series of one dependency (breaker closed, no retries) before its first event."""
        self.breaker_state.labels(service).set(0)
        self.breaker_rejected.labels(service)
        for state in BREAKER_STATES:
            self.breaker_transitions.labels(service, state)
        for result in RETRY_RESULTS:
            self.retry_attempts.labels(service, result)


_catalogue: Catalogue | None = None  # this process's, once an app with metrics enabled was built
_local_registry: CollectorRegistry | None = None  # single-process mode only
# Dependencies announced by ResilienceMetrics, possibly before `enable` (Runtime.build runs first).
_services: set[str] = set()


def _multiprocess_mode() -> bool:
    """True when prometheus_client writes to PROMETHEUS_MULTIPROC_DIR (it decided so when first imported)."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


def enable(settings: Settings) -> Catalogue:
    """Start recording in this process (once; `init_app` calls it): to the worker's files, or in-process."""
    global _catalogue, _local_registry
    if _catalogue is None:
        if _multiprocess_mode():
            # Values go to this worker's files; the master's collector reads them. No registry here.
            _catalogue = Catalogue(None)
        else:
            from prometheus_client import CollectorRegistry

            _local_registry = CollectorRegistry()
            _catalogue = Catalogue(_local_registry)
            _local_registry.register(InstanceCollector(settings))
        for service in _services:
            _catalogue.watch_service(service)
    return _catalogue


def registry() -> CollectorRegistry:
    """What a scrape of this instance returns: every worker's files in multiprocess mode, else this process."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if _local_registry is not None:
        return _local_registry
    if not _multiprocess_mode():
        return CollectorRegistry()  # metrics disabled: an empty scrape
    aggregate = CollectorRegistry()
    MultiProcessCollector(aggregate)
    return aggregate


def render() -> bytes:
    """The Prometheus text exposition of `registry()`."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(registry()))


class InstanceCollector:
    """Metrics the instance as a whole has, computed at scrape time: `photo_api_app_info` and `photo_api_draining`.

    Registered in the master's registry (and in the single process outside gunicorn), not in the workers:
    the draining flag is the master's shared page, read as it is at the moment of the scrape.
    """

    def __init__(self, settings: Settings):
        self.labels = {
            "version": settings.app_version,
            "instance": settings.instance_id,
            "node": settings.node_name,
            "region": settings.region,
        }

    def collect(self) -> Iterator[Metric]:
        """Yield app info (always 1) and the draining flag."""
        from prometheus_client.core import GaugeMetricFamily

        info = GaugeMetricFamily(
            "photo_api_app_info", "Version and identity of this instance (always 1)", labels=list(self.labels)
        )
        info.add_metric(list(self.labels.values()), 1)
        yield info
        yield GaugeMetricFamily(
            "photo_api_draining",
            "1 once the instance was asked to stop (readiness answers 503), else 0",
            value=1 if lifecycle.is_draining() else 0,
        )


# -- the Flask integration (workers) -------------------------------------------------------------------


def init_app(app: Flask, runtime: Runtime) -> None:
    """Record request metrics for `app` and watch its database; nothing at all when METRICS_ENABLED is off.

    Call before the blueprints' own hooks are registered: Flask runs `before_request` functions in order
    and `after_request`/`teardown_request` ones in reverse, so these hooks time the whole request.
    """
    from flask import Response, g, request

    settings = runtime.settings
    if not settings.metrics_enabled:
        return
    cat = enable(settings)

    def record(status: int, started: float) -> None:
        method = request.method if request.method in HTTP_METHODS else OTHER
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else UNMATCHED_ENDPOINT
        cat.http_requests.labels(method, endpoint, str(status)).inc()
        cat.http_duration.labels(method, endpoint).observe(time.perf_counter() - started)

    def started() -> None:
        g.metrics_started = time.perf_counter()
        g.metrics_in_flight = True
        cat.http_in_flight.inc()

    def answered(response: Response) -> Response:
        began = g.pop("metrics_started", None)
        if began is not None:
            record(response.status_code, began)
        return response

    def finished(_exc: BaseException | None = None) -> None:
        began = g.pop("metrics_started", None)
        if began is not None:  # no after_request ran: an exception escaped every error handler
            record(500, began)
        if g.pop("metrics_in_flight", False):
            cat.http_in_flight.dec()

    app.before_request(started)
    app.after_request(answered)
    app.teardown_request(finished)
    _watch_database(runtime.db, settings, cat)


def _watch_database(db: Database, settings: Settings, cat: Catalogue) -> None:
    """Pool usage from the pool's own checkout/checkin events, and the slow-query count from db.py's hook."""
    from sqlalchemy import event

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


# -- what routes, clients and health checks call ---------------------------------------------------------


def _bounded(value: str, allowed: Iterable[str]) -> str:
    return value if value in allowed else OTHER


def upload(method: str, result: str, size_bytes: int = 0) -> None:
    """Count one upload (`multipart` | `presigned`, `ok` | `rejected` | `failed`) and, if ok, its bytes."""
    if _catalogue is None:
        return
    method = _bounded(method, UPLOAD_METHODS)
    _catalogue.uploads.labels(method, _bounded(result, UPLOAD_RESULTS)).inc()
    if result == "ok" and size_bytes > 0:
        _catalogue.upload_bytes.labels(method).inc(size_bytes)


def upload_result(exc: BaseException) -> str:
    """The upload result an exception means: `rejected` for the client's errors (4xx), else `failed`."""
    from .errors import AppError

    return "rejected" if isinstance(exc, AppError) and exc.status < 500 else "failed"


class UploadAttempt:
    """Handed out by `upload_attempt`: the route reports the stored size once the upload succeeded."""

    def __init__(self) -> None:
        self.size_bytes = 0

    def stored(self, size_bytes: int) -> None:
        """The photo is stored and committed: this many bytes."""
        self.size_bytes = size_bytes


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


def delivery_result(status: int) -> str:
    """The delivery result of an image response's status (200/302 ok, 206 partial, 304, 404, else error)."""
    return {200: "ok", 302: "ok", 307: "ok", 206: "partial", 304: "not_modified", 404: "not_found"}.get(status, "error")


def image_delivery(path: str, result: str) -> None:
    """Count one image request by how it was served (`cdn` | `stream`) and its result."""
    if _catalogue is not None:
        _catalogue.image_deliveries.labels(_bounded(path, DELIVERY_PATHS), _bounded(result, DELIVERY_RESULTS)).inc()


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


def health_report(ok: bool, checks: Mapping[str, Mapping[str, Any]]) -> None:
    """Record a readiness answer: `photo_api_ready` and one status per check (1 healthy, else 0; disabled skipped)."""
    from .health import DISABLED, HEALTHY

    if _catalogue is None:
        return
    _catalogue.ready.set(1 if ok else 0)
    for name, check in checks.items():
        status = check.get("status")
        if status != DISABLED:
            _catalogue.health_check_status.labels(name).set(1 if status == HEALTHY else 0)


def _outcome(exc: BaseException) -> str:
    import gevent
    import requests

    from .resilience import DependencyUnavailable

    if isinstance(exc, DependencyUnavailable):
        return {"circuit_open": "circuit_open", "deadline": "timeout"}.get(exc.reason, "unavailable")
    if isinstance(exc, gevent.Timeout | requests.Timeout):
        return "timeout"
    return "error" if isinstance(exc, Exception) else "cancelled"


class ResilienceMetrics:
    """`resilience.Events` that record retries, give-ups, rejections and breaker state, then pass each on.

    `Resilient(policy, events=metrics.ResilienceMetrics(policy.service))` keeps the log lines (the default
    `inner` is `LogEvents`) and adds the metrics.
    """

    def __init__(self, service: str, inner: Events | None = None):
        from .resilience import LogEvents

        self.inner: Events = inner if inner is not None else LogEvents()
        _services.add(service)
        if _catalogue is not None:
            _catalogue.watch_service(service)

    def retry(self, service: str, exc: BaseException, wait: float) -> None:
        """A failed attempt that will be tried again after `wait` seconds."""
        if _catalogue is not None:
            _catalogue.retry_attempts.labels(service, "retry").inc()
        self.inner.retry(service, exc, wait)

    def giveup(self, service: str, exc: BaseException) -> None:
        """The last failed attempt: tries, time or deadline used up."""
        if _catalogue is not None:
            _catalogue.retry_attempts.labels(service, "giveup").inc()
        self.inner.giveup(service, exc)

    def state_change(self, service: str, old: str, new: str) -> None:
        """The breaker moved from `old` to `new` (closed | open | half_open)."""
        from .resilience import STATE_CODES

        if _catalogue is not None:
            _catalogue.breaker_state.labels(service).set(STATE_CODES.get(new, 1))
            _catalogue.breaker_transitions.labels(service, new).inc()
        self.inner.state_change(service, old, new)

    def rejected(self, service: str) -> None:
        """A call refused without I/O because the circuit is open."""
        if _catalogue is not None:
            _catalogue.breaker_rejected.labels(service).inc()
        self.inner.rejected(service)

    def finished(self, service: str, operation: str, exc: BaseException | None, seconds: float) -> None:
        """One logical outbound call ended (`exc` None when it succeeded): its duration by outcome."""
        if _catalogue is not None:
            outcome = "ok" if exc is None else _outcome(exc)
            _catalogue.external_duration.labels(service, operation, outcome).observe(seconds)


# -- the multiprocess directory (`photo-api serve`, gunicorn master) ---------------------------------------


def _default_base() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def default_multiproc_dir(pid: int) -> Path:
    """The directory used when PROMETHEUS_MULTIPROC_DIR is not set: one per user and master pid."""
    return _default_base() / f"{AUTO_DIR_PREFIX}{os.getuid()}-{pid}"


def _is_default_dir(path: Path) -> bool:
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
    if _is_default_dir(path):
        # /dev/shm is writable by everyone: never use a directory someone else made (or a link to one).
        info = path.lstat()
        if path.is_symlink() or info.st_uid != os.getuid():
            raise RuntimeError(f"{path} is not a directory of this user; set {MULTIPROC_ENV}")
    environ[MULTIPROC_ENV] = str(path)
    return path


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


# -- the gunicorn master ---------------------------------------------------------------------------------


@dataclass
class _Master:
    settings: Settings
    directory: Path
    lock_fd: int
    registry: CollectorRegistry | None = None
    pusher: Pusher | None = None


_master: _Master | None = None


def master_starting(server: Any, settings: Settings) -> None:
    """gunicorn `on_starting` (master, before any fork): claim the multiprocess directory and empty it.

    Refuses to start when the directory is in use by another running instance: emptying it would make
    that instance's counters go backwards, and both would report each other's workers.
    """
    global _master
    if not settings.metrics_enabled:
        return
    directory = export_multiproc_dir(settings)
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
    _master = _Master(settings=settings, directory=directory, lock_fd=lock_fd)
    server.log.info("metrics: multiprocess directory %s", directory)


def master_ready(server: Any) -> None:
    """gunicorn `when_ready` (master): serve METRICS_PORT, start the Pushgateway pusher, plan the final push."""
    from prometheus_client import CollectorRegistry
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

    master = _master
    if master is None:  # metrics disabled
        return
    settings = master.settings
    aggregate = CollectorRegistry()
    aggregate.register(InstanceCollector(settings))
    # The exporter adds the MultiProcessCollector (every worker's files) to this registry.
    exporter = GunicornPrometheusMetrics(app=None, registry=aggregate, export_defaults=False)
    master.registry = exporter.registry
    host, port = str(settings.metrics_bind_host), settings.metrics_port
    try:
        exporter.start_http_server(port, host=host)
    except OSError as exc:
        # Not fatal: the instance still serves its users, and Prometheus's "target down" alert names it.
        server.log.error("metrics: cannot listen on %s:%s (%s): this instance cannot be scraped", host, port, exc)
    else:
        server.log.info("metrics: serving on http://%s:%s/metrics", host, port)
    if settings.prometheus_pushgateway_url:
        master.pusher = Pusher(
            settings.prometheus_pushgateway_url,
            job=settings.app_name,
            instance=settings.instance_id,
            registry=exporter.registry,
            interval=settings.prometheus_push_interval_seconds,
            log=server.log,
        )
        master.pusher.start()
    lifecycle.master_shutdown.add("metrics", master_exit)


def worker_exited(pid: int) -> None:
    """gunicorn `child_exit` (master): drop the dead worker's live gauges; its counters stay in the sums."""
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

    if _master is not None:
        GunicornPrometheusMetrics.mark_process_dead_on_child_exit(pid)


def master_exit() -> None:
    """Master, after every worker has exited: final push, linger, delete the group; remove a default directory.

    A clean stop is taken as leaving for good: we cannot tell a scale-in from a restart, and a restarted
    instance recreates its group with its first push. The final values stay on the Pushgateway for
    PROMETHEUS_PUSH_LINGER_SECONDS so that Prometheus scrapes them, then the group is deleted, so that
    the gauges of an instance that no longer exists (ready, in flight, pool) do not linger forever.
    """
    master = _master
    if master is None:
        return
    if master.pusher is not None:
        master.pusher.leave(master.settings.prometheus_push_linger_seconds)
    if _is_default_dir(master.directory):
        shutil.rmtree(master.directory, ignore_errors=True)


class Pusher:
    """Pushes the instance's aggregate to a Pushgateway from one thread of the master, grouped by instance.

    PUT replaces the whole group each time, which is right: the registry holds every metric of the
    instance. Failures are logged when they start and when they end, not once per interval.
    """

    def __init__(self, url: str, *, job: str, instance: str, registry: CollectorRegistry, interval: float, log: Any):
        self.url = url
        self.job = job
        self.grouping_key = {"instance": instance}
        self.registry = registry
        self.interval = interval
        self.log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-pusher", daemon=True)
        self._failing = False

    def start(self) -> None:
        """Push now and then every interval, until `leave`."""
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.push()
            if self._stop.wait(self.interval):
                return

    def push(self) -> bool:
        """One PUT of the whole registry; True on success."""
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(
                self.url, job=self.job, registry=self.registry, grouping_key=self.grouping_key, timeout=PUSH_TIMEOUT_S
            )
        except Exception as exc:  # URLError, HTTPError, OSError, timeout: all mean "try next time"
            if not self._failing:
                self.log.warning("metrics: push to %s failed (%s); retrying every %gs", self.url, exc, self.interval)
            self._failing = True
            return False
        if self._failing:
            self.log.info("metrics: pushing to %s again", self.url)
        self._failing = False
        return True

    def leave(self, linger: float) -> None:
        """Stop the periodic pushes, push the final values, keep them `linger` seconds, delete the group."""
        from prometheus_client import delete_from_gateway

        self._stop.set()
        self._thread.join(PUSH_THREAD_JOIN_S)
        if self.push() and linger > 0:
            time.sleep(linger)
        try:
            delete_from_gateway(self.url, job=self.job, grouping_key=self.grouping_key, timeout=PUSH_TIMEOUT_S)
        except Exception as exc:
            self.log.warning("metrics: could not delete group %s from %s (%s)", self.grouping_key, self.url, exc)
        else:
            self.log.info("metrics: deleted group %s from %s", self.grouping_key, self.url)
