"""What the views work with, built once by the composition root (`photo_api.app.create_app`).

Views reach each collaborator through a typed accessor (`current_storage()`, `current_limits()`, ...);
nothing outside this module knows where the app keeps them. Limits and identity are immutable values
computed at boot from the settings: no view reads a raw setting.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from ..clients import CdnTokens, LogShipper
from ..db import Database
from ..health import DatabaseProbe
from ..jobs.queue import JobQueue
from ..security import Passwords, Tokens
from ..storage import Storage

_EXTENSION = "photo_api"


@dataclass(frozen=True)
class Limits:
    """The request-facing numbers of the settings, fixed at boot."""

    max_upload_bytes: int
    client_body_timeout: float  # the longest one read of an upload body waits for the client (then 408)
    upload_url_expire_seconds: int
    max_pending_uploads_per_user: int  # presigned, unconfirmed uploads one user may hold at once
    max_pending_upload_bytes_per_user: int  # their declared sizes together
    image_token_seconds: int  # an owner's CDN image URL
    share_image_token_seconds: int  # a share link's CDN image URL
    public_base_url: str | None  # absolute URLs we hand out (share links, local upload URLs); None: the request's
    debug_errors: bool  # 500 bodies may carry a `debug` field (development only)


@dataclass(frozen=True)
class Identity:
    """How this instance names itself in health answers and documents."""

    app_name: str
    version: str
    instance: str


@dataclass(frozen=True)
class Collaborators:
    """Everything a request may need, one per app (i.e. per worker process)."""

    db: Database
    storage: Storage
    cdn: CdnTokens | None  # None: no CDN configured, images are streamed
    passwords: Passwords
    tokens: Tokens
    probe: DatabaseProbe  # shared by every load balancer probing this worker
    limits: Limits
    identity: Identity
    jobs: JobQueue  # renditions and metadata: Redis for `photo-api worker`, or this process's runner
    # Not for views: the worker's shutdown (gunicorn_conf) flushes it. None: Log & Crash shipping off.
    log_shipper: LogShipper | None = None


def install(app: Flask, collaborators: Collaborators) -> None:
    """Attach the collaborators to `app` (the composition root does this once)."""
    app.extensions[_EXTENSION] = collaborators


def collaborators_of(app: Flask) -> Collaborators:
    """The collaborators of `app`, outside a request (gunicorn hooks, tests)."""
    found: Collaborators = app.extensions[_EXTENSION]
    return found


def _current() -> Collaborators:
    return collaborators_of(current_app)


def current_db() -> Database:
    """The database of this app."""
    return _current().db


def current_storage() -> Storage:
    """The object storage backend."""
    return _current().storage


def current_cdn() -> CdnTokens | None:
    """The CDN token client, or None when images are always streamed."""
    return _current().cdn


def current_jobs() -> JobQueue:
    """Where photos go to get their renditions and metadata."""
    return _current().jobs


def current_passwords() -> Passwords:
    """Password hashing."""
    return _current().passwords


def current_tokens() -> Tokens:
    """Access-token issuing and checking."""
    return _current().tokens


def current_probe() -> DatabaseProbe:
    """This worker's shared database and schema probe."""
    return _current().probe


def current_limits() -> Limits:
    """The request-facing limits fixed at boot."""
    return _current().limits


def current_identity() -> Identity:
    """This instance's name and version."""
    return _current().identity
