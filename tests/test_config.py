"""Settings: every bad environment is refused at boot, naming each variable at fault, all at once."""

from __future__ import annotations

import base64
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import pytest

from photo_api import create_app
from photo_api.config import (
    OVERRIDABLE,
    SERVICES,
    ConfigError,
    Service,
    Settings,
    bootstrap_development,
    connection_budget,
    development_defaults,
    load_settings,
)
from photo_api.config.settings import POOL_SIZE_DEFAULT

STRONG_SECRET = "k3J9vQ2mX7pL5tR8wZ1nB4cF6hD0gY2sA9eU3iO7"  # 40 bytes, not a known default
TEMP_URL_KEY = "Tq8-temp-url-key-4hWm2Zr9Lx0Vb7Nc3Ks6Pd1Yf5Gj"  # production accepts it; shown nowhere
DB_PASSWORD = "db-pass-Wq8rT2"
PRODUCTION = {
    "ENVIRONMENT": "production",
    "JWT_SECRET_KEY": STRONG_SECRET,
    "DATABASE_URL": f"postgresql://photo:{DB_PASSWORD}@db.internal:5432/photos",
    "LOCAL_STORAGE_DIR": "/srv/photo-api/storage",
    "PUBLIC_BASE_URL": "https://photos.example.com",
}
SWIFT = {
    "STORAGE_BACKEND": "swift",
    "NHN_STORAGE_AUTH_URL": "https://api-identity.infrastructure.cloud.toast.com/v2.0",
    "NHN_STORAGE_TENANT_ID": "tenant-123",
    "NHN_STORAGE_IAM_USER": "user@example.com",
    "NHN_STORAGE_IAM_PASSWORD": "swift-pass-Zx81",
    "NHN_STORAGE_CONTAINER": "photos",
}
CDN = {
    "NHN_CDN_DOMAIN": "abcd.cdn.nhncloudservice.com",
    "NHN_CDN_APP_KEY": "cdn-app-key",
    "NHN_CDN_SECRET_KEY": "cdn-secret-Qp42",
    "NHN_CDN_ENCRYPT_KEY": "00112233445566778899aabbccddeeff",
}


def without(env: dict[str, str], *names: str) -> dict[str, str]:
    """A copy of `env` lacking `names`."""
    return {k: v for k, v in env.items() if k not in names}


def config_error(environ: dict[str, str], **overrides: Any) -> ConfigError:
    """Load settings that must be refused and return the ConfigError."""
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ, **overrides)
    return info.value


def messages_for(error: ConfigError, setting: str) -> str:
    """Every message reported for `setting`, lower-cased and joined."""
    return " | ".join(p.message for p in error.problems if p.setting == setting).lower()


