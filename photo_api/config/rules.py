"""The rules between settings and the production rules: the operational arithmetic checked at boot.

Each rule gets validated Settings and yields a ConfigProblem per thing wrong; `RULES` names the fields
each one reads, so that `load_settings()` skips a rule when one of them already failed its own check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from .problems import ConfigProblem, problem
from .settings import SECRET_FIELDS, SERVICES, URL_FIELDS, Service, Settings
from .strength import GENERATE_HINT, has_placeholder_marker, is_placeholder, weakness

MIN_PRODUCTION_HASH_MEMORY_KIB = 19_456
MIN_PRODUCTION_HASH_TIME_COST = 2
# The secrets we choose ourselves, which production relies on nobody guessing: the JWT key signs every
# access token (and the local upload-URL key derives from it), the TempURL key signs upload and download
# URLs for any object of the container. They must be long and random (strength.py). The other secrets
# are issued by NHN Cloud in a format we do not choose (NHN_CDN_ENCRYPT_KEY is the console's hex key,
# often 16 bytes): those are only checked not to be placeholders.
CHOSEN_SECRETS = ("jwt_secret_key", "nhn_storage_temp_url_key")
PLACEHOLDER_MESSAGE = "is a well-known default or placeholder value (from ops/photo-api.env.example?): replace it"


Rule = tuple[tuple[str, ...], Callable[[Settings], Iterable[ConfigProblem]]]


def _rule_chosen_secrets(s: Settings) -> Iterable[ConfigProblem]:
    if not s.is_production:
        return
    if s.jwt_secret_key is None:
        yield problem("jwt_secret_key", f"required in production; {GENERATE_HINT}")
    for name in CHOSEN_SECRETS:
        value = getattr(s, name)
        why = weakness(value.get_secret_value()) if value is not None else None
        if why:
            yield problem(name, f"{why}; {GENERATE_HINT}")


def _rule_placeholders(s: Settings) -> Iterable[ConfigProblem]:
    """Every other setting that still holds a placeholder of the example env file, named for replacing."""
    if not s.is_production:
        return
    for name in type(s).model_fields:
        value = getattr(s, name)
        if name in CHOSEN_SECRETS or value is None:
            continue
        if name in SECRET_FIELDS:
            found = is_placeholder(value.get_secret_value())
        elif isinstance(value, str):
            password = _url_password(value) if name in URL_FIELDS else None
            found = has_placeholder_marker(value) or (password is not None and is_placeholder(password))
        else:
            continue
        if found:
            yield problem(name, PLACEHOLDER_MESSAGE)


def _url_password(url: str) -> str | None:
    """The password in a URL's user info, or None when it has none (or is no URL: _rule_urls says so)."""
    try:
        userinfo, _, _ = urlsplit(url).netloc.rpartition("@")
    except ValueError:
        return None
    return userinfo.partition(":")[2] or None


def _rule_public_base_url(s: Settings) -> Iterable[ConfigProblem]:
    # Share links and local upload URLs carry their credential (the share token, the upload signature) in
    # the URL: production builds them from one configured https base, never from the request's Host.
    if s.public_base_url is None:
        if s.is_production:
            yield problem(
                "public_base_url",
                "required in production: the https URL clients reach the service at, e.g. https://photos.example.com "
                "(share links and upload URLs are built from it)",
            )
        return
    parts = urlsplit(s.public_base_url)
    if parts.query or parts.fragment:
        yield problem("public_base_url", "must have no query or fragment: paths are appended to it")
    if s.is_production and parts.scheme == "http":
        yield problem(
            "public_base_url", "must be an https:// URL in production: the URLs built from it carry credentials"
        )


