"""The embedded development setup: SQLite, local storage and a JWT secret kept under ./var/."""

from __future__ import annotations

import os
import secrets
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from .settings import Settings

DEFAULT_VAR_DIR = Path("var")
DEFAULT_SQLITE_FILE = "photo_api.db"
DEFAULT_STORAGE_SUBDIR = "storage"
DEV_SECRET_FILE = "jwt-secret"


# What the embedded default fills in, and the variable each is exported as for the processes serve starts.
BOOTSTRAPPED = (
    ("database_url", "DATABASE_URL"),
    ("local_storage_dir", "LOCAL_STORAGE_DIR"),
    ("jwt_secret_key", "JWT_SECRET_KEY"),
)


def bootstrap_development(
    settings: Settings, environ: MutableMapping[str, str], var_dir: Path = DEFAULT_VAR_DIR
) -> Settings:
    """`development_defaults`, and what it filled in exported to `environ`.

    `photo-api serve` calls it before it execs gunicorn: the master and every worker then read the
    same database, storage directory and secret from the environment, and the application factory never
    creates files or secrets itself. Production settings pass through unchanged.
    """
    filled = development_defaults(settings, var_dir)
    for field, variable in BOOTSTRAPPED:
        value = getattr(filled, field)
        if getattr(settings, field) is None and value is not None:
            environ[variable] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return filled


def development_defaults(settings: Settings, var_dir: Path = DEFAULT_VAR_DIR) -> Settings:
    """Fill in the embedded default (SQLite, local storage and a JWT secret kept under ./var/).

    Only for development: production settings are returned unchanged (and were already required to be
    explicit by the rules in rules.py).
    """
    if settings.is_production:
        return settings
    changes: dict[str, Any] = {}
    if settings.database_url is None:
        var_dir.mkdir(parents=True, exist_ok=True)
        changes["database_url"] = f"sqlite:///{(var_dir / DEFAULT_SQLITE_FILE).resolve()}"
    if settings.storage_backend == "local" and settings.local_storage_dir is None:
        # Created now, like the database file, so the whole embedded layout exists after the first start
        # and an unwritable ./var/ fails at boot rather than at the first upload.
        storage_dir = (var_dir / DEFAULT_STORAGE_SUBDIR).resolve()
        storage_dir.mkdir(parents=True, exist_ok=True)
        changes["local_storage_dir"] = storage_dir
    if settings.jwt_secret_key is None:
        changes["jwt_secret_key"] = SecretStr(_dev_secret(var_dir))
    return settings.model_copy(update=changes) if changes else settings


def _dev_secret(var_dir: Path) -> str:
    """Read, or create once, the development JWT secret, so tokens survive restarts."""
    path = var_dir / DEV_SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # Write aside, then link into place: link() fails if the file exists, so when two processes start at
    # once exactly one secret wins and nobody ever reads a half-written file.
    tmp = var_dir / f".{DEV_SECRET_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        secret = path.read_text().strip()
    finally:
        tmp.unlink()
    return secret