BAD_ENVIRONMENTS = [
    # wrong types and ranges
    pytest.param({"DB_POOL_SIZE": "abc"}, "DB_POOL_SIZE", "integer", id="pool-size-not-int"),
    pytest.param({"MAX_UPLOAD_BYTES": "-1"}, "MAX_UPLOAD_BYTES", "greater than", id="upload-limit-negative"),
    pytest.param({"ENABLE_DOCS": "maybe"}, "ENABLE_DOCS", "boolean", id="docs-not-bool"),
    pytest.param({"HEALTH_CHECK_TIMEOUT": "0"}, "HEALTH_CHECK_TIMEOUT", "greater than", id="health-timeout-zero"),
    # unknown enum values: the message lists the allowed ones
    pytest.param({"ENVIRONMENT": "staging"}, "ENVIRONMENT", "production", id="environment-unknown"),
    pytest.param({"STORAGE_BACKEND": "s3"}, "STORAGE_BACKEND", "swift", id="storage-unknown"),
    pytest.param({"CDN_TOKEN_MODE": "x"}, "CDN_TOKEN_MODE", "local", id="cdn-mode-unknown"),
    pytest.param({"JWT_ALGORITHM": "none"}, "JWT_ALGORITHM", "hs256", id="jwt-alg-none"),
    pytest.param({"JWT_ALGORITHM": "RS256"}, "JWT_ALGORITHM", "hs256", id="jwt-alg-asymmetric"),
    # production rules
    pytest.param(without(PRODUCTION, "JWT_SECRET_KEY"), "JWT_SECRET_KEY", "required", id="prod-no-secret"),
    pytest.param({**PRODUCTION, "JWT_SECRET_KEY": ""}, "JWT_SECRET_KEY", "required", id="prod-empty-secret"),
    pytest.param({**PRODUCTION, "JWT_SECRET_KEY": "changeme"}, "JWT_SECRET_KEY", "default", id="prod-changeme"),
    pytest.param({**PRODUCTION, "JWT_SECRET_KEY": " ChangeMe "}, "JWT_SECRET_KEY", "default", id="prod-changeme-case"),
    pytest.param({**PRODUCTION, "JWT_SECRET_KEY": "0123456789abcdef"}, "JWT_SECRET_KEY", "32", id="prod-16-byte"),
    # placeholders and secrets that are long but guessable
    pytest.param({**PRODUCTION, "JWT_SECRET_KEY": "x" * 40}, "JWT_SECRET_KEY", "predictable", id="prod-40-same-chars"),
    pytest.param(
        {**PRODUCTION, "JWT_SECRET_KEY": "changeme" * 4}, "JWT_SECRET_KEY", "placeholder", id="prod-changeme-x4"
    ),
    pytest.param(
        {**PRODUCTION, "JWT_SECRET_KEY": "Ab3$" * 10}, "JWT_SECRET_KEY", "predictable", id="prod-repeated-pattern"
    ),
    pytest.param(
        {**PRODUCTION, "JWT_SECRET_KEY": "0123456789abcdef" * 3}, "JWT_SECRET_KEY", "predictable", id="prod-hex-run-x3"
    ),
    pytest.param(
        {**PRODUCTION, "JWT_SECRET_KEY": "your-secret-key-here"}, "JWT_SECRET_KEY", "default", id="prod-tutorial"
    ),
    pytest.param(
        {**PRODUCTION, "JWT_SECRET_KEY": "Please-Change_Me-before-going-live-0123456789"},
        "JWT_SECRET_KEY",
        "placeholder",
        id="prod-changeme-inside",
    ),
    pytest.param(
        {**PRODUCTION, **SWIFT, "NHN_STORAGE_TEMP_URL_KEY": "short-key-Mn55"},
        "NHN_STORAGE_TEMP_URL_KEY",
        "32",
        id="prod-short-temp-url-key",
    ),
    pytest.param(
        {**PRODUCTION, **SWIFT, "NHN_STORAGE_TEMP_URL_KEY": "k" * 64},
        "NHN_STORAGE_TEMP_URL_KEY",
        "predictable",
        id="prod-repeated-temp-url-key",
    ),
    pytest.param(
        {**PRODUCTION, **SWIFT, "NHN_STORAGE_IAM_PASSWORD": "changeme"},
        "NHN_STORAGE_IAM_PASSWORD",
        "placeholder",
        id="prod-iam-password-placeholder",
    ),
    pytest.param(
        {**PRODUCTION, **CDN, "NHN_CDN_SECRET_KEY": "your-secret-key"},
        "NHN_CDN_SECRET_KEY",
        "placeholder",
        id="prod-cdn-secret-placeholder",
    ),
    pytest.param(
        {**PRODUCTION, "NHN_LOG_APPKEY": "CHANGE-ME-LOG-APPKEY", "NHN_LOG_URL": "https://logs.example.com/v2/log"},
        "NHN_LOG_APPKEY",
        "placeholder",
        id="prod-log-appkey-placeholder",
    ),
    pytest.param(
        {**PRODUCTION, "DATABASE_URL": "postgresql://photo:password@db.internal:5432/photos"},
        "DATABASE_URL",
        "placeholder",
        id="prod-db-password-placeholder",
    ),
    pytest.param(
        {**PRODUCTION, "NHN_STORAGE_IAM_USER": "CHANGE-ME-IAM-USER", **without(SWIFT, "NHN_STORAGE_IAM_USER")},
        "NHN_STORAGE_IAM_USER",
        "placeholder",
        id="prod-any-setting-placeholder",
    ),
    pytest.param(
        {**PRODUCTION, "DATABASE_URL": "sqlite:////srv/photo.db"}, "DATABASE_URL", "postgresql", id="prod-sqlite"
    ),
    pytest.param(without(PRODUCTION, "DATABASE_URL"), "DATABASE_URL", "postgresql", id="prod-no-database"),
    pytest.param({**PRODUCTION, "DEBUG": "true"}, "DEBUG", "production", id="prod-debug"),
    pytest.param(
        without(PRODUCTION, "LOCAL_STORAGE_DIR"), "LOCAL_STORAGE_DIR", "directory", id="prod-local-storage-no-dir"
    ),
    # swift needs its credentials
    pytest.param(without(SWIFT, "NHN_STORAGE_TENANT_ID"), "NHN_STORAGE_TENANT_ID", "required", id="swift-no-tenant"),
    pytest.param(without(SWIFT, "NHN_STORAGE_IAM_USER"), "NHN_STORAGE_IAM_USER", "required", id="swift-no-user"),
    pytest.param(
        without(SWIFT, "NHN_STORAGE_IAM_PASSWORD"), "NHN_STORAGE_IAM_PASSWORD", "required", id="swift-no-password"
    ),
    pytest.param(without(SWIFT, "NHN_STORAGE_CONTAINER"), "NHN_STORAGE_CONTAINER", "required", id="swift-no-container"),
    pytest.param(without(SWIFT, "NHN_STORAGE_AUTH_URL"), "NHN_STORAGE_AUTH_URL", "required", id="swift-no-auth-url"),
    # CDN
    pytest.param(
        {**CDN, "NHN_CDN_DOMAIN": "https://abcd.cdn.nhncloudservice.com"}, "NHN_CDN_DOMAIN", "scheme", id="cdn-scheme"
    ),
    pytest.param({"NHN_CDN_DOMAIN": "cdn.example.com"}, "NHN_CDN_APP_KEY", "required", id="cdn-no-app-key"),
    pytest.param({"NHN_CDN_DOMAIN": "cdn.example.com"}, "NHN_CDN_SECRET_KEY", "required", id="cdn-no-secret-key"),
    pytest.param({"NHN_CDN_DOMAIN": "cdn.example.com"}, "NHN_CDN_ENCRYPT_KEY", "required", id="cdn-no-encrypt-key"),
    pytest.param(
        {**CDN, "CDN_TOKEN_MODE": "local", "NHN_CDN_ENCRYPT_KEY": ""},
        "NHN_CDN_ENCRYPT_KEY",
        "required",
        id="cdn-local-mode-no-encrypt-key",
    ),
    pytest.param({**CDN, "NHN_CDN_ENCRYPT_KEY": "not-hex!"}, "NHN_CDN_ENCRYPT_KEY", "hex", id="cdn-key-not-hex"),
    # timeouts that do not fit the load balancer or each other
    pytest.param(
        {"HEALTH_CHECK_TIMEOUT": "5", "LB_HEALTH_CHECK_TIMEOUT": "5"},
        "HEALTH_CHECK_TIMEOUT",
        "lb_health_check_timeout",
        id="health-timeout-equals-lb",
    ),
    pytest.param(
        {"HEALTH_CHECK_TIMEOUT": "3", "LB_HEALTH_CHECK_TIMEOUT": "2"},
        "HEALTH_CHECK_TIMEOUT",
        "lb_health_check_timeout",
        id="health-timeout-above-lb",
    ),
    pytest.param(
        {"GRACEFUL_TIMEOUT": "10", "DB_STATEMENT_TIMEOUT_MS": "30000"},
        "GRACEFUL_TIMEOUT",
        "db_statement_timeout_ms",
        id="graceful-below-statement-timeout",
    ),
    pytest.param(
        {"CLIENT_BODY_TIMEOUT": "20", "GRACEFUL_TIMEOUT": "10", "DB_STATEMENT_TIMEOUT_MS": "10000"},
        "CLIENT_BODY_TIMEOUT",
        "graceful_timeout",
        id="client-body-timeout-beyond-graceful",
    ),
    pytest.param(
        {"MAX_UPLOAD_BYTES": "1000000", "MAX_PENDING_UPLOAD_BYTES_PER_USER": "999999"},
        "MAX_PENDING_UPLOAD_BYTES_PER_USER",
        "max_upload_bytes",
        id="pending-bytes-below-one-upload",
    ),
    pytest.param(
        {"MAX_PENDING_UPLOADS_PER_USER": "0"}, "MAX_PENDING_UPLOADS_PER_USER", "greater than", id="pending-uploads-0"
    ),
    pytest.param({"CLIENT_BODY_TIMEOUT": "0"}, "CLIENT_BODY_TIMEOUT", "greater than 0", id="client-body-timeout-0"),
    # Object storage (Swift's client_timeout, 60 s) would drop a PUT that waits that long on a client.
    pytest.param({"CLIENT_BODY_TIMEOUT": "60"}, "CLIENT_BODY_TIMEOUT", "55", id="client-body-timeout-60"),
    pytest.param({"KEEPALIVE": "60", "LB_IDLE_TIMEOUT": "60"}, "KEEPALIVE", "lb_idle_timeout", id="keepalive-eq-lb"),
    pytest.param({"KEEPALIVE": "30", "LB_IDLE_TIMEOUT": "60"}, "KEEPALIVE", "lb_idle_timeout", id="keepalive-below-lb"),
    pytest.param(without(PRODUCTION, "PUBLIC_BASE_URL"), "PUBLIC_BASE_URL", "required", id="prod-no-public-base-url"),
    pytest.param(
        {**PRODUCTION, "PUBLIC_BASE_URL": "http://photos.example.com"}, "PUBLIC_BASE_URL", "https", id="prod-http-base"
    ),
    pytest.param(
        {**PRODUCTION, "PUBLIC_BASE_URL": "https://photos.example.com/?a=1"},
        "PUBLIC_BASE_URL",
        "query",
        id="base-query",
    ),
    # URLs
    pytest.param({"PUBLIC_BASE_URL": "ftp://photos.example.com"}, "PUBLIC_BASE_URL", "http", id="url-scheme"),
    pytest.param({"PUBLIC_BASE_URL": "photos.example.com"}, "PUBLIC_BASE_URL", "http", id="url-no-scheme"),
    pytest.param({"NHN_LOG_URL": "https://", "NHN_LOG_APPKEY": "k"}, "NHN_LOG_URL", "url", id="url-no-host"),
    pytest.param({"PROMETHEUS_PUSHGATEWAY_URL": "http://"}, "PROMETHEUS_PUSHGATEWAY_URL", "url", id="url-no-host-2"),
    pytest.param({"DATABASE_URL": "mysql://db/photos"}, "DATABASE_URL", "postgresql", id="db-url-mysql"),
    pytest.param({"DATABASE_URL": "postgresql://u@db:notaport/x"}, "DATABASE_URL", "url", id="db-url-bad-port"),
    pytest.param({"DATABASE_URL": "postgresql"}, "DATABASE_URL", "url", id="db-url-not-a-url"),
    # the job queue (the media pipeline)
    pytest.param({"REDIS_URL": "http://cache:6379"}, "REDIS_URL", "redis://", id="redis-url-scheme"),
    pytest.param({"REDIS_URL": "redis://"}, "REDIS_URL", "host", id="redis-url-no-host"),
    pytest.param({"REDIS_URL": "unix://"}, "REDIS_URL", "path", id="redis-url-unix-no-path"),
    pytest.param({"REDIS_URL": "redis://cache:port/0"}, "REDIS_URL", "valid", id="redis-url-bad-port"),
    pytest.param(
        {"JOB_TIMEOUT": "600", "PROCESSING_STALE_SECONDS": "600"},
        "PROCESSING_STALE_SECONDS",
        "job_timeout",
        id="stale-not-above-job-timeout",
    ),
    pytest.param({"MEDIA_MAX_PIXELS": "200000000"}, "MEDIA_MAX_PIXELS", "178000000", id="pixels-above-pillow"),
    # login and registration throttling, password hashing pool
    pytest.param({"RATE_LIMIT_LOGIN_PER_ACCOUNT": "ten"}, "RATE_LIMIT_LOGIN_PER_ACCOUNT", "per minute", id="rl-word"),
    pytest.param(
        {"RATE_LIMIT_LOGIN_PER_ADDRESS": "5 per fortnight"}, "RATE_LIMIT_LOGIN_PER_ADDRESS", "rate limits", id="rl-unit"
    ),
    pytest.param(
        {"RATE_LIMIT_REGISTER_PER_ADDRESS": "0 per hour"}, "RATE_LIMIT_REGISTER_PER_ADDRESS", "at least 1", id="rl-zero"
    ),
    pytest.param({"RATE_LIMIT_REGISTER_PER_ADDRESS": ";"}, "RATE_LIMIT_REGISTER_PER_ADDRESS", "limits", id="rl-semi"),
    pytest.param({"RATE_LIMIT_REDIS_TIMEOUT": "0"}, "RATE_LIMIT_REDIS_TIMEOUT", "greater than 0", id="rl-timeout-0"),
    pytest.param({"PASSWORD_HASH_WORKERS": "0"}, "PASSWORD_HASH_WORKERS", "greater than or equal to 1", id="hash-0"),
    pytest.param({"PASSWORD_HASH_QUEUE_SIZE": "-1"}, "PASSWORD_HASH_QUEUE_SIZE", "greater than", id="hash-queue"),
    pytest.param({"PASSWORD_HASH_NICE": "20"}, "PASSWORD_HASH_NICE", "less than or equal to 19", id="hash-nice"),
    pytest.param(
        {"PASSWORD_HASH_QUEUE_TIMEOUT": "120"}, "PASSWORD_HASH_QUEUE_TIMEOUT", "less than", id="hash-queue-timeout"
    ),
    pytest.param({"RENDITION_FORMAT": "avif"}, "RENDITION_FORMAT", "webp", id="rendition-format"),
    # the connection budget at the default pools: 10 x (2 x (20 + 5) + 2 + 1) + 1 = 531 against 100 - 3 - 3
    pytest.param(
        {"FLEET_MAX_INSTANCES": "10", "WORKERS": "2", "DB_MAX_CONNECTIONS": "100"},
        "DB_MAX_CONNECTIONS",
        "= 531; db_max_connections 100 - db_reserved_connections 3 - 3 superuser_reserved_connections = 94",
        id="fleet-beyond-the-connection-budget",
    ),
    pytest.param(
        {"FLEET_MAX_INSTANCES": "10", "DB_MAX_CONNECTIONS": "1000"}, "WORKERS", "must be set", id="budget-needs-workers"
    ),
    pytest.param({"FLEET_MAX_INSTANCES": "0"}, "FLEET_MAX_INSTANCES", "greater than", id="fleet-zero"),
]