def _rule_password_hash(s: Settings) -> Iterable[ConfigProblem]:
    # OWASP's floor for argon2id (m=19 MiB, t=2); cheaper settings exist only to keep test suites quick.
    if s.is_production and s.password_hash_memory_kib < MIN_PRODUCTION_HASH_MEMORY_KIB:
        yield problem("password_hash_memory_kib", f"must be at least {MIN_PRODUCTION_HASH_MEMORY_KIB} in production")
    if s.is_production and s.password_hash_time_cost < MIN_PRODUCTION_HASH_TIME_COST:
        yield problem("password_hash_time_cost", f"must be at least {MIN_PRODUCTION_HASH_TIME_COST} in production")


RATE_LIMIT_FIELDS = ("rate_limit_login_per_account", "rate_limit_login_per_address", "rate_limit_register_per_address")


def _rule_rate_limits(s: Settings) -> Iterable[ConfigProblem]:
    # Parsed by the library that applies them (limits, under flask-limiter), so that what passes here is
    # exactly what the limiter accepts at start.
    from limits import parse_many

    for name in RATE_LIMIT_FIELDS:
        value = getattr(s, name)
        try:
            parsed = parse_many(value)
        except ValueError:
            parsed = []
        if not parsed:
            yield problem(name, "must be rate limits such as '10 per minute' (several separated by ';')")
        elif any(item.amount < 1 for item in parsed):
            yield problem(name, "each limit must allow at least 1 request")


