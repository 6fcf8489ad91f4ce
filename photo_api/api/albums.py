"""Album routes: CRUD and membership of the caller's albums."""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..models import MAX_ID, Album
from ..services import albums
from ..services.fields import Description
from .common import ListAnswer, auth_required, current_user, db_session, json_body, query_args, respond
from .openapi import doc
from .schemas import AlbumOut, AlbumWithPhotosOut, Pagination, PhotoOut, Request

bp = Blueprint("albums", __name__, url_prefix="/albums")
# GET /albums: a page of albums straight from table rows (photo_count: services.albums.PHOTO_COUNT)
ALBUM_LIST = ListAnswer(AlbumOut)

MAX_PHOTO_IDS = 500

# No control characters (PostgreSQL rejects NUL outright); surrounding whitespace is dropped.
AlbumName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
]
PhotoId = Annotated[int, Field(ge=1, le=MAX_ID)]


class AlbumIn(Request):
    name: AlbumName
    description: Description | None = None


class AlbumPatchIn(Request):
    """Only the fields sent change; null clears `description` or `cover_photo_id`, while `name` cannot be null."""

    model_config = ConfigDict(extra="forbid")

    # Not nullable, so an explicit null fails validation; the default (not validated) means "not sent".
    name: AlbumName = Field(default=None)  # type: ignore[assignment]
    description: Description | None = None
    cover_photo_id: PhotoId | None = None


class PhotoIdsIn(Request):
    photo_ids: list[PhotoId] = Field(min_length=1, max_length=MAX_PHOTO_IDS)


class AddedOut(BaseModel):
    added: int


class RemovedOut(BaseModel):
    removed: int


def album_out(album: Album, photo_count: int) -> AlbumOut:
    """Serialise an album with its ready-photo count."""
    return AlbumOut(
        id=album.id,
        owner_id=album.owner_id,
        name=album.name,
        description=album.description,
        cover_photo_id=album.cover_photo_id,
        photo_count=photo_count,
        created_at=album.created_at,
        updated_at=album.updated_at,
    )


def _album_with_photos_out(page: albums.AlbumPage) -> AlbumWithPhotosOut:
    return AlbumWithPhotosOut(
        **album_out(page.album, page.photo_count).model_dump(),
        photos=[PhotoOut.model_validate(p) for p in page.photos],
    )


@bp.post("")
@doc("Create an album", tag="albums", body=AlbumIn, responses={201: AlbumOut})
@auth_required
def create_album() -> Response:
    data = json_body(AlbumIn)
    created = albums.create_album(db_session(), current_user().id, name=data.name, description=data.description)
    return respond(album_out(*created), 201)


@bp.get("")
@doc(
    "List the caller's albums, newest first",
    tag="albums",
    query=Pagination,
    responses={200: [AlbumOut]},
    description="`photo_count` counts the ready photos of each album.",
)
@auth_required
def list_albums() -> Response:
    page = query_args(Pagination)
    rows = albums.list_albums(db_session(), current_user().id, ALBUM_LIST.fields, skip=page.skip, limit=page.limit)
    return ALBUM_LIST.respond(rows)


@bp.get("/<int:album_id>")
@doc(
    "An album with a page of its photos in album order",
    tag="albums",
    query=Pagination,
    responses={200: AlbumWithPhotosOut},
    errors=(404,),
    description="Photos are listed in the order they were added; pending uploads are left out. `photos` holds "
    "the page (`skip`, `limit`: 50 by default, at most 100); `photo_count` counts all the album's ready photos, "
    "so another page exists while `skip` + the page's length < `photo_count`.",
)
@auth_required
def get_album(album_id: int) -> Response:
    page = query_args(Pagination)
    found = albums.get_album_with_photos(db_session(), current_user().id, album_id, skip=page.skip, limit=page.limit)
    return respond(_album_with_photos_out(found))


@bp.patch("/<int:album_id>")
@doc(
    "Edit an album",
    tag="albums",
    body=AlbumPatchIn,
    responses={200: AlbumOut},
    errors=(404,),
    description="Only the fields sent change. `null` clears `description` or `cover_photo_id`; "
    "`cover_photo_id` must be a photo in this album (422). Unknown fields are rejected (422).",
)
@auth_required
def update_album(album_id: int) -> Response:
    data = json_body(AlbumPatchIn)
    updated = albums.update_album(db_session(), current_user().id, album_id, **data.model_dump(exclude_unset=True))
    return respond(album_out(*updated))


@bp.delete("/<int:album_id>")
@doc(
    "Delete an album",
    tag="albums",
    responses={204: None},
    errors=(404,),
    description="The photos stay; their membership and the album's share links are deleted.",
)
@auth_required
def delete_album(album_id: int) -> Response:
    albums.delete_album(db_session(), current_user().id, album_id)
    return respond(None, 204)


@bp.post("/<int:album_id>/photos")
@doc(
    "Add photos to an album",
    tag="albums",
    body=PhotoIdsIn,
    responses={200: AddedOut},
    errors=(404,),
    description="Only the caller's ready photos are added, in the order given; other ids and photos already "
    "in the album are ignored. `added` counts the photos that were new to the album.",
)
@auth_required
def add_photos(album_id: int) -> Response:
    data = json_body(PhotoIdsIn)
    added = albums.add_photos(db_session(), current_user().id, album_id, data.photo_ids)
    return respond(AddedOut(added=added))


@bp.delete("/<int:album_id>/photos")
@doc(
    "Remove photos from an album",
    tag="albums",
    body=PhotoIdsIn,
    responses={200: RemovedOut},
    errors=(404,),
    description="The photos themselves stay. Ids not in the album are ignored; removing the cover clears it.",
)
@auth_required
def remove_photos(album_id: int) -> Response:
    data = json_body(PhotoIdsIn)
    removed = albums.remove_photos(db_session(), current_user().id, album_id, data.photo_ids)
    return respond(RemovedOut(removed=removed))