@pytest.mark.parametrize(("environ", "setting", "fragment"), BAD_ENVIRONMENTS)
def test_bad_environment_names_the_setting(environ: dict[str, str], setting: str, fragment: str) -> None:
    error = config_error(environ)
    assert setting in error.settings_named(), error
    assert fragment in messages_for(error, setting), error
    assert setting in str(error)  # what `check-config` and the boot failure print


def test_the_connection_budget_counts_every_pool_and_is_checked_only_when_configured() -> None:
    fleet = {"FLEET_MAX_INSTANCES": "10", "WORKERS": "2", "DB_POOL_SIZE": "10", "DB_MAX_OVERFLOW": "5"}
    # 10 x (2 x 15 + 2 job processes + 1 reaper) + 1 migration = 331 fits 337 - 3 - 3 exactly...
    settings = load_settings(environ={**fleet, "DB_MAX_CONNECTIONS": "337"})
    assert connection_budget(settings) is not None and connection_budget(settings)[:2] == (331, 331)
    # ...and one connection fewer does not; nor does one more instance.
    assert "= 331;" in messages_for(config_error({**fleet, "DB_MAX_CONNECTIONS": "336"}), "DB_MAX_CONNECTIONS")
    assert "= 364;" in messages_for(
        config_error({**fleet, "DB_MAX_CONNECTIONS": "337", "FLEET_MAX_INSTANCES": "11"}), "DB_MAX_CONNECTIONS"
    )
    # Behind PgBouncer DB_MAX_CONNECTIONS is its max_client_conn: no PostgreSQL superuser slots to keep.
    assert load_settings(environ={**fleet, "DB_MAX_CONNECTIONS": "334", "DB_PGBOUNCER": "true"})
    # Without the fleet's size or the server's limit there is nothing to check.
    assert connection_budget(load_settings(environ={"WORKERS": "64", "DB_POOL_SIZE": "200"})) is None
    assert load_settings(environ={"WORKERS": "64", "DB_POOL_SIZE": "200", "DB_MAX_CONNECTIONS": "10"})


