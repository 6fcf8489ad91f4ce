"""Direct uploads: presign a pending photo, the signed PUT route of local storage, and confirm."""

from __future__ import annotations

from typing import Annotated, BinaryIO, Literal, Protocol, cast, runtime_checkable

from flask import Blueprint, Response, request
from pydantic import BaseModel, Field, StringConstraints

from .. import metrics
from ..errors import UnauthorizedError
from ..images import ALLOWED_IMAGE_TYPES
from ..jobs.submit import enqueue_photo
from ..models import MAX_ID
from ..services import uploads
from ..services.fields import Description, Title
from .common import auth_required, client_body, current_user, db_session, json_body, public_base_url, respond
from .context import current_jobs, current_limits, current_storage
from .openapi import doc
from .schemas import Request, UploadedPhotoOut

bp = Blueprint("uploads", __name__)

# Browsers and phones send long names; sanitize_filename shortens them to 255 characters.
MAX_CLIENT_FILENAME = 1024
UPLOAD_RULE = "/uploads/<path:key>"
BINARY_BODY = {
    "required": True,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


class PresignIn(Request):
    filename: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CLIENT_FILENAME)]
    # Documented as an enum so clients (and generated ones) know the choice; the service still does the
    # check, case-insensitively as media types are (RFC 9110 §8.3.1), and names every failing field.
    content_type: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        description="the uploaded bytes must be an image of this type (case-insensitive)",
        json_schema_extra={"enum": list(ALLOWED_IMAGE_TYPES)},
    )
    file_size: int = Field(ge=1, description="exact size in bytes, at most MAX_UPLOAD_BYTES")
    album_id: int | None = Field(default=None, ge=1, le=MAX_ID, description="the photo joins it once confirmed")
    title: Title | None = None
    description: Description | None = None


class PresignOut(BaseModel):
    photo_id: int
    upload_url: str = Field(description="absolute URL to send the bytes to, valid for expires_in seconds")
    upload_method: Literal["PUT"] = "PUT"
    upload_headers: dict[str, str] = Field(description="headers to send with the upload")
    expires_in: int


class ConfirmIn(Request):
    photo_id: int = Field(ge=1, le=MAX_ID)


@runtime_checkable
class UploadVerifier(Protocol):
    """A storage backend whose presigned URLs point at this service (LocalStorage)."""

    def verify_upload(self, key: str, expires: str, signature: str) -> bool: ...


@bp.post("/photos/presigned-url")
@doc(
    "Start a direct upload: create a pending photo and get a URL to PUT its bytes to",
    tag="photos",
    body=PresignIn,
    responses={201: PresignOut},
    errors=(404, 429),
    description=(
        "The photo stays pending (not listed, not in album listings) until `POST /photos/confirm`. "
        "Send the file with `upload_method` to `upload_url` with `upload_headers` before `expires_in` "
        "seconds have passed; an unconfirmed upload is removed after that by the reaper. "
        "422 for a type other than JPEG, PNG, WebP, GIF, HEIC or HEIF, or a size above MAX_UPLOAD_BYTES; "
        "404 when `album_id` is not one of the caller's albums; 429 with `Retry-After` when the caller "
        "already has MAX_PENDING_UPLOADS_PER_USER uploads pending, or their declared sizes plus this one "
        "would pass MAX_PENDING_UPLOAD_BYTES_PER_USER (confirm them, or wait until they expire)."
    ),
)
@auth_required
def presign() -> Response:
    data = json_body(PresignIn)
    limits = current_limits()
    created = uploads.create_presigned(
        db_session(),
        current_storage(),
        owner_id=current_user().id,
        filename=data.filename,
        content_type=data.content_type,
        file_size=data.file_size,
        max_upload_bytes=limits.max_upload_bytes,
        expires_in=limits.upload_url_expire_seconds,
        max_pending_uploads=limits.max_pending_uploads_per_user,
        max_pending_bytes=limits.max_pending_upload_bytes_per_user,
        album_id=data.album_id,
        title=data.title,
        description=data.description,
    )
    body = PresignOut(
        photo_id=created.photo.id,
        upload_url=_absolute(created.upload.url),
        upload_headers=created.upload.headers,
        expires_in=created.expires_in,
    )
    return respond(body, 201)


