"""The Prometheus catalogue (docs/operations.md, "Metrics"): every metric, its labels and their vocabularies.

Nothing of the project is imported here, so anything may build a catalogue. prometheus_client is imported
inside functions: it picks single- or multi-process mode when it is first imported, and the gunicorn
master imports this package (with its config) before `on_starting` has decided the directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

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
# The value of photo_api_circuit_breaker_state for each state; livemax then shows the worst worker.
BREAKER_STATE_CODES = {"closed": 0, "open": 1, "half_open": 2}
FALLBACK_SERVICES = ("cdn",)  # cdn: the image was streamed from storage instead of redirected
OUTCOMES = ("ok", "error", "timeout", "unavailable", "circuit_open", "cancelled")
JOB_NAMES = ("renditions",)
# ready/failed: the photo's processing ended; retry: a transient error, run again after a backoff;
# skipped: nothing to do (already processed, or the photo was deleted).
JOB_RESULTS = ("ready", "failed", "retry", "skipped")
# Why PostgreSQL (or PgBouncer) refused a new connection while it answered (resilience.REFUSAL_REASONS).
REFUSAL_REASONS = ("too_many_connections", "cannot_connect_now")
ENQUEUE_RESULTS = ("ok", "failed")
THROTTLED_ROUTES = ("login", "register")
THROTTLE_SCOPES = ("account", "address")  # what the breached limit counts: one e-mail, or one client address
POOL_REJECTIONS = ("queue_full", "timeout")  # failed: the queue was unavailable; the reaper enqueues the job later

# Request latency: an API answer takes milliseconds, an upload's handler receives the whole body (minutes
# for a slow client), hence the long tail.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
EXTERNAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A renditions job takes ~0.3 s for a 12-megapixel JPEG (ops/bench/RESULTS.md), seconds for the largest
# images; JOB_TIMEOUT caps it.
# A free hashing thread is taken in microseconds; a queued hash waits for one or more hashes (~0.3 s of CPU
# each at the production cost) up to PASSWORD_HASH_QUEUE_TIMEOUT.
QUEUE_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def bounded(value: str, allowed: Iterable[str]) -> str:
    """`value` if it belongs to the vocabulary `allowed`, else OTHER."""
    return value if value in allowed else OTHER


def multiprocess_mode() -> bool:
    """True when prometheus_client writes to PROMETHEUS_MULTIPROC_DIR (it decided so when first imported)."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Catalogue:
    """Every metric of the catalogue that a worker records (the master adds app info and draining).

    Gauges say how the workers' values combine (`multiprocess_mode`): `livesum` for amounts (in flight,
    pool, queue), `livemax` for the breaker state (the worst worker), `livemostrecent` for the latest
    probe answer. `live*` gauges of a dead worker disappear with it (the master's `worker_exited`).
    `registry` is None in multiprocess mode: the values go to this worker's files.
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
        self.db_connect_refusals = Counter(
            "photo_api_db_connect_refusals_total",
            "New database connections the server refused for capacity (full, starting up); the request waited "
            "for a pooled connection instead",
            ["reason"],
            registry=r,
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
        self.duplicate_uploads = Counter(
            "photo_api_duplicate_uploads_total",
            "Uploads (counted ok in photo_api_uploads_total) answered with the owner's photo of the same bytes",
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
        self.jobs = Counter(
            "photo_api_jobs_total",
            "Runs of background jobs by job and result (ready, failed, retry, skipped)",
            ["job", "result"],
            registry=r,
        )
        self.job_duration = Histogram(
            "photo_api_job_duration_seconds",
            "Time one run of a background job took, by job",
            ["job"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.job_enqueues = Counter(
            "photo_api_job_enqueues_total",
            "Jobs handed to the queue (ok) or not, because it was unavailable (failed; the reaper enqueues them)",
            ["result"],
            registry=r,
        )
        self.rate_limited = Counter(
            "photo_api_rate_limited_total",
            "Requests refused with 429 by the login/registration throttling, by route and limit scope",
            ["route", "scope"],
            registry=r,
        )
        self.rate_limit_store_errors = Counter(
            "photo_api_rate_limit_store_errors_total",
            "Calls to the throttling's Redis that failed (the limiter then counts in this worker's memory)",
            registry=r,
        )
        self.password_hash_wait = Histogram(
            "photo_api_password_hash_queue_wait_seconds",
            "Time a password hash waited for a thread of the hashing pool",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.password_hash_rejected = Counter(
            "photo_api_password_hash_rejected_total",
            "Password hashes refused with 503: the pool's queue was full, or no thread came free in time",
            ["reason"],
            registry=r,
        )
        # Every series of a bounded vocabulary exists from the start at 0: rate() then sees the first
        # event, and an absent series means "not recorded by this version", never "nothing happened yet".
        for method in UPLOAD_METHODS:
            self.upload_bytes.labels(method)
            self.duplicate_uploads.labels(method)
            for result in UPLOAD_RESULTS:
                self.uploads.labels(method, result)
        for path in DELIVERY_PATHS:
            for result in DELIVERY_RESULTS:
                self.image_deliveries.labels(path, result)
        for service in FALLBACK_SERVICES:
            self.fallbacks.labels(service)
        for job in JOB_NAMES:
            self.job_duration.labels(job)
            for result in JOB_RESULTS:
                self.jobs.labels(job, result)
        for result in ENQUEUE_RESULTS:
            self.job_enqueues.labels(result)
        for reason in REFUSAL_REASONS:
            self.db_connect_refusals.labels(reason)
        for route in THROTTLED_ROUTES:
            for scope in THROTTLE_SCOPES:
                self.rate_limited.labels(route, scope)
        for reason in POOL_REJECTIONS:
            self.password_hash_rejected.labels(reason)

    def watch_service(self, service: str) -> None:
        """Create the series of one dependency (breaker closed, no retries) before its first event."""
        self.breaker_state.labels(service).set(BREAKER_STATE_CODES["closed"])
        self.breaker_rejected.labels(service)
        for state in BREAKER_STATES:
            self.breaker_transitions.labels(service, state)
        for result in RETRY_RESULTS:
            self.retry_attempts.labels(service, result)


class InstanceCollector:
    """Metrics the instance as a whole has, computed at scrape time: `photo_api_app_info` and `photo_api_draining`.

    Registered in the master's registry (and in the single process outside gunicorn), not in the workers:
    the draining flag is the master's shared page, read through `draining` at the moment of the scrape.
    """

    def __init__(self, identity: Mapping[str, str], draining: Callable[[], bool]):
        self.labels = dict(identity)  # version, instance, node, region
        self.draining = draining

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
            value=1 if self.draining() else 0,
        )


class QueueCollector:
    """`photo_api_job_queue_depth`, asked of the queue at scrape time (absent when the queue does not answer).

    Registered by the processes that serve metrics (the gunicorn master, `photo-api worker`): the backlog
    alert must keep working when every worker is down, so the API instances report the depth too.
    """

    def __init__(self, depth: Callable[[], int]):
        self.depth = depth

    def collect(self) -> Iterator[Metric]:
        """Yield the queue depth, or nothing when it cannot be read right now."""
        from prometheus_client.core import GaugeMetricFamily

        try:
            depth = self.depth()
        except Exception:
            return
        yield GaugeMetricFamily(
            "photo_api_job_queue_depth", "Jobs waiting in the queue (queued or scheduled for a retry)", value=depth
        )