def test_every_problem_is_reported_at_once() -> None:
    environ = {
        "ENVIRONMENT": "production",
        "DB_POOL_SIZE": "abc",  # type error
        "ENABLE_DOCS": "maybe",  # type error
        "JWT_SECRET_KEY": "changeme",  # production rule
        "DEBUG": "true",  # production rule
        "KEEPALIVE": "10",  # cross-field rule
        "NHN_CDN_DOMAIN": "https://cdn.example.com",  # CDN rules
    }
    error = config_error(environ)
    assert {
        "DB_POOL_SIZE",
        "ENABLE_DOCS",
        "JWT_SECRET_KEY",
        "DEBUG",
        "DATABASE_URL",
        "LOCAL_STORAGE_DIR",
        "KEEPALIVE",
        "NHN_CDN_DOMAIN",
        "NHN_CDN_APP_KEY",
    } <= error.settings_named()


def test_a_bad_enum_does_not_hide_the_problems_of_other_settings() -> None:
    # A typo in ENVIRONMENT must not silence the checks that do not depend on it.
    environ = {
        "ENVIRONMENT": "prod",
        "DB_POOL_SIZE": "abc",
        "DATABASE_URL": "mysql://db/photos",
        **without(SWIFT, "NHN_STORAGE_CONTAINER"),
    }
    error = config_error(environ)
    assert {"ENVIRONMENT", "DB_POOL_SIZE", "DATABASE_URL", "NHN_STORAGE_CONTAINER"} <= error.settings_named()


