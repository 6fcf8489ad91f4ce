"""Direct uploads: presign a pending photo, receive its bytes, confirm them, and reap what was never confirmed.

The lifecycle of a presigned upload:

1. `create_presigned` writes a *pending* row (declared size and type, `upload_expires_at` equal to the
   upload URL's own expiry) and returns the storage's presigned PUT.
2. The client PUTs the bytes straight to storage (Swift TempURL), or, with local storage, to this
   service's signed upload route, which calls `receive_upload`.
3. `confirm` checks the stored object against the declaration and flips the row to *ready*, or removes
   row and object when they disagree.
4. `reap` removes pending rows whose window has passed, with their objects, on any number of
   instances at once.

Every state change that two processes may attempt together (confirm twice, confirm vs reaper, two
reapers) is one conditional statement on `status = 'pending'`, and only the caller whose statement
matched the row acts on the object.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import ConflictError, FieldError, GoneError, NotFoundError, PayloadTooLargeError, ValidationFailedError
from ..images import ALLOWED_IMAGE_TYPES, SNIFF_BYTES, new_object_key, sanitize_filename, sniff_image_type
from ..models import Album, AlbumPhoto, Photo, PhotoStatus, utcnow
from ..storage import ObjectNotFoundError, ObjectTooLargeError, PresignedUpload, Storage, StoredObject
from . import deletions

log = logging.getLogger(__name__)

DEFAULT_REAP_BATCH = 500
_ALLOWED_LIST = ", ".join(ALLOWED_IMAGE_TYPES)


@dataclass(frozen=True)
class PresignedPhoto:
    """A pending photo and the request that uploads its bytes."""

    photo: Photo
    upload: PresignedUpload
    expires_in: int


@dataclass(frozen=True)
class ReapResult:
    """What one reaper run did; `deletions_retried` counts recorded deletions that now succeeded."""

    expired_uploads_removed: int
    deletions_retried: int
    deletions_failed: int


def create_presigned(
    session: Session,
    storage: Storage,
    *,
    owner_id: int,
    filename: str,
    content_type: str,
    file_size: int,
    max_upload_bytes: int,
    expires_in: int,
    album_id: int | None = None,
    title: str | None = None,
    description: str | None = None,
) -> PresignedPhoto:
    """Create a pending photo and presign its upload; 422 for a bad type or size, 404 for a foreign album.

    With `album_id` the membership row is written now, in the same transaction: album listings and
    counts only show ready photos, so the photo appears in the album exactly when it is confirmed, and
    the row disappears with the photo (ON DELETE CASCADE) if it never is.
    """
    content_type = content_type.strip().lower()  # media types are case-insensitive (RFC 9110 §8.3.1)
    problems = []
    if content_type not in ALLOWED_IMAGE_TYPES:
        problems.append(FieldError("content_type", f"must be one of: {_ALLOWED_LIST}"))
    if file_size < 1:
        problems.append(FieldError("file_size", "must be at least 1 byte"))
    elif file_size > max_upload_bytes:
        problems.append(
            FieldError("file_size", f"must not exceed the upload limit of {max_upload_bytes} bytes (MAX_UPLOAD_BYTES)")
        )
    if problems:
        raise ValidationFailedError(problems)
    if album_id is not None and not _owns_album(session, owner_id, album_id):
        raise NotFoundError("Album not found")

    key = new_object_key(owner_id, content_type)
    upload = storage.presign_upload(key, content_type=content_type, expires_in=expires_in)
    photo = Photo(
        owner_id=owner_id,
        filename=key,
        original_filename=sanitize_filename(filename),
        content_type=content_type,
        file_size=file_size,
        checksum=None,
        title=title,
        description=description,
        status=PhotoStatus.PENDING,
        # The URL's own expiry, so the row and the signature close the window at the same second.
        upload_expires_at=datetime.fromtimestamp(upload.expires_at, tz=UTC),
    )
    session.add(photo)
    if album_id is not None:
        session.flush()  # the photo id for the membership row
        session.add(AlbumPhoto(album_id=album_id, photo_id=photo.id))
    try:
        session.commit()
    except IntegrityError:
        # Only the album foreign key can fail here: the album was deleted after the ownership check.
        session.rollback()
        raise NotFoundError("Album not found") from None
    return PresignedPhoto(photo=photo, upload=upload, expires_in=expires_in)


def receive_upload(
    session: Session, storage: Storage, *, key: str, stream: BinaryIO, max_bytes: int, now: datetime | None = None
) -> StoredObject:
    """Stream an upload for the pending photo stored under `key`, typed as declared; the bytes are checked at confirm.

    404 when no pending photo has this key (a ready photo's verified bytes must not be replaced through a
    URL that is still valid), 410 when its window has closed, 413 past `max_bytes`.
    """
    now = now or utcnow()
    photo = session.scalars(select(Photo).where(Photo.filename == key)).one_or_none()
    if photo is None or photo.status != PhotoStatus.PENDING:
        raise NotFoundError("No pending upload for this URL")
    if photo.upload_expires_at is None or photo.upload_expires_at <= now:
        raise GoneError("The upload window has closed")
    photo_id, content_type = photo.id, photo.content_type
    # Release the connection while a slow client sends its bytes; an open transaction would also hit
    # PostgreSQL's idle-in-transaction timeout on a long upload.
    session.rollback()
    try:
        obj = storage.put(key, stream, content_type=content_type, max_bytes=max_bytes)
    except ObjectTooLargeError:
        raise PayloadTooLargeError(f"Upload exceeds the limit of {max_bytes} bytes (MAX_UPLOAD_BYTES)") from None
    status = session.scalar(select(Photo.status).where(Photo.id == photo_id))
    session.rollback()
    if status is None:
        # Reaped, rejected or deleted while the bytes were arriving: nobody would ever reap this object.
        deletions.delete_objects(session, storage, [key])
        raise GoneError("The upload was removed while it was being received")
    if status != PhotoStatus.PENDING:
        # Confirm ran while these bytes were arriving and verified the previous object. Nothing can be
        # undone here; the row's checksum still names the verified bytes.
        log.error("upload replaced a confirmed object", extra={"photo_id": photo_id, "object_key": key})
        raise ConflictError("The photo was confirmed while this upload was in progress")
    return obj


def confirm(
    session: Session,
    storage: Storage,
    *,
    owner_id: int,
    photo_id: int,
    max_upload_bytes: int,
    now: datetime | None = None,
) -> Photo:
    """Verify a pending photo's stored object and make the photo ready; a ready photo is returned as is.

    404 when the photo is not the caller's. No object yet: 422 while the window is open (the row stays,
    so the client can still upload), 410 once it has closed (the reaper removes the row). An object that
    does not match the declaration (size, limit, sniffed type) is a 422 naming each failing check, and
    both row and object are removed.
    """
    now = now or utcnow()
    photo = _owned_photo(session, owner_id, photo_id)
    if photo.status == PhotoStatus.READY:
        return photo
    key = photo.filename
    session.commit()  # no transaction held open while storage answers (the session keeps `photo` loaded)
    try:
        obj = storage.head(key)
    except ObjectNotFoundError:
        if photo.upload_expires_at is not None and photo.upload_expires_at <= now:
            raise GoneError("The upload window closed before the object was uploaded") from None
        raise ValidationFailedError(
            [FieldError("photo_id", "no object has been uploaded for this photo yet")],
            detail="Upload the file to upload_url before confirming",
        ) from None

    problems = _check_object(storage, photo, obj, max_upload_bytes)
    if problems:
        if _reject(session, storage, photo):
            raise ValidationFailedError(
                problems, detail="The uploaded file does not match the declaration; it was removed"
            )
        # Another confirm (with a newer object) or the reaper got to the row first: answer what is there now.
        return _owned_photo(session, owner_id, photo_id, refresh=True)

    # The flip is the claim: of two confirms, or a confirm and a reaper, only one statement matches.
    flipped = session.scalar(
        update(Photo)
        .where(Photo.id == photo.id, Photo.status == PhotoStatus.PENDING)
        .values(
            status=PhotoStatus.READY,
            checksum=obj.etag,
            file_size=obj.size,
            upload_expires_at=None,
            updated_at=now,
        )
        .returning(Photo.id),
        execution_options={"synchronize_session": False},
    )
    session.commit()
    if flipped is None:
        log.info("confirm lost a race", extra={"photo_id": photo.id})
    return _owned_photo(session, owner_id, photo_id, refresh=True)


def reap(session: Session, storage: Storage, now: datetime, batch: int = DEFAULT_REAP_BATCH) -> ReapResult:
    """Remove expired pending photos (row, then object) and retry recorded object deletions.

    Safe on every instance at once: rows are removed by a conditional DELETE ... RETURNING, so an
    instance deletes exactly the objects whose rows its own statement removed.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    expired = (Photo.status == PhotoStatus.PENDING, Photo.upload_expires_at < now)
    removed = 0
    while True:
        ids = session.scalars(select(Photo.id).where(*expired).order_by(Photo.upload_expires_at).limit(batch)).all()
        if not ids:
            break
        # Conditions repeated: a confirm may have made a row ready since the SELECT above.
        keys = session.scalars(
            delete(Photo)
            .where(Photo.id.in_(ids), *expired)
            .returning(Photo.filename)
            .execution_options(synchronize_session=False)
        ).all()
        session.commit()  # rows first: a crash after this leaves an orphan object, never a row without bytes
        deletions.delete_objects(session, storage, list(keys))
        removed += len(keys)
        if keys:
            log.info("expired uploads removed", extra={"count": len(keys)})
        if len(ids) < batch:
            break
    done, failed = deletions.retry_pending(session, storage, now=now)
    return ReapResult(expired_uploads_removed=removed, deletions_retried=done, deletions_failed=failed)


