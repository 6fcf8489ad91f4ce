"""Settings: every environment variable, typed and validated in one place.

`load_settings()` reads the process environment (and the env file named by `PHOTO_API_ENV_FILE`),
checks types and ranges field by field and then the cross-field and production rules, and raises one
`ConfigError` that lists *every* problem. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, SecretStr, ValidationError, field_validator

ENV_FILE_VARIABLE = "PHOTO_API_ENV_FILE"
DEFAULT_VAR_DIR = Path("var")
DEFAULT_SQLITE_FILE = "photo_api.db"
DEFAULT_STORAGE_SUBDIR = "storage"
DEV_SECRET_FILE = "jwt-secret"
# Values copied from tutorials and example files; a production secret must never be one of them.
KNOWN_DEFAULT_SECRETS = frozenset(
    {"", "secret", "changeme", "change-me", "your-secret-key", "your-secret-key-here", "dev", "development"}
)
MIN_SECRET_BYTES = 32
MIN_PRODUCTION_HASH_MEMORY_KIB = 19_456
MIN_PRODUCTION_HASH_TIME_COST = 2
SECRET_FIELDS = frozenset(
    {
        "jwt_secret_key",
        "nhn_storage_iam_password",
        "nhn_storage_temp_url_key",
        "nhn_cdn_secret_key",
        "nhn_cdn_encrypt_key",
    }
)


def _package_version() -> str:
    try:
        return metadata.version("photo-api")
    except metadata.PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+source"


class Settings(BaseModel):
    """The validated configuration; field `foo_bar` is read from the variable `FOO_BAR`."""

    model_config = ConfigDict(extra="ignore", frozen=True, validate_default=True)

    # app
    environment: Literal["development", "production"] = "development"
    app_name: str = "photo-api"
    app_version: str = Field(default_factory=_package_version)
    public_base_url: str | None = None
    max_upload_bytes: int = Field(default=26_214_400, ge=1, le=5 * 1024**3)
    max_json_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1024**2)
    enable_docs: bool = True
    debug: bool = False
    # Number of reverse proxies in front of the app whose X-Forwarded-* headers are trusted.
    trusted_proxy_count: int = Field(default=0, ge=0, le=5)

    # identity
    instance_ip: str | None = None
    node_name: str = Field(default_factory=socket.gethostname)
    region: str = ""

    # database
    database_url: str | None = None
    db_pool_size: int = Field(default=5, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=500)
    db_pool_timeout: float = Field(default=30, gt=0, le=300)
    db_pool_recycle: int = Field(default=1800, ge=-1)
    db_connect_timeout: float = Field(default=5, gt=0, le=120)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0, le=3_600_000)
    db_slow_query_ms: int = Field(default=500, ge=0)
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
    # Bulkhead: concurrent storage calls per worker, and how long a call waits for a free slot before
    # failing with 503, so a slow storage cannot hold every greenlet of the worker.
    storage_max_concurrency: int = Field(default=20, ge=1, le=10_000)
    storage_queue_timeout: float = Field(default=0.5, ge=0, le=60)

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
    nhn_log_appkey: str | None = None
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
    # How long one worker reuses its last database probe: every LB probing every second then costs at
    # most one `SELECT 1` per worker per interval, however many LBs there are.
    health_check_cache_seconds: float = Field(default=1, ge=0, le=60)

    # retries
    retry_max_tries: int = Field(default=3, ge=1, le=20)
    retry_max_time: float = Field(default=10, gt=0, le=600)
    retry_base_delay: float = Field(default=0.2, ge=0, le=60)
    retry_max_delay: float = Field(default=2, ge=0, le=600)

    # circuit breakers
    breaker_failure_threshold: int = Field(default=5, ge=1, le=1000)
    breaker_recovery_timeout: float = Field(default=30, gt=0, le=3600)

    # per-service overrides of the retry and breaker values above (unset = the global value);
    # resilience.policy_for() picks them up by name
    storage_retry_max_tries: int | None = Field(default=None, ge=1, le=20)
    storage_retry_max_time: float | None = Field(default=None, gt=0, le=600)
    storage_retry_base_delay: float | None = Field(default=None, ge=0, le=60)
    storage_retry_max_delay: float | None = Field(default=None, ge=0, le=600)
    storage_breaker_failure_threshold: int | None = Field(default=None, ge=1, le=1000)
    storage_breaker_recovery_timeout: float | None = Field(default=None, gt=0, le=3600)
    cdn_retry_max_tries: int | None = Field(default=None, ge=1, le=20)
    cdn_retry_max_time: float | None = Field(default=None, gt=0, le=600)
    cdn_retry_base_delay: float | None = Field(default=None, ge=0, le=60)
    cdn_retry_max_delay: float | None = Field(default=None, ge=0, le=600)
    cdn_breaker_failure_threshold: int | None = Field(default=None, ge=1, le=1000)
    cdn_breaker_recovery_timeout: float | None = Field(default=None, gt=0, le=3600)
    log_retry_max_tries: int | None = Field(default=None, ge=1, le=20)
    log_retry_max_time: float | None = Field(default=None, gt=0, le=600)
    log_retry_base_delay: float | None = Field(default=None, ge=0, le=60)
    log_retry_max_delay: float | None = Field(default=None, ge=0, le=600)
    log_breaker_failure_threshold: int | None = Field(default=None, ge=1, le=1000)
    log_breaker_recovery_timeout: float | None = Field(default=None, gt=0, le=3600)

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

    # metrics (photo_api/metrics.py): served by the gunicorn master on METRICS_BIND_HOST:METRICS_PORT, never
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

    @field_validator("environment", "storage_backend", "cdn_token_mode", "log_level", mode="before")
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

    @property
    def is_production(self) -> bool:
        """True when ENVIRONMENT=production."""
        return self.environment == "production"

    @property
    def is_sqlite(self) -> bool:
        """True when the database is an embedded SQLite file."""
        return (self.database_url or "").startswith("sqlite")

    @property
    def instance_id(self) -> str:
        """How this instance names itself in health bodies, logs and metrics."""
        return self.instance_ip or detect_instance_ip() or self.node_name

    def redacted(self) -> dict[str, Any]:
        """The effective settings with every secret replaced by a marker, for printing."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in SECRET_FIELDS:
                value = None if value is None else "********"
            elif name == "database_url" and value:
                value = redact_url(value)
            elif isinstance(value, Path):
                value = str(value)
            out[name.upper()] = value
        return out


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration: the variable it concerns and what is wrong."""

    setting: str
    message: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: Iterable[ConfigProblem]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))

    def settings_named(self) -> set[str]:
        """The variable names that have at least one problem."""
        return {p.setting for p in self.problems}


def redact_url(url: str) -> str:
    """Hide the password of a URL such as postgresql://user:pw@host/db."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: show nothing of it
        return "<unparseable>"


