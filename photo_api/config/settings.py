"""The Settings model: every setting, typed, with its default and range (the fields' names are the variables').

Reading the environment and the env file is `sources.py`; the rules between settings are `rules.py`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .redaction import redact_url

SECRET_FIELDS = frozenset(
    {
        "jwt_secret_key",
        "nhn_storage_iam_password",
        "nhn_storage_temp_url_key",
        "nhn_cdn_secret_key",
        "nhn_cdn_encrypt_key",
        "nhn_log_appkey",
    }
)
# The settings that hold a URL; shown (check-config, logs) only through redaction.redact_url.
URL_FIELDS = (
    "database_url",
    "public_base_url",
    "nhn_storage_auth_url",
    "nhn_storage_url",
    "nhn_cdn_api_url",
    "nhn_log_url",
    "prometheus_pushgateway_url",
    "redis_url",
)

# Database pool per gevent worker (see the fields' comment).
POOL_SIZE_DEFAULT = 20
MAX_OVERFLOW_DEFAULT = 5

# The retry and breaker values, with their ranges: declared once, for the global settings and for each
# dependency's overrides.
RetryMaxTries = Annotated[int, Field(ge=1, le=20)]
RetryMaxTime = Annotated[float, Field(gt=0, le=600)]
RetryBaseDelay = Annotated[float, Field(ge=0, le=60)]
RetryMaxDelay = Annotated[float, Field(ge=0, le=600)]
BreakerFailureThreshold = Annotated[int, Field(ge=1, le=1000)]
BreakerRecoveryTimeout = Annotated[float, Field(gt=0, le=3600)]

# The dependencies whose retry and breaker values may be overridden, by the variables
# `{SERVICE}_{VALUE}` (e.g. STORAGE_RETRY_MAX_TRIES); "storage" covers the storage auth service too.
Service = Literal["storage", "cdn", "log"]
SERVICES: tuple[Service, ...] = get_args(Service)


def _package_version() -> str:
    try:
        return metadata.version("photo-api")
    except metadata.PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+source"


class ServiceOverride(BaseModel):
    """One dependency's own retry and breaker values; unset (None) ones take the global value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retry_max_tries: RetryMaxTries | None = None
    retry_max_time: RetryMaxTime | None = None
    retry_base_delay: RetryBaseDelay | None = None
    retry_max_delay: RetryMaxDelay | None = None
    breaker_failure_threshold: BreakerFailureThreshold | None = None
    breaker_recovery_timeout: BreakerRecoveryTimeout | None = None


# The names of the six values, which are also the names of the global settings they override.
OVERRIDABLE: tuple[str, ...] = tuple(ServiceOverride.model_fields)


def override_variable(service: str, name: str) -> str:
    """The environment variable of one dependency's override, e.g. STORAGE_RETRY_MAX_TRIES."""
    return f"{service}_{name}".upper()


@dataclass(frozen=True)
class ResilienceValues:
    """The retry and breaker values that apply to one dependency: its overrides, else the global ones."""

    retry_max_tries: int
    retry_max_time: float
    retry_base_delay: float
    retry_max_delay: float
    breaker_failure_threshold: int
    breaker_recovery_timeout: float


