"""gunicorn configuration shipped with the package (`photo-api serve` and the systemd unit use it).

Values come from the validated settings. The hooks below are the instance lifecycle (lifecycle.py):
the shared draining page, the SIGTERM drain, psycogreen in each worker, and the shutdown hooks. What
runs in the master (the drain, the metrics directory, exporter and pusher) is built once by
`metrics.MasterRuntime.build`; the master's hooks hand it gunicorn's arbiter. Keep each hook a plain
function that others can add a line to. Where each runs: `on_starting`, `when_ready`,
`child_exit` and `on_exit` in the master (`on_exit` after every worker has exited); `post_fork` in the
worker right after the fork, before gevent patches it and before the app is imported; `post_worker_init`,
`pre_request`, `post_request` and `worker_exit` in the worker once it is patched and has the app.
"""

from __future__ import annotations

import gc
import math
import os
from typing import Any

from gunicorn.glogging import Logger

from photo_api import greenlets, lifecycle, metrics
from photo_api.config import load_settings
from photo_api.jobs.queue import queue_depth_reader

_settings = load_settings()
# The job queue's depth for the backlog alert, read at scrape time (jobs.queue imports nothing of the project).
QUEUE_DEPTH_TIMEOUT_S = 0.5
_queue_depth = queue_depth_reader(_settings.redis_url, QUEUE_DEPTH_TIMEOUT_S) if _settings.redis_url else None
_master = metrics.MasterRuntime.build(_settings, queue_depth=_queue_depth)  # nothing is claimed until on_starting

bind = [_settings.bind]
worker_class = "gevent"
workers = _settings.workers or os.cpu_count() or 2
worker_connections = _settings.worker_connections
# Longer than the load balancer's idle timeout, so the LB always closes an idle connection first.
keepalive = _settings.keepalive
# A heartbeat, not a request timeout: it only fires when a worker's event loop is blocked this long.
timeout = _settings.worker_timeout
# The budget of the requests in flight once the listeners have closed, i.e. *after* the drain delay.
# gunicorn accepts whole seconds only (a float fails its validator and the master refuses to start).
graceful_timeout = math.ceil(_settings.graceful_timeout)
# Off by default; a recycled worker does not flip readiness (only the master's SIGTERM does).
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter
preload_app = False  # the app must be imported after gevent has patched the worker
control_socket_disable = True
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = None  # the app writes its own JSON access line per request


class ErrorOnlyLogger(Logger):
    """gunicorn's logger without its access line, which the app writes itself (JSON, with the request id).

    gunicorn builds the access line's fields for every request whenever a `logconfig_dict` is given, even
    though `gunicorn.access` below is set to drop them: 8 % of a worker's CPU on `/health/liveness`.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Nothing: see the class."""


logger_class = ErrorOnlyLogger
proc_name = _settings.app_name
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "photo_api.logs.JsonFormatter", "static": {"service": _settings.app_name, "source": "gunicorn"}}
    },
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
    # gunicorn merges this dict shallowly into its defaults, whose root logger names a handler ("console")
    # that is not defined here, so dictConfig fails ("Unable to configure root logger") unless root is
    # given. No handler on root: the app adds its own JSON handler in each worker (logs.configure_logging),
    # and a second one here would print every app line twice.
    "root": {"level": "WARNING", "handlers": []},
    "loggers": {
        "gunicorn.error": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["stdout"], "level": "WARNING", "propagate": False},
    },
}


def on_starting(server: Any) -> None:
    """Master, before forking: the page shared with every worker (readiness/drain), the metrics directory."""
    _master.starting(server)


def when_ready(server: Any) -> None:
    """Master, listeners open, before the first fork: take over SIGTERM for the drain, serve metrics."""
    _master.ready(server)


def post_fork(server: Any, worker: Any) -> None:
    """Worker: make psycopg2 cooperative before any connection exists, so a slow query never blocks the loop."""
    if _settings.disable_psycogreen:
        server.log.warning(
            "DISABLE_PSYCOGREEN is set (diagnostic): every query blocks all other requests of worker %s", worker.pid
        )
        return
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


LOG_FLUSH_ON_EXIT_S = 5.0
LOCAL_JOBS_ON_EXIT_S = 5.0


def post_worker_init(worker: Any) -> None:
    """Worker, app loaded, not accepting yet: probe readiness once, and register what it closes on its way out."""
    from photo_api.api.context import collaborators_of
    from photo_api.api.health import readiness_report

    try:
        # Sets photo_api_ready and photo_api_health_check_status before any load balancer probe reaches
        # this worker, so a replaced worker never leaves them absent; bounded by HEALTH_CHECK_TIMEOUT.
        readiness_report(worker.wsgi)
    except Exception:
        worker.log.exception("boot readiness probe failed")
    app = collaborators_of(worker.wsgi)
    shipper = app.log_shipper
    if shipper is not None:
        # First, so that the lines the other hooks log still reach Log & Crash; bounded (TimeoutStopSec budget).
        lifecycle.worker_shutdown.add("log queue", lambda: shipper.close(timeout=LOG_FLUSH_ON_EXIT_S))
    # Local jobs (no REDIS_URL) in hand get a few seconds; the rest are found again by the reaper.
    lifecycle.worker_shutdown.add("local jobs", lambda: app.jobs.close(timeout=LOCAL_JOBS_ON_EXIT_S))
    lifecycle.worker_shutdown.add("database pool", app.db.dispose)
    # Last: what is loaded now (the app, its libraries: some 130,000 objects) lives as long as the worker.
    # Out of the garbage collector's reach, its full collections no longer scan them: each took ~60 ms,
    # during which the worker answered nobody (the tail of every route, ops/bench/RESULTS.md).
    gc.freeze()


def pre_request(worker: Any, req: Any) -> None:
    """Worker, before each request: while draining, close the connection after this response."""
    lifecycle.force_close_while_draining(req)


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    """Worker, after each response is sent: let the worker's other ready connections go first."""
    greenlets.let_other_connections_run()


def worker_exit(server: Any, worker: Any) -> None:
    """Worker, on its way out (graceful or quick stop, max_requests recycle; not SIGKILL): run its shutdown hooks."""
    lifecycle.worker_shutdown.run()


def child_exit(server: Any, worker: Any) -> None:
    """Master, after a worker was reaped (any cause, SIGKILL included): forget its live metrics gauges."""
    _master.worker_exited(worker.pid)


def on_exit(server: Any) -> None:
    """Master, after every worker has exited: the last step before exit 0."""
    lifecycle.master_shutdown.run()
