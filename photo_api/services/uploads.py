"""Direct uploads: presign a pending photo, receive its bytes, confirm them, and reap what was never confirmed.

The lifecycle of a presigned upload:

1. `create_presigned` writes a *pending* row (declared size and type, `upload_expires_at` equal to the
   upload URL's own expiry) whose `filename` is a *staging* key, and returns the storage's presigned
   PUT for that key.
2. The client PUTs the bytes straight to storage (Swift TempURL), or, with local storage, to this
   service's signed upload route, which calls `receive_upload`.
3. `confirm` checks the staged object against the declaration, copies exactly the bytes it checked to a
   fresh final key (a copy conditional on their ETag) and flips the row to *ready* naming that key; or
   removes row and object when they disagree. The upload URL stays valid until it expires, but it names
   only the staging key: whatever is PUT there after the check never reaches the served object.
4. `reap` removes pending rows whose window has passed, with their objects, on any number of
   instances at once.

Every state change that two processes may attempt together (confirm twice, confirm vs reaper, two
reapers) is one conditional statement on `status = 'pending'`, and only the caller whose statement
matched the row acts on the object. Two confirms of one photo copy to a key each, so the loser's copy
is deleted without touching the winner's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import (
    ConflictError,
    FieldError,
    GoneError,
    NotFoundError,
    PayloadTooLargeError,
    TooManyRequestsError,
    ValidationFailedError,
)
from ..images import (
    ALLOWED_IMAGE_TYPES,
    SNIFF_BYTES,
    new_object_key,
    new_staging_key,
    sanitize_filename,
    sniff_image_type,
)
from ..models import Album, AlbumPhoto, Photo, PhotoStatus, User, utcnow
from ..storage import (
    ObjectChangedError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    PresignedUpload,
    RangeOutsideObjectError,
    Storage,
    StorageError,
    StoredObject,
)
from . import deletions, photos

log = logging.getLogger(__name__)

DEFAULT_REAP_BATCH = 500
_ALLOWED_LIST = ", ".join(ALLOWED_IMAGE_TYPES)
UPLOAD_CHANGED = "The uploaded file changed while it was being confirmed; confirm again"


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
    max_pending_uploads: int,
    max_pending_bytes: int,
    album_id: int | None = None,
    title: str | None = None,
    description: str | None = None,
    now: datetime | None = None,
) -> PresignedPhoto:
    """Create a pending photo and presign its upload; 422 for a bad type or size, 404 for a foreign album.

    429 when the owner's pending uploads (presigned, not confirmed, window still open) would then be more
    than `max_pending_uploads` or declare more than `max_pending_bytes` in all; its `retry_after` is
    when the first of them expires. With `album_id` the membership row is written now, in the same
    transaction: album listings and counts only show ready photos, so the photo appears in the album
    exactly when it is confirmed, and the row disappears with the photo (ON DELETE CASCADE) if it never is.
    """
    now = now or utcnow()
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

    key = new_staging_key(owner_id, content_type)
    # Signed before the owner's row is locked below: it may need storage I/O (a token), and a URL that
    # is refused is only a signature nobody sees.
    upload = storage.presign_upload(key, content_type=content_type, expires_in=expires_in)
    _check_pending_quota(session, owner_id, file_size, max_pending_uploads, max_pending_bytes, now)
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
    """Stream an upload for the pending photo staged under `key`, typed as declared; the bytes are checked at confirm.

    Only a pending photo's key is written, and a confirmed photo is served from a copy under a key of its
    own, so nothing sent here can reach a confirmed photo's bytes. 404 when no pending photo has this
    key, 410 when its window has closed, 413 past `max_bytes`.
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
    row = session.execute(select(Photo.status, Photo.filename).where(Photo.id == photo_id)).one_or_none()
    session.rollback()
    if row is None:
        # Reaped, rejected or deleted while the bytes were arriving: nobody would ever reap this object.
        deletions.delete_objects(session, storage, [key])
        raise GoneError("The upload was removed while it was being received")
    if row.status != PhotoStatus.PENDING:
        if row.filename != key:
            # Confirm copied the bytes it verified to the photo's own key while these were arriving:
            # this staged object now belongs to no one.
            deletions.delete_objects(session, storage, [key])
        else:
            # Confirmed in place by an earlier release, which did not stage uploads: these bytes replaced
            # the photo's object. Nothing can be undone here.
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
) -> photos.Uploaded:
    """Verify a pending photo's staged object, copy it to a final key and make the photo ready.

    When the staged bytes are identical to one of the owner's ready photos, the pending photo and its
    staged object are discarded instead and that photo is answered (`duplicate`), added to the pending
    photo's album if it had one; confirming the discarded photo again is then a 404.

    A ready photo is returned as is. 404 when the photo is not the caller's. No object yet: 422 while
    the window is open (the row stays, so the client can still upload), 410 once it has closed. An object
    that does not match the declaration (size, limit, sniffed type) is a 422 naming each failing check,
    and both row and object are removed. 409 when the staged object was replaced between the check and
    the copy: the photo stays pending, and confirming again checks the new bytes.
    """
    now = now or utcnow()
    photo = _owned_photo(session, owner_id, photo_id)
    if photo.status == PhotoStatus.READY:
        return photos.Uploaded(photo)
    staged_key = photo.filename
    session.commit()  # no transaction held open while storage answers (the session keeps `photo` loaded)
    try:
        staged, head = _read_staged(storage, staged_key)
    except ObjectNotFoundError:
        current = _owned_photo(session, owner_id, photo_id, refresh=True)
        if current.status == PhotoStatus.READY:
            return photos.Uploaded(current)  # a concurrent confirm won and has already removed the staged object
        if photo.upload_expires_at is not None and photo.upload_expires_at <= now:
            raise GoneError("The upload window closed before the object was uploaded") from None
        raise ValidationFailedError(
            [FieldError("photo_id", "no object has been uploaded for this photo yet")],
            detail="Upload the file to upload_url before confirming",
        ) from None

    problems = _check_object(photo, staged, head, max_upload_bytes)
    if problems:
        if _reject(session, storage, photo):
            raise ValidationFailedError(
                problems, detail="The uploaded file does not match the declaration; it was removed"
            )
        # Another confirm (with a newer object) or the reaper got to the row first: answer what is there now.
        return photos.Uploaded(_owned_photo(session, owner_id, photo_id, refresh=True))

    existing = photos.same_content(session, owner_id, staged.etag)
    if existing is not None:
        return _confirm_duplicate(session, storage, photo, existing, now)

    # Conditional on the ETag just checked: the final key holds the verified bytes or nothing. The
    # comparison after it guards against a store that ignored the condition.
    final_key = new_object_key(photo.owner_id, photo.content_type)
    try:
        final = storage.copy(staged_key, final_key, content_type=photo.content_type, if_match=staged.etag)
    except ObjectChangedError:
        raise ConflictError(UPLOAD_CHANGED) from None
    except ObjectNotFoundError:
        current = _owned_photo(session, owner_id, photo_id, refresh=True)
        if current.status == PhotoStatus.READY:
            return photos.Uploaded(current)  # removed since the check by a confirm that won
        raise ConflictError(UPLOAD_CHANGED) from None
    if (final.etag, final.size) != (staged.etag, staged.size):
        deletions.delete_objects(session, storage, [final_key])
        raise ConflictError(UPLOAD_CHANGED)

    # The flip is the claim: of two confirms, or a confirm and a reaper, only one statement matches.
    try:
        flipped = session.scalar(
            update(Photo)
            .where(Photo.id == photo.id, Photo.status == PhotoStatus.PENDING)
            .values(
                status=PhotoStatus.READY,
                filename=final_key,
                checksum=final.etag,
                content_checksum=final.etag,
                file_size=final.size,
                upload_expires_at=None,
                updated_at=now,
            )
            .returning(Photo.id),
            execution_options={"synchronize_session": False},
        )
        session.commit()
    except IntegrityError as exc:
        # An identical photo of the owner was made ready since the look-up above (the unique index).
        session.rollback()
        deletions.delete_objects(session, storage, [final_key])
        winner = photos.same_content(session, owner_id, final.etag) if photos.is_duplicate_content(exc) else None
        if winner is None:
            raise
        return _confirm_duplicate(session, storage, photo, winner, now)
    if flipped is None:
        log.info("confirm lost a race", extra={"photo_id": photo.id})
        deletions.delete_objects(session, storage, [final_key])  # only this confirm's copy
    else:
        _retire_staged(session, storage, staged_key, photo.upload_expires_at, now)
    return photos.Uploaded(_owned_photo(session, owner_id, photo_id, refresh=True))


