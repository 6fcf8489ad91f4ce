"""The metrics of `photo-api worker`: its processes write to a multiprocess directory of their own, and the
command's main process serves their sum on METRICS_BIND_HOST:WORKER_METRICS_PORT, with the queue's depth
read from Redis at scrape time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .catalogue import QueueCollector
from .directory import claim
from .recording import enable, instance_collector

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)


def serve_worker_metrics(settings: Settings, directory: Path, *, queue_depth: Callable[[], int] | None = None) -> None:
    """Claim `directory` (exported as PROMETHEUS_MULTIPROC_DIR), start recording, serve the sum from a thread.

    Call once in the command's main process, before any worker process starts. A port that is taken is
    logged, not fatal: the jobs still run, and Prometheus's "target down" alert names the worker.
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    claim(directory)  # held until the process exits: the directory is this worker's
    enable(settings)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    registry.register(instance_collector(settings))
    if queue_depth is not None:
        registry.register(QueueCollector(queue_depth))
    host, port = str(settings.metrics_bind_host), settings.worker_metrics_port
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("metrics: cannot listen on %s:%s (%s): this worker cannot be scraped", host, port, exc)
    else:
        log.info("metrics: serving on http://%s:%s/metrics", host, port)
