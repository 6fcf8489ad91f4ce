"""Photo API. The composition root is `create_app` in photo_api/app.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app from `settings` (default: the environment): see photo_api.app.create_app."""
    # Imported on call: the gunicorn master imports this package (lifecycle, config) before gevent patches
    # the workers, and must not pull in Flask, requests or ssl that early.
    from .app import create_app as build

    return build(settings)


__all__ = ["create_app"]
