"""What runs in the gunicorn master, built once by `MasterRuntime.build(settings)` and driven by the hooks of
gunicorn_conf.py: the page shared with the workers and the SIGTERM drain (lifecycle.py), and the metrics
side (the claimed multiprocess directory, the exporter on METRICS_PORT, the Pushgateway pusher, the
bookkeeping of dead workers).

It lives here rather than in a `photo_api/master.py` of its own because of the layers: metrics may import
lifecycle and config, and only the entry points and the composition root may import metrics, so a module
beside them would need an exception to that rule. All but one line of the master's work is metrics; the
drain is lifecycle's, only built here from its one setting.

The master serves the sum over all workers from a thread started in `when_ready`, so a scrape never
waits on a worker's event loop and keeps answering through the drain and the graceful stop. Its server
and the dead-worker bookkeeping are prometheus-flask-exporter's `GunicornPrometheusMetrics`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import lifecycle
from .catalogue import QueueCollector
from .directory import claim, export_multiproc_dir, is_default_dir
from .push import Pusher
from .recording import instance_collector

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..config import Settings


class MasterMetrics:
    """The master's metrics: claim the directory (`on_starting`), serve and push (`when_ready`), leave (`on_exit`)."""

    def __init__(self, settings: Settings, queue_depth: Callable[[], int] | None = None):
        self.settings = settings
        self.queue_depth = queue_depth  # the job queue's depth, read at scrape time (None: no Redis queue)
        self.directory: Path | None = None
        self.lock_fd: int | None = None  # held until the master exits: the directory is this instance's
        self.registry: CollectorRegistry | None = None
        self.pusher: Pusher | None = None

    def claim(self, log: Any) -> None:
        """Before any fork: decide and export the multiprocess directory, lock it, empty it."""
        self.directory = export_multiproc_dir(self.settings)
        self.lock_fd = claim(self.directory)
        log.info("metrics: multiprocess directory %s", self.directory)

    def serve(self, log: Any) -> None:
        """Serve METRICS_PORT and start the Pushgateway pusher (when configured)."""
        from prometheus_client import CollectorRegistry
        from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

        settings = self.settings
        aggregate = CollectorRegistry()
        aggregate.register(instance_collector(settings))
        if self.queue_depth is not None:
            aggregate.register(QueueCollector(self.queue_depth))
        # The exporter adds the MultiProcessCollector (every worker's files) to this registry.
        exporter = GunicornPrometheusMetrics(app=None, registry=aggregate, export_defaults=False)
        self.registry = exporter.registry
        host, port = str(settings.metrics_bind_host), settings.metrics_port
        try:
            exporter.start_http_server(port, host=host)
        except OSError as exc:
            # Not fatal: the instance still serves its users, and Prometheus's "target down" alert names it.
            log.error("metrics: cannot listen on %s:%s (%s): this instance cannot be scraped", host, port, exc)
        else:
            log.info("metrics: serving on http://%s:%s/metrics", host, port)
        if settings.prometheus_pushgateway_url:
            self.pusher = Pusher(
                settings.prometheus_pushgateway_url,
                job=settings.app_name,
                instance=settings.instance_id,
                registry=exporter.registry,
                interval=settings.prometheus_push_interval_seconds,
                log=log,
            )
            self.pusher.start()

    def worker_exited(self, pid: int) -> None:
        """Drop the dead worker's live gauges; its counters stay in the sums, so totals never go backwards."""
        from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

        if self.directory is not None:
            GunicornPrometheusMetrics.mark_process_dead_on_child_exit(pid)

    def leave(self) -> None:
        """After every worker has exited: final push, linger, delete the group; remove a default directory.

        A clean stop is taken as leaving for good: we cannot tell a scale-in from a restart, and a restarted
        instance recreates its group with its first push. The final values stay on the Pushgateway for
        PROMETHEUS_PUSH_LINGER_SECONDS so that Prometheus scrapes them, then the group is deleted, so that
        the gauges of an instance that no longer exists (ready, in flight, pool) do not linger forever.
        """
        if self.pusher is not None:
            self.pusher.leave(self.settings.prometheus_push_linger_seconds)
        if self.directory is not None and is_default_dir(self.directory):
            shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class MasterRuntime:
    """Everything the gunicorn master runs besides gunicorn itself; `metrics` is None with METRICS_ENABLED off."""

    drain: lifecycle.Drain
    metrics: MasterMetrics | None

    @classmethod
    def build(cls, settings: Settings, *, queue_depth: Callable[[], int] | None = None) -> MasterRuntime:
        """Wire from plain values; nothing is claimed, listened on or installed until the hooks run."""
        return cls(
            drain=lifecycle.Drain(settings.drain_delay_seconds),
            metrics=MasterMetrics(settings, queue_depth) if settings.metrics_enabled else None,
        )

    def starting(self, server: Any) -> None:
        """gunicorn `on_starting` (before any fork): the page shared with every worker, the metrics directory."""
        lifecycle.init_shared_state()
        if self.metrics is not None:
            self.metrics.claim(server.log)

    def ready(self, server: Any) -> None:
        """gunicorn `when_ready` (listeners open): take over SIGTERM for the drain, serve and push metrics."""
        self.drain.install(server)
        if self.metrics is not None:
            self.metrics.serve(server.log)
            # In `on_exit`, once every worker has gone: only then are the counters complete.
            lifecycle.master_shutdown.add("metrics", self.metrics.leave)

    def worker_exited(self, pid: int) -> None:
        """gunicorn `child_exit` (a worker reaped, SIGKILL included): forget its live gauges."""
        if self.metrics is not None:
            self.metrics.worker_exited(pid)
