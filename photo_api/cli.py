"""The `photo-api` command line: serve, worker, db upgrade/current, check-config, reap-uploads."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Any

import click

from . import metrics, migrate
from .config import (
    ConfigError,
    Settings,
    bootstrap_development,
    connection_budget,
    development_defaults,
    load_settings,
)

QUEUE_DEPTH_TIMEOUT_S = 0.5  # the worker's metrics read the queue's depth at scrape time


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
    if (budget := connection_budget(settings)) is not None:
        click.echo(f"database connection budget: {budget[2]}", err=True)
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
    """Remove expired pending uploads, retry failed object deletions, enqueue photos still waiting for processing.

    Safe on every instance at once. Prints one JSON line: expired_uploads_removed, deletions_retried
    (recorded deletions done now), deletions_failed (still failing; retried by a later run with backoff),
    processing_enqueued (photos whose renditions job was never enqueued, or was enqueued more than
    PROCESSING_STALE_SECONDS ago and is still pending) and processing_not_enqueued (the queue refused; the
    next run tries again). Without REDIS_URL the jobs run in this command before it exits. Exits 1 only
    when the run broke off.
    """
    # Imported here: the other commands need neither the database engine nor the storage backend.
    from datetime import timedelta

    from .app import build_database, build_jobs, build_storage
    from .jobs.submit import requeue_waiting
    from .models import utcnow
    from .services import uploads

    settings = development_defaults(_settings_or_exit())
    # Logs go to stderr as JSON lines, so that stdout carries only the summary a timer or script parses.
    _log_json(settings, "reap-uploads", sys.stderr)
    db = build_database(settings)
    storage = build_storage(settings)
    session = db.session()
    jobs = build_jobs(settings, db, storage, in_app=False)
    try:
        result = dataclasses.asdict(uploads.reap(session, storage, now=utcnow(), batch=batch))
        enqueued, refused = requeue_waiting(
            session, jobs, now=utcnow(), stale_after=timedelta(seconds=settings.processing_stale_seconds), batch=batch
        )
        result.update(processing_enqueued=enqueued, processing_not_enqueued=refused)
        jobs.close(timeout=settings.job_timeout * max(1, enqueued))  # local jobs: run them before exiting
    except Exception:
        logging.getLogger("photo_api.cli").exception("reap-uploads failed")
        sys.exit(1)
    finally:
        session.close()
        db.dispose()
    click.echo(json.dumps(result))


@main.command("worker")
@click.option("--processes", type=click.IntRange(1, 256), default=1, show_default=True, help="worker processes")
@click.option("--burst", is_flag=True, help="exit once the queue is empty (tests, one-off catch-up)")
def worker(processes: int, burst: bool) -> None:
    """Run background jobs (renditions and metadata) from the Redis queue until SIGTERM.

    Needs REDIS_URL. SIGTERM lets each process finish the job in hand, then exit 0 (a second SIGTERM
    stops at once; the interrupted job runs again later). Metrics on METRICS_BIND_HOST:WORKER_METRICS_PORT.
    Logs are JSON lines on stdout.
    """
    from .app import build_database, build_storage, job_context
    from .jobs import worker as job_worker
    from .jobs.queue import queue_depth_reader

    settings = development_defaults(_settings_or_exit())
    redis_url = settings.redis_url
    if redis_url is None:
        click.echo("worker: REDIS_URL is not set; without it jobs run inside the API processes", err=True)
        sys.exit(1)
    _log_json(settings, "worker", sys.stdout)
    if settings.metrics_enabled:
        # prometheus_client picks multiprocess mode when first imported: the variable must be there first.
        directory = metrics.export_multiproc_dir(settings)
        metrics.serve_worker_metrics(
            settings, directory, queue_depth=queue_depth_reader(redis_url, QUEUE_DEPTH_TIMEOUT_S)
        )
    # Built lazily in each worker process, on its first job: nothing crosses a fork.
    job_worker.configure(lambda: job_context(settings, build_database(settings), build_storage(settings)))
    job_worker.run(redis_url, processes=processes, burst=burst)


def _log_json(settings: Settings, command: str, stream: Any) -> None:
    from .logs import JsonFormatter

    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter({"service": settings.app_name, "command": command}))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