def test_only_the_broken_settings_are_named() -> None:
    error = config_error({"DB_POOL_SIZE": "abc"})
    assert error.settings_named() == {"DB_POOL_SIZE"}


@pytest.mark.parametrize("value", ["PRODUCTION", "Production", " production "])
def test_environment_is_case_insensitive(value: str) -> None:
    settings = load_settings(environ={**PRODUCTION, "ENVIRONMENT": value})
    assert settings.environment == "production"
    assert settings.is_production
    # ...and the production rules apply to it.
    error = config_error({**without(PRODUCTION, "JWT_SECRET_KEY"), "ENVIRONMENT": value})
    assert "JWT_SECRET_KEY" in error.settings_named()


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({**PRODUCTION, "JWT_SECRET_KEY": "changeme"}, id="placeholder"),
        pytest.param({**PRODUCTION, "JWT_SECRET_KEY": "0123456789abcdef"}, id="short"),
        pytest.param({**PRODUCTION, "JWT_SECRET_KEY": "x" * 40}, id="predictable"),
        pytest.param(without(PRODUCTION, "JWT_SECRET_KEY"), id="missing"),
        pytest.param({**PRODUCTION, **SWIFT, "NHN_STORAGE_TEMP_URL_KEY": "k" * 64}, id="temp-url-key"),
    ],
)
def test_a_refused_secret_says_how_to_generate_one(environ: dict[str, str]) -> None:
    error = config_error(environ)
    (named,) = {"JWT_SECRET_KEY", "NHN_STORAGE_TEMP_URL_KEY"} & error.settings_named()
    assert "python -c 'import secrets; print(secrets.token_urlsafe(48))'" in messages_for(error, named), error


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(secrets.token_urlsafe(48), id="token_urlsafe-48"),
        pytest.param(secrets.token_hex(32), id="hex-32-bytes"),
        pytest.param(base64.b64encode(secrets.token_bytes(48)).decode(), id="openssl-rand-base64-48"),
        pytest.param(STRONG_SECRET, id="40-random-characters"),
    ],
)
def test_random_secrets_are_accepted_in_production(secret: str) -> None:
    settings = load_settings(
        environ={**PRODUCTION, **SWIFT, "JWT_SECRET_KEY": secret, "NHN_STORAGE_TEMP_URL_KEY": secret}
    )
    assert settings.jwt_secret_key is not None and settings.jwt_secret_key.get_secret_value() == secret


def test_development_takes_any_secret() -> None:
    # The checks protect production; a laptop's `changeme` is its own business.
    settings = load_settings(environ={"JWT_SECRET_KEY": "changeme", **SWIFT, "NHN_STORAGE_TEMP_URL_KEY": "k"})
    assert settings.jwt_secret_key is not None and settings.jwt_secret_key.get_secret_value() == "changeme"


