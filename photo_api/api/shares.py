"""Share links: the owner's routes under /albums/{id}/share and the public routes under /share/{token}.

The access log records the route template (`/share/<token>`), never the path, so tokens stay out of logs.
"""

from __future__ import annotations

from flask import Blueprint, Response, request
from pydantic import Field

from .. import metrics
from ..images import ALLOWED_IMAGE_TYPES
from ..media import PREVIEW, THUMBNAIL
from ..models import ShareLink
from ..services import shares
from .common import auth_required, current_user, db_session, json_body, public_base_url, query_args, respond
from .context import current_limits
from .delivery import deliver, original_of, public_original_of, rendition_of
from .openapi import doc
from .schemas import Pagination, Request, SharedAlbumOut, ShareLinkOut, shared_photo_out

bp = Blueprint("shares", __name__)

MAX_EXPIRES_IN_DAYS = 365
# Revalidated on every use (cheap with the ETag), so a revoked link stops serving images at once.
SHARED_IMAGE_CACHE_CONTROL = "private, no-cache"
IMAGE_RESPONSE = {
    "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
    "headers": {"ETag": {"schema": {"type": "string"}}, "Cache-Control": {"schema": {"type": "string"}}},
}


class ShareIn(Request):
    expires_in_days: int | None = Field(default=None, ge=1, le=MAX_EXPIRES_IN_DAYS, description="null: never")
    include_metadata: bool = Field(
        default=False,
        description="true: the public gets each original as stored, EXIF (camera, GPS position) included; "
        "false: without its metadata (see docs/api.md)",
    )


def _share_out(link: ShareLink) -> ShareLinkOut:
    return ShareLinkOut(
        id=link.id,
        album_id=link.album_id,
        token=link.token,
        is_active=link.is_active,
        expires_at=link.expires_at,
        view_count=link.view_count,
        created_at=link.created_at,
        share_url=f"{public_base_url()}/share/{link.token}",
        include_metadata=link.include_metadata,
    )


@bp.post("/albums/<int:album_id>/share")
@doc(
    "Create a share link for an album",
    tag="shares",
    body=ShareIn,
    body_required=False,
    responses={201: ShareLinkOut},
    errors=(404,),
    description="An empty body creates a link that never expires and serves the photos without their "
    "metadata (`include_metadata`: false). The token carries 32 random bytes.",
)
@auth_required
def create_share(album_id: int) -> Response:
    # A bodiless POST is the natural way to ask for a link with no expiry.
    data = json_body(ShareIn) if request.get_data(cache=True) else ShareIn()
    link = shares.create_share(
        db_session(),
        current_user().id,
        album_id,
        expires_in_days=data.expires_in_days,
        include_metadata=data.include_metadata,
    )
    return respond(_share_out(link), 201)


@bp.get("/albums/<int:album_id>/share")
@doc(
    "List the share links of an album, newest first",
    tag="shares",
    responses={200: [ShareLinkOut]},
    errors=(404,),
    description="Revoked and expired links are listed too (see `is_active` and `expires_at`).",
)
@auth_required
def list_shares(album_id: int) -> Response:
    links = shares.list_shares(db_session(), current_user().id, album_id)
    return respond([_share_out(link) for link in links])


@bp.delete("/albums/<int:album_id>/share/<int:share_id>")
@doc(
    "Revoke a share link",
    tag="shares",
    responses={204: None},
    errors=(404,),
    description="The link stays listed with `is_active: false`; revoking it again is harmless.",
)
@auth_required
def revoke_share(album_id: int, share_id: int) -> Response:
    shares.revoke_share(db_session(), current_user().id, album_id, share_id)
    return respond(None, 204)


@bp.get("/share/<token>")
@doc(
    "A shared album with a page of its photos, as the public sees it",
    tag="public",
    query=Pagination,
    responses={200: SharedAlbumOut},
    errors=(404, 410),
    description="No authentication: the token is the credential. 404 for an unknown token, 410 for a revoked "
    "or expired one. `photos` holds the page (`skip`, `limit`: 50 by default, at most 100) in album order; "
    "`photo_count` counts all the album's photos. Every successful call of the first page (`skip` 0) counts "
    "one view; later pages do not.",
)
def view_shared_album(token: str) -> Response:
    page = query_args(Pagination)
    shared = shares.view_shared_album(db_session(), token, skip=page.skip, limit=page.limit)
    if page.skip == 0:
        metrics.share_view()
    album = shared.page.album
    shared_photos = [shared_photo_out(p, token, include_metadata=shared.include_metadata) for p in shared.page.photos]
    return respond(
        SharedAlbumOut(
            album_name=album.name,
            album_description=album.description,
            photo_count=shared.page.photo_count,
            created_at=album.created_at,
            photos=shared_photos,
        )
    )


@bp.get("/share/<token>/photos/<int:photo_id>/image")
@doc(
    "The bytes of a photo of a shared album",
    tag="public",
    responses={200: IMAGE_RESPONSE, 206: IMAGE_RESPONSE, 304: None},
    errors=(404, 410, 416, 503),
    description="404 unless the photo is in the shared album. Honours `If-None-Match` (304) and one `Range` (206). "
    "Unless the link was created with `include_metadata`, the bytes are the original without its metadata "
    "(EXIF, XMP, GPS, IPTC, comments; the pixels untouched, only the orientation kept), made once in the "
    "background after the upload: 503 with `Retry-After` until it is ready. A HEIC/HEIF original is served "
    "as its preview instead (404 while processing is not ready).",
)
def shared_photo_image(token: str, photo_id: int) -> Response:
    photo, include_metadata = shares.shared_photo(db_session(), token, photo_id)
    # The public never learns the owner's file name (it may say more than the owner chose to share).
    filename = f"photo-{photo.id}{ALLOWED_IMAGE_TYPES.get(photo.content_type, '')}"
    return deliver(
        original_of(photo, filename) if include_metadata else public_original_of(photo, filename),
        token_seconds=current_limits().share_image_token_seconds,
        cache_control=SHARED_IMAGE_CACHE_CONTROL,
    )


@bp.get("/share/<token>/photos/<int:photo_id>/thumbnail")
@doc(
    "The thumbnail of a photo of a shared album",
    tag="public",
    responses={200: IMAGE_RESPONSE, 206: IMAGE_RESPONSE, 304: None},
    errors=(404, 410, 416),
    description="As `/image`; 404 also while the photo's processing is not ready.",
)
def shared_photo_thumbnail(token: str, photo_id: int) -> Response:
    photo = shares.shared_photo(db_session(), token, photo_id).photo
    return deliver(
        rendition_of(photo, THUMBNAIL.name),
        token_seconds=current_limits().share_image_token_seconds,
        cache_control=SHARED_IMAGE_CACHE_CONTROL,
    )


@bp.get("/share/<token>/photos/<int:photo_id>/preview")
@doc(
    "The preview of a photo of a shared album",
    tag="public",
    responses={200: IMAGE_RESPONSE, 206: IMAGE_RESPONSE, 304: None},
    errors=(404, 410, 416),
    description="As `/image`; 404 also while the photo's processing is not ready.",
)
def shared_photo_preview(token: str, photo_id: int) -> Response:
    photo = shares.shared_photo(db_session(), token, photo_id).photo
    return deliver(
        rendition_of(photo, PREVIEW.name),
        token_seconds=current_limits().share_image_token_seconds,
        cache_control=SHARED_IMAGE_CACHE_CONTROL,
    )
