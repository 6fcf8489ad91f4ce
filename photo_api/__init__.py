"""Photo API: `create_app()` is the one composition root."""

from __future__ import annotations

from flask import Flask

from .config import Settings, development_defaults, load_settings
from .logs import configure_logging
from .runtime import Runtime


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app: validate settings (raising ConfigError with every problem), wire, register routes."""
    from . import api  # imported here so that importing the package has no side effects

    settings = development_defaults(settings if settings is not None else load_settings())
    runtime = Runtime.build(settings)

    app = Flask(__name__)
    app.config.update(
        # JSON bodies are small; upload routes raise the limit for their own request.
        MAX_CONTENT_LENGTH=settings.max_json_bytes,
        JSON_SORT_KEYS=False,
        DEBUG=settings.debug,
    )
    app.url_map.strict_slashes = False  # `/photos` and `/photos/` both answer, with no redirect
    app.extensions["photo_api"] = runtime

    configure_logging(
        settings.log_level,
        static={"service": settings.app_name, "version": settings.app_version, "instance": settings.instance_id},
        context=api.log_context,
    )
    api.init_app(app, runtime)
    return app


__all__ = ["create_app"]
