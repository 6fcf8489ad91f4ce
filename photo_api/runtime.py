"""What the application factory builds once per process and hands to the routes."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .db import Database
from .security import Passwords, Tokens


@dataclass
class Runtime:
    """The process-wide collaborators, built from Settings by `create_app` (the composition root)."""

    settings: Settings
    db: Database
    passwords: Passwords
    tokens: Tokens

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Wire the collaborators from plain values; nothing connects yet."""
        assert settings.jwt_secret_key is not None, "development_defaults() provides a dev secret"
        return cls(
            settings=settings,
            db=Database(settings),
            passwords=Passwords(),
            tokens=Tokens(
                settings.jwt_secret_key.get_secret_value(),
                settings.jwt_algorithm,
                settings.access_token_expire_minutes * 60,
            ),
        )
