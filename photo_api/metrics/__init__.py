"""Prometheus metrics (docs/operations.md, "Metrics"): the catalogue, what feeds it, and the gunicorn master
that serves it. One module per role:

* catalogue.py   every metric and its label vocabularies (imports nothing of the project);
* recording.py   this process's catalogue and the helpers the API records with (uploads, deliveries, ...);
* events.py      `ResilienceMetrics`, the adapter resilience reports to (retries, breakers, durations);
* flask.py       the request hooks (`init_app`), and why they are not prometheus-flask-exporter's;
* directory.py, push.py, master.py   the gunicorn master: multiprocess directory, Pushgateway, the builder
                 of what runs there (`MasterRuntime`).

Under gunicorn (`photo-api serve`) prometheus_client runs in multiprocess mode: each worker writes its
values to mmap files in a directory private to the instance and the master serves their sum on
`METRICS_BIND_HOST:METRICS_PORT` (never the public port). Outside gunicorn the same metrics are recorded
in-process and read with `render()`. `METRICS_ENABLED=false` turns all of it off (no hooks, no
directory, no port). Nothing here imports prometheus_client, Flask or SQLAlchemy at import time: the
gunicorn master imports this package before the directory is decided and before gevent patches a worker.
This package imports only photo_api.config, photo_api.lifecycle and photo_api.errors of the project.
"""

from __future__ import annotations

from .catalogue import Catalogue, InstanceCollector, QueueCollector
from .directory import AUTO_DIR_PREFIX, MULTIPROC_ENV, default_multiproc_dir, export_multiproc_dir
from .events import ResilienceMetrics
from .flask import init_app
from .master import MasterRuntime
from .recording import (
    JobMetrics,
    PasswordHashMetrics,
    UploadAttempt,
    delivery_result,
    enable,
    fallback,
    health_report,
    image_delivery,
    log_dropped,
    log_queue_depth,
    rate_limit_store_error,
    rate_limited,
    registry,
    render,
    share_view,
    upload,
    upload_attempt,
    upload_result,
    watch_database,
)
from .worker import serve_worker_metrics

__all__ = [
    "AUTO_DIR_PREFIX",
    "MULTIPROC_ENV",
    "Catalogue",
    "InstanceCollector",
    "JobMetrics",
    "MasterRuntime",
    "PasswordHashMetrics",
    "QueueCollector",
    "ResilienceMetrics",
    "UploadAttempt",
    "default_multiproc_dir",
    "delivery_result",
    "enable",
    "export_multiproc_dir",
    "fallback",
    "health_report",
    "image_delivery",
    "init_app",
    "log_dropped",
    "log_queue_depth",
    "rate_limit_store_error",
    "rate_limited",
    "registry",
    "render",
    "serve_worker_metrics",
    "share_view",
    "upload",
    "upload_attempt",
    "upload_result",
    "watch_database",
]