def _confirm_duplicate(
    session: Session, storage: Storage, pending: Photo, existing: Photo, now: datetime
) -> photos.Uploaded:
    """Discard a pending photo whose bytes the owner already has, and answer with the photo that has them."""
    # Read before the row goes (a rollback before this call may have expired them).
    pending_id, owner_id, staged_key, window_end = (
        pending.id,
        pending.owner_id,
        pending.filename,
        pending.upload_expires_at,
    )
    album_id = session.scalar(select(AlbumPhoto.album_id).where(AlbumPhoto.photo_id == pending_id).limit(1))
    removed = session.scalars(
        delete(Photo)
        .where(Photo.id == pending_id, Photo.status == PhotoStatus.PENDING)
        .returning(Photo.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    if not removed:
        # A concurrent confirm made it ready (or the reaper removed it): answer what is there now.
        return photos.Uploaded(_owned_photo(session, owner_id, pending_id, refresh=True))
    _retire_staged(session, storage, staged_key, window_end, now)
    return photos.answer_duplicate(session, existing, album_id)


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
    # Batch after batch: every confirmed upload schedules one delete (its staging key, once the URL has
    # expired), so a busy hour leaves far more due deletions than one batch.
    done = failed = 0
    while True:
        batch_done, batch_failed = deletions.retry_pending(session, storage, now=now, limit=batch)
        done, failed = done + batch_done, failed + batch_failed
        if batch_done + batch_failed < batch:
            break
    return ReapResult(expired_uploads_removed=removed, deletions_retried=done, deletions_failed=failed)


def _check_pending_quota(
    session: Session, owner_id: int, file_size: int, max_uploads: int, max_bytes: int, now: datetime
) -> None:
    """Lock the owner's row until the commit and refuse (429) a reservation beyond the owner's limits.

    The lock serialises one owner's presigns on PostgreSQL, so that concurrent ones cannot each count the
    same free slot; FOR NO KEY UPDATE does not block the FOR KEY SHARE that inserting photos takes.
    """
    session.execute(select(User.id).where(User.id == owner_id).with_for_update(key_share=True))
    count, declared, first_expiry = session.execute(
        select(
            func.count(Photo.id), func.coalesce(func.sum(Photo.file_size), 0), func.min(Photo.upload_expires_at)
        ).where(Photo.owner_id == owner_id, Photo.status == PhotoStatus.PENDING, Photo.upload_expires_at > now)
    ).one()
    if count + 1 > max_uploads:
        detail = (
            f"{count} uploads are pending, the most allowed (MAX_PENDING_UPLOADS_PER_USER): "
            "confirm them, or wait until they expire"
        )
    elif declared + file_size > max_bytes:
        detail = (
            f"Pending uploads declare {declared} bytes; {file_size} more would pass the limit of {max_bytes} "
            "(MAX_PENDING_UPLOAD_BYTES_PER_USER): confirm them, or wait until they expire"
        )
    else:
        return
    session.rollback()
    # The first reservation to expire frees room (none is pending only when one file alone is over the
    # byte limit, which config refuses: MAX_PENDING_UPLOAD_BYTES_PER_USER >= MAX_UPLOAD_BYTES).
    wait = (first_expiry - now).total_seconds() if first_expiry is not None else 1
    raise TooManyRequestsError(detail, retry_after=max(1, math.ceil(wait)))


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


def _read_staged(storage: Storage, key: str) -> tuple[StoredObject, bytes]:
    """The staged object's metadata and first bytes from one read, so that both describe the same version."""
    try:
        with storage.open(key, byte_range=(0, SNIFF_BYTES - 1)) as reader:
            return reader.obj, b"".join(reader)
    except RangeOutsideObjectError:
        return storage.head(key), b""  # an empty object: any range of it is unsatisfiable


def _check_object(photo: Photo, obj: StoredObject, head: bytes, max_upload_bytes: int) -> list[FieldError]:
    problems = []
    if obj.size != photo.file_size:
        problems.append(
            FieldError("file_size", f"the uploaded file has {obj.size} bytes, {photo.file_size} were declared")
        )
    elif obj.size > max_upload_bytes:  # the limit may have been lowered since the presign
        problems.append(FieldError("file_size", f"the uploaded file exceeds the limit of {max_upload_bytes} bytes"))
    sniffed = sniff_image_type(head)
    if sniffed is None:
        problems.append(FieldError("content_type", f"the uploaded file is not an image of type: {_ALLOWED_LIST}"))
    elif sniffed != photo.content_type:
        problems.append(
            FieldError("content_type", f"the uploaded file is {sniffed}, {photo.content_type} was declared")
        )
    return problems


def _retire_staged(session: Session, storage: Storage, key: str, window_end: datetime | None, now: datetime) -> None:
    """Delete a confirmed photo's staged object now, and once more after its upload URL has expired.

    Until then the URL can still write the staging key (a Swift TempURL cannot be revoked); nothing
    written there is served, and the scheduled delete keeps it from staying behind as an orphan.
    """
    deletions.schedule_delete(session, key, at=max(now, window_end or now))
    try:
        storage.delete(key)
    except StorageError as exc:
        log.warning(
            "staged object delete failed; the scheduled delete retries it",
            extra={"object_key": key, "error": type(exc).__name__},
        )


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