def test_development_takes_an_http_public_base_url() -> None:
    assert (
        load_settings(environ={"PUBLIC_BASE_URL": "http://127.0.0.1:8000"}).public_base_url == "http://127.0.0.1:8000"
    )
    assert load_settings(environ={}).public_base_url is None  # the request's own scheme and host, in development


@pytest.mark.parametrize("url", ["redis://10.0.0.5:6379/0", "rediss://:pw@cache.internal/2", "unix:///run/redis.sock"])
def test_redis_urls_that_load(url: str) -> None:
    assert load_settings(environ={"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("value", ["10 per minute", "10/minute;50/hour", "3 per 10 seconds", "100 per day"])
def test_rate_limits_that_load(value: str) -> None:
    settings = load_settings(environ={"RATE_LIMIT_LOGIN_PER_ACCOUNT": value})
    assert settings.rate_limit_login_per_account == value


def test_default_rate_limits_are_valid_and_on() -> None:
    settings = load_settings(environ={})
    assert settings.rate_limit_enabled
    assert settings.password_hash_workers is None  # the CPUs, decided by the composition root


def test_valid_production_environment_loads() -> None:
    settings = load_settings(environ={**PRODUCTION, **SWIFT, **CDN})
    assert settings.is_production
    assert settings.storage_backend == "swift"
    assert not settings.is_sqlite
    assert settings.jwt_secret_key is not None
    assert settings.jwt_secret_key.get_secret_value() == STRONG_SECRET
    # Production settings are taken as they are: no embedded defaults are slipped in.
    assert development_defaults(settings) is settings


def test_swift_v1_auth_needs_no_tenant() -> None:
    settings = load_settings(environ={**without(SWIFT, "NHN_STORAGE_TENANT_ID"), "NHN_STORAGE_AUTH_VERSION": "1"})
    assert settings.nhn_storage_auth_version == "1"
    assert settings.nhn_storage_tenant_id is None


def test_cdn_local_token_mode_needs_no_api_keys() -> None:
    settings = load_settings(
        environ={**without(CDN, "NHN_CDN_APP_KEY", "NHN_CDN_SECRET_KEY"), "CDN_TOKEN_MODE": "local"}
    )
    assert settings.cdn_token_mode == "local"


def test_empty_values_mean_unset() -> None:
    # `FOO=` lines in an env file are common; they must not turn into type errors.
    settings = load_settings(environ={"DB_POOL_SIZE": "", "ENABLE_DOCS": " ", "JWT_SECRET_KEY": ""})
    assert settings.db_pool_size == POOL_SIZE_DEFAULT
    assert settings.enable_docs is True
    assert settings.jwt_secret_key is None


def test_env_file_is_read_and_the_environment_overrides_it(tmp_path: Path) -> None:
    env_file = tmp_path / "photo-api.env"
    env_file.write_text(
        "# comments and blank lines are fine\n\nAPP_NAME=from-file\nREGION=kr1\nDB_POOL_SIZE=7\nUNRELATED_VARIABLE=x\n"
    )
    settings = load_settings(environ={"PHOTO_API_ENV_FILE": str(env_file), "APP_NAME": "from-environment"})
    assert settings.app_name == "from-environment"  # the real environment wins
    assert settings.region == "kr1"
    assert settings.db_pool_size == 7


def test_env_file_problems_are_reported(tmp_path: Path) -> None:
    env_file = tmp_path / "photo-api.env"
    env_file.write_text("DB_POOL_SIZE=abc\nENVIRONMENT=production\n")
    error = config_error({"PHOTO_API_ENV_FILE": str(env_file)})
    assert {"DB_POOL_SIZE", "JWT_SECRET_KEY"} <= error.settings_named()


def test_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    # A typo in the path must not silently boot on the embedded defaults.
    error = config_error({"PHOTO_API_ENV_FILE": str(tmp_path / "does-not-exist.env")})
    assert "PHOTO_API_ENV_FILE" in error.settings_named()


def test_redacted_never_shows_secrets() -> None:
    settings = load_settings(
        environ={
            **PRODUCTION,
            **SWIFT,
            **CDN,
            "NHN_STORAGE_TEMP_URL_KEY": TEMP_URL_KEY,
            "NHN_STORAGE_AUTH_URL": "https://keystone-user:auth-pass-Kq71@identity.example.com/v2.0",
            "NHN_STORAGE_URL": "https://swift.example.com/v1/AUTH_x?token=storage-token-Yh32",
            "NHN_LOG_APPKEY": "log-appkey-Jd83",
            "NHN_LOG_URL": "https://logs.example.com/v2/log?appkey=log-appkey-in-url-Uu19",
            "PROMETHEUS_PUSHGATEWAY_URL": "https://pusher:push-pass-Pp02@pushgateway.internal:9091",
            "PUBLIC_BASE_URL": "https://photos.example.com",
        }
    )
    redacted = settings.redacted()
    text = repr(redacted)
    for secret in (
        STRONG_SECRET,
        DB_PASSWORD,
        SWIFT["NHN_STORAGE_IAM_PASSWORD"],
        CDN["NHN_CDN_SECRET_KEY"],
        CDN["NHN_CDN_ENCRYPT_KEY"],
        TEMP_URL_KEY,
        "auth-pass-Kq71",
        "storage-token-Yh32",
        "log-appkey-Jd83",
        "log-appkey-in-url-Uu19",
        "push-pass-Pp02",
    ):
        assert secret not in text
        assert secret not in repr(settings)
    # The rest of each URL is still there to diagnose it.
    assert redacted["NHN_STORAGE_AUTH_URL"] == "https://keystone-user:***@identity.example.com/v2.0"
    assert redacted["PROMETHEUS_PUSHGATEWAY_URL"] == "https://pusher:***@pushgateway.internal:9091"
    assert redacted["NHN_LOG_URL"] == "https://logs.example.com/v2/log?appkey=***"
    assert redacted["NHN_LOG_APPKEY"] == "********"
    # Still useful: the DB host and user are shown, the names are the variables' names.
    assert "db.internal" in redacted["DATABASE_URL"]
    assert "photo" in redacted["DATABASE_URL"]
    assert redacted["JWT_SECRET_KEY"] == "********"
    assert redacted["NHN_STORAGE_IAM_USER"] == SWIFT["NHN_STORAGE_IAM_USER"]
    assert redacted["NHN_CDN_ENCRYPT_KEY"] == "********"
    # And the settings object itself does not print them either (tracebacks, debuggers).
    assert STRONG_SECRET not in repr(settings)


def test_create_app_refuses_a_bad_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written into the working directory either
    for name in list(os.environ):
        if name.lower() in Settings.model_fields or name == "PHOTO_API_ENV_FILE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DB_POOL_SIZE", "abc")
    with pytest.raises(ConfigError) as info:
        create_app()
    assert {"DB_POOL_SIZE", "JWT_SECRET_KEY", "DATABASE_URL"} <= info.value.settings_named()
    assert list(tmp_path.iterdir()) == []


def test_the_factory_never_sets_up_the_embedded_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # `photo-api serve` creates ./var (database file, storage, the kept secret); the factory only reads.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        create_app(load_settings(environ={}))
    assert info.value.settings_named() == {"DATABASE_URL", "JWT_SECRET_KEY", "LOCAL_STORAGE_DIR"}
    assert "photo-api serve" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_bootstrap_exports_what_it_filled_in_for_the_processes_serve_starts(tmp_path: Path) -> None:
    environ: dict[str, str] = {"LOG_LEVEL": "INFO"}
    explicit = str(tmp_path / "mine")
    filled = bootstrap_development(load_settings(environ={"LOCAL_STORAGE_DIR": explicit}), environ, tmp_path / "var")
    assert filled.jwt_secret_key is not None
    assert environ == {
        "LOG_LEVEL": "INFO",
        "DATABASE_URL": filled.database_url,
        "JWT_SECRET_KEY": filled.jwt_secret_key.get_secret_value(),
    }  # the storage directory was explicit: not exported again
    assert load_settings(environ={**environ, "LOCAL_STORAGE_DIR": explicit}) == filled
    production = load_settings(environ=PRODUCTION)
    untouched: dict[str, str] = {}
    assert bootstrap_development(production, untouched, tmp_path / "var2") is production
    assert untouched == {}


def test_development_defaults_create_the_embedded_setup_once(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    settings = load_settings(environ={})
    first = development_defaults(settings, var_dir=var_dir)

    assert first.database_url == f"sqlite:///{(var_dir / 'photo_api.db').resolve()}"
    assert first.storage_backend == "local"
    assert first.local_storage_dir == (var_dir / "storage").resolve()
    assert first.local_storage_dir.is_dir()
    secret_file = var_dir / "jwt-secret"
    assert secret_file.is_file()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert first.jwt_secret_key is not None
    secret = first.jwt_secret_key.get_secret_value()
    assert len(secret.encode()) >= 32
    assert secret_file.read_text().strip() == secret
    assert [p.name for p in var_dir.iterdir() if p.name.startswith(".")] == []  # no temp file left behind

    # A restart reuses the secret (tokens survive) instead of generating another.
    second = development_defaults(load_settings(environ={}), var_dir=var_dir)
    assert second.jwt_secret_key is not None
    assert second.jwt_secret_key.get_secret_value() == secret
    assert second.database_url == first.database_url


def test_development_defaults_keep_explicit_values(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "DATABASE_URL": "postgresql://postgres@127.0.0.1/photos",
            "LOCAL_STORAGE_DIR": str(tmp_path / "mine"),
            "JWT_SECRET_KEY": STRONG_SECRET,
        }
    )
    var_dir = tmp_path / "var"
    assert development_defaults(settings, var_dir=var_dir) == settings
    assert not (var_dir / "jwt-secret").exists()


def test_an_explicit_environ_replaces_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", "abc")
    monkeypatch.setenv("STORAGE_RETRY_MAX_TRIES", "0")
    settings = load_settings(environ={"REGION": "kr2"})
    assert (settings.db_pool_size, settings.region, settings.overrides) == (POOL_SIZE_DEFAULT, "kr2", {})
    # ...while without one the process environment is what is read.
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert {"DB_POOL_SIZE", "STORAGE_RETRY_MAX_TRIES"} <= info.value.settings_named()


OVERRIDE_VALUES = {
    "RETRY_MAX_TRIES": ("7", 7),
    "RETRY_MAX_TIME": ("25", 25),
    "RETRY_BASE_DELAY": ("0.5", 0.5),
    "RETRY_MAX_DELAY": ("4", 4),
    "BREAKER_FAILURE_THRESHOLD": ("9", 9),
    "BREAKER_RECOVERY_TIMEOUT": ("12", 12),
}


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("name", list(OVERRIDE_VALUES))
def test_each_override_variable_sets_its_dependency_only(service: Service, name: str) -> None:
    text, value = OVERRIDE_VALUES[name]
    field = name.lower()
    settings = load_settings(environ={f"{service.upper()}_{name}": text})
    assert getattr(settings.resilience_values(service), field) == value
    assert getattr(settings.overrides[service], field) == value
    assert getattr(settings, field) != value  # the global value stays
    for other in SERVICES:
        if other != service:
            assert other not in settings.overrides
            assert getattr(settings.resilience_values(other), field) == getattr(settings, field)


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("STORAGE_RETRY_MAX_TRIES", "0", "greater than or equal to 1"),
        ("STORAGE_RETRY_MAX_TRIES", "21", "less than or equal to 20"),
        ("CDN_BREAKER_RECOVERY_TIMEOUT", "0", "greater than 0"),
        ("CDN_BREAKER_FAILURE_THRESHOLD", "1.5", "integer"),
        ("LOG_RETRY_MAX_TIME", "soon", "number"),
        ("LOG_RETRY_BASE_DELAY", "-1", "greater than or equal to 0"),
    ],
)
def test_a_bad_override_is_named_by_its_variable(variable: str, value: str, fragment: str) -> None:
    error = config_error({variable: value})
    assert error.settings_named() == {variable}
    assert fragment in messages_for(error, variable), error


