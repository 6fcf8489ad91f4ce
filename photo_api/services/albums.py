"""Albums: create, list with photo counts, edit, delete, and add or remove photos."""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import ScalarSelect, Select, bindparam, case, delete, exists, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from ..errors import FieldError, NotFoundError, ValidationFailedError
from ..models import Album, AlbumPhoto, Photo, PhotoStatus, UTCDateTime, is_id, utcnow

ALBUM_NOT_FOUND = "Album not found"


class _Unset(enum.Enum):
    UNSET = enum.auto()


# "Field not sent" for partial updates, distinct from None ("clear this field").
UNSET = _Unset.UNSET


class CountedAlbum(NamedTuple):
    """An album with the number of ready photos in it."""

    album: Album
    photo_count: int


class AlbumPage(NamedTuple):
    """An album, one page of its ready photos in album order, and how many ready photos it holds in all."""

    album: Album
    photos: list[Photo]
    photo_count: int


def _ready_photo_count(album_id: int | InstrumentedAttribute[int]) -> ScalarSelect[int]:
    """COUNT of the ready photos of `album_id` (a value, or `Album.id` for a correlated subquery)."""
    return (
        select(func.count(AlbumPhoto.id))
        .join(Photo, Photo.id == AlbumPhoto.photo_id)
        .where(AlbumPhoto.album_id == album_id, Photo.status == PhotoStatus.READY)
        .scalar_subquery()
    )


def ready_photos_query(album_id: int) -> Select[Photo]:
    """The ready photos of an album in album order: when they were added, then insertion order."""
    return (
        select(Photo)
        .join(AlbumPhoto, AlbumPhoto.photo_id == Photo.id)
        .where(AlbumPhoto.album_id == album_id, Photo.status == PhotoStatus.READY)
        .order_by(AlbumPhoto.added_at, AlbumPhoto.id)
    )


def create_album(session: Session, owner_id: int, *, name: str, description: str | None) -> CountedAlbum:
    """Create an empty album for `owner_id`."""
    album = Album(owner_id=owner_id, name=name, description=description)
    session.add(album)
    session.commit()
    return CountedAlbum(album, 0)


# The name of the ready-photo count among list_albums' columns.
PHOTO_COUNT = "photo_count"


def list_albums(
    session: Session, owner_id: int, columns: tuple[str, ...], *, skip: int, limit: int
) -> list[dict[str, Any]]:
    """A page of the owner's albums, newest first, one query for the page.

    Each album is a dict of `columns`: names of Album attributes, and PHOTO_COUNT for its ready photos.
    Table rows, not ORM objects, and a statement built once (see photos.list_photos).
    """
    values = {"owner_id": owner_id, "skip": skip, "limit": limit}
    return [dict(zip(columns, row, strict=True)) for row in session.execute(_album_page(columns), values)]


@functools.lru_cache(maxsize=8)
def _album_page(columns: tuple[str, ...]) -> Select[Any]:
    count = _ready_photo_count(Album.id).correlate(Album)
    selected = [count.label(PHOTO_COUNT) if name == PHOTO_COUNT else getattr(Album, name) for name in columns]
    return (
        select(*selected)
        .where(Album.owner_id == bindparam("owner_id"))
        .order_by(Album.created_at.desc(), Album.id.desc())
        .offset(bindparam("skip"))
        .limit(bindparam("limit"))
    )


def get_album(session: Session, owner_id: int, album_id: int, *, for_update: bool = False) -> Album:
    """The owner's album; NotFoundError for a missing album and for someone else's alike."""
    if not is_id(album_id):
        raise NotFoundError(ALBUM_NOT_FOUND)
    query = select(Album).where(Album.id == album_id, Album.owner_id == owner_id)
    if for_update:
        query = query.with_for_update()
    album = session.scalars(query).one_or_none()
    if album is None:
        raise NotFoundError(ALBUM_NOT_FOUND)
    return album


def get_album_with_photos(session: Session, owner_id: int, album_id: int, *, skip: int, limit: int) -> AlbumPage:
    """The owner's album, a page of its ready photos in album order, and their total count."""
    album = get_album(session, owner_id, album_id)
    return album_page(session, album, skip=skip, limit=limit)


def album_page(session: Session, album: Album, *, skip: int, limit: int) -> AlbumPage:
    """`album` with the page of its ready photos that starts at `skip`, and their total count."""
    photos = list(session.scalars(ready_photos_query(album.id).offset(skip).limit(limit)))
    if len(photos) < limit and (photos or skip == 0):
        total = skip + len(photos)  # this page reaches the album's end: no second query (the usual small album)
    else:
        total = count_ready_photos(session, album.id)
    return AlbumPage(album, photos, total)


