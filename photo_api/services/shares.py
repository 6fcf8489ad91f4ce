"""Share links: create, list and revoke them for an album, and what the public sees through one.

A token is a bearer credential: it is never logged (log lines name the link id instead).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from ..errors import GoneError, NotFoundError
from ..models import Album, AlbumPhoto, Photo, PhotoStatus, ShareLink, is_id, utcnow
from .albums import AlbumPage, album_page, get_album

log = logging.getLogger(__name__)

# 32 random bytes (256 bits), URL-safe base64: 43 characters, far inside the 128-character column.
TOKEN_BYTES = 32
SHARE_NOT_FOUND = "Share link not found"
# What token_urlsafe produces, within the column's length. Anything else cannot be a token, and must not
# reach the database (PostgreSQL rejects a NUL character with an error rather than finding nothing).
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def create_share(
    session: Session,
    owner_id: int,
    album_id: int,
    *,
    expires_in_days: int | None,
    include_metadata: bool = False,
    clock: Callable[[], datetime] = utcnow,
) -> ShareLink:
    """Create a share link for the owner's album, expiring after `expires_in_days` (never when None).

    Without `include_metadata` the public gets each original without its EXIF/XMP/GPS (its public copy).
    """
    album = get_album(session, owner_id, album_id)
    now = clock()
    link = ShareLink(
        album_id=album.id,
        token=secrets.token_urlsafe(TOKEN_BYTES),
        is_active=True,
        expires_at=now + timedelta(days=expires_in_days) if expires_in_days is not None else None,
        view_count=0,
        created_at=now,
        include_metadata=include_metadata,
    )
    session.add(link)
    session.commit()
    log.info("share link created", extra={"share_link_id": link.id, "album_id": album.id})
    return link


def list_shares(session: Session, owner_id: int, album_id: int) -> list[ShareLink]:
    """Every share link of the owner's album, revoked and expired ones included, newest first."""
    album = get_album(session, owner_id, album_id)
    query = (
        select(ShareLink)
        .where(ShareLink.album_id == album.id)
        .order_by(ShareLink.created_at.desc(), ShareLink.id.desc())
    )
    return list(session.scalars(query))


def revoke_share(session: Session, owner_id: int, album_id: int, share_id: int) -> None:
    """Deactivate a share link of the owner's album (idempotent); NotFoundError if it belongs to another album."""
    album = get_album(session, owner_id, album_id)
    if not is_id(share_id):
        raise NotFoundError(SHARE_NOT_FOUND)
    result = session.execute(
        update(ShareLink).where(ShareLink.id == share_id, ShareLink.album_id == album.id).values(is_active=False),
        execution_options={"synchronize_session": False},
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFoundError(SHARE_NOT_FOUND)
    session.commit()
    log.info("share link revoked", extra={"share_link_id": share_id, "album_id": album.id})


def _usable(now: datetime) -> ColumnElement[bool]:
    return ShareLink.is_active.is_(True) & or_(ShareLink.expires_at.is_(None), ShareLink.expires_at > now)


def _check_shape(token: str) -> None:
    if not _TOKEN_SHAPE.fullmatch(token):
        raise NotFoundError(SHARE_NOT_FOUND)


def _unusable_link_error(session: Session, token: str) -> NotFoundError | GoneError:
    """Why `token` opens nothing: unknown (404), or revoked/expired (410)."""
    known = session.scalar(select(ShareLink.id).where(ShareLink.token == token))
    if known is None:
        return NotFoundError(SHARE_NOT_FOUND)
    return GoneError("Share link has expired or been revoked")


class SharedAlbum(NamedTuple):
    """A page of a shared album, and whether its link shows the photos' metadata."""

    page: AlbumPage
    include_metadata: bool


def view_shared_album(
    session: Session, token: str, *, skip: int, limit: int, clock: Callable[[], datetime] = utcnow
) -> SharedAlbum:
    """A page of what a share link opens; NotFoundError if unknown, GoneError if unusable.

    Opening the album (the first page, `skip` 0) counts one view; the later pages of the same visit do not.
    """
    _check_shape(token)
    if skip == 0:
        # One UPDATE both checks the link and counts the view, so concurrent views all count, and a link
        # revoked a moment ago is not counted.
        row = session.execute(
            update(ShareLink)
            .where(ShareLink.token == token, _usable(clock()))
            .values(view_count=ShareLink.view_count + 1)
            .returning(ShareLink.id, ShareLink.include_metadata),
            execution_options={"synchronize_session": False},
        ).one_or_none()
    else:
        row = session.execute(
            select(ShareLink.id, ShareLink.include_metadata).where(ShareLink.token == token, _usable(clock()))
        ).one_or_none()
    if row is None:
        session.rollback()
        raise _unusable_link_error(session, token)
    # Committed at once: the row lock taken by the UPDATE must not wait for the photo query.
    session.commit()
    album = session.scalars(
        select(Album).join(ShareLink, ShareLink.album_id == Album.id).where(ShareLink.id == row.id)
    ).one_or_none()
    if album is None:  # the album (and with it the link) was deleted since
        raise NotFoundError(SHARE_NOT_FOUND)
    page = album_page(session, album, skip=skip, limit=limit)
    log.info("shared album viewed", extra={"share_link_id": row.id, "album_id": album.id, "skip": skip})
    return SharedAlbum(page, bool(row.include_metadata))


class SharedPhoto(NamedTuple):
    """A photo as a share link opens it."""

    photo: Photo
    include_metadata: bool


def shared_photo(session: Session, token: str, photo_id: int, *, clock: Callable[[], datetime] = utcnow) -> SharedPhoto:
    """A ready photo of the shared album; NotFoundError unless it is in that album, GoneError for a dead link."""
    _check_shape(token)
    link = session.scalars(select(ShareLink).where(ShareLink.token == token, _usable(clock()))).one_or_none()
    if link is None:
        raise _unusable_link_error(session, token)
    if not is_id(photo_id):
        raise NotFoundError("Photo not found")
    photo = session.scalars(
        select(Photo)
        .join(AlbumPhoto, AlbumPhoto.photo_id == Photo.id)
        .where(AlbumPhoto.album_id == link.album_id, Photo.id == photo_id, Photo.status == PhotoStatus.READY)
    ).one_or_none()
    if photo is None:
        raise NotFoundError("Photo not found")
    return SharedPhoto(photo, link.include_metadata)
