"""Photos: the multipart upload rule (object first, then the row, else no object), list, read, edit and delete."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Select, bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from ..errors import FieldError, NotFoundError, PayloadTooLargeError, UnsupportedMediaTypeError, ValidationFailedError
from ..images import (
    ALLOWED_IMAGE_TYPES,
    SNIFF_BYTES,
    new_object_key,
    rendition_key,
    sanitize_filename,
    sniff_image_type,
)
from ..media import PREVIEW, THUMBNAIL
from ..models import MAX_ID, Album, AlbumPhoto, Photo, PhotoStatus, ProcessingStatus, is_id
from ..storage import CHUNK_SIZE, ObjectNotFoundError, ObjectTooLargeError, Storage, StoredObject
from . import deletions
from .fields import Description, Title, validation_errors

log = logging.getLogger(__name__)

EDITABLE_FIELDS = frozenset({"title", "description"})
PHOTO_NOT_FOUND = "Photo not found"
# The unique index of one photo per owner and content (models.py): its name in an IntegrityError means a
# duplicate upload lost the race to an identical one.
DUPLICATE_CONTENT_INDEX = "uq_photos_owner_content_checksum"
ALBUM_NOT_FOUND = "Album not found"
FILE_FIELD = "file"
# A text field longer than this cannot be valid: stop buffering it instead of holding a hostile body
# (a 10,000-character description is up to 40,000 bytes of UTF-8).
MAX_FIELD_BYTES = 48 * 1024


class Readable(Protocol):
    """The one method an upload stream needs."""

    def read(self, size: int = -1, /) -> bytes: ...


class FormPart(Readable, Protocol):
    """One part of a multipart upload body, as the API's parser yields them, in order.

    A part can be read until the next one is asked for; whatever was not read of it is then skipped.
    """

    @property
    def name(self) -> str: ...

    @property
    def filename(self) -> str | None:
        """The part's file name; None for a plain text field."""


class PhotoUploadForm(BaseModel):
    """The text fields of an upload; multipart values arrive as strings, hence lax validation."""

    model_config = ConfigDict(extra="ignore")

    album_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    title: Title | None = None
    description: Description | None = None


@dataclass
class _Upload:
    """What the parts of an upload held so far."""

    image: StoredObject | None = None
    filename: str | None = None
    seen_file: bool = False
    fields: dict[str, str] = field(default_factory=dict)
    errors: list[FieldError] = field(default_factory=list)


@dataclass(frozen=True)
class Uploaded:
    """The photo an upload answers with: the new one, or (`duplicate`) the owner's photo with the same bytes."""

    photo: Photo
    duplicate: bool = False


def upload_photo(
    session: Session, storage: Storage, *, owner_id: int, parts: Iterable[FormPart], max_bytes: int
) -> Uploaded:
    """Store the file of a multipart upload and record it as the owner's ready photo (in its `album_id`, if any).

    The file is streamed to storage as its part arrives, its type decided by its first bytes (415
    unless an allowed image; 413 past `max_bytes`; 422 when empty). Fields may come before or after
    the file; an empty text field counts as absent (HTML forms send every input); a field given twice
    or a second file is 422; unknown fields are ignored. When the fields before the file already
    fail, the file is skipped rather than stored, and parsing goes on so that every failing field is
    named. Once the file is stored, anything that fails (a field after it, the album check, the
    database, the client leaving mid-body) deletes it again: a refused upload leaves nothing behind.

    Bytes identical to one of the owner's ready photos (same checksum) create nothing: the object just
    stored is deleted and that photo is answered (`duplicate`), added to the form's album when one is given.
    """
    upload = _Upload()
    try:
        for part in parts:
            if part.name == FILE_FIELD:
                _receive_file(upload, part, storage, owner_id=owner_id, max_bytes=max_bytes)
            elif part.filename is not None or part.name not in PhotoUploadForm.model_fields:
                continue  # unknown fields are ignored, and so are files under another name
            elif part.name in upload.fields:
                upload.errors.append(FieldError(part.name, "given more than once"))
            else:
                value = _read_text(part)
                if value is None:
                    upload.errors.append(FieldError(part.name, "too long or not UTF-8 text"))
                else:
                    upload.fields[part.name] = value
        if not upload.seen_file:
            upload.errors.insert(0, FieldError(FILE_FIELD, "a file is required"))
        form, form_errors = _validate_form(upload.fields)
        if form is None or upload.errors:
            raise ValidationFailedError(upload.errors + form_errors)
        assert upload.image is not None  # a file was seen without errors, so it was stored
        uploaded = _insert_photo(
            session, owner_id=owner_id, image=upload.image, client_filename=upload.filename, form=form
        )
    except BaseException:
        if upload.image is not None:
            _discard_image(session, storage, upload.image.key)
        raise
    if uploaded.duplicate:
        _discard_image(session, storage, upload.image.key)  # the owner's photo already holds these bytes
    return uploaded