def _rule_database_url(s: Settings) -> Iterable[ConfigProblem]:
    # Parsed with urlsplit, not SQLAlchemy: the gunicorn master validates settings too, and has no use for
    # SQLAlchemy (nor should it load it before forking the workers that gevent then patches).
    if s.database_url is None:
        return
    try:
        parts = urlsplit(s.database_url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        yield problem("database_url", "is not a valid database URL (e.g. postgresql://user:password@host:5432/db)")
        return
    backend = parts.scheme.split("+", 1)[0]
    if backend not in ("sqlite", "postgresql", "postgres") or not s.database_url.startswith(f"{parts.scheme}://"):
        yield problem("database_url", "must be a postgresql:// or sqlite:// URL")


REDIS_SCHEMES = ("redis", "rediss", "unix")


def _rule_redis_url(s: Settings) -> Iterable[ConfigProblem]:
    if s.redis_url is None:
        return
    try:
        parts = urlsplit(s.redis_url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        yield problem("redis_url", "is not a valid Redis URL (e.g. redis://10.0.0.5:6379/0)")
        return
    if parts.scheme not in REDIS_SCHEMES:
        yield problem("redis_url", "must be a redis://, rediss:// or unix:// URL")
    elif parts.scheme == "unix" and not parts.path:
        yield problem("redis_url", "a unix:// URL needs the socket's path (unix:///run/redis/redis.sock)")
    elif parts.scheme != "unix" and not parts.hostname:
        yield problem("redis_url", "needs a host (redis://host:6379/0)")


def _rule_jobs(s: Settings) -> Iterable[ConfigProblem]:
    # A job still running must not look lost: the reaper would enqueue it again while it runs.
    if s.processing_stale_seconds <= s.job_timeout:
        yield problem("processing_stale_seconds", f"must be longer than JOB_TIMEOUT ({s.job_timeout}s)")


# PostgreSQL's superuser_reserved_connections default: slots an application role can never take.
POSTGRES_SUPERUSER_RESERVED = 3
# Outside the API's pools, on each instance: one `photo-api reap-uploads` run (its timer); and once for
# the fleet: one `photo-api db upgrade` (migrations run one at a time, under an advisory lock).
REAPER_CONNECTIONS_PER_INSTANCE = 1
MIGRATION_CONNECTIONS = 1


def connection_budget(s: Settings) -> tuple[int, int, str] | None:
    """(connections the fleet may open, connections available, the arithmetic), or None if not configured."""
    if s.fleet_max_instances is None or s.db_max_connections is None or s.workers is None:
        return None
    per_worker = s.db_pool_size + s.db_max_overflow
    per_instance = s.workers * per_worker + s.worker_processes + REAPER_CONNECTIONS_PER_INSTANCE
    needed = s.fleet_max_instances * per_instance + MIGRATION_CONNECTIONS
    reserve = s.db_reserved_connections + (0 if s.db_pgbouncer else POSTGRES_SUPERUSER_RESERVED)
    available = s.db_max_connections - reserve
    arithmetic = (
        f"FLEET_MAX_INSTANCES {s.fleet_max_instances} x (WORKERS {s.workers} x (DB_POOL_SIZE {s.db_pool_size} "
        f"+ DB_MAX_OVERFLOW {s.db_max_overflow}) + WORKER_PROCESSES {s.worker_processes} + "
        f"{REAPER_CONNECTIONS_PER_INSTANCE} reaper) + {MIGRATION_CONNECTIONS} migration = {needed}; "
        f"DB_MAX_CONNECTIONS {s.db_max_connections} - DB_RESERVED_CONNECTIONS {s.db_reserved_connections}"
        + ("" if s.db_pgbouncer else f" - {POSTGRES_SUPERUSER_RESERVED} superuser_reserved_connections")
        + f" = {available}"
    )
    return needed, available, arithmetic


def _rule_connection_budget(s: Settings) -> Iterable[ConfigProblem]:
    # Beyond the budget the server refuses sessions when the group scales out: requests then wait for
    # pooled connections (CapacityAwarePool) instead of failing, but latency suffers; better to know first.
    if s.fleet_max_instances is None or s.db_max_connections is None:
        return
    if s.workers is None:
        yield problem(
            "workers",
            "must be set when FLEET_MAX_INSTANCES and DB_MAX_CONNECTIONS are (the connection budget counts "
            "WORKERS; its default is the CPU count of whichever machine runs the check)",
        )
        return
    budget = connection_budget(s)
    assert budget is not None
    needed, available, arithmetic = budget
    if needed > available:
        yield problem(
            "db_max_connections",
            f"the fleet may open more database connections than the server admits: {arithmetic}; lower "
            "DB_POOL_SIZE/DB_MAX_OVERFLOW or FLEET_MAX_INSTANCES, raise max_connections, or use PgBouncer",
        )


def _rule_production_database(s: Settings) -> Iterable[ConfigProblem]:
    if s.is_production and (s.database_url is None or s.is_sqlite):
        yield problem("database_url", "production needs PostgreSQL (SQLite is for development only)")


def _rule_debug(s: Settings) -> Iterable[ConfigProblem]:
    if s.is_production and s.debug:
        yield problem("debug", "must be off in production")


def _rule_psycogreen(s: Settings) -> Iterable[ConfigProblem]:
    if s.is_production and s.disable_psycogreen:
        yield problem("disable_psycogreen", "is a diagnostic switch and must be off in production")


def _rule_local_storage(s: Settings) -> Iterable[ConfigProblem]:
    if s.storage_backend == "local" and s.is_production and s.local_storage_dir is None:
        yield problem("local_storage_dir", "production with STORAGE_BACKEND=local needs an explicit directory")


def _rule_swift(s: Settings) -> Iterable[ConfigProblem]:
    if s.storage_backend == "swift":
        needed = ["nhn_storage_auth_url", "nhn_storage_iam_user", "nhn_storage_iam_password", "nhn_storage_container"]
        if s.nhn_storage_auth_version == "2":
            needed.append("nhn_storage_tenant_id")
        for name in needed:
            if not getattr(s, name):
                yield problem(name, "required when STORAGE_BACKEND=swift")


def _rule_cdn(s: Settings) -> Iterable[ConfigProblem]:
    if not s.nhn_cdn_domain:
        return
    if "://" in s.nhn_cdn_domain or "/" in s.nhn_cdn_domain:
        yield problem("nhn_cdn_domain", "must be a bare host name, without scheme or path")
    if s.nhn_cdn_encrypt_key is None:
        yield problem("nhn_cdn_encrypt_key", "required when NHN_CDN_DOMAIN is set")
    else:
        try:
            bytes.fromhex(s.nhn_cdn_encrypt_key.get_secret_value())
        except ValueError:
            yield problem("nhn_cdn_encrypt_key", "must be the hex string shown in the CDN console")
    if s.cdn_token_mode == "api":
        for name in ("nhn_cdn_app_key", "nhn_cdn_secret_key"):
            if not getattr(s, name):
                yield problem(name, "required when NHN_CDN_DOMAIN is set and CDN_TOKEN_MODE=api")


def _rule_log_shipping(s: Settings) -> Iterable[ConfigProblem]:
    if bool(s.nhn_log_appkey) != bool(s.nhn_log_url):
        missing = "nhn_log_url" if s.nhn_log_appkey else "nhn_log_appkey"
        yield problem(missing, "NHN_LOG_APPKEY and NHN_LOG_URL go together")


def _rule_health_timeout(s: Settings) -> Iterable[ConfigProblem]:
    if s.health_check_timeout >= s.lb_health_check_timeout:
        yield problem(
            "health_check_timeout",
            f"must be below the load balancer's probe timeout (LB_HEALTH_CHECK_TIMEOUT={s.lb_health_check_timeout:g}s)",
        )


def _rule_graceful(s: Settings) -> Iterable[ConfigProblem]:
    # The drain delay runs *before* the graceful stop (see lifecycle.py), so the graceful budget only has
    # to cover the longest request that can be in flight when listeners close: the DB statement timeout.
    longest = s.db_statement_timeout_ms / 1000
    if s.graceful_timeout < longest:
        yield problem(
            "graceful_timeout",
            f"must be at least the longest request timeout (DB_STATEMENT_TIMEOUT_MS = {longest:g}s)",
        )


def _rule_client_body(s: Settings) -> Iterable[ConfigProblem]:
    # A request waiting on a silent client when the instance stops then gets its 408 within the graceful
    # stop, instead of being cut off with the worker.
    if s.client_body_timeout > s.graceful_timeout:
        yield problem(
            "client_body_timeout", f"must not exceed the graceful stop (GRACEFUL_TIMEOUT={s.graceful_timeout:g}s)"
        )


def _rule_pending_bytes(s: Settings) -> Iterable[ConfigProblem]:
    if s.max_pending_upload_bytes_per_user < s.max_upload_bytes:
        yield problem(
            "max_pending_upload_bytes_per_user",
            f"must be at least MAX_UPLOAD_BYTES ({s.max_upload_bytes}), or a file of the largest size can "
            "never be presigned",
        )


def _rule_drain(s: Settings) -> Iterable[ConfigProblem]:
    # While draining, the probe answers 503 at once; the LB needs `threshold` failed probes, one per
    # interval, to stop routing, plus one probe timeout of margin for a probe already under way and for
    # the LB to apply its decision. The listeners close after the drain delay: anything the LB still
    # sends then is refused or reset. Development has no LB in front, so a short delay is fine there.
    needed = s.lb_health_check_interval * s.lb_unhealthy_threshold + s.lb_health_check_timeout
    if s.is_production and s.drain_delay_seconds < needed:
        yield problem(
            "drain_delay_seconds",
            f"must be at least LB_HEALTH_CHECK_INTERVAL x LB_UNHEALTHY_THRESHOLD + LB_HEALTH_CHECK_TIMEOUT "
            f"(= {needed:g}s), or the load balancer still sends requests when the listeners close",
        )


def _rule_max_requests(s: Settings) -> Iterable[ConfigProblem]:
    if s.max_requests == 0 and s.max_requests_jitter:
        yield problem("max_requests_jitter", "only applies with MAX_REQUESTS > 0")


def _rule_keepalive(s: Settings) -> Iterable[ConfigProblem]:
    if s.lb_idle_timeout and s.keepalive <= s.lb_idle_timeout:
        yield problem(
            "keepalive",
            f"must be longer than the load balancer's idle timeout (LB_IDLE_TIMEOUT={s.lb_idle_timeout:g}s), "
            "or the LB reuses connections the app has closed (502s)",
        )


def _rule_retries(s: Settings) -> Iterable[ConfigProblem]:
    if s.retry_max_delay < s.retry_base_delay:
        yield problem("retry_max_delay", "must not be below RETRY_BASE_DELAY")


def _rule_service_retries(service: Service) -> Callable[[Settings], Iterable[ConfigProblem]]:
    """The global rule above, for the values that apply to `service` once its overrides are in."""

    def rule(s: Settings) -> Iterable[ConfigProblem]:
        override = s.overrides.get(service)
        if override is None or (override.retry_max_delay is None and override.retry_base_delay is None):
            return  # nothing of its own: the global rule covers it
        values = s.resilience_values(service)
        if values.retry_max_delay >= values.retry_base_delay:
            return
        if override.retry_max_delay is not None:
            base = "retry_base_delay" if override.retry_base_delay is None else f"{service}_retry_base_delay"
            yield problem(
                f"{service}_retry_max_delay", f"must not be below {base.upper()} (= {values.retry_base_delay:g}s)"
            )
        else:
            yield problem(
                f"{service}_retry_base_delay", f"must not be above RETRY_MAX_DELAY (= {values.retry_max_delay:g}s)"
            )

    return rule


def _rule_urls(s: Settings) -> Iterable[ConfigProblem]:
    for name in URL_FIELDS:
        value = getattr(s, name)
        if name in ("database_url", "redis_url"):
            continue  # _rule_database_url, _rule_redis_url
        if value and not _is_http_url(value):
            yield problem(name, "must be an http:// or https:// URL with a host")


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# Each rule names the fields (or overrides, as `storage_retry_max_delay`) it reads, so that it is skipped
# when one of them already failed its own check.
RULES: list[Rule] = [
    (("environment", *CHOSEN_SECRETS), _rule_chosen_secrets),
    (("environment",), _rule_placeholders),
    (("environment", "public_base_url"), _rule_public_base_url),
    (("environment", "password_hash_memory_kib", "password_hash_time_cost"), _rule_password_hash),
    (("database_url",), _rule_database_url),
    (("environment", "database_url"), _rule_production_database),
    (
        (
            "fleet_max_instances",
            "db_max_connections",
            "db_reserved_connections",
            "workers",
            "worker_processes",
            "db_pool_size",
            "db_max_overflow",
        ),
        _rule_connection_budget,
    ),
    (("redis_url",), _rule_redis_url),
    (RATE_LIMIT_FIELDS, _rule_rate_limits),
    (("processing_stale_seconds", "job_timeout"), _rule_jobs),
    (("environment", "debug"), _rule_debug),
    (("environment", "disable_psycogreen"), _rule_psycogreen),
    (("environment", "storage_backend", "local_storage_dir"), _rule_local_storage),
    (("storage_backend", "nhn_storage_auth_version"), _rule_swift),
    (("nhn_cdn_domain", "nhn_cdn_encrypt_key", "cdn_token_mode"), _rule_cdn),
    ((), _rule_log_shipping),
    (("health_check_timeout", "lb_health_check_timeout"), _rule_health_timeout),
    (("graceful_timeout", "db_statement_timeout_ms"), _rule_graceful),
    (("client_body_timeout", "graceful_timeout"), _rule_client_body),
    (("max_pending_upload_bytes_per_user", "max_upload_bytes"), _rule_pending_bytes),
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
    *(
        (
            ("retry_max_delay", "retry_base_delay", f"{service}_retry_max_delay", f"{service}_retry_base_delay"),
            _rule_service_retries(service),
        )
        for service in SERVICES
    ),
    ((), _rule_urls),
]