def detect_instance_ip() -> str | None:
    """The address this host uses for outbound traffic (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            # connect() on UDP only picks a route; 192.0.2.1 is TEST-NET-1, never contacted.
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
        except OSError:
            return None


def read_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Collect the raw values of known settings from the env file (if any) and the environment."""
    env = dict(os.environ if environ is None else environ)
    raw: dict[str, str] = {}
    env_file = env.get(ENV_FILE_VARIABLE)
    if env_file:
        # dotenv_values() returns nothing for a missing file: a typo in the path would boot on defaults.
        if not Path(env_file).is_file():
            raise ConfigError([ConfigProblem(ENV_FILE_VARIABLE, f"no such file: {env_file}")])
        raw.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    raw.update(env)  # the real environment wins over the file, as systemd and docker users expect
    fields = Settings.model_fields
    # Empty strings mean "not set": `FOO=` in an env file must not become a validation error.
    return {k.lower(): v for k, v in raw.items() if k.lower() in fields and v.strip() != ""}


Rule = tuple[tuple[str, ...], Callable[[Settings], Iterable[ConfigProblem]]]


def _p(setting: str, message: str) -> ConfigProblem:
    return ConfigProblem(setting.upper(), message)


def _rule_jwt(s: Settings) -> Iterable[ConfigProblem]:
    if not s.is_production:
        return
    secret = s.jwt_secret_key.get_secret_value() if s.jwt_secret_key else None
    if secret is None:
        yield _p("jwt_secret_key", "required in production")
    elif secret.strip().lower() in KNOWN_DEFAULT_SECRETS:
        yield _p("jwt_secret_key", "is a well-known default value")
    elif len(secret.encode()) < MIN_SECRET_BYTES:
        yield _p("jwt_secret_key", f"must be at least {MIN_SECRET_BYTES} bytes in production")


