"""Object deletes that happen after the row is gone, and the retry of the ones that failed."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..models import PendingObjectDeletion, utcnow
from ..storage import Storage, StorageError

log = logging.getLogger(__name__)

# Back off a failing key: 1 min, 2, 4 ... capped at an hour, so one broken object does not hog the reaper.
RETRY_BASE = timedelta(minutes=1)
RETRY_CAP = timedelta(hours=1)
ERROR_TEXT_LIMIT = 255


def delete_objects(session: Session, storage: Storage, keys: list[str]) -> int:
    """Delete objects whose rows were committed away; record each failure for the reaper. Returns failures.

    Call only after the commit that removed the rows: a crash between the two leaves an orphan object
    that the reaper's record (or a later sweep) removes, never a row pointing at nothing.
    """
    failed = 0
    for key in keys:
        try:
            storage.delete(key)
        except StorageError as exc:
            failed += 1
            log.warning(
                "object delete failed; recorded for retry", extra={"object_key": key, "error": type(exc).__name__}
            )
            record_failed_delete(session, key, type(exc).__name__)
    return failed


def record_failed_delete(session: Session, key: str, error: str) -> None:
    """Remember `key` for a later delete (idempotent: one row per key)."""
    _record(session, key, error[:ERROR_TEXT_LIMIT], utcnow())


def schedule_delete(session: Session, key: str, at: datetime) -> None:
    """Have the reaper delete `key` once `at` has passed, e.g. when nothing can write there any more."""
    _record(session, key, None, at)


def _record(session: Session, key: str, error: str | None, at: datetime) -> None:
    # One row per key: a key already recorded keeps its row (and its earlier attempt time).
    values = {
        "object_key": key,
        "last_error": error,
        "created_at": utcnow(),
        "next_attempt_at": at,
        "attempts": 0,
    }
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(
        insert(PendingObjectDeletion).values(**values).on_conflict_do_nothing(index_elements=["object_key"])
    )
    session.commit()


def retry_pending(session: Session, storage: Storage, now: datetime | None = None, limit: int = 500) -> tuple[int, int]:
    """Retry due deletions; return (done, still failing). Safe on several instances at once.

    Each row is claimed with an optimistic UPDATE on its attempt counter that also pushes the next
    attempt into the future; only the instance whose UPDATE matched performs the delete.
    """
    now = now or utcnow()
    due = session.scalars(
        select(PendingObjectDeletion)
        .where(PendingObjectDeletion.next_attempt_at <= now)
        .order_by(PendingObjectDeletion.next_attempt_at)
        .limit(limit)
    ).all()
    done = failed = 0
    for row in due:
        backoff = min(RETRY_CAP, RETRY_BASE * (2 ** min(row.attempts, 10)))
        result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(PendingObjectDeletion)
            .where(PendingObjectDeletion.id == row.id, PendingObjectDeletion.attempts == row.attempts)
            .values(next_attempt_at=now + backoff, attempts=PendingObjectDeletion.attempts + 1)
        )
        claimed = result.rowcount
        session.commit()
        if not claimed:
            continue  # another instance took it
        try:
            storage.delete(row.object_key)
        except StorageError as exc:
            failed += 1
            session.execute(
                update(PendingObjectDeletion)
                .where(PendingObjectDeletion.id == row.id)
                .values(last_error=type(exc).__name__[:ERROR_TEXT_LIMIT])
            )
            session.commit()
            continue
        session.execute(delete(PendingObjectDeletion).where(PendingObjectDeletion.id == row.id))
        session.commit()
        done += 1
    return done, failed