def test_overrides_come_from_the_env_file_too_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "photo-api.env"
    env_file.write_text("STORAGE_RETRY_MAX_TRIES=6\nCDN_BREAKER_FAILURE_THRESHOLD=8\nLOG_RETRY_MAX_TIME=\n")
    settings = load_settings(environ={"PHOTO_API_ENV_FILE": str(env_file), "CDN_BREAKER_FAILURE_THRESHOLD": "11"})
    assert settings.resilience_values("storage").retry_max_tries == 6
    assert settings.resilience_values("cdn").breaker_failure_threshold == 11
    assert "log" not in settings.overrides  # empty means unset, for overrides as for every setting


def test_each_dependency_keeps_max_delay_above_base_delay() -> None:
    # The global rule, applied to each dependency's effective values (an unset one is the global value).
    error = config_error({"LOG_RETRY_MAX_DELAY": "0.1", "STORAGE_RETRY_BASE_DELAY": "5"})
    assert error.settings_named() == {"LOG_RETRY_MAX_DELAY", "STORAGE_RETRY_BASE_DELAY"}
    assert "retry_base_delay (= 0.2s)" in messages_for(error, "LOG_RETRY_MAX_DELAY")
    assert "retry_max_delay (= 2s)" in messages_for(error, "STORAGE_RETRY_BASE_DELAY")
    error = config_error({"CDN_RETRY_BASE_DELAY": "3", "CDN_RETRY_MAX_DELAY": "1"})
    assert error.settings_named() == {"CDN_RETRY_MAX_DELAY"}
    assert "cdn_retry_base_delay (= 3s)" in messages_for(error, "CDN_RETRY_MAX_DELAY")
    # Consistent values of its own pass, even beyond the global ones.
    settings = load_settings(environ={"CDN_RETRY_BASE_DELAY": "3", "CDN_RETRY_MAX_DELAY": "4"})
    assert (settings.resilience_values("cdn").retry_base_delay, settings.retry_base_delay) == (3, 0.2)


def test_a_broken_override_skips_only_its_own_dependency_check() -> None:
    error = config_error(
        {"STORAGE_RETRY_MAX_DELAY": "soon", "STORAGE_RETRY_BASE_DELAY": "5", "LOG_RETRY_MAX_DELAY": "0.1"}
    )
    # STORAGE's cross-check needs its max delay, which failed its own check; LOG's still runs.
    assert error.settings_named() == {"STORAGE_RETRY_MAX_DELAY", "LOG_RETRY_MAX_DELAY"}
    assert "number" in messages_for(error, "STORAGE_RETRY_MAX_DELAY")


def test_redacted_shows_the_overrides_by_their_variables() -> None:
    redacted = load_settings(environ={"CDN_RETRY_MAX_TRIES": "4"}).redacted()
    assert redacted["CDN_RETRY_MAX_TRIES"] == 4
    assert redacted["STORAGE_BREAKER_RECOVERY_TIMEOUT"] is None
    assert "OVERRIDES" not in redacted
    variables = {f"{service}_{name}".upper() for service in SERVICES for name in OVERRIDABLE}
    assert len(variables) == 18
    assert variables <= set(redacted)
