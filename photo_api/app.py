"""The composition root: `create_app(settings)` builds every collaborator from the settings and registers every
route. Read top to bottom, it is the table of contents of a worker process.

The gunicorn master has one small builder of its own (`metrics.MasterRuntime`: metrics exporter, pusher,
drain), built by `gunicorn_conf.py`. Nothing else wires collaborators together: the modules below receive
plain values and collaborators as arguments, and the views reach them through `api.context`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
from typing import Any

from argon2 import PasswordHasher
from flask import Flask
from flask_limiter import Limiter
from werkzeug.middleware.proxy_fix import ProxyFix

from . import api, metrics, migrate
from .api.context import Collaborators, Identity, Limits, install
from .api.uploads import UploadVerifier
from .clients import CdnTokens, LogShipper, build_cdn_tokens, build_log_shipper
from .config import ConfigError, Settings, load_settings, problem
from .db import Database
from .greenlets import NativePool, cpu_count
from .health import DatabaseProbe
from .jobs.events import JobEvents
from .jobs.local import native_offload
from .jobs.queue import JobQueue, LocalQueue, RedisQueue, RetryPolicy
from .jobs.renditions import JobContext, process_photo
from .logs import configure_logging
from .media import JPEG, WEBP
from .resilience import Bulkhead, ConnectGate, LogEvents, Policies
from .security import Passwords, Tokens
from .storage import LocalStorage, Storage, SwiftStorage

log = logging.getLogger(__name__)

# The limiter's strategy: a moving window counts exactly N attempts in any period (a fixed window lets 2N
# through around its boundary), for a few Redis calls per login.
RATE_LIMIT_STRATEGY = "moving-window"

# The local backend's upload URLs are signed with a key derived from the JWT secret, so that operators
# manage one secret only; the label keeps the two uses of the secret apart.
UPLOAD_URL_KEY_LABEL = b"photo-api local upload url"


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app from `settings` (default: the environment; ConfigError lists every problem)."""
    settings = settings if settings is not None else load_settings()
    _require_explicit(settings)
    # Readiness compares the database with the packaged migrations: an install without them must not start.
    migrate.expectation()
    configure_logging(
        settings.log_level,
        static={"service": settings.app_name, "version": settings.app_version, "instance": settings.instance_id},
        context=api.log_context,
    )

    policies = Policies.from_settings(settings)
    db = build_database(settings)
    storage = build_storage(settings, policies)
    shipper = _log_shipper(settings, policies)
    collaborators = Collaborators(
        jobs=build_jobs(settings, db, storage),
        db=db,
        storage=storage,
        cdn=_cdn(settings, policies),
        passwords=Passwords(
            PasswordHasher(
                time_cost=settings.password_hash_time_cost,
                memory_cost=settings.password_hash_memory_kib,
                parallelism=settings.password_hash_parallelism,
            ),
            build_hashing_pool(settings),
        ),
        tokens=Tokens(_secret(settings), settings.jwt_algorithm, settings.access_token_expire_minutes * 60),
        probe=DatabaseProbe(db, settings.health_check_timeout, settings.health_check_cache_seconds),
        limits=Limits(
            max_upload_bytes=settings.max_upload_bytes,
            client_body_timeout=settings.client_body_timeout,
            upload_url_expire_seconds=settings.upload_url_expire_seconds,
            max_pending_uploads_per_user=settings.max_pending_uploads_per_user,
            max_pending_upload_bytes_per_user=settings.max_pending_upload_bytes_per_user,
            image_token_seconds=settings.image_token_expire_seconds,
            share_image_token_seconds=settings.share_image_token_expire_seconds,
            public_base_url=settings.public_base_url.rstrip("/") if settings.public_base_url else None,
            debug_errors=settings.debug and not settings.is_production,
        ),
        identity=Identity(app_name=settings.app_name, version=settings.app_version, instance=settings.instance_id),
        log_shipper=shipper,
    )

    app = Flask("photo_api")
    app.config.update(
        # JSON bodies are small; upload routes raise the limit for their own request.
        MAX_CONTENT_LENGTH=settings.max_json_bytes,
        DEBUG=settings.debug,
    )
    app.url_map.strict_slashes = False  # `/photos` and `/photos/` both answer, with no redirect
    if settings.trusted_proxy_count:
        # X-Forwarded-For/-Proto/-Host count only as appended by our own proxies (the last N values):
        # anyone can send these headers, so trusting more hops than exist would let a client choose them.
        n = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    install(app, collaborators)
    metrics.init_app(app, settings)  # before the API's hooks: it times all of them (nothing when disabled)
    metrics.watch_database(db, settings)
    # The signed PUT route exists only for a backend whose upload URLs point back at this service; with
    # Swift the client PUTs to Swift itself, and the path answers 404 like any unknown one.
    api.init_app(app, docs=settings.enable_docs, direct_uploads=isinstance(storage, UploadVerifier))
    if settings.rate_limit_enabled:
        api.throttle.install(
            app,
            build_limiter(settings),
            api.throttle.Throttles(
                login_per_account=settings.rate_limit_login_per_account,
                login_per_address=settings.rate_limit_login_per_address,
                register_per_address=settings.rate_limit_register_per_address,
            ),
            on_limited=metrics.rate_limited,
        )

    if shipper is not None:
        # Every record of the process also goes to Log & Crash, from a bounded queue drained in the
        # background (a greenlet under gevent): logging never waits on the network.
        shipper.install(logging.getLogger())
    return app