class Settings(BaseSettings):
    """The validated configuration; field `foo_bar` is read from the variable `FOO_BAR`.

    `model_config` tells pydantic-settings' sources how variables are named (case-insensitive, no
    prefix); `load_settings()` runs those sources itself (see `settings_customise_sources`).
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True, validate_default=True, case_sensitive=False)

    # app
    environment: Literal["development", "production"] = "development"
    app_name: str = "photo-api"
    app_version: str = Field(default_factory=_package_version)
    public_base_url: str | None = None
    max_upload_bytes: int = Field(default=26_214_400, ge=1, le=5 * 1024**3)
    max_json_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1024**2)
    # /docs and /openapi.json: on in development, off in production unless asked for (ENABLE_DOCS=true).
    enable_docs: bool = Field(default_factory=lambda data: data.get("environment") != "production")
    debug: bool = False
    # Number of reverse proxies in front of the app whose X-Forwarded-* headers are trusted.
    trusted_proxy_count: int = Field(default=0, ge=0, le=5)

    # identity
    instance_ip: str | None = None
    node_name: str = Field(default_factory=socket.gethostname)
    region: str = ""

    # database
    database_url: str | None = None
    # Sized from what one gevent worker holds at once (ops/bench/RESULTS.md, "Database pool"): a request
    # holds its connection from its first query to its end, so at 32 keep-alive clients on 2 workers one
    # worker held up to 20 (while running 1 or 2 statements at a time); overflow is for bursts. 5 + 10
    # churned: an overflow connection coming back while 5 were idle was closed, and reopened (connect +
    # auth on the request path) moments later: 16 to 65 new sessions per 20 s run, none with 20 + 0.
    db_pool_size: int = Field(default=POOL_SIZE_DEFAULT, ge=1, le=200)
    db_max_overflow: int = Field(default=MAX_OVERFLOW_DEFAULT, ge=0, le=500)
    db_pool_timeout: float = Field(default=30, gt=0, le=300)
    db_pool_recycle: int = Field(default=1800, ge=-1)
    db_connect_timeout: float = Field(default=5, gt=0, le=120)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0, le=3_600_000)
    db_slow_query_ms: int = Field(default=500, ge=0)
    # Check each pooled connection with a round trip before use (bounded by half HEALTH_CHECK_TIMEOUT).
    db_pool_pre_ping: bool = True
    # Through PgBouncer in transaction pooling: no startup `options` (PgBouncer refuses them), the
    # timeouts set per transaction instead (SET LOCAL), no session state relied on.
    db_pgbouncer: bool = False
    # The connection budget (rules.py), checked only when both are given: how many instances the
    # autoscaling group may run, and what the server (or PgBouncer's max_client_conn) admits.
    fleet_max_instances: int | None = Field(default=None, ge=1, le=10_000)
    db_max_connections: int | None = Field(default=None, ge=1, le=1_000_000)
    # Kept free for operators, monitoring and backups, beyond PostgreSQL's superuser_reserved_connections.
    db_reserved_connections: int = Field(default=3, ge=0, le=10_000)
    # `photo-api worker` processes per VM (photo-api-worker.service's WORKER_PROCESSES; 0 where none runs):
    # each holds one database connection; counted in the budget.
    worker_processes: int = Field(default=2, ge=0, le=256)
    # Diagnostic switch, refused in production: leave psycopg2 blocking in gevent workers, to see (and to
    # test) what a slow query does to every other request of the worker without psycogreen.
    disable_psycogreen: bool = False

    # auth
    jwt_secret_key: SecretStr | None = None
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    access_token_expire_minutes: int = Field(default=30, ge=1, le=60 * 24 * 30)
    # argon2id cost; the defaults are RFC 9106's second recommendation (argon2-cffi's own defaults).
    password_hash_time_cost: int = Field(default=3, ge=1, le=20)
    password_hash_memory_kib: int = Field(default=65_536, ge=8, le=4 * 1024 * 1024)
    password_hash_parallelism: int = Field(default=4, ge=1, le=64)
    # Hashing runs on a pool of OS threads of its own per worker (never gevent's resolver threadpool):
    # argon2 is CPU work that releases the GIL, so more threads than cores only queue. None: the number of
    # CPUs this process may run on (at least 2). A hash that waits longer than the queue timeout for a
    # thread, or finds PASSWORD_HASH_QUEUE_SIZE hashes already waiting, is answered 503 at once.
    password_hash_workers: int | None = Field(default=None, ge=1, le=256)
    password_hash_queue_size: int = Field(default=16, ge=0, le=10_000)
    password_hash_queue_timeout: float = Field(default=5.0, ge=0, le=60)
    # How much lower than the event loop the hashing threads run (Linux nice increment, 0: the same): when
    # the cores are busy hashing, the kernel runs the loops (health probes, every other request) first.
    # On a VM shared with other busy processes, niced hashing also yields to them: 0 then.
    password_hash_nice: int = Field(default=10, ge=0, le=19)
    # A login refused for a full queue is answered after this many seconds: a client retrying at once,
    # ignoring Retry-After, then costs a few refusals a second instead of as many as the CPU can answer.
    password_hash_refusal_delay: float = Field(default=0.25, ge=0, le=5)

    # login and registration throttling (flask-limiter "N per period" strings, ";" between several)
    rate_limit_enabled: bool = True
    rate_limit_login_per_account: str = "10 per minute;50 per hour"
    rate_limit_login_per_address: str = "30 per minute;300 per hour"
    rate_limit_register_per_address: str = "10 per hour"
    # Socket timeout of the limiter's calls to Redis (REDIS_URL): every login waits for them, and a
    # healthy Redis on the same network answers in a millisecond.
    rate_limit_redis_timeout: float = Field(default=0.25, gt=0, le=5)

    # storage
    storage_backend: Literal["local", "swift"] = "local"
    local_storage_dir: Path | None = None
    nhn_storage_auth_url: str | None = None
    nhn_storage_auth_version: Literal["1", "2"] = "2"
    nhn_storage_tenant_id: str | None = None
    nhn_storage_iam_user: str | None = None
    nhn_storage_iam_password: SecretStr | None = None
    nhn_storage_url: str | None = None
    nhn_storage_container: str | None = None
    nhn_storage_temp_url_key: SecretStr | None = None
    upload_url_expire_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    # What one user may hold pending (presigned, not yet confirmed) at once, so that one account cannot
    # keep hundreds of maximum-size reservations open: a phone app presigning a batch of 200 photos of
    # 10 MB stays within both.
    max_pending_uploads_per_user: int = Field(default=200, ge=1, le=100_000)
    max_pending_upload_bytes_per_user: int = Field(default=2 * 1024**3, ge=1, le=1024**4)
    # Bulkhead: concurrent storage calls per worker, and how long a call waits for a free slot before
    # failing with 503, so a slow storage cannot hold every greenlet of the worker.
    storage_max_concurrency: int = Field(default=20, ge=1, le=10_000)
    storage_queue_timeout: float = Field(default=0.5, ge=0, le=60)

    # background jobs and media (photo_api/jobs, photo_api/media)
    # Redis of the job queue; unset: jobs run inside each app process (the embedded default). The same
    # field (and rule) as the login throttling's Redis.
    redis_url: str | None = None
    # Socket timeout of the API's calls to Redis: an enqueue happens inside an upload request.
    redis_timeout: float = Field(default=1.0, gt=0, le=30)
    job_max_attempts: int = Field(default=5, ge=1, le=20)
    # First backoff before a retry; each next one is four times longer (30 s, 2 min, 8 min, 32 min).
    job_retry_base_delay: int = Field(default=30, ge=1, le=3600)
    # The longest one run of a job may take before its worker stops it: a 12-megapixel JPEG takes 0.3 s
    # (ops/bench/RESULTS.md); the rest is room for the largest images and a slow storage.
    job_timeout: int = Field(default=120, ge=10, le=3600)
    # A photo whose job was handed to the queue this long ago and is still pending is enqueued again by
    # `photo-api reap-uploads` (a lost job: Redis restarted, a worker killed).
    processing_stale_seconds: int = Field(default=1800, ge=11, le=7 * 24 * 3600)
    # Decompression bombs: an image declaring more pixels is refused from its header. Below Pillow's own
    # hard limit (twice Image.MAX_IMAGE_PIXELS, 178,956,970), so ours is the one that applies.
    media_max_pixels: int = Field(default=100_000_000, ge=1_000_000, le=178_000_000)
    rendition_format: Literal["webp", "jpeg"] = "webp"
    # Where `photo-api worker` serves its metrics (the API's master serves METRICS_PORT).
    worker_metrics_port: int = Field(default=9201, ge=1, le=65535)

    # cdn
    nhn_cdn_domain: str | None = None
    nhn_cdn_app_key: str | None = None
    nhn_cdn_secret_key: SecretStr | None = None
    nhn_cdn_encrypt_key: SecretStr | None = None
    nhn_cdn_api_url: str = "https://cdn.api.nhncloudservice.com"
    cdn_token_mode: Literal["api", "local"] = "api"
    image_token_expire_seconds: int = Field(default=600, ge=10, le=7 * 24 * 3600)
    share_image_token_expire_seconds: int = Field(default=7200, ge=10, le=7 * 24 * 3600)
    cdn_token_cache_size: int = Field(default=1000, ge=0, le=1_000_000)

    # log shipping
    nhn_log_appkey: SecretStr | None = None
    nhn_log_url: str | None = None
    log_queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    log_batch_size: int = Field(default=100, ge=1, le=10_000)
    log_flush_interval: float = Field(default=2.0, gt=0, le=300)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # timeouts (seconds)
    http_timeout_connect: float = Field(default=3, gt=0, le=120)
    storage_auth_timeout: float = Field(default=10, gt=0, le=300)
    storage_upload_timeout: float = Field(default=60, gt=0, le=3600)
    storage_download_timeout: float = Field(default=60, gt=0, le=3600)
    cdn_timeout: float = Field(default=5, gt=0, le=120)
    log_service_timeout: float = Field(default=10, gt=0, le=300)
    health_check_timeout: float = Field(default=2, gt=0, le=60)
    # The longest a read of an upload's request body may wait for the client's next bytes, and the longest a
    # JSON body may take to arrive (then 408). Kept well below object storage's own idle limit (Swift's
    # client_timeout: 60 s), which a PUT waiting on a silent client would otherwise hit and have counted
    # against storage.
    client_body_timeout: float = Field(default=20, gt=0, le=55)
    # How long one worker reuses its last database probe: every LB probing every second then costs at
    # most one `SELECT 1` per worker per interval, however many LBs there are.
    health_check_cache_seconds: float = Field(default=1, ge=0, le=60)

    # retries
    retry_max_tries: RetryMaxTries = 3
    retry_max_time: RetryMaxTime = 10
    retry_base_delay: RetryBaseDelay = 0.2
    retry_max_delay: RetryMaxDelay = 2

    # circuit breakers
    breaker_failure_threshold: BreakerFailureThreshold = 5
    breaker_recovery_timeout: BreakerRecoveryTimeout = 30

    # Per-dependency overrides of the six values above, read from STORAGE_RETRY_MAX_TRIES,
    # CDN_BREAKER_RECOVERY_TIMEOUT, ... (sources.py); a dependency without an entry uses the global
    # values. NoDecode: no variable named OVERRIDES is ever parsed as JSON.
    overrides: Annotated[dict[Service, ServiceOverride], NoDecode] = Field(default_factory=dict)

    # lifecycle
    bind: str = "127.0.0.1:8000"
    drain_delay_seconds: float = Field(default=10, ge=0, le=600)
    graceful_timeout: float = Field(default=30, ge=1, le=3600)
    workers: int | None = Field(default=None, ge=1, le=256)
    worker_connections: int = Field(default=1000, ge=1, le=100_000)
    keepalive: int = Field(default=75, ge=0, le=3600)
    # gunicorn's heartbeat: a worker whose event loop is blocked this long is killed (not a request timeout).
    worker_timeout: int = Field(default=30, ge=1, le=3600)
    # Recycle a worker after this many requests (plus up to the jitter), 0 = never; only for a leak.
    max_requests: int = Field(default=0, ge=0, le=10_000_000)
    max_requests_jitter: int = Field(default=0, ge=0, le=10_000_000)
    # What the load balancer in front is configured with; used only to check the values above
    # (ops/README.md derives one from the other).
    lb_health_check_timeout: float = Field(default=5, gt=0, le=120)
    lb_health_check_interval: float = Field(default=2, gt=0, le=300)
    lb_unhealthy_threshold: int = Field(default=2, ge=1, le=20)
    lb_idle_timeout: float = Field(default=60, ge=0, le=4000)

    # metrics (photo_api/metrics/): served by the gunicorn master on METRICS_BIND_HOST:METRICS_PORT, never
    # on the public port; loopback by default, so exposing it to Prometheus is a deliberate choice.
    metrics_enabled: bool = True
    metrics_port: int = Field(default=9200, ge=1, le=65535)
    metrics_bind_host: IPvAnyAddress = IPv4Address("127.0.0.1")
    prometheus_multiproc_dir: Path | None = None
    prometheus_pushgateway_url: str | None = None
    prometheus_push_interval_seconds: float = Field(default=30, ge=1, le=3600)
    # How long the final push stays on the Pushgateway before the group is deleted at shutdown: at least
    # Prometheus's scrape interval of the Pushgateway, or the last values are never scraped.
    prometheus_push_linger_seconds: float = Field(default=15, ge=0, le=600)

    @field_validator("environment", "storage_backend", "cdn_token_mode", "log_level", "rendition_format", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value.upper() if value.lower() in {"debug", "info", "warning", "error"} else value.lower()
        return value

    @field_validator("jwt_algorithm", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values passed in: `load_settings()` reads the environment and the env file itself.

        It runs pydantic-settings' environment and env-file sources explicitly (sources.py), so that a
        test's environ dict replaces os.environ and a value that failed validation can be left out of a
        second validation; constructing Settings never reads the process environment behind its back.
        """
        return (init_settings,)

    @property
    def is_production(self) -> bool:
        """True when ENVIRONMENT=production."""
        return self.environment == "production"

    @property
    def uses_redis_jobs(self) -> bool:
        """True when jobs go through Redis to `photo-api worker` processes, False when they run in-process."""
        return self.redis_url is not None

    @property
    def is_sqlite(self) -> bool:
        """True when the database is an embedded SQLite file."""
        return (self.database_url or "").startswith("sqlite")

    @property
    def instance_id(self) -> str:
        """How this instance names itself in health bodies, logs and metrics."""
        return self.instance_ip or detect_instance_ip() or self.node_name

    def resilience_values(self, service: Service) -> ResilienceValues:
        """The retry and breaker values of `service`: each of its overrides, else the global value."""
        override = self.overrides.get(service) or ServiceOverride()
        values = {}
        for name in OVERRIDABLE:
            value = getattr(override, name)
            values[name] = getattr(self, name) if value is None else value
        return ResilienceValues(**values)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() shows up in tracebacks and debuggers: URLs without their credentials (secrets are SecretStr).
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in URL_FIELDS and isinstance(value, str) else value

    def redacted(self) -> dict[str, Any]:
        """The effective settings for printing: every secret replaced by a marker, URLs without credentials."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "overrides":
                # Shown as the variables they are read from, unset ones included, like every other setting.
                for service in SERVICES:
                    override = self.overrides.get(service) or ServiceOverride()
                    for key in OVERRIDABLE:
                        out[override_variable(service, key)] = getattr(override, key)
                continue
            if name in SECRET_FIELDS:
                value = None if value is None else "********"
            elif name in URL_FIELDS and value:
                value = redact_url(value)
            elif isinstance(value, Path):
                value = str(value)
            out[name.upper()] = value
        return out


def detect_instance_ip() -> str | None:
    """The address this host uses for outbound traffic (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            # connect() on UDP only picks a route; 192.0.2.1 is TEST-NET-1, never contacted.
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
        except OSError:
            return None
