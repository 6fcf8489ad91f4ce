"""Photos: streamed upload (object first, then the row), list, read, edit and delete."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import BinaryIO, Protocol, cast

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from ..errors import FieldError, NotFound, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from ..images import ALLOWED_IMAGE_TYPES, SNIFF_BYTES, new_object_key, sanitize_filename, sniff_image_type
from ..models import Album, AlbumPhoto, Photo, PhotoStatus
from ..storage import ObjectNotFound, ObjectTooLarge, Storage, StoredObject
from . import deletions

log = logging.getLogger(__name__)

# Ids are 32-bit integer columns: a larger id names no row, and SQLite cannot even bind one past 2**63.
MAX_ID = 2**31 - 1
EDITABLE_FIELDS = frozenset({"title", "description"})
PHOTO_NOT_FOUND = "Photo not found"
ALBUM_NOT_FOUND = "Album not found"
FILE_FIELD = "file"


class Readable(Protocol):
    """The one method an upload stream needs."""

    def read(self, size: int = -1, /) -> bytes: ...


class _Prepended:
    """`head` followed by the rest of `stream`: the sniffed bytes go to storage without re-reading."""

    def __init__(self, head: bytes, stream: Readable) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            out, self._head = self._head + self._stream.read(), b""
            return out
        if self._head:
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._stream.read(size)


def _read_head(stream: Readable, size: int) -> bytes:
    # A stream may return fewer bytes than asked before its end (a part split across network reads).
    head = b""
    while len(head) < size:
        chunk = stream.read(size - len(head))
        if not chunk:
            break
        head += chunk
    return head


def store_image(storage: Storage, *, owner_id: int, stream: Readable, max_bytes: int) -> StoredObject:
    """Stream an upload to storage under a fresh key once its first bytes prove an allowed image type.

    Nothing is stored when the file is empty (422), not an allowed image (415, whatever the client
    claimed) or longer than `max_bytes` (413, noticed while streaming).
    """
    head = _read_head(stream, SNIFF_BYTES)
    if not head:
        raise ValidationFailed([FieldError(FILE_FIELD, "must not be empty")])
    content_type = sniff_image_type(head)
    if content_type is None:
        raise UnsupportedMediaType(f"The file must be one of: {', '.join(ALLOWED_IMAGE_TYPES)}")
    key = new_object_key(owner_id, content_type)
    body = cast(BinaryIO, _Prepended(head, stream))  # Storage.put reads nothing but read(n)
    try:
        return storage.put(key, body, content_type=content_type, max_bytes=max_bytes)
    except ObjectTooLarge:
        raise PayloadTooLarge(f"The file is larger than {max_bytes} bytes") from None


def create_photo(
    session: Session,
    storage: Storage,
    *,
    owner_id: int,
    image: StoredObject,
    client_filename: str | None,
    title: str | None,
    description: str | None,
    album_id: int | None,
) -> Photo:
    """Record a stored image as the owner's ready photo, in `album_id` when given, and commit.

    Takes over the stored object: if the row step fails (an album that is not the owner's, a DB
    error), the object is deleted again, so a refused upload leaves nothing behind.
    """
    try:
        if album_id is not None:
            # FOR KEY SHARE: the album cannot be deleted between this check and our commit (PostgreSQL).
            owned = session.scalar(
                select(Album.id).where(Album.id == album_id, Album.owner_id == owner_id).with_for_update(key_share=True)
            )
            if owned is None:
                raise NotFound(ALBUM_NOT_FOUND)
        photo = Photo(
            owner_id=owner_id,
            filename=image.key,
            original_filename=sanitize_filename(client_filename),
            content_type=image.content_type,
            file_size=image.size,
            checksum=image.etag,
            title=title,
            description=description,
            status=PhotoStatus.READY,
        )
        session.add(photo)
        if album_id is not None:
            session.flush()  # the photo's id, for the membership
            session.add(AlbumPhoto(album_id=album_id, photo_id=photo.id))
        session.commit()
    except BaseException:
        discard_image(session, storage, image.key)
        raise
    return photo


def discard_image(session: Session, storage: Storage, key: str) -> None:
    """Delete the object of an upload that was refused after it was stored; never raises.

    Rolls back first (the failure may have left the session mid-transaction); a failed delete is
    recorded for the reaper, and if even that fails the orphan is logged for a later sweep.
    """
    # The failure may be a dead connection, whose rollback fails too: the delete itself needs no DB.
    with contextlib.suppress(Exception):
        session.rollback()
    try:
        deletions.delete_objects(session, storage, [key])
    except Exception:
        # Raising here would hide the error that refused the upload, which is what the client must see.
        log.exception("could not remove the object of a refused upload", extra={"object_key": key})


def get_photo(session: Session, *, owner_id: int, photo_id: int, ready_only: bool = True) -> Photo:
    """The owner's photo; NotFound (404) when missing, someone else's, or (by default) still pending."""
    if not 0 < photo_id <= MAX_ID:
        raise NotFound(PHOTO_NOT_FOUND)
    query = select(Photo).where(Photo.id == photo_id, Photo.owner_id == owner_id)
    if ready_only:
        query = query.where(Photo.status == PhotoStatus.READY)
    photo = session.scalars(query).one_or_none()
    if photo is None:
        raise NotFound(PHOTO_NOT_FOUND)
    return photo


def list_photos(session: Session, *, owner_id: int, skip: int, limit: int) -> Sequence[Photo]:
    """A page of the owner's ready photos, newest first (id breaks ties between equal timestamps)."""
    return session.scalars(
        select(Photo)
        .where(Photo.owner_id == owner_id, Photo.status == PhotoStatus.READY)
        .order_by(Photo.created_at.desc(), Photo.id.desc())
        .offset(skip)
        .limit(limit)
    ).all()


