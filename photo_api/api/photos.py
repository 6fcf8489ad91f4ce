"""Photo routes: streamed multipart upload, list, read, edit, delete and the image bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.multipart import Data, Epilogue, Event, File, MultipartDecoder, NeedData, Preamble
from werkzeug.sansio.multipart import Field as FormField

from .. import metrics
from ..errors import BadRequest, FieldError, PayloadTooLarge, ValidationFailed
from ..images import ALLOWED_IMAGE_TYPES
from ..services import photos
from ..storage import CHUNK_SIZE, StoredObject
from .common import auth_required, current_user, db_session, json_body, query_args, respond, runtime, validation_errors
from .delivery import deliver_image
from .openapi import doc
from .schemas import Description, Pagination, PhotoOut, Title

bp = Blueprint("photos", __name__, url_prefix="/photos")

# Room for what surrounds the file in a multipart body: boundaries, part headers and the text fields
# (a 10,000-character description is up to 40,000 bytes of UTF-8).
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# A text field longer than this cannot be valid: stop buffering it instead of holding a hostile body.
MAX_FIELD_BYTES = 48 * 1024
# What the decoder may hold while looking for a boundary or the end of a part's headers; file data
# passes through in chunks, so only a preamble or a header block that never ends could reach this.
MAX_DECODER_BUFFER_BYTES = 4 * CHUNK_SIZE
# file, album_id, title, description, and a few unknown fields a client may add (they are skipped).
MAX_PARTS = 16
# RFC 2046 allows 70 characters, but real clients (werkzeug's test client among them) sometimes send a
# few more; the cap only keeps the decoder's boundary search cheap.
MAX_BOUNDARY_LENGTH = 200

UPLOAD_DESCRIPTION = (
    "A `multipart/form-data` body whose `file` part is streamed to storage, never held in memory. "
    "The type is decided from the file's first bytes (the part's Content-Type and the file name are "
    f"ignored): {', '.join(ALLOWED_IMAGE_TYPES)}; anything else is 415. An empty file is 422 on `file`, "
    "like a missing one. A body longer than MAX_UPLOAD_BYTES (plus a little room for the form) is 413 "
    "at once when its Content-Length says so, else as soon as the file passes the limit. Fields may "
    "come before or after the file; an empty text field counts as absent (HTML forms send every "
    "input), a field given twice is 422, unknown fields are ignored. `album_id` must be one of your "
    "albums (404 otherwise); the photo is then added to it."
)
UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP or GIF"},
                    "album_id": {"type": "integer", "minimum": 1, "maximum": photos.MAX_ID},
                    "title": {"type": "string", "maxLength": 255},
                    "description": {"type": "string", "maxLength": 10_000},
                },
            }
        }
    },
}
IMAGE_RESPONSE: dict[str, Any] = {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}


class PhotoUploadForm(BaseModel):
    """The text fields of an upload; multipart values arrive as strings, hence lax validation."""

    model_config = ConfigDict(extra="ignore")

    album_id: int | None = Field(default=None, ge=1, le=photos.MAX_ID)
    title: Title | None = None
    description: Description | None = None


class PhotoUpdateIn(BaseModel):
    """PATCH body: only the fields present change, `null` clears one, any other field is refused."""

    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    description: Description | None = None


class _MultipartReader:
    """Multipart events pulled off the request stream, which is read a chunk at a time as they are needed."""

    def __init__(self, stream: IO[bytes], boundary: bytes) -> None:
        self._stream = stream
        self._decoder = MultipartDecoder(boundary, MAX_DECODER_BUFFER_BYTES, max_parts=MAX_PARTS)

    def next_event(self) -> Event:
        """The next event, reading more of the body as needed; never NeedData."""
        while True:
            try:
                event = self._decoder.next_event()
            except (ValueError, RequestEntityTooLarge):  # garbled framing, or more parts than a form has
                raise BadRequest("Malformed multipart body") from None
            if not isinstance(event, NeedData):
                return event
            try:
                chunk = self._stream.read(CHUNK_SIZE)
            except RequestEntityTooLarge:  # past request.max_content_length while streaming
                raise PayloadTooLarge("The request body is too large") from None
            try:
                # An empty read is the end of the body; the decoder then raises if it is incomplete.
                self._decoder.receive_data(chunk or None)
            except RequestEntityTooLarge:  # a preamble or header block that never ends
                raise BadRequest("Malformed multipart body") from None


class _PartBody:
    """The data of the current part as a file-like `read(n)`, pulled from the reader on demand."""

    def __init__(self, reader: _MultipartReader) -> None:
        self._reader = reader
        self._chunk = b""
        self._pos = 0
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes of the part (all of the rest for a negative size); b"" at its end."""
        if size < 0:
            return b"".join(iter(lambda: self.read(CHUNK_SIZE), b""))
        if size == 0:
            return b""
        while self._pos >= len(self._chunk):
            if self._done:
                return b""
            event = self._reader.next_event()
            if not isinstance(event, Data):
                raise BadRequest("Malformed multipart body")
            self._chunk, self._pos, self._done = event.data, 0, not event.more_data
        out = self._chunk[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def drain(self) -> None:
        """Skip whatever is left of the part."""
        while self.read(CHUNK_SIZE):
            pass


@dataclass
class _Upload:
    """What a multipart upload body held."""

    image: StoredObject | None = None
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    errors: list[FieldError] = field(default_factory=list)
    seen_file: bool = False
    form: PhotoUploadForm = field(default_factory=PhotoUploadForm)


def _validate_form(fields: dict[str, str]) -> tuple[PhotoUploadForm | None, list[FieldError]]:
    # HTML forms send every input, the empty ones included: an empty value means "not given".
    given = {name: value for name, value in fields.items() if value != ""}
    try:
        return PhotoUploadForm.model_validate(given), []
    except ValidationError as exc:
        return None, validation_errors(exc)


def _read_field(body: _PartBody) -> str | None:
    """A text part's value, or None when it is too long to be valid or not UTF-8."""
    data = b""
    while chunk := body.read(CHUNK_SIZE):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            body.drain()
            return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _multipart_boundary() -> bytes:
    if request.mimetype != "multipart/form-data":
        raise BadRequest("Content-Type must be multipart/form-data")
    boundary = request.mimetype_params.get("boundary", "")
    if not 0 < len(boundary) <= MAX_BOUNDARY_LENGTH or not boundary.isascii():
        raise BadRequest(f"multipart/form-data needs a boundary of 1 to {MAX_BOUNDARY_LENGTH} ASCII characters")
    return boundary.encode("ascii")


def _receive_upload(owner_id: int) -> _Upload:
    """Parse the body part by part, streaming the file to storage as it arrives.

    Fields may come before or after the file. When the fields before the file are already invalid,
    the file is skipped rather than stored, and parsing goes on so that every failing field is named.
    If anything fails once the file is stored, the object is deleted again.
    """
    rt = runtime()
    boundary = _multipart_boundary()
    limit = rt.settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The upload is larger than the limit of {rt.settings.max_upload_bytes} bytes")
    # The app-wide limit is the small JSON one; werkzeug enforces this one while the stream is read.
    request.max_content_length = limit
    reader = _MultipartReader(request.stream, boundary)
    upload = _Upload()
    try:
        while not isinstance(event := reader.next_event(), Epilogue):
            if isinstance(event, Preamble):
                continue
            assert isinstance(event, FormField | File), event  # Data is consumed part by part below
            body = _PartBody(reader)
            if not event.name:
                body.drain()  # a part without a name is no form field
            elif event.name == photos.FILE_FIELD:
                _receive_file(upload, body, owner_id, event, rt.settings.max_upload_bytes)
            elif isinstance(event, File) or event.name not in PhotoUploadForm.model_fields:
                body.drain()  # unknown fields are ignored, and so are files under another name
            elif event.name in upload.fields:
                upload.errors.append(FieldError(event.name, "given more than once"))
                body.drain()
            else:
                value = _read_field(body)
                if value is None:
                    upload.errors.append(FieldError(event.name, "too long or not UTF-8 text"))
                else:
                    upload.fields[event.name] = value
        if not upload.seen_file:
            upload.errors.insert(0, FieldError(photos.FILE_FIELD, "a file is required"))
        form, form_errors = _validate_form(upload.fields)
        if form is None or upload.errors:
            raise ValidationFailed(upload.errors + form_errors)
        upload.form = form
    except BaseException:
        if upload.image is not None:
            photos.discard_image(db_session(), rt.storage, upload.image.key)
        raise
    return upload


def _receive_file(upload: _Upload, body: _PartBody, owner_id: int, event: FormField | File, max_bytes: int) -> None:
    if upload.seen_file:
        upload.errors.append(FieldError(photos.FILE_FIELD, "only one file per upload"))
        body.drain()
        return
    upload.seen_file = True
    # A `file` sent without a filename (curl -F 'file=<x.jpg') is still the file.
    upload.filename = event.filename if isinstance(event, File) else None
    if upload.errors or _validate_form(upload.fields)[1]:
        body.drain()  # the upload is refused anyway: do not store what would be deleted again
        return
    try:
        upload.image = photos.store_image(runtime().storage, owner_id=owner_id, stream=body, max_bytes=max_bytes)
    except ValidationFailed as exc:  # an empty file: keep parsing, to report the other fields too
        upload.errors.extend(exc.errors)
        body.drain()


@bp.post("")
@doc(
    "Upload a photo",
    tag="photos",
    body=UPLOAD_BODY,
    responses={201: PhotoOut},
    errors=(400, 404, 413, 415, 422),
    description=UPLOAD_DESCRIPTION,
)
@auth_required
def upload_photo() -> Response:
    owner_id = current_user().id
    # A slow client may take minutes to send the body: hand the DB connection back to the pool meanwhile
    # (it would also hit PostgreSQL's idle-in-transaction timeout); the row step takes a fresh one.
    db_session().close()
    with metrics.upload_attempt("multipart") as attempt:
        upload = _receive_upload(owner_id)
        assert upload.image is not None  # _receive_upload raises unless a file was stored
        form = upload.form
        photo = photos.create_photo(
            db_session(),
            runtime().storage,
            owner_id=owner_id,
            image=upload.image,
            client_filename=upload.filename,
            title=form.title,
            description=form.description,
            album_id=form.album_id,
        )
        attempt.stored(photo.file_size)
    return respond(PhotoOut.model_validate(photo), 201)


@bp.get("")
@doc("Your ready photos, newest first", tag="photos", query=Pagination, responses={200: [PhotoOut]})
@auth_required
def list_photos() -> Response:
    page = query_args(Pagination)
    found = photos.list_photos(db_session(), owner_id=current_user().id, skip=page.skip, limit=page.limit)
    return respond([PhotoOut.model_validate(p) for p in found])


@bp.get("/<int:photo_id>")
@doc("One of your photos", tag="photos", responses={200: PhotoOut}, errors=(404,))
@auth_required
def get_photo(photo_id: int) -> Response:
    photo = photos.get_photo(db_session(), owner_id=current_user().id, photo_id=photo_id)
    return respond(PhotoOut.model_validate(photo))


@bp.patch("/<int:photo_id>")
@doc(
    "Edit a photo's title or description",
    tag="photos",
    body=PhotoUpdateIn,
    responses={200: PhotoOut},
    errors=(404,),
    description="Only the fields present change; `null` clears one; any other field is 422.",
)
@auth_required
def update_photo(photo_id: int) -> Response:
    data = json_body(PhotoUpdateIn)
    photo = photos.update_photo(
        db_session(),
        owner_id=current_user().id,
        photo_id=photo_id,
        changes=data.model_dump(include=data.model_fields_set),
    )
    return respond(PhotoOut.model_validate(photo))


@bp.delete("/<int:photo_id>")
@doc(
    "Delete a photo",
    tag="photos",
    responses={204: None},
    errors=(404,),
    description="The photo leaves its albums (a cover it was is cleared); its file is deleted after the row.",
)
@auth_required
def delete_photo(photo_id: int) -> Response:
    photos.delete_photo(db_session(), runtime().storage, owner_id=current_user().id, photo_id=photo_id)
    return respond(None, 204)


@bp.get("/<int:photo_id>/image")
@doc(
    "A photo's image bytes",
    tag="photos",
    responses={200: IMAGE_RESPONSE, 206: IMAGE_RESPONSE, 304: None},
    errors=(404, 416),
    description="Sends Content-Type, Content-Length, ETag (the quoted MD5) and Cache-Control: private; "
    "If-None-Match gives 304 and a single `Range` gives 206 (several ranges: 200 with everything).",
)
@auth_required
def photo_image(photo_id: int) -> Response:
    photo = photos.get_photo(db_session(), owner_id=current_user().id, photo_id=photo_id)
    return deliver_image(photo, token_seconds=runtime().settings.image_token_expire_seconds)
