"""What the application factory builds once per process and hands to the routes."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher

from . import metrics
from .clients import CdnTokens, LogShipper, build_cdn_tokens, build_log_shipper
from .config import Settings
from .db import Database
from .logs import ContextProvider
from .resilience import Bulkhead, ConnectGate, LogEvents, Policies
from .security import Passwords, Tokens
from .storage import Storage, build_storage


@dataclass
class Runtime:
    """The process-wide collaborators, built from Settings by `create_app` (the composition root)."""

    settings: Settings
    db: Database
    passwords: Passwords
    tokens: Tokens
    storage: Storage
    cdn: CdnTokens | None = None  # None: no CDN configured, images are streamed
    log_shipper: LogShipper | None = None  # None: Log & Crash shipping off (built here, started by create_app)

    @classmethod
    def build(cls, settings: Settings, *, log_context: ContextProvider | None = None) -> Runtime:
        """Wire the collaborators from plain values; nothing connects yet.

        `log_context` gives the request's fields (request id, method, endpoint) to Log & Crash items,
        as the stdout formatter adds them to every line.
        """
        assert settings.jwt_secret_key is not None, "development_defaults() provides a dev secret"
        secret = settings.jwt_secret_key.get_secret_value()
        policies = Policies.from_settings(settings)
        return cls(
            settings=settings,
            db=Database(settings, ConnectGate()),
            passwords=Passwords(
                PasswordHasher(
                    time_cost=settings.password_hash_time_cost,
                    memory_cost=settings.password_hash_memory_kib,
                    parallelism=settings.password_hash_parallelism,
                )
            ),
            tokens=Tokens(
                secret,
                settings.jwt_algorithm,
                settings.access_token_expire_minutes * 60,
            ),
            storage=_build_storage(settings, secret, policies),
            cdn=build_cdn_tokens(
                settings, policy=policies.cdn, events=metrics.ResilienceMetrics("cdn", inner=LogEvents())
            ),
            log_shipper=build_log_shipper(
                settings,
                policy=policies.log,
                context=log_context,
                events=metrics.ResilienceMetrics("log", inner=LogEvents()),
                on_dropped=lambda _reason, n: metrics.log_dropped(n),
                on_depth=metrics.log_queue_depth,
            ),
        )


def _build_storage(settings: Settings, secret: str, policies: Policies) -> Storage:
    if settings.storage_backend == "local":
        assert settings.local_storage_dir is not None, "development_defaults() provides a directory"
        # A key of its own for upload URLs, derived so that operators manage one secret only.
        signing_key = hmac.new(secret.encode(), b"photo-api local upload url", hashlib.sha256).digest()
        # Created at start, so that an unusable directory shows in /health at once, not at the first upload.
        settings.local_storage_dir.mkdir(parents=True, exist_ok=True)
        return build_storage("local", root=settings.local_storage_dir, signing_key=signing_key)
    if settings.storage_backend == "swift":
        return build_storage("swift", **swift_storage_options(settings, policies))
    return build_storage(settings.storage_backend)


def swift_storage_options(settings: Settings, policies: Policies) -> dict[str, Any]:
    """SwiftStorage's constructor arguments from Settings (presence of the required ones is a config rule)."""
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
        "events": metrics.ResilienceMetrics(policies.storage.service, policies.storage_auth.service, inner=LogEvents()),
    }