def _receive_file(upload: _Upload, part: FormPart, storage: Storage, *, owner_id: int, max_bytes: int) -> None:
    if upload.seen_file:
        upload.errors.append(FieldError(FILE_FIELD, "only one file per upload"))
        return
    upload.seen_file = True
    # A `file` sent without a filename (curl -F 'file=<x.jpg') is still the file.
    upload.filename = part.filename
    if upload.errors or _validate_form(upload.fields)[1]:
        return  # the upload is refused anyway: do not store what would be deleted again
    try:
        upload.image = _store_image(storage, owner_id=owner_id, stream=part, max_bytes=max_bytes)
    except ValidationFailedError as exc:  # an empty file: keep parsing, to report the other fields too
        upload.errors.extend(exc.errors)


def _validate_form(fields: dict[str, str]) -> tuple[PhotoUploadForm | None, list[FieldError]]:
    # HTML forms send every input, the empty ones included: an empty value means "not given".
    given = {name: value for name, value in fields.items() if value != ""}
    try:
        return PhotoUploadForm.model_validate(given), []
    except ValidationError as exc:
        return None, validation_errors(exc)


def _read_text(part: Readable) -> str | None:
    """A text part's value, or None when it is too long to be valid or not UTF-8."""
    data = b""
    while chunk := part.read(CHUNK_SIZE):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            return None  # the rest of the part is skipped with it
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


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


def _store_image(storage: Storage, *, owner_id: int, stream: Readable, max_bytes: int) -> StoredObject:
    """Stream an upload to storage under a fresh key once its first bytes prove an allowed image type.

    Nothing is stored when the file is empty (422), not an allowed image (415, whatever the client
    claimed) or longer than `max_bytes` (413, noticed while streaming).
    """
    head = _read_head(stream, SNIFF_BYTES)
    if not head:
        raise ValidationFailedError([FieldError(FILE_FIELD, "must not be empty")])
    content_type = sniff_image_type(head)
    if content_type is None:
        raise UnsupportedMediaTypeError(f"The file must be one of: {', '.join(ALLOWED_IMAGE_TYPES)}")
    key = new_object_key(owner_id, content_type)
    body = cast(BinaryIO, _Prepended(head, stream))  # Storage.put reads nothing but read(n)
    try:
        return storage.put(key, body, content_type=content_type, max_bytes=max_bytes)
    except ObjectTooLargeError:
        raise PayloadTooLargeError(f"The file is larger than {max_bytes} bytes") from None


def _insert_photo(
    session: Session, *, owner_id: int, image: StoredObject, client_filename: str | None, form: PhotoUploadForm
) -> Uploaded:
    """Record a stored image as the owner's ready photo, in the form's album when given, and commit; or
    answer the owner's photo with the same bytes (`duplicate`: the caller deletes the stored image)."""
    album_id = form.album_id
    if album_id is not None:
        # FOR KEY SHARE: the album cannot be deleted between this check and our commit (PostgreSQL), while
        # other uploads into the same album, which take the same weak lock, do not wait for each other.
        owned = session.scalar(
            select(Album.id)
            .where(Album.id == album_id, Album.owner_id == owner_id)
            .with_for_update(read=True, key_share=True)
        )
        if owned is None:
            raise NotFoundError(ALBUM_NOT_FOUND)
    existing = same_content(session, owner_id, image.etag)
    if existing is not None:
        return answer_duplicate(session, existing, album_id)
    photo = Photo(
        owner_id=owner_id,
        filename=image.key,
        original_filename=sanitize_filename(client_filename),
        content_type=image.content_type,
        file_size=image.size,
        checksum=image.etag,
        content_checksum=image.etag,
        title=form.title,
        description=form.description,
        status=PhotoStatus.READY,
    )
    session.add(photo)
    if album_id is not None:
        session.flush()  # the photo's id, for the membership
        session.add(AlbumPhoto(album_id=album_id, photo_id=photo.id))
    try:
        session.commit()
    except IntegrityError as exc:
        # An identical upload of the same owner committed first (the unique index): answer with it.
        if not is_duplicate_content(exc):
            raise
        session.rollback()
        winner = same_content(session, owner_id, image.etag)
        if winner is None:  # deleted again in the meantime: nothing to answer with
            raise
        return answer_duplicate(session, winner, album_id)
    return Uploaded(photo)


