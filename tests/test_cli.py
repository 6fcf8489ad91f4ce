"""The `photo-api` command line, run as the installed console script with a clean environment."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from photo_api import migrate
from tests.harness.databases import pg_database
from tests.harness.env import TEST_SECRET, production_env
from tests.harness.server import run_command
from tests.test_migrations import FUTURE_REVISION, newer_release_migrated

CLI_TIMEOUT_S = 60
DB_PASSWORD = "db-password-do-not-print"
DB_SSL_PASSWORD = "db-ssl-password-do-not-print"
SWIFT_PASSWORD = "swift-password-do-not-print"
TEMP_URL_KEY = "temp-url-key-do-not-print-Vr5wQ1xZ8mKc3Lp7Hs2Ng6Td"  # strong enough for production
AUTH_URL_PASSWORD = "auth-url-password-do-not-print"
LOG_APPKEY = "log-appkey-do-not-print"
LOG_URL_PASSWORD = "log-url-password-do-not-print"
PUSH_PASSWORD = "push-password-do-not-print"


def run(command: str, *args: str, env: Mapping[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run an installed console script of this virtualenv and capture its output."""
    return run_command(command, *args, env=env, cwd=cwd, timeout=CLI_TIMEOUT_S)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database (no migration applied yet)."""
    with pg_database("photo_api_cli", migrated=False) as url:
        yield url


def test_check_config_prints_settings_with_secrets_redacted(tmp_path: Path) -> None:
    env = {
        "ENVIRONMENT": "Production",
        "DATABASE_URL": f"postgresql://photo:{DB_PASSWORD}@db.internal:5432/photos?sslpassword={DB_SSL_PASSWORD}",
        "JWT_SECRET_KEY": TEST_SECRET,
        "STORAGE_BACKEND": "swift",
        "NHN_STORAGE_AUTH_URL": f"https://keystone:{AUTH_URL_PASSWORD}@api-identity.example.com/v2.0",
        "NHN_STORAGE_TENANT_ID": "tenant",
        "NHN_STORAGE_IAM_USER": "user@example.com",
        "NHN_STORAGE_IAM_PASSWORD": SWIFT_PASSWORD,
        "NHN_STORAGE_CONTAINER": "photos",
        "NHN_STORAGE_TEMP_URL_KEY": TEMP_URL_KEY,
        "NHN_LOG_APPKEY": LOG_APPKEY,
        "NHN_LOG_URL": f"https://logs.example.com/v2/log?password={LOG_URL_PASSWORD}",
        "PROMETHEUS_PUSHGATEWAY_URL": f"http://pusher:{PUSH_PASSWORD}@pushgateway.internal:9091",
        "PUBLIC_BASE_URL": "https://photos.example.com",
        "DB_POOL_SIZE": "7",
    }
    result = run("photo-api", "check-config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["ENVIRONMENT"] == "production"
    assert settings["DB_POOL_SIZE"] == 7
    assert settings["JWT_SECRET_KEY"] == settings["NHN_STORAGE_IAM_PASSWORD"] == "********"
    assert settings["NHN_STORAGE_TEMP_URL_KEY"] == settings["NHN_LOG_APPKEY"] == "********"
    assert settings["DATABASE_URL"] == "postgresql://photo:***@db.internal:5432/photos?sslpassword=***"
    assert settings["NHN_STORAGE_AUTH_URL"] == "https://keystone:***@api-identity.example.com/v2.0"
    assert settings["NHN_LOG_URL"] == "https://logs.example.com/v2/log?password=***"
    assert settings["PROMETHEUS_PUSHGATEWAY_URL"] == "http://pusher:***@pushgateway.internal:9091"
    for secret in (
        TEST_SECRET,
        DB_PASSWORD,
        DB_SSL_PASSWORD,
        SWIFT_PASSWORD,
        TEMP_URL_KEY,
        AUTH_URL_PASSWORD,
        LOG_APPKEY,
        LOG_URL_PASSWORD,
        PUSH_PASSWORD,
    ):
        assert secret not in result.stdout + result.stderr
    assert "configuration is valid" in result.stderr
    assert not (tmp_path / "var").exists()  # checking creates nothing


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    env = {
        "ENVIRONMENT": "production",
        "DATABASE_URL": "sqlite:///photo_api.db",
        "JWT_SECRET_KEY": "changeme",
        "DEBUG": "true",
        "DB_POOL_SIZE": "many",
        "KEEPALIVE": "30",
        "DISABLE_PSYCOGREEN": "1",
    }
    result = run("photo-api", "check-config", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""  # no settings are printed for an invalid configuration
    named = {line.strip()[2:].split(":", 1)[0] for line in result.stderr.splitlines() if line.startswith("  - ")}
    assert named == {
        "DATABASE_URL",  # SQLite in production
        "JWT_SECRET_KEY",  # a well-known default
        "DEBUG",
        "DB_POOL_SIZE",  # not an integer
        "LOCAL_STORAGE_DIR",  # local storage in production needs an explicit directory
        "PUBLIC_BASE_URL",  # required in production
        "KEEPALIVE",  # not above the LB idle timeout
        "DISABLE_PSYCOGREEN",  # diagnostic only
    }, result.stderr
    assert result.stderr.startswith(f"configuration is invalid ({len(named)} problem(s)):")


def test_check_config_problems_show_no_credentials(tmp_path: Path) -> None:
    env = {
        "ENVIRONMENT": "production",
        "DATABASE_URL": f"mysql://photo:{DB_PASSWORD}@db.internal/photos",  # refused: not PostgreSQL
        "JWT_SECRET_KEY": "changeme",
        "NHN_LOG_APPKEY": LOG_APPKEY,
        "NHN_LOG_URL": f"https://logger:{LOG_URL_PASSWORD}@",  # refused: no host
        "PROMETHEUS_PUSHGATEWAY_URL": f"pushgateway.internal:9091?password={PUSH_PASSWORD}",  # refused: no scheme
    }
    result = run("photo-api", "check-config", env=env, cwd=tmp_path)
    assert result.returncode == 1
    named = {line.strip()[2:].split(":", 1)[0] for line in result.stderr.splitlines() if line.startswith("  - ")}
    assert {"DATABASE_URL", "JWT_SECRET_KEY", "NHN_LOG_URL", "PROMETHEUS_PUSHGATEWAY_URL"} <= named, result.stderr
    for secret in (DB_PASSWORD, LOG_APPKEY, LOG_URL_PASSWORD, PUSH_PASSWORD, "changeme"):
        assert secret not in result.stdout + result.stderr


def test_serve_refuses_placeholder_and_weak_secrets_in_production(tmp_path: Path) -> None:
    env = production_env("postgresql://photo_api@127.0.0.1:1/none", tmp_path / "storage", secret="changeme" * 4)
    result = run("photo-api", "serve", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "JWT_SECRET_KEY: is a well-known default or placeholder value" in result.stderr
    assert "secrets.token_urlsafe(48)" in result.stderr
    env["JWT_SECRET_KEY"] = "x" * 40
    result = run("photo-api", "serve", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "JWT_SECRET_KEY: is too predictable" in result.stderr
    assert not (tmp_path / "storage").exists()  # refused before anything started


def test_serve_requires_an_https_public_base_url_in_production(tmp_path: Path) -> None:
    for value, message in ((None, "PUBLIC_BASE_URL: required in production"), ("http://photos.example.com", "https")):
        env = production_env(
            "postgresql://photo_api@127.0.0.1:1/none", tmp_path / "storage", overrides={"PUBLIC_BASE_URL": value}
        )
        result = run("photo-api", "serve", env=env, cwd=tmp_path)
        assert result.returncode == 1
        assert message in result.stderr, result.stderr
    assert not (tmp_path / "storage").exists()


def test_db_upgrade_then_current_is_at_head(fresh_pg_url: str, tmp_path: Path) -> None:
    env = production_env(fresh_pg_url, tmp_path / "storage")
    head = migrate.head()
    before = run("photo-api", "db", "current", env=env, cwd=tmp_path)
    assert before.returncode == 1, before.stderr
    assert before.stdout.strip() == f"<none> (head: {head}) not migrated"

    upgraded = run("photo-api", "db", "upgrade", env=env, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"database at {head}"
    current = run("photo-api", "db", "current", env=env, cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert current.stdout.strip() == f"{head} (head: {head}) up to date"


def test_db_upgrade_twice_is_harmless(fresh_pg_url: str, tmp_path: Path) -> None:
    env = production_env(fresh_pg_url, tmp_path / "storage")
    head = migrate.head()
    for _ in range(2):
        result = run("photo-api", "db", "upgrade", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"database at {head}"
    assert migrate.current(fresh_pg_url) == head


def test_db_upgrade_refuses_a_database_of_a_newer_release(fresh_pg_url: str, tmp_path: Path) -> None:
    env = production_env(fresh_pg_url, tmp_path / "storage")
    assert run("photo-api", "db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    head, epoch = migrate.head(), migrate.expectation().head_epoch
    newer_release_migrated(fresh_pg_url, epoch=epoch)

    result = run("photo-api", "db", "upgrade", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert f"revision {FUTURE_REVISION}, which this version does not know" in result.stderr
    assert "Traceback" not in result.stderr
    current = run("photo-api", "db", "current", env=env, cwd=tmp_path)
    assert (current.returncode, current.stdout.strip()) == (
        0,
        f"{FUTURE_REVISION} (head: {head}) ahead of this version (compatible)",
    )

    newer_release_migrated(fresh_pg_url, epoch=epoch + 1)
    current = run("photo-api", "db", "current", env=env, cwd=tmp_path)
    assert (current.returncode, current.stdout.strip()) == (
        1,
        f"{FUTURE_REVISION} (head: {head}) ahead of this version (incompatible)",
    )


def test_db_current_says_an_older_revision_needs_upgrade(fresh_pg_url: str, tmp_path: Path) -> None:
    env = production_env(fresh_pg_url, tmp_path / "storage")
    assert run("photo-api", "db", "upgrade", "0001", env=env, cwd=tmp_path).returncode == 0
    current = run("photo-api", "db", "current", env=env, cwd=tmp_path)
    assert (current.returncode, current.stdout.strip()) == (1, f"0001 (head: {migrate.head()}) needs upgrade")


def test_db_command_refuses_an_invalid_configuration(tmp_path: Path) -> None:
    result = run("photo-api", "db", "upgrade", env={"ENVIRONMENT": "production"}, cwd=tmp_path)
    assert result.returncode == 1
    assert "DATABASE_URL" in result.stderr and "JWT_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_flask_cli_finds_the_application_factory(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "JWT_SECRET_KEY": TEST_SECRET,
        "LOCAL_STORAGE_DIR": str(tmp_path / "storage"),
    }
    result = run("flask", "--app", "photo_api", "routes", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for rule in ("/health/liveness", "/auth/register", "/auth/login", "/auth/me"):
        assert rule in result.stdout
