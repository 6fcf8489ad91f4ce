"""Photo routes: streamed multipart upload, list, read, edit, delete and the image bytes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict

from .. import metrics
from ..errors import PayloadTooLargeError
from ..images import ALLOWED_IMAGE_TYPES
from ..jobs.submit import enqueue_photo
from ..media import PREVIEW, THUMBNAIL
from ..models import MAX_ID
from ..services import photos
from ..services.fields import Description, Title
from . import multipart
from .common import (
    ListAnswer,
    auth_required,
    client_body,
    current_user,
    db_session,
    json_body,
    query_args,
    respond,
)
from .context import current_jobs, current_limits, current_storage
from .delivery import deliver, deliver_image, rendition_of
from .openapi import doc
from .schemas import PhotoListQuery, PhotoOut, UploadedPhotoOut

bp = Blueprint("photos", __name__, url_prefix="/photos")
PHOTO_LIST = ListAnswer(PhotoOut)  # GET /photos: a page of photos straight from table rows

# Room for what surrounds the file in a multipart body: boundaries, part headers and the text fields
# (a 10,000-character description is up to 40,000 bytes of UTF-8).
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# file, album_id, title, description, and a few unknown fields a client may add (they are skipped).
MAX_PARTS = 16

UPLOAD_DESCRIPTION = (
    "A `multipart/form-data` body whose `file` part is streamed to storage, never held in memory. "
    "The type is decided from the file's first bytes (the part's Content-Type and the file name are "
    f"ignored): {', '.join(ALLOWED_IMAGE_TYPES)}; anything else is 415. An empty file is 422 on `file`, "
    "like a missing one. A body longer than MAX_UPLOAD_BYTES (plus a little room for the form) is 413 "
    "at once when its Content-Length says so, else as soon as the file passes the limit. Fields may "
    "come before or after the file; an empty text field counts as absent (HTML forms send every "
    "input), a field given twice is 422, unknown fields are ignored. `album_id` must be one of your "
    "albums (404 otherwise); the photo is then added to it. 408 when the client sends nothing for "
    "CLIENT_BODY_TIMEOUT seconds in the middle of the body (nothing is stored). A file identical to one "
    "of your photos (same bytes: same MD5 checksum) is 200 with that photo and `duplicate: true`: nothing "
    "new is stored; with `album_id` that photo is added to the album, and the upload's title and "
    "description are ignored."
)
UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP, GIF or HEIC/HEIF"},
                    "album_id": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                    "title": {"type": "string", "maxLength": 255},
                    "description": {"type": "string", "maxLength": 10_000},
                },
            }
        }
    },
}
IMAGE_RESPONSE: dict[str, Any] = {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}


class PhotoUpdateIn(BaseModel):
    """PATCH body: only the fields present change, `null` clears one, any other field is refused."""

    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    description: Description | None = None


@bp.post("")
@doc(
    "Upload a photo",
    tag="photos",
    body=UPLOAD_BODY,
    responses={201: UploadedPhotoOut, 200: UploadedPhotoOut},
    errors=(400, 404, 408, 413, 415, 422),
    description=UPLOAD_DESCRIPTION,
)
@auth_required
def upload_photo() -> Response:
    owner_id = current_user().id
    # A slow client may take minutes to send the body: hand the DB connection back to the pool meanwhile
    # (it would also hit PostgreSQL's idle-in-transaction timeout); the row step takes a fresh one.
    db_session().close()
    max_bytes = current_limits().max_upload_bytes
    with metrics.upload_attempt("multipart") as attempt:
        uploaded = photos.upload_photo(
            db_session(), current_storage(), owner_id=owner_id, parts=_upload_parts(max_bytes), max_bytes=max_bytes
        )
        if uploaded.duplicate:
            attempt.found_duplicate()
        else:
            attempt.stored(uploaded.photo.file_size)
    out = UploadedPhotoOut.model_validate(uploaded.photo)
    out.duplicate = uploaded.duplicate
    if uploaded.duplicate:
        return respond(out, 200)  # the existing photo's job was enqueued when it was uploaded
    # After the commit, outside the upload's outcome: a queue that is down only delays the renditions.
    enqueue_photo(db_session(), current_jobs(), uploaded.photo.id)
    return respond(out, 201)


def _upload_parts(max_upload_bytes: int) -> Iterator[multipart.Part]:
    """The parts of this request's multipart body, read as they are consumed, within the upload's size limit."""
    boundary = multipart.form_boundary(request.content_type)
    limit = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"The upload is larger than the limit of {max_upload_bytes} bytes")
    # The app-wide limit is the small JSON one; werkzeug enforces this one while the stream is read.
    request.max_content_length = limit
    return multipart.iter_parts(client_body(), boundary, max_parts=MAX_PARTS)


@bp.get("")
@doc(
    "Your ready photos, newest first (or by the time they were taken)",
    tag="photos",
    query=PhotoListQuery,
    responses={200: [PhotoOut]},
    description="`sort=taken_at` orders by the EXIF date (photos without one last, in either `order`); "
    "`taken_after` (inclusive) and `taken_before` (exclusive) keep photos taken in that window.",
)
@auth_required
def list_photos() -> Response:
    query = query_args(PhotoListQuery)
    found = photos.list_photos(
        db_session(),
        PHOTO_LIST.fields,
        owner_id=current_user().id,
        skip=query.skip,
        limit=query.limit,
        sort=query.sort,
        order=query.order,
        taken_after=query.taken_after,
        taken_before=query.taken_before,
    )
    return PHOTO_LIST.respond(found)


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
    photos.delete_photo(db_session(), current_storage(), owner_id=current_user().id, photo_id=photo_id)
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
    return deliver_image(photo, token_seconds=current_limits().image_token_seconds)


RENDITION_DESCRIPTION = (
    "Same answers as `/image` (CDN redirect or streamed, ETag, Range, 304), for the {what}, upright, "
    "never enlarged, without EXIF or XMP. 404 while `processing_status` is not `ready`: show the `thumbhash` "
    "meanwhile."
)


@bp.get("/<int:photo_id>/thumbnail")
@doc(
    "A photo's thumbnail (about 256 pixels on the long side)",
    tag="photos",
    responses={200: IMAGE_RESPONSE, 206: IMAGE_RESPONSE, 304: None},
    errors=(404, 416),
    description=RENDITION_DESCRIPTION.format(what="thumbnail"),
)
@auth_required
def photo_thumbnail(photo_id: int) -> Response:
    photo = photos.get_photo(db_session(), owner_id=current_user().id, photo_id=photo_id)
    return deliver(rendition_of(photo, THUMBNAIL.name), token_seconds=current_limits().image_token_seconds)


@bp.get("/<int:photo_id>/preview")
@doc(
    "A photo's preview (about 1440 pixels on the long side)",
    tag="photos",
    responses={200: IMAGE_RESPONSE, 206: IMAGE_RESPONSE, 304: None},
    errors=(404, 416),
    description=RENDITION_DESCRIPTION.format(what="preview"),
)
@auth_required
def photo_preview(photo_id: int) -> Response:
    photo = photos.get_photo(db_session(), owner_id=current_user().id, photo_id=photo_id)
    return deliver(rendition_of(photo, PREVIEW.name), token_seconds=current_limits().image_token_seconds)