def update_album(
    session: Session,
    owner_id: int,
    album_id: int,
    *,
    name: str | _Unset = UNSET,
    description: str | _Unset | None = UNSET,
    cover_photo_id: int | _Unset | None = UNSET,
) -> CountedAlbum:
    """Change the fields given; the cover must be a ready photo of this album (ValidationFailedError otherwise)."""
    # Row lock: a concurrent removal of the new cover from the album waits for us and then clears it,
    # instead of leaving a cover that is no longer in the album.
    album = get_album(session, owner_id, album_id, for_update=cover_photo_id is not UNSET)
    if cover_photo_id is not UNSET and cover_photo_id is not None:
        in_album = exists().where(
            AlbumPhoto.album_id == album.id,
            AlbumPhoto.photo_id == cover_photo_id,
            Photo.id == AlbumPhoto.photo_id,
            Photo.status == PhotoStatus.READY,
        )
        if not session.scalar(select(in_album)):
            raise ValidationFailedError([FieldError("cover_photo_id", "must be a photo in this album")])
    if name is not UNSET:
        album.name = name
    if description is not UNSET:
        album.description = description
    if cover_photo_id is not UNSET:
        album.cover_photo_id = cover_photo_id
    session.commit()
    return CountedAlbum(album, count_ready_photos(session, album.id))


def count_ready_photos(session: Session, album_id: int) -> int:
    """How many ready photos the album holds."""
    return session.scalar(select(_ready_photo_count(album_id))) or 0


def delete_album(session: Session, owner_id: int, album_id: int) -> None:
    """Delete the owner's album; its memberships and share links go by FK cascade, the photos stay."""
    if not is_id(album_id):
        raise NotFoundError(ALBUM_NOT_FOUND)
    result = session.execute(
        delete(Album).where(Album.id == album_id, Album.owner_id == owner_id),
        execution_options={"synchronize_session": False},
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFoundError(ALBUM_NOT_FOUND)
    session.commit()


def add_photos(session: Session, owner_id: int, album_id: int, photo_ids: Sequence[int]) -> int:
    """Add the owner's ready photos among `photo_ids` to the album, in the order given; return how many were new.

    Other users' photos, pending or unknown ids, and photos already in the album are ignored.
    """
    get_album(session, owner_id, album_id)
    statement = _insert_memberships(session, owner_id, album_id, photo_ids)
    try:
        added = session.execute(statement).rowcount  # type: ignore[attr-defined]
    except IntegrityError:
        # A photo (or the album) was deleted between our SELECT and the FK check: once more, the deleted
        # photo is no longer selected, and a deleted album answers 404.
        session.rollback()
        get_album(session, owner_id, album_id)
        added = session.execute(statement).rowcount  # type: ignore[attr-defined]
    session.commit()
    return int(added)


def _insert_memberships(
    session: Session, owner_id: int, album_id: int, photo_ids: Sequence[int]
) -> postgresql.Insert | sqlite.Insert:
    """INSERT ... SELECT ... ON CONFLICT DO NOTHING: one statement, so racing adds cannot duplicate or fail."""
    positions: dict[int, int] = {}
    for position, photo_id in enumerate(photo_ids):
        positions.setdefault(photo_id, position)
    now = utcnow()
    source = (
        select(literal(album_id), Photo.id, literal(now, UTCDateTime))
        .where(Photo.id.in_(list(positions)), Photo.owner_id == owner_id, Photo.status == PhotoStatus.READY)
        # Membership ids follow this order, and album order is (added_at, id): keep the caller's order.
        .order_by(case(positions, value=Photo.id))
    )
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return (
        dialect.insert(AlbumPhoto)
        .from_select([AlbumPhoto.album_id, AlbumPhoto.photo_id, AlbumPhoto.added_at], source)
        .on_conflict_do_nothing(index_elements=[AlbumPhoto.album_id, AlbumPhoto.photo_id])
    )


def remove_photos(session: Session, owner_id: int, album_id: int, photo_ids: Sequence[int]) -> int:
    """Remove these photos from the album (clearing the cover if it was one of them); return how many were in it."""
    get_album(session, owner_id, album_id)
    ids = set(photo_ids)
    removed = session.execute(
        delete(AlbumPhoto).where(AlbumPhoto.album_id == album_id, AlbumPhoto.photo_id.in_(ids)),
        execution_options={"synchronize_session": False},
    ).rowcount  # type: ignore[attr-defined]
    # After the delete and re-checked on the latest row: a concurrent PATCH that set one of these
    # photos as cover holds the row lock until it commits, then this clears it.
    session.execute(
        update(Album).where(Album.id == album_id, Album.cover_photo_id.in_(ids)).values(cover_photo_id=None),
        execution_options={"synchronize_session": False},
    )
    session.commit()
    return int(removed)