def is_duplicate_content(exc: IntegrityError) -> bool:
    """The error is the unique index of one photo per owner and content (PostgreSQL names the index,
    SQLite its columns)."""
    message = str(exc.orig)
    return DUPLICATE_CONTENT_INDEX in message or "photos.content_checksum" in message


def same_content(session: Session, owner_id: int, checksum: str | None) -> Photo | None:
    """The owner's ready photo whose bytes have `checksum`, if any (the unique index answers it)."""
    if not checksum:
        return None
    return session.scalars(
        select(Photo).where(
            Photo.owner_id == owner_id, Photo.content_checksum == checksum, Photo.status == PhotoStatus.READY
        )
    ).one_or_none()


def answer_duplicate(session: Session, photo: Photo, album_id: int | None) -> Uploaded:
    """`photo` as the answer to an upload of its bytes, added to `album_id` (already checked) when given."""
    log.info("duplicate upload", extra={"photo_id": photo.id})
    if album_id is not None:
        member = session.scalar(
            select(AlbumPhoto.id).where(AlbumPhoto.album_id == album_id, AlbumPhoto.photo_id == photo.id)
        )
        if member is None:
            session.add(AlbumPhoto(album_id=album_id, photo_id=photo.id))
            try:
                session.commit()
            except IntegrityError:
                # Added at the same moment by another request, or the album was deleted since: either way
                # there is nothing more to do for this upload.
                session.rollback()
    session.commit()
    return Uploaded(photo, duplicate=True)


def _discard_image(session: Session, storage: Storage, key: str) -> None:
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
    """The owner's photo; NotFoundError (404) when missing, someone else's, or (by default) still pending."""
    if not is_id(photo_id):
        raise NotFoundError(PHOTO_NOT_FOUND)
    query = select(Photo).where(Photo.id == photo_id, Photo.owner_id == owner_id)
    if ready_only:
        query = query.where(Photo.status == PhotoStatus.READY)
    photo = session.scalars(query).one_or_none()
    if photo is None:
        raise NotFoundError(PHOTO_NOT_FOUND)
    return photo


SortField = Literal["created_at", "taken_at"]
SortOrder = Literal["asc", "desc"]


def list_photos(
    session: Session,
    columns: tuple[str, ...],
    *,
    owner_id: int,
    skip: int,
    limit: int,
    sort: SortField = "created_at",
    order: SortOrder = "desc",
    taken_after: datetime | None = None,
    taken_before: datetime | None = None,
) -> list[dict[str, Any]]:
    """A page of the owner's ready photos, by upload time (default, newest first) or by the time taken.

    Each photo is a dict of `columns` (names of Photo attributes), read as table rows, not ORM objects: a
    page of photos is only serialised, and objects (identity map, instrumentation, every attribute read
    back) made GET /photos?limit=50 cost 16.9 million instructions against 9.0 with rows
    (ops/bench/RESULTS.md, "Photo pages from table rows").

    Sorted by `taken_at`, photos that do not say when they were taken (no EXIF date, or not processed yet)
    come last in either order. `taken_after` (inclusive) and `taken_before` (exclusive) keep only photos
    taken in that window. The id breaks ties, so pages never overlap.
    """
    statement = _photo_page(columns, sort, order, taken_after is not None, taken_before is not None)
    values: dict[str, Any] = {"owner_id": owner_id, "skip": skip, "limit": limit}
    if taken_after is not None:
        values["taken_after"] = taken_after
    if taken_before is not None:
        values["taken_before"] = taken_before
    return [dict(zip(columns, row, strict=True)) for row in session.execute(statement, values)]


