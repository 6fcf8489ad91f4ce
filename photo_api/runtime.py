"""What the application factory builds once per process and hands to the routes."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from .config import Settings
from .db import Database
from .security import Passwords, Tokens
from .storage import Storage, build_storage


@dataclass
class Runtime:
    """The process-wide collaborators, built from Settings by `create_app` (the composition root)."""

    settings: Settings
    db: Database
    passwords: Passwords
    tokens: Tokens
    storage: Storage

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Wire the collaborators from plain values; nothing connects yet."""
        assert settings.jwt_secret_key is not None, "development_defaults() provides a dev secret"
        secret = settings.jwt_secret_key.get_secret_value()
        return cls(
            settings=settings,
            db=Database(settings),
            passwords=Passwords(),
            tokens=Tokens(
                secret,
                settings.jwt_algorithm,
                settings.access_token_expire_minutes * 60,
            ),
            storage=_build_storage(settings, secret),
        )


def _build_storage(settings: Settings, secret: str) -> Storage:
    if settings.storage_backend == "local":
        assert settings.local_storage_dir is not None, "development_defaults() provides a directory"
        # A key of its own for upload URLs, derived so that operators manage one secret only.
        signing_key = hmac.new(secret.encode(), b"photo-api local upload url", hashlib.sha256).digest()
        return build_storage("local", root=settings.local_storage_dir, signing_key=signing_key)
    return build_storage(settings.storage_backend)
