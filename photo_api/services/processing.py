"""The processing state of photos in the database: which job may run, its result, and what to enqueue again.

The database is the truth about a photo's renditions; the queue only carries hints ("look at photo 42").
So a job lost anywhere (Redis down when it was enqueued, Redis restarted, a worker killed mid-job) is found
again here by the reaper, and a job that runs twice finds the work done: every change is one conditional
statement on `processing_status = 'pending'`.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from ..models import Photo, PhotoStatus, ProcessingStatus, utcnow

log = logging.getLogger(__name__)

ERROR_TEXT_LIMIT = 255  # the column's length
# Processing is not an edit of the photo: `updated_at` (which an UPDATE would otherwise bump through its
# onupdate) keeps the time of the owner's last change.
_KEEP_UPDATED_AT = {"updated_at": Photo.updated_at}


@dataclass(frozen=True)
class Claim:
    """A photo a job may process now: where its bytes are, and which attempt this is (1 for the first)."""

    photo_id: int
    owner_id: int
    key: str
    attempt: int
    content_type: str


@dataclass(frozen=True)
class StoredRendition:
    """A rendition stored under its key: what delivery needs without asking the store."""

    size: int
    etag: str


@dataclass(frozen=True)
class PublicCopy:
    """The original without its metadata: its key (the original's own when it had nothing to remove), or
    NO_STRIPPED_COPY with no size and ETag when none can be made."""

    key: str
    size: int | None
    etag: str | None


def claim(session: Session, photo_id: int) -> Claim | None:
    """Count one more attempt at a ready photo that still waits for processing; None when there is nothing to do.

    None means: the photo is gone, not uploaded yet, or already processed (ready or failed). That is how a
    job run twice, or enqueued twice, does nothing the second time.
    """
    row = session.execute(
        update(Photo)
        .where(
            Photo.id == photo_id,
            Photo.status == PhotoStatus.READY,
            Photo.processing_status == ProcessingStatus.PENDING,
        )
        .values(processing_attempts=Photo.processing_attempts + 1, **_KEEP_UPDATED_AT)
        .returning(Photo.owner_id, Photo.filename, Photo.processing_attempts, Photo.content_type),
        execution_options={"synchronize_session": False},
    ).one_or_none()
    session.commit()
    if row is None:
        return None
    return Claim(
        photo_id=photo_id,
        owner_id=row.owner_id,
        key=row.filename,
        attempt=row.processing_attempts,
        content_type=row.content_type,
    )


def complete(
    session: Session,
    photo_id: int,
    *,
    metadata: dict[str, object],
    thumbhash: bytes,
    rendition_type: str,
    thumbnail: StoredRendition,
    preview: StoredRendition,
    public: PublicCopy,
) -> bool:
    """Record the renditions and metadata and make the photo's processing ready; False if it no longer waits.

    `metadata` holds the columns of photo_api.media.PhotoMetadata by name.
    """
    done = session.execute(
        update(Photo)
        .where(Photo.id == photo_id, Photo.processing_status == ProcessingStatus.PENDING)
        .values(
            processing_status=ProcessingStatus.READY,
            processing_error=None,
            thumbhash=base64.b64encode(thumbhash).decode("ascii"),
            rendition_type=rendition_type,
            thumbnail_size=thumbnail.size,
            thumbnail_etag=thumbnail.etag,
            preview_size=preview.size,
            preview_etag=preview.etag,
            stripped_key=public.key,
            stripped_size=public.size,
            stripped_etag=public.etag,
            **_KEEP_UPDATED_AT,
            **metadata,
        )
        .returning(Photo.id),
        execution_options={"synchronize_session": False},
    ).one_or_none()
    session.commit()
    return done is not None


def fail(session: Session, photo_id: int, error: str) -> bool:
    """Give up on a photo's processing with `error` (shown to its owner); False if it no longer waits."""
    done = session.execute(
        update(Photo)
        .where(Photo.id == photo_id, Photo.processing_status == ProcessingStatus.PENDING)
        .values(
            processing_status=ProcessingStatus.FAILED, processing_error=error[:ERROR_TEXT_LIMIT], **_KEEP_UPDATED_AT
        )
        .returning(Photo.id),
        execution_options={"synchronize_session": False},
    ).one_or_none()
    session.commit()
    return done is not None


@dataclass(frozen=True)
class StripClaim:
    """A processed photo whose public copy (the original without its metadata) is still to be made."""

    photo_id: int
    owner_id: int
    key: str
    content_type: str
    orientation: int | None


def claim_strip(session: Session, photo_id: int) -> StripClaim | None:
    """The photo, if it is ready, processed (ready or failed) and has no public copy yet; else None.

    Not a lock: two runs at once both strip and store the same bytes under the same key, and the first
    `complete_strip` wins (the second changes nothing).
    """
    row = session.execute(
        select(Photo.owner_id, Photo.filename, Photo.content_type, Photo.orientation).where(
            Photo.id == photo_id,
            Photo.status == PhotoStatus.READY,
            Photo.processing_status != ProcessingStatus.PENDING,
            Photo.stripped_key.is_(None),
        )
    ).one_or_none()
    session.commit()
    if row is None:
        return None
    return StripClaim(
        photo_id=photo_id,
        owner_id=row.owner_id,
        key=row.filename,
        content_type=row.content_type,
        orientation=row.orientation,
    )


def complete_strip(session: Session, photo_id: int, public: PublicCopy) -> bool:
    """Record the public copy of a photo processed before public copies existed; False if already done."""
    done = session.execute(
        update(Photo)
        .where(Photo.id == photo_id, Photo.stripped_key.is_(None))
        .values(stripped_key=public.key, stripped_size=public.size, stripped_etag=public.etag, **_KEEP_UPDATED_AT)
        .returning(Photo.id),
        execution_options={"synchronize_session": False},
    ).one_or_none()
    session.commit()
    return done is not None


def photo_exists(session: Session, photo_id: int) -> bool:
    """Whether the photo row is still there (a job finding it gone removes what it just stored)."""
    found = session.scalar(select(Photo.id).where(Photo.id == photo_id)) is not None
    session.commit()
    return found


def mark_enqueued(session: Session, photo_id: int, now: datetime | None = None) -> None:
    """Note that the photo's job was handed to the queue (the reaper then leaves it alone for a while)."""
    session.execute(
        update(Photo)
        .where(Photo.id == photo_id, Photo.processing_status == ProcessingStatus.PENDING)
        .values(processing_enqueued_at=now or utcnow(), **_KEEP_UPDATED_AT),
        execution_options={"synchronize_session": False},
    )
    session.commit()


def take_unqueued(session: Session, *, now: datetime, stale_after: timedelta, limit: int) -> Sequence[int]:
    """Claim up to `limit` ready photos whose job was never enqueued, or enqueued more than `stale_after` ago.

    A photo's job is due while its processing is pending, and also while it has no public copy yet (every
    photo processed before public copies existed: the job then only makes that copy).

    Their `processing_enqueued_at` becomes `now` in the same statement that selects them, so two reapers
    running at once never take the same photo; the caller enqueues what it took.
    """
    waiting = (
        Photo.status == PhotoStatus.READY,
        or_(Photo.processing_status == ProcessingStatus.PENDING, Photo.stripped_key.is_(None)),
        or_(Photo.processing_enqueued_at.is_(None), Photo.processing_enqueued_at < now - stale_after),
    )
    ids = session.scalars(select(Photo.id).where(*waiting).order_by(Photo.id).limit(limit)).all()
    if not ids:
        session.commit()
        return []
    taken = session.scalars(
        update(Photo)
        .where(Photo.id.in_(ids), *waiting)
        .values(processing_enqueued_at=now, **_KEEP_UPDATED_AT)
        .returning(Photo.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return sorted(taken)


def forget_enqueue(session: Session, photo_ids: Sequence[int]) -> None:
    """Undo `take_unqueued` for photos that could not be enqueued after all: the next run takes them again."""
    if photo_ids:
        session.execute(
            update(Photo).where(Photo.id.in_(photo_ids)).values(processing_enqueued_at=None, **_KEEP_UPDATED_AT),
            execution_options={"synchronize_session": False},
        )
        session.commit()
