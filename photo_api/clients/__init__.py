"""Clients of external HTTP services (CDN auth tokens, Log & Crash), built from Settings in one place.

Each client receives plain values and a `Resilient` made from its `Policies.from_settings` policy, so
timeouts, retries and breakers are configured in `resilience/policy.py` and composed in `resilience/`,
never inside a client.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Settings
from ..logs import ContextProvider
from ..resilience import Events, Policies, Policy, Resilient
from .cdn import CdnTokens, CdnUnavailableError, InvalidCdnPathError
from .logcrash import LogShipper


def build_cdn_tokens(
    settings: Settings,
    *,
    policy: Policy | None = None,
    path_prefix: str | None = None,
    events: Events | None = None,
) -> CdnTokens | None:
    """The CDN token client, or None when NHN_CDN_DOMAIN is not set (images are then always streamed).

    `policy` defaults to `Policies.from_settings(settings).cdn`. `path_prefix` is the object's directory
    on the CDN; by default ``/{NHN_STORAGE_CONTAINER}``, for an origin that is the storage account root,
    as the replaced service's CDN was set up (docs/nhn-cloud.md, "CDN auth tokens").
    """
    if not settings.nhn_cdn_domain:
        return None
    assert settings.nhn_cdn_encrypt_key is not None, "config rule: a CDN domain needs the encrypt key"
    if path_prefix is None:
        path_prefix = f"/{settings.nhn_storage_container}" if settings.nhn_storage_container else ""
    api = settings.cdn_token_mode == "api"
    return CdnTokens(
        domain=settings.nhn_cdn_domain,
        encrypt_key=settings.nhn_cdn_encrypt_key.get_secret_value(),
        mode=settings.cdn_token_mode,
        app_key=settings.nhn_cdn_app_key,
        secret_key=settings.nhn_cdn_secret_key.get_secret_value() if settings.nhn_cdn_secret_key else None,
        api_url=settings.nhn_cdn_api_url,
        resilient=Resilient(policy or Policies.from_settings(settings).cdn, events=events) if api else None,
        path_prefix=path_prefix,
        cache_size=settings.cdn_token_cache_size,
    )


def build_log_shipper(
    settings: Settings,
    *,
    policy: Policy | None = None,
    context: ContextProvider | None = None,
    events: Events | None = None,
    on_dropped: Callable[[str, int], None] | None = None,
    on_depth: Callable[[int], None] | None = None,
) -> LogShipper | None:
    """The Log & Crash handler (not started), or None when NHN_LOG_URL/NHN_LOG_APPKEY are not set.

    `policy` defaults to `Policies.from_settings(settings).log`. `context` adds the request's fields
    (request id, endpoint) to each record; `on_dropped(reason, n)` and `on_depth(n)` are where metrics
    attach.
    """
    if not (settings.nhn_log_url and settings.nhn_log_appkey):
        return None
    static = {"service": settings.app_name, "node": settings.node_name, "region": settings.region or None}
    return LogShipper(
        url=settings.nhn_log_url,
        appkey=settings.nhn_log_appkey.get_secret_value(),
        project_version=settings.app_version,
        host=settings.instance_id,
        resilient=Resilient(policy or Policies.from_settings(settings).log, events=events),
        queue_size=settings.log_queue_size,
        batch_size=settings.log_batch_size,
        flush_interval=settings.log_flush_interval,
        level=settings.log_level,
        context=context,
        static_fields=static,
        on_dropped=on_dropped,
        on_depth=on_depth,
    )


__all__ = [
    "CdnTokens",
    "CdnUnavailableError",
    "InvalidCdnPathError",
    "LogShipper",
    "build_cdn_tokens",
    "build_log_shipper",
]