def _owns_album(session: Session, owner_id: int, album_id: int) -> bool:
    return session.scalar(select(Album.id).where(Album.id == album_id, Album.owner_id == owner_id)) is not None


def _owned_photo(session: Session, owner_id: int, photo_id: int, *, refresh: bool = False) -> Photo:
    query = select(Photo).where(Photo.id == photo_id, Photo.owner_id == owner_id)
    if refresh:
        query = query.execution_options(populate_existing=True)
    photo = session.scalars(query).one_or_none()
    if photo is None:
        raise NotFoundError("Photo not found")
    return photo


def _check_object(storage: Storage, photo: Photo, obj: StoredObject, max_upload_bytes: int) -> list[FieldError]:
    problems = []
    if obj.size != photo.file_size:
        problems.append(
            FieldError("file_size", f"the uploaded file has {obj.size} bytes, {photo.file_size} were declared")
        )
    elif obj.size > max_upload_bytes:  # the limit may have been lowered since the presign
        problems.append(FieldError("file_size", f"the uploaded file exceeds the limit of {max_upload_bytes} bytes"))
    sniffed = sniff_image_type(_leading_bytes(storage, photo.filename, obj.size))
    if sniffed is None:
        problems.append(FieldError("content_type", f"the uploaded file is not an image of type: {_ALLOWED_LIST}"))
    elif sniffed != photo.content_type:
        problems.append(
            FieldError("content_type", f"the uploaded file is {sniffed}, {photo.content_type} was declared")
        )
    return problems


def _leading_bytes(storage: Storage, key: str, size: int) -> bytes:
    if size == 0:
        return b""  # a range on an empty object is unsatisfiable
    with storage.open(key, byte_range=(0, SNIFF_BYTES - 1)) as reader:
        return b"".join(reader)


def _reject(session: Session, storage: Storage, photo: Photo) -> bool:
    """Remove a pending photo whose object failed verification: the row (if still pending), then the object."""
    removed = session.scalars(
        delete(Photo)
        .where(Photo.id == photo.id, Photo.status == PhotoStatus.PENDING)
        .returning(Photo.filename)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    if not removed:
        return False
    deletions.delete_objects(session, storage, list(removed))
    return True
