"""Registration, login and user lookup."""

from __future__ import annotations

import contextlib

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import ConflictError
from ..models import User, is_id
from ..security import Passwords


def normalise_email(email: str) -> str:
    """The one form of an e-mail address that registration stores and login looks up.

    email-validator's normalisation (Unicode NFC, the domain in its IDNA form, so that full-width or
    upper-case letters of a domain become plain ones), then lower-cased: addresses are unique
    case-insensitively. An address it cannot parse (only possible at login) is just lower-cased: no
    user has it anyway.
    """
    with contextlib.suppress(EmailNotValidError):
        email = validate_email(email.strip(), check_deliverability=False).normalized
    return email.strip().lower()


def register(session: Session, passwords: Passwords, *, email: str, username: str, password: str) -> User:
    """Create a user; ConflictError (409) names the field already taken, also when two requests race."""
    user = User(email=normalise_email(email), username=username, password_hash=passwords.hash(password))
    session.add(user)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        # The unique indexes decide, so a race between two registrations is a 409 too, never a 500.
        field = _conflicting_field(exc)
        if field == "email":
            raise ConflictError("Email already registered", field="email") from None
        if field == "username":
            raise ConflictError("Username already taken", field="username") from None
        raise
    return user


def _conflicting_field(exc: IntegrityError) -> str | None:
    """The users column whose unique index `exc` violated, judged by the constraint's name only.

    PostgreSQL's message also quotes the conflicting *value* (`Key (username)=(email_fan)`), so searching
    the whole text for "email" would blame the wrong field; its diagnostics carry the constraint name.
    SQLite names the column (`UNIQUE constraint failed: users.email`) and never the value.
    """
    diag = getattr(exc.orig, "diag", None)
    name = getattr(diag, "constraint_name", None) or str(exc.orig)
    for field in ("email", "username"):
        if name in (f"uq_users_{field}", f"UNIQUE constraint failed: users.{field}"):
            return field
    return None


def authenticate(session: Session, passwords: Passwords, *, email: str, password: str) -> User | None:
    """The active user with these credentials, or None; unknown e-mails cost as much time as wrong passwords."""
    passwords.refuse_if_busy()  # no query for a login that could not be checked now
    user = session.scalars(select(User).where(User.email == normalise_email(email))).one_or_none()
    if user is not None:
        session.expunge(user)  # keeps its loaded fields through the rollback below
    # Hand the connection back to the pool before hashing: a hash (and its wait for a thread of the
    # hashing pool) takes 0.1 s to seconds under a login flood, and logins holding connections all that
    # time exhausted the pool, so that /health's database probe timed out (ops/bench/RESULTS.md).
    session.rollback()
    ok = passwords.verify(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        return None
    return user


def get(session: Session, user_id: int) -> User | None:
    """The user with this id, or None (also for an id no row can have, which is never queried)."""
    return session.get(User, user_id) if is_id(user_id) else None
