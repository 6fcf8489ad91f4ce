"""The `photo-api` command line: serve, db upgrade/current, check-config, reap-uploads."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

import click

from . import metrics, migrate
from .config import ConfigError, Settings, bootstrap_development, development_defaults, load_settings


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)


@click.group()
def main() -> None:
    """Photo API service."""


@main.command("check-config")
def check_config() -> None:
    """Validate the environment; print the effective settings (secrets redacted) or every problem."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        click.echo(f"configuration is invalid ({len(exc.problems)} problem(s)):", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    click.echo(json.dumps(settings.redacted(), indent=2, sort_keys=True, default=str))
    if not settings.is_production and (settings.database_url is None or settings.jwt_secret_key is None):
        click.echo(
            "note: development defaults (SQLite, local storage and a JWT secret under ./var/) "
            "fill the unset values at start",
            err=True,
        )
    click.echo("configuration is valid", err=True)


@main.group()
def db() -> None:
    """Database migrations (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head). Run once per deploy, not by every instance."""
    settings = development_defaults(_settings_or_exit())
    assert settings.database_url
    try:
        reached = migrate.upgrade(settings.database_url, revision)
    except migrate.MigrationError as exc:
        click.echo(f"db upgrade: {exc}", err=True)
        sys.exit(1)
    click.echo(f"database at {reached}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision, this version's head and how they relate; exit 1 unless this version can serve."""
    settings = development_defaults(_settings_or_exit())
    assert settings.database_url
    try:
        state = migrate.state(settings.database_url)
    except migrate.MigrationError as exc:
        click.echo(f"db current: {exc}", err=True)
        sys.exit(1)
    label = {
        migrate.UP_TO_DATE: "up to date",
        migrate.BEHIND: "needs upgrade",
        migrate.NOT_MIGRATED: "not migrated",
        migrate.AHEAD: "ahead of this version (compatible)",
        migrate.CONTRACT_PENDING: "contract migrations pending (compatible)",
        migrate.INCOMPATIBLE: "ahead of this version (incompatible)",
    }[state.status]
    click.echo(f"{state.current or '<none>'} (head: {state.expected}) {label}")
    if not state.serving:
        sys.exit(1)


@main.command("serve")
@click.option("--bind", help="HOST:PORT to listen on (default: BIND setting)")
@click.option("--workers", type=click.IntRange(1, 256), help="gevent worker processes (default: WORKERS setting)")
def serve(bind: str | None, workers: int | None) -> None:
    """Run gunicorn with gevent workers and the packaged configuration (replaces this process)."""
    # The embedded default is set up here (./var: the SQLite file, local storage, a kept JWT secret) and
    # handed to gunicorn through the environment: the application factory itself creates nothing.
    settings = bootstrap_development(_settings_or_exit(), os.environ)
    if not settings.is_production and settings.is_sqlite:
        # The embedded default: a newcomer's one command must give a working database.
        assert settings.database_url
        try:
            migrate.upgrade(settings.database_url)
        except migrate.MigrationError as exc:
            click.echo(f"serve: {exc}", err=True)
            sys.exit(1)
    # -P: the working directory stays off sys.path, so the installed package runs even from a checkout.
    args = [sys.executable, "-P", "-m", "gunicorn", "--config", "python:photo_api.gunicorn_conf"]
    if bind:
        args += ["--bind", bind]
    if workers:
        args += ["--workers", str(workers)]
    args.append("photo_api:create_app()")
    if settings.metrics_enabled:
        # prometheus_client picks multiprocess mode when first imported: the variable must be there first.
        metrics.export_multiproc_dir(settings)
    sys.stdout.flush()
    # exec, so that systemd's and the autoscaler's SIGTERM reach the gunicorn master directly.
    os.execv(sys.executable, args)


@main.command("reap-uploads")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True, help="rows per transaction")
def reap_uploads(batch: int) -> None:
    """Remove expired pending uploads and retry failed object deletions; safe on every instance at once.

    Prints one JSON line: expired_uploads_removed, deletions_retried (recorded deletions done now) and
    deletions_failed (still failing; retried by a later run with backoff). Exits 1 only when the run broke off.
    """
    # Imported here: the other commands need neither the database engine nor the storage backend.
    from .app import build_database, build_storage
    from .logs import JsonFormatter
    from .models import utcnow
    from .services import uploads

    settings = development_defaults(_settings_or_exit())
    # Logs go to stderr as JSON lines, so that stdout carries only the summary a timer or script parses.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter({"service": settings.app_name, "command": "reap-uploads"}))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    db = build_database(settings)
    session = db.session()
    try:
        result = uploads.reap(session, build_storage(settings), now=utcnow(), batch=batch)
    except Exception:
        logging.getLogger("photo_api.cli").exception("reap-uploads failed")
        sys.exit(1)
    finally:
        session.close()
        db.dispose()
    click.echo(json.dumps(dataclasses.asdict(result)))
