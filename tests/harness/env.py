"""The environment of a production instance for tests and benchmarks: the one place that writes it.

    env = production_env(database_url, tmp_path / "storage")                      # local storage
    env = production_env(url, None, swift=swift_settings(...), metrics_dir=work)  # object storage
    env = production_env(url, storage, lifecycle=lifecycle_env(2.5, 6))           # a short drain

Every value is a string, as a process environment holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from photo_api.config import Settings

# A secret production accepts (32 bytes or more, not a well-known default); tests share it to sign tokens.
TEST_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
# Production requires an https PUBLIC_BASE_URL; the share links and local upload URLs of a test instance
# start with it (tests follow them by their path).
PUBLIC_BASE_URL = "https://photos.test"
# The cheapest argon2 cost production accepts (config.MIN_PRODUCTION_HASH_*): registrations stay quick.
PRODUCTION_HASH_FLOOR = {
    "PASSWORD_HASH_TIME_COST": "2",
    "PASSWORD_HASH_MEMORY_KIB": "19456",
    "PASSWORD_HASH_PARALLELISM": "1",
}


def lifecycle_env(
    drain_s: float,
    graceful_s: int | None = None,
    *,
    check_interval_s: float = 0.5,
    unhealthy_threshold: int = 2,
    check_timeout_s: float = 1.0,
    health_check_timeout_s: float = 0.5,
) -> dict[str, str]:
    """Settings for a short drain (and graceful stop), with the load balancer values they must cover.

    Production refuses DRAIN_DELAY_SECONDS below LB_HEALTH_CHECK_INTERVAL x LB_UNHEALTHY_THRESHOLD +
    LB_HEALTH_CHECK_TIMEOUT, HEALTH_CHECK_TIMEOUT not below LB_HEALTH_CHECK_TIMEOUT, and GRACEFUL_TIMEOUT
    below the statement timeout or CLIENT_BODY_TIMEOUT: the values go together, and a combination the
    rules would refuse fails here, naming the rule, instead of as an instance that does not start.
    Without `graceful_s` the graceful stop, the statement timeout and the client body timeout keep their
    defaults.
    """
    needed = check_interval_s * unhealthy_threshold + check_timeout_s
    if drain_s < needed:
        raise ValueError(f"the config rule would refuse a drain of {drain_s:g}s: the load balancer needs {needed:g}s")
    if health_check_timeout_s >= check_timeout_s:
        raise ValueError("the config rule would refuse a health check timeout not below the LB probe timeout")
    env = {
        "DRAIN_DELAY_SECONDS": str(drain_s),
        "LB_HEALTH_CHECK_INTERVAL": str(check_interval_s),
        "LB_UNHEALTHY_THRESHOLD": str(unhealthy_threshold),
        "LB_HEALTH_CHECK_TIMEOUT": str(check_timeout_s),
        "HEALTH_CHECK_TIMEOUT": str(health_check_timeout_s),
    }
    if graceful_s is not None:
        env["GRACEFUL_TIMEOUT"] = str(graceful_s)
        env["DB_STATEMENT_TIMEOUT_MS"] = str(graceful_s * 1000)
        env["CLIENT_BODY_TIMEOUT"] = str(min(graceful_s, Settings.model_fields["client_body_timeout"].default))
    return env


# STORAGE_BACKEND=swift with Keystone settings that point at a closed port: building the app or the backend
# must not touch the network, and nothing that uses this calls Swift.
OFFLINE_SWIFT_ENV = {
    "STORAGE_BACKEND": "swift",
    "NHN_STORAGE_AUTH_URL": "http://127.0.0.1:9/v2.0",
    "NHN_STORAGE_TENANT_ID": "0123456789abcdef0123456789abcdef",
    "NHN_STORAGE_IAM_USER": "photo-api@example.com",
    "NHN_STORAGE_IAM_PASSWORD": "api-password",
    "NHN_STORAGE_CONTAINER": "photos",
}


def swift_settings(
    *, auth_url: str, storage_url: str, user: str, key: str, container: str, temp_url_key: str
) -> dict[str, str]:
    """STORAGE_BACKEND=swift with tempauth (v1) credentials.

    Give `auth_url` and `storage_url` as a fault proxy's addresses to pass it: tempauth answers with
    Swift's own storage URL, so NHN_STORAGE_URL must override it for object calls to pass the proxy too.
    """
    return {
        "STORAGE_BACKEND": "swift",
        "NHN_STORAGE_AUTH_VERSION": "1",
        "NHN_STORAGE_AUTH_URL": auth_url,
        "NHN_STORAGE_URL": storage_url,
        "NHN_STORAGE_IAM_USER": user,
        "NHN_STORAGE_IAM_PASSWORD": key,
        "NHN_STORAGE_CONTAINER": container,
        "NHN_STORAGE_TEMP_URL_KEY": temp_url_key,
    }


def production_env(
    database_url: str,
    storage_dir: Path | str | None,
    *,
    secret: str = TEST_SECRET,
    swift: Mapping[str, str] | None = None,
    lifecycle: Mapping[str, str] | None = None,
    metrics_port: int | None = None,
    metrics_dir: Path | None = None,
    log_level: str | None = None,
    cheap_hashing: bool = False,
    throttling: bool = False,
    overrides: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """ENVIRONMENT=production on `database_url`, storing photos in `storage_dir` or on `swift`.

    `lifecycle` comes from lifecycle_env(), `swift` from swift_settings(). `metrics_port` sets METRICS_PORT
    (give a free_port(): another instance on the machine may hold the default); `metrics_dir` sets
    PROMETHEUS_MULTIPROC_DIR. `cheap_hashing` sets the lowest argon2 cost production accepts. Login and
    registration throttling is off unless `throttling` (suites register many users from one address).
    `overrides` win over everything above; a value of None removes that variable.
    """
    if (storage_dir is None) == (swift is None):
        raise ValueError("give either a local storage_dir or swift settings")
    env = {
        "ENVIRONMENT": "production",
        "DATABASE_URL": database_url,
        "JWT_SECRET_KEY": secret,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
    }
    if storage_dir is not None:
        env["LOCAL_STORAGE_DIR"] = str(storage_dir)
    env.update(swift or {})
    if cheap_hashing:
        env.update(PRODUCTION_HASH_FLOOR)
    if not throttling:
        env["RATE_LIMIT_ENABLED"] = "false"
    if log_level is not None:
        env["LOG_LEVEL"] = log_level
    if metrics_port is not None:
        env["METRICS_PORT"] = str(metrics_port)
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    env.update(lifecycle or {})
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env