def _require_explicit(settings: Settings) -> None:
    # The embedded development default (./var) is set up by `photo-api serve`, never by the factory.
    missing = [
        name
        for name, value in (
            ("DATABASE_URL", settings.database_url),
            ("JWT_SECRET_KEY", settings.jwt_secret_key),
            ("LOCAL_STORAGE_DIR", settings.local_storage_dir if settings.storage_backend == "local" else "-"),
        )
        if value is None
    ]
    if missing:
        hint = "not set; `photo-api serve` sets up the embedded default under ./var/, or set it"
        raise ConfigError([problem(name, hint) for name in missing])


def _secret(settings: Settings) -> str:
    assert settings.jwt_secret_key is not None, "checked by _require_explicit"
    return settings.jwt_secret_key.get_secret_value()


def build_hashing_pool(settings: Settings) -> NativePool:
    """Password hashing's own threads: PASSWORD_HASH_WORKERS (default: the CPUs, at least 2) and its queue."""
    return NativePool(
        settings.password_hash_workers or max(2, cpu_count()),
        queue_size=settings.password_hash_queue_size,
        queue_timeout=settings.password_hash_queue_timeout,
        name="Password hashing",
        nice=settings.password_hash_nice,
        refusal_delay=settings.password_hash_refusal_delay,
        events=metrics.PasswordHashMetrics(),
    )