@functools.lru_cache(maxsize=64)
def _photo_page(columns: tuple[str, ...], sort: SortField, order: SortOrder, after: bool, before: bool) -> Select[Any]:
    """The page statement of one shape, built once, with bind parameters for the values.

    Built per request, its construction and its cache key (which SQLAlchemy computes once per statement
    object) were 14 % of a page's instructions.
    """
    query = select(*(getattr(Photo, name) for name in columns)).where(
        Photo.owner_id == bindparam("owner_id"), Photo.status == PhotoStatus.READY
    )
    if after:
        query = query.where(Photo.taken_at >= bindparam("taken_after"))
    if before:
        query = query.where(Photo.taken_at < bindparam("taken_before"))
    # Each order is one index's (models.Photo): its first 50 rows are read, the owner's others never are.
    # created_at is never NULL; a NULLS LAST on it would not match the index, and PostgreSQL would read
    # and sort every photo of the owner for each page.
    if order == "asc":
        by = Photo.taken_at.asc().nulls_last() if sort == "taken_at" else Photo.created_at.asc()
        query = query.order_by(by, Photo.id.asc())
    else:
        by = Photo.taken_at.desc().nulls_last() if sort == "taken_at" else Photo.created_at.desc()
        query = query.order_by(by, Photo.id.desc())
    return query.offset(bindparam("skip")).limit(bindparam("limit"))


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
        raise NotFoundError(PHOTO_NOT_FOUND) from None
    return photo


def delete_photo(session: Session, storage: Storage, *, owner_id: int, photo_id: int) -> None:
    """Delete the owner's photo: the row in the transaction, then its object after the commit.

    Album memberships go by FK cascade and an album whose cover it was gets a NULL cover. A failed
    object delete is recorded for the reaper; the photo is gone for the client either way.
    """
    if not is_id(photo_id):
        raise NotFoundError(PHOTO_NOT_FOUND)
    # One statement finds and deletes, so two concurrent deletes cannot both succeed.
    row = session.execute(
        delete(Photo)
        .where(Photo.id == photo_id, Photo.owner_id == owner_id, Photo.status == PhotoStatus.READY)
        .returning(Photo.filename, Photo.rendition_type, Photo.stripped_key)
    ).one_or_none()
    if row is None:
        session.rollback()
        raise NotFoundError(PHOTO_NOT_FOUND)
    session.commit()
    # A job still running stores its renditions after this, finds the row gone and removes them itself.
    keys = [row.filename, *_rendition_keys(owner_id, photo_id, row.rendition_type)]
    if row.stripped_key and row.stripped_key != row.filename:
        keys.append(row.stripped_key)
    deletions.delete_objects(session, storage, keys)


@dataclass(frozen=True)
class RenditionRef:
    """Where one stored rendition of a photo is, and what delivery needs to know of it."""

    key: str
    content_type: str
    extension: str
    size: int
    etag: str


def rendition(photo: Photo, name: str) -> RenditionRef | None:
    """The photo's rendition `name` (`thumb` or `preview`), or None while its processing is not ready."""
    if photo.processing_status != ProcessingStatus.READY or photo.rendition_type is None:
        return None
    sizes = {
        THUMBNAIL.name: (photo.thumbnail_size, photo.thumbnail_etag),
        PREVIEW.name: (photo.preview_size, photo.preview_etag),
    }
    size, etag = sizes.get(name, (None, None))
    extension = ALLOWED_IMAGE_TYPES.get(photo.rendition_type)
    if size is None or etag is None or extension is None:
        return None
    return RenditionRef(
        key=rendition_key(photo.owner_id, photo.id, name, extension),
        content_type=photo.rendition_type,
        extension=extension,
        size=size,
        etag=etag,
    )


def _rendition_keys(owner_id: int, photo_id: int, rendition_type: str | None) -> list[str]:
    extension = ALLOWED_IMAGE_TYPES.get(rendition_type or "")
    if extension is None:
        return []
    return [rendition_key(owner_id, photo_id, spec.name, extension) for spec in (THUMBNAIL, PREVIEW)]


def object_etag(storage: Storage, key: str) -> str:
    """An object's ETag (MD5 hex) asked of the store; NotFoundError (404) if the object is gone."""
    try:
        return storage.head(key).etag
    except ObjectNotFoundError:
        log.error("stored object missing for an existing row", extra={"object_key": key})
        raise NotFoundError("Image not found") from None