@bp.post("/photos/confirm")
@doc(
    "Confirm a direct upload: verify the stored file and make the photo ready",
    tag="photos",
    body=ConfirmIn,
    responses={200: UploadedPhotoOut},
    errors=(404, 409, 410),
    description=(
        "Idempotent: confirming a ready photo answers it again. The stored file must exist, have the "
        "declared size (at most MAX_UPLOAD_BYTES) and be an image of the declared type, judged by its bytes. "
        "422 when it does not: `errors` names `file_size` and/or `content_type`, and the photo and its file "
        "are removed. 422 naming `photo_id` when nothing was uploaded yet: the photo stays pending and the "
        "client may still upload within the window. 410 when nothing was uploaded and the window has closed. "
        "The checked bytes are copied to the photo's own object, which the upload URL does not reach: "
        "nothing sent to the URL afterwards changes the photo. 409 when the file was replaced while "
        "confirm ran: the photo stays pending; confirm again. When the file is identical to one of your "
        "photos (same bytes), the pending photo and its file are discarded and that photo is answered with "
        "`duplicate: true` (added to the pending photo's album, if any); confirming the discarded `photo_id` "
        "again is then 404."
    ),
)
@auth_required
def confirm() -> Response:
    data = json_body(ConfirmIn)
    # A presigned upload is counted when it is confirmed (a repeated confirm counts again).
    with metrics.upload_attempt("presigned") as attempt:
        uploaded = uploads.confirm(
            db_session(),
            current_storage(),
            owner_id=current_user().id,
            photo_id=data.photo_id,
            max_upload_bytes=current_limits().max_upload_bytes,
        )
        if uploaded.duplicate:
            attempt.found_duplicate()
        else:
            attempt.stored(uploaded.photo.file_size)
    photo = uploaded.photo
    if photo.processing_status == "pending" and photo.processing_enqueued_at is None:
        enqueue_photo(db_session(), current_jobs(), photo.id)  # media pipeline (a repeated confirm enqueues nothing)
    out = UploadedPhotoOut.model_validate(photo)
    out.duplicate = uploaded.duplicate
    return respond(out)


@doc(
    "Receive the bytes of a direct upload (local storage only; the signed URL is the credential)",
    tag="uploads",
    body=BINARY_BODY,
    responses={
        201: {"headers": {"ETag": {"description": "quoted MD5 of the stored bytes", "schema": {"type": "string"}}}}
    },
    errors=(401, 404, 408, 409, 410, 413),
    description=(
        "The URL comes from `POST /photos/presigned-url` and needs no bearer token. Like a Swift TempURL: "
        "401 for a missing, tampered or expired signature; 201 with an empty body and the ETag. The bytes are "
        "stored with the declared content type and only checked at confirm. 404 when the photo is no longer "
        "pending, 410 when its window has closed (or the photo was removed while the bytes arrived), "
        "409 when the photo was confirmed while they arrived, 413 beyond MAX_UPLOAD_BYTES, 408 when the client "
        "sends nothing for CLIENT_BODY_TIMEOUT seconds in the middle of the body (nothing is stored)."
    ),
)
def receive_upload(key: str) -> Response:
    storage = current_storage()
    assert isinstance(storage, UploadVerifier), "registered only for backends that verify their own URLs"
    max_bytes = current_limits().max_upload_bytes
    if not storage.verify_upload(key, request.args.get("expires", ""), request.args.get("signature", "")):
        raise UnauthorizedError("Upload URL is invalid or has expired")
    # The app-wide limit is the small JSON one; this request may carry a whole image. One byte over the
    # limit, because behind gunicorn (wsgi.input_terminated) Werkzeug answers 413 to any read at its limit,
    # which storage makes after exactly MAX_UPLOAD_BYTES to see whether more follows: storage decides.
    request.max_content_length = max_bytes + 1
    obj = uploads.receive_upload(
        db_session(), storage, key=key, stream=cast(BinaryIO, client_body()), max_bytes=max_bytes
    )
    return Response(status=201, headers={"ETag": f'"{obj.etag}"'})


def _absolute(url: str) -> str:
    """Backends may sign a path on this service (LocalStorage); clients need an absolute URL."""
    if not url.startswith("/"):
        return url
    return public_base_url() + url