def build_limiter(settings: Settings) -> Limiter:
    """The login/registration limiter: on REDIS_URL's Redis (shared by the fleet), else in this worker's memory.

    Fails open: when Redis fails, Flask-Limiter counts in memory (`in_memory_fallback_enabled`) and checks
    Redis again with a backoff; `swallow_errors` lets any other failure of the limiter through too. Each
    failed Redis call is logged and counted; a short socket timeout and no retries bound what a login
    waits for a Redis that does not answer.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    storage_uri, options = "memory://", {}
    if settings.redis_url is not None:
        storage_uri = api.throttle.STORE_SCHEME_PREFIX + settings.redis_url
        timeout = settings.rate_limit_redis_timeout
        options = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "on_error": _rate_limit_store_failed,
        }
    return Limiter(
        key_func=api.throttle.client_address,
        storage_uri=storage_uri,
        storage_options=options,  # type: ignore[arg-type]  # passed through to the storage and redis-py
        strategy=RATE_LIMIT_STRATEGY,
        key_prefix=api.throttle.KEY_PREFIX,
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        headers_enabled=False,  # X-RateLimit-* on every answer would cost a Redis call each
    )


def _rate_limit_store_failed(error: str) -> None:
    log.warning("rate limit store failed; counting in this worker's memory", extra={"error": error})
    metrics.rate_limit_store_error()


def job_context(
    settings: Settings, db: Database, storage: Storage, *, events: JobEvents | None = None, offload: bool = False
) -> JobContext:
    """What a job needs; `offload` moves the CPU-heavy step to a native thread (inside a gevent app process)."""
    context = JobContext(
        db=db,
        storage=storage,
        encoding=JPEG if settings.rendition_format == "jpeg" else WEBP,
        max_pixels=settings.media_max_pixels,
        max_attempts=settings.job_max_attempts,
        events=events or metrics.JobMetrics(),
    )
    return dataclasses.replace(context, offload=native_offload()) if offload else context


def job_retry_policy(settings: Settings) -> RetryPolicy:
    """How the Redis queue retries a job: JOB_MAX_ATTEMPTS, JOB_RETRY_BASE_DELAY, JOB_TIMEOUT."""
    return RetryPolicy(
        max_attempts=settings.job_max_attempts,
        base_delay_s=settings.job_retry_base_delay,
        timeout_s=settings.job_timeout,
    )


def build_jobs(settings: Settings, db: Database, storage: Storage, *, in_app: bool = True) -> JobQueue:
    """Where photos go for their renditions: the Redis queue (REDIS_URL), else a runner in this process.

    `in_app`: the runner lives in an app process, possibly under gevent (its CPU work is then offloaded
    to a native thread); the reaper's runner is a plain command-line process.
    """
    events = metrics.JobMetrics()
    if settings.redis_url is not None:
        return RedisQueue(settings.redis_url, job_retry_policy(settings), timeout=settings.redis_timeout, events=events)
    context = job_context(settings, db, storage, events=events, offload=in_app)
    return LocalQueue(lambda photo_id: process_photo(context, photo_id), events=events)


def build_database(settings: Settings) -> Database:
    """The engine and sessions, with the connect gate that fails fast while the database is unreachable."""
    return Database(settings, ConnectGate())


def build_storage(settings: Settings, policies: Policies | None = None) -> Storage:
    """The object storage backend STORAGE_BACKEND names (also for `photo-api reap-uploads`)."""
    policies = policies if policies is not None else Policies.from_settings(settings)
    if settings.storage_backend == "local":
        assert settings.local_storage_dir is not None, "checked by _require_explicit"
        signing_key = hmac.new(_secret(settings).encode(), UPLOAD_URL_KEY_LABEL, hashlib.sha256).digest()
        # Created at start, so that an unusable directory shows in /health at once, not at the first upload.
        settings.local_storage_dir.mkdir(parents=True, exist_ok=True)
        return LocalStorage(settings.local_storage_dir, signing_key=signing_key)
    return SwiftStorage(**swift_storage_options(settings, policies))


def swift_storage_options(settings: Settings, policies: Policies) -> dict[str, Any]:
    """SwiftStorage's constructor arguments from the settings (presence of the required ones is a config rule)."""
    assert settings.nhn_storage_auth_url and settings.nhn_storage_iam_user, "checked by config.rules._rule_swift"
    assert settings.nhn_storage_iam_password and settings.nhn_storage_container, "checked by config.rules._rule_swift"
    temp_url_key = settings.nhn_storage_temp_url_key
    return {
        "auth_url": settings.nhn_storage_auth_url,
        "auth_version": settings.nhn_storage_auth_version,
        "tenant_id": settings.nhn_storage_tenant_id,
        "username": settings.nhn_storage_iam_user,
        "password": settings.nhn_storage_iam_password.get_secret_value(),
        "storage_url": settings.nhn_storage_url,
        "region": settings.region,
        "container": settings.nhn_storage_container,
        "temp_url_key": temp_url_key.get_secret_value() if temp_url_key else None,
        "policy": policies.storage,
        "auth_policy": policies.storage_auth,
        "upload_timeout": settings.storage_upload_timeout,
        "check_timeout": settings.health_check_timeout,
        "bulkhead": Bulkhead(settings.storage_max_concurrency, settings.storage_queue_timeout, name="storage"),
        # Both policies report to one adapter; each service's breaker and retry series start at 0 at boot.
        "events": _events(policies.storage.service, policies.storage_auth.service),
    }


def _cdn(settings: Settings, policies: Policies) -> CdnTokens | None:
    return build_cdn_tokens(settings, policy=policies.cdn, events=_events(policies.cdn.service))


def _log_shipper(settings: Settings, policies: Policies) -> LogShipper | None:
    return build_log_shipper(
        settings,
        policy=policies.log,
        # The request's fields (request id, method, endpoint) reach Log & Crash items as they reach stdout.
        context=api.log_context,
        events=_events(policies.log.service),
        on_dropped=lambda _reason, n: metrics.log_dropped(n),
        on_depth=metrics.log_queue_depth,
    )


def _events(*services: str) -> metrics.ResilienceMetrics:
    """Where a dependency's resilience events go: log lines and metrics (which record nothing when disabled)."""
    return metrics.ResilienceMetrics(*services, inner=LogEvents())