def update_photo(session: Session, *, owner_id: int, photo_id: int, changes: Mapping[str, str | None]) -> Photo:
    """Set the given fields (title, description; None clears one) of the owner's photo and commit."""
    unknown = set(changes) - EDITABLE_FIELDS
    if unknown:
        raise ValueError(f"not editable: {sorted(unknown)}")
    photo = get_photo(session, owner_id=owner_id, photo_id=photo_id)
    for name, value in changes.items():
        setattr(photo, name, value)
    try:
        session.commit()
    except StaleDataError:
        # Deleted by a concurrent request between our read and our UPDATE.
        session.rollback()
        raise NotFound(PHOTO_NOT_FOUND) from None
    return photo


def delete_photo(session: Session, storage: Storage, *, owner_id: int, photo_id: int) -> None:
    """Delete the owner's photo: the row in the transaction, then its object after the commit.

    Album memberships go by FK cascade and an album whose cover it was gets a NULL cover. A failed
    object delete is recorded for the reaper; the photo is gone for the client either way.
    """
    if not 0 < photo_id <= MAX_ID:
        raise NotFound(PHOTO_NOT_FOUND)
    # One statement finds and deletes, so two concurrent deletes cannot both succeed.
    key = session.scalar(
        delete(Photo)
        .where(Photo.id == photo_id, Photo.owner_id == owner_id, Photo.status == PhotoStatus.READY)
        .returning(Photo.filename)
    )
    if key is None:
        session.rollback()
        raise NotFound(PHOTO_NOT_FOUND)
    session.commit()
    deletions.delete_objects(session, storage, [key])


def image_etag(storage: Storage, photo: Photo) -> str:
    """The photo's ETag (MD5 hex): recorded at upload, else asked of the store; NotFound if the object is gone."""
    if photo.checksum:
        return photo.checksum
    try:
        return storage.head(photo.filename).etag
    except ObjectNotFound:
        log.error("stored object missing for an existing row", extra={"object_key": photo.filename})
        raise NotFound("Image not found") from None
