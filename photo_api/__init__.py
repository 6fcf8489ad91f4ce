"""Photo API: `create_app()` is the one composition root."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app: validate settings (raising ConfigError with every problem), wire, register routes."""
    # Imported here, not at module level: the gunicorn master imports this package (for lifecycle and
    # config) before gevent patches the workers, and must not pull in ssl/requests that early.
    import logging

    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from . import api, metrics, migrate
    from .config import development_defaults, load_settings
    from .logs import configure_logging
    from .runtime import Runtime

    settings = development_defaults(settings if settings is not None else load_settings())
    # Readiness compares the database with the packaged migrations: an install without them must not start.
    migrate.expectation()
    runtime = Runtime.build(settings, log_context=api.log_context)

    app = Flask(__name__)
    app.config.update(
        # JSON bodies are small; upload routes raise the limit for their own request.
        MAX_CONTENT_LENGTH=settings.max_json_bytes,
        JSON_SORT_KEYS=False,
        DEBUG=settings.debug,
    )
    app.url_map.strict_slashes = False  # `/photos` and `/photos/` both answer, with no redirect
    if settings.trusted_proxy_count:
        # X-Forwarded-For/-Proto/-Host count only as appended by our own proxies (the last N values):
        # anyone can send these headers, so trusting more hops than exist would let a client choose them.
        n = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    app.extensions["photo_api"] = runtime

    configure_logging(
        settings.log_level,
        static={"service": settings.app_name, "version": settings.app_version, "instance": settings.instance_id},
        context=api.log_context,
    )
    metrics.init_app(app, settings)  # before the API's hooks: it times all of them
    metrics.watch_database(runtime.db, settings)
    api.init_app(app, runtime)
    if runtime.log_shipper is not None:
        # Every record of the process also goes to Log & Crash, from a bounded queue drained in the
        # background (a greenlet under gevent): logging never waits on the network.
        runtime.log_shipper.install(logging.getLogger())
    return app


__all__ = ["create_app"]