def _rule_password_hash(s: Settings) -> Iterable[ConfigProblem]:
    # OWASP's floor for argon2id (m=19 MiB, t=2); cheaper settings exist only to keep test suites quick.
    if s.is_production and s.password_hash_memory_kib < MIN_PRODUCTION_HASH_MEMORY_KIB:
        yield _p("password_hash_memory_kib", f"must be at least {MIN_PRODUCTION_HASH_MEMORY_KIB} in production")
    if s.is_production and s.password_hash_time_cost < MIN_PRODUCTION_HASH_TIME_COST:
        yield _p("password_hash_time_cost", f"must be at least {MIN_PRODUCTION_HASH_TIME_COST} in production")


def _rule_database_url(s: Settings) -> Iterable[ConfigProblem]:
    # Parsed with urlsplit, not SQLAlchemy: the gunicorn master validates settings before gevent patches
    # the workers and must not import SQLAlchemy (which imports asyncio and ssl) that early.
    if s.database_url is None:
        return
    try:
        parts = urlsplit(s.database_url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        yield _p("database_url", "is not a valid database URL (e.g. postgresql://user:password@host:5432/db)")
        return
    backend = parts.scheme.split("+", 1)[0]
    if backend not in ("sqlite", "postgresql", "postgres") or not s.database_url.startswith(f"{parts.scheme}://"):
        yield _p("database_url", "must be a postgresql:// or sqlite:// URL")


def _rule_production_database(s: Settings) -> Iterable[ConfigProblem]:
    if s.is_production and (s.database_url is None or s.is_sqlite):
        yield _p("database_url", "production needs PostgreSQL (SQLite is for development only)")


def _rule_debug(s: Settings) -> Iterable[ConfigProblem]:
    if s.is_production and s.debug:
        yield _p("debug", "must be off in production")


def _rule_psycogreen(s: Settings) -> Iterable[ConfigProblem]:
    if s.is_production and s.disable_psycogreen:
        yield _p("disable_psycogreen", "is a diagnostic switch and must be off in production")


def _rule_local_storage(s: Settings) -> Iterable[ConfigProblem]:
    if s.storage_backend == "local" and s.is_production and s.local_storage_dir is None:
        yield _p("local_storage_dir", "production with STORAGE_BACKEND=local needs an explicit directory")


def _rule_swift(s: Settings) -> Iterable[ConfigProblem]:
    if s.storage_backend == "swift":
        needed = ["nhn_storage_auth_url", "nhn_storage_iam_user", "nhn_storage_iam_password", "nhn_storage_container"]
        if s.nhn_storage_auth_version == "2":
            needed.append("nhn_storage_tenant_id")
        for name in needed:
            if not getattr(s, name):
                yield _p(name, "required when STORAGE_BACKEND=swift")


def _rule_cdn(s: Settings) -> Iterable[ConfigProblem]:
    if not s.nhn_cdn_domain:
        return
    if "://" in s.nhn_cdn_domain or "/" in s.nhn_cdn_domain:
        yield _p("nhn_cdn_domain", "must be a bare host name, without scheme or path")
    if s.nhn_cdn_encrypt_key is None:
        yield _p("nhn_cdn_encrypt_key", "required when NHN_CDN_DOMAIN is set")
    else:
        try:
            bytes.fromhex(s.nhn_cdn_encrypt_key.get_secret_value())
        except ValueError:
            yield _p("nhn_cdn_encrypt_key", "must be the hex string shown in the CDN console")
    if s.cdn_token_mode == "api":
        for name in ("nhn_cdn_app_key", "nhn_cdn_secret_key"):
            if not getattr(s, name):
                yield _p(name, "required when NHN_CDN_DOMAIN is set and CDN_TOKEN_MODE=api")


def _rule_log_shipping(s: Settings) -> Iterable[ConfigProblem]:
    if bool(s.nhn_log_appkey) != bool(s.nhn_log_url):
        missing = "nhn_log_url" if s.nhn_log_appkey else "nhn_log_appkey"
        yield _p(missing, "NHN_LOG_APPKEY and NHN_LOG_URL go together")


def _rule_health_timeout(s: Settings) -> Iterable[ConfigProblem]:
    if s.health_check_timeout >= s.lb_health_check_timeout:
        yield _p(
            "health_check_timeout",
            f"must be below the load balancer's probe timeout (LB_HEALTH_CHECK_TIMEOUT={s.lb_health_check_timeout:g}s)",
        )


def _rule_graceful(s: Settings) -> Iterable[ConfigProblem]:
    # The drain delay runs *before* the graceful stop (see lifecycle.py), so the graceful budget only has
    # to cover the longest request that can be in flight when listeners close: the DB statement timeout.
    longest = s.db_statement_timeout_ms / 1000
    if s.graceful_timeout < longest:
        yield _p(
            "graceful_timeout",
            f"must be at least the longest request timeout (DB_STATEMENT_TIMEOUT_MS = {longest:g}s)",
        )


def _rule_drain(s: Settings) -> Iterable[ConfigProblem]:
    # While draining, the probe answers 503 at once; the LB needs `threshold` failed probes, one per
    # interval, to stop routing, plus one probe timeout of margin for a probe already under way and for
    # the LB to apply its decision. The listeners close after the drain delay: anything the LB still
    # sends then is refused or reset. Development has no LB in front, so a short delay is fine there.
    needed = s.lb_health_check_interval * s.lb_unhealthy_threshold + s.lb_health_check_timeout
    if s.is_production and s.drain_delay_seconds < needed:
        yield _p(
            "drain_delay_seconds",
            f"must be at least LB_HEALTH_CHECK_INTERVAL x LB_UNHEALTHY_THRESHOLD + LB_HEALTH_CHECK_TIMEOUT "
            f"(= {needed:g}s), or the load balancer still sends requests when the listeners close",
        )


def _rule_max_requests(s: Settings) -> Iterable[ConfigProblem]:
    if s.max_requests == 0 and s.max_requests_jitter:
        yield _p("max_requests_jitter", "only applies with MAX_REQUESTS > 0")


def _rule_keepalive(s: Settings) -> Iterable[ConfigProblem]:
    if s.lb_idle_timeout and s.keepalive <= s.lb_idle_timeout:
        yield _p(
            "keepalive",
            f"must be longer than the load balancer's idle timeout (LB_IDLE_TIMEOUT={s.lb_idle_timeout:g}s), "
            "or the LB reuses connections the app has closed (502s)",
        )


def _rule_retries(s: Settings) -> Iterable[ConfigProblem]:
    if s.retry_max_delay < s.retry_base_delay:
        yield _p("retry_max_delay", "must not be below RETRY_BASE_DELAY")


def _rule_urls(s: Settings) -> Iterable[ConfigProblem]:
    for name in (
        "public_base_url",
        "nhn_storage_auth_url",
        "nhn_storage_url",
        "nhn_cdn_api_url",
        "nhn_log_url",
        "prometheus_pushgateway_url",
    ):
        value = getattr(s, name)
        if value and not _is_http_url(value):
            yield _p(name, "must be an http:// or https:// URL with a host")


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# Each rule names the fields it reads, so that it is skipped when one of them already failed its own check.
RULES: list[Rule] = [
    (("environment", "jwt_secret_key"), _rule_jwt),
    (("environment", "password_hash_memory_kib", "password_hash_time_cost"), _rule_password_hash),
    (("database_url",), _rule_database_url),
    (("environment", "database_url"), _rule_production_database),
    (("environment", "debug"), _rule_debug),
    (("environment", "disable_psycogreen"), _rule_psycogreen),
    (("environment", "storage_backend", "local_storage_dir"), _rule_local_storage),
    (("storage_backend", "nhn_storage_auth_version"), _rule_swift),
    (("nhn_cdn_domain", "nhn_cdn_encrypt_key", "cdn_token_mode"), _rule_cdn),
    ((), _rule_log_shipping),
    (("health_check_timeout", "lb_health_check_timeout"), _rule_health_timeout),
    (("graceful_timeout", "db_statement_timeout_ms"), _rule_graceful),
    (("keepalive", "lb_idle_timeout"), _rule_keepalive),
    (
        (
            "environment",
            "drain_delay_seconds",
            "lb_health_check_interval",
            "lb_unhealthy_threshold",
            "lb_health_check_timeout",
        ),
        _rule_drain,
    ),
    (("max_requests", "max_requests_jitter"), _rule_max_requests),
    (("retry_max_delay", "retry_base_delay"), _rule_retries),
    ((), _rule_urls),
]


def _describe(error: Any) -> str:
    msg = str(error["msg"])
    if error["type"] == "literal_error":
        return msg.replace("Input should be", "must be one of:").replace("'", "")
    return msg


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from the environment plus `overrides`; raise ConfigError listing every problem."""
    raw: dict[str, Any] = {**read_environment(environ), **overrides}
    problems: list[ConfigProblem] = []
    failed: set[str] = set()
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            failed.add(name)
            problems.append(_p(name, _describe(err)))
        # Validate the rest again without the broken fields so the rules below can still report.
        settings = Settings.model_validate({k: v for k, v in raw.items() if k not in failed})
    for fields, rule in RULES:
        if not failed.intersection(fields):
            problems.extend(rule(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def development_defaults(settings: Settings, var_dir: Path = DEFAULT_VAR_DIR) -> Settings:
    """Fill in the embedded default (SQLite, local storage and a JWT secret kept under ./var/).

    Only for development: production settings are returned unchanged (and were already required to be
    explicit by the rules above).
    """
    if settings.is_production:
        return settings
    changes: dict[str, Any] = {}
    if settings.database_url is None:
        var_dir.mkdir(parents=True, exist_ok=True)
        changes["database_url"] = f"sqlite:///{(var_dir / DEFAULT_SQLITE_FILE).resolve()}"
    if settings.storage_backend == "local" and settings.local_storage_dir is None:
        # Created now, like the database file, so the whole embedded layout exists after the first start
        # and an unwritable ./var/ fails at boot rather than at the first upload.
        storage_dir = (var_dir / DEFAULT_STORAGE_SUBDIR).resolve()
        storage_dir.mkdir(parents=True, exist_ok=True)
        changes["local_storage_dir"] = storage_dir
    if settings.jwt_secret_key is None:
        changes["jwt_secret_key"] = SecretStr(_dev_secret(var_dir))
    return settings.model_copy(update=changes) if changes else settings


def _dev_secret(var_dir: Path) -> str:
    """Read, or create once, the development JWT secret, so tokens survive restarts."""
    import secrets

    path = var_dir / DEV_SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # Write aside, then link into place: link() fails if the file exists, so when two processes start at
    # once exactly one secret wins and nobody ever reads a half-written file.
    tmp = var_dir / f".{DEV_SECRET_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        secret = path.read_text().strip()
    finally:
        tmp.unlink()
    return secret
