"""SQLAlchemy 2.0 typed models: the whole schema of the contract."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names: Alembic migrations and the IntegrityError translation depend on them.
# Every id is an INTEGER (32-bit) primary key: a larger number names no row, and SQLite cannot even bind
# one past 2**63 (OverflowError), so the API refuses it before any query.
MAX_ID = 2**31 - 1


def is_id(value: int) -> bool:
    """True when `value` can be a row id (1 to MAX_ID); anything else names no row and is never queried."""
    return 0 < value <= MAX_ID


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware, on PostgreSQL and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite keeps no zone: what we wrote was UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PhotoStatus(enum.StrEnum):
    PENDING = "pending"  # presigned upload issued, bytes not confirmed yet
    READY = "ready"


class ProcessingStatus(enum.StrEnum):
    """Where a ready photo's renditions and metadata are: the background job's state, shown to the owner."""

    PENDING = "pending"  # waiting for (or in) the job; also every photo stored before renditions existed
    READY = "ready"  # renditions stored, metadata read
    FAILED = "failed"  # given up: `processing_error` says why (a decompression bomb, undecodable bytes, ...)


def _enum_values(e: type[enum.StrEnum]) -> list[str]:
    return [m.value for m in e]


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Stored lower-cased, so the unique index is case-insensitive on every backend.
    email: Mapped[str] = mapped_column(String(254), unique=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Photo(Base):
    __tablename__ = "photos"
    __table_args__ = (
        CheckConstraint("file_size >= 0", name="file_size_non_negative"),
        # The list query: the caller's ready photos, newest first (or by the time they were taken).
        Index("ix_photos_owner_status_created", "owner_id", "status", "created_at", "id"),
        Index("ix_photos_owner_status_taken", "owner_id", "status", "taken_at", "id"),
        # Newest taken first, photos without a date last: PostgreSQL scans the ascending index backward only
        # for NULLS FIRST (migration 0005; on SQLite, where NULL sorts first, plain DESC is that order).
        Index(
            "ix_photos_owner_status_taken_desc",
            "owner_id",
            "status",
            text("taken_at DESC NULLS LAST"),
            text("id DESC"),
        ),
        Index("ix_photos_status_upload_expires", "status", "upload_expires_at"),
        # The reaper's query: photos whose job was never enqueued, or long ago.
        Index("ix_photos_processing_enqueued", "processing_status", "processing_enqueued_at"),
        # Duplicate detection: one photo per owner and content. Two identical uploads at once both insert;
        # this index lets exactly one commit, and the other answers with it (services/photos.py).
        Index(
            "uq_photos_owner_content_checksum",
            "owner_id",
            "content_checksum",
            unique=True,
            postgresql_where=text("content_checksum IS NOT NULL"),
            sqlite_where=text("content_checksum IS NOT NULL"),
        ),
        # The reaper's query: processed photos whose public copy (without metadata) is still to be made.
        Index(
            "ix_photos_unstripped",
            "id",
            postgresql_where=text("stripped_key IS NULL AND processing_status <> 'pending'"),
            sqlite_where=text("stripped_key IS NULL AND processing_status <> 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(512), unique=True)  # the storage object key
    original_filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    file_size: Mapped[int] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(64))  # MD5 hex of the stored bytes (the ETag)
    # The checksum again, on the one ready photo of its owner with these bytes (None on a pending photo, and
    # on an identical photo kept from before duplicate detection): what a duplicate upload is looked up by.
    content_checksum: Mapped[str | None] = mapped_column(String(64))
    title: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[PhotoStatus] = mapped_column(
        Enum(
            PhotoStatus,
            name="photo_status",
            native_enum=False,
            length=16,
            values_callable=_enum_values,
        ),
        default=PhotoStatus.READY,
    )
    upload_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    # The background job (photo_api/jobs): renditions and metadata. A row of an older release gets the
    # server default, so the reaper enqueues it too.
    processing_status: Mapped[ProcessingStatus] = mapped_column(
        Enum(
            ProcessingStatus,
            name="processing_status",
            native_enum=False,
            length=16,
            values_callable=_enum_values,
        ),
        default=ProcessingStatus.PENDING,
        server_default=ProcessingStatus.PENDING.value,
    )
    processing_error: Mapped[str | None] = mapped_column(String(255))
    processing_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    processing_enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # None: not handed to a queue
    thumbhash: Mapped[str | None] = mapped_column(String(64))  # base64 of the ThumbHash (at most 25 bytes)
    rendition_type: Mapped[str | None] = mapped_column(String(32))  # content type of the renditions
    thumbnail_size: Mapped[int | None] = mapped_column(BigInteger)
    thumbnail_etag: Mapped[str | None] = mapped_column(String(64))
    preview_size: Mapped[int | None] = mapped_column(BigInteger)
    preview_etag: Mapped[str | None] = mapped_column(String(64))

    # What the original's metadata says (photo_api/media/metadata.py); None where it says nothing.
    width: Mapped[int | None] = mapped_column(Integer)  # upright: after the EXIF orientation
    height: Mapped[int | None] = mapped_column(Integer)
    orientation: Mapped[int | None] = mapped_column(SmallInteger)
    taken_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    taken_at_offset_minutes: Mapped[int | None] = mapped_column(SmallInteger)  # None: no offset recorded
    camera_make: Mapped[str | None] = mapped_column(String(64))
    camera_model: Mapped[str | None] = mapped_column(String(64))
    # Private to the owner: never in a public answer.
    gps_latitude: Mapped[float | None] = mapped_column(Float)
    gps_longitude: Mapped[float | None] = mapped_column(Float)
    gps_altitude: Mapped[float | None] = mapped_column(Float)
    # The original carries EXIF or XMP (camera, place, ...): a public copy must lose it. None: not read yet.
    has_embedded_metadata: Mapped[bool | None] = mapped_column(Boolean)
    # The original without its metadata, losslessly (photo_api/media/strip.py), for shares without metadata.
    # None: not made yet; the original's own key: it had nothing to remove; NO_STRIPPED_COPY: it cannot be
    # made (a format kept whole, or bytes the filter does not understand) and the public gets the preview.
    stripped_key: Mapped[str | None] = mapped_column(String(512))
    stripped_size: Mapped[int | None] = mapped_column(BigInteger)
    stripped_etag: Mapped[str | None] = mapped_column(String(64))

    @property
    def has_location(self) -> bool:
        """The original records where it was taken."""
        return self.gps_latitude is not None and self.gps_longitude is not None


# `stripped_key` of a photo whose original cannot be served without its metadata losslessly.
NO_STRIPPED_COPY = ""


class Album(Base):
    __tablename__ = "albums"
    __table_args__ = (Index("ix_albums_owner_created", "owner_id", "created_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    cover_photo_id: Mapped[int | None] = mapped_column(ForeignKey("photos.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    memberships: Mapped[list[AlbumPhoto]] = relationship(
        back_populates="album", cascade="all, delete-orphan", passive_deletes=True
    )


class AlbumPhoto(Base):
    """Membership of a photo in an album; the primary key makes a duplicate add harmless."""

    __tablename__ = "album_photos"
    __table_args__ = (
        UniqueConstraint("album_id", "photo_id"),
        Index("ix_album_photos_photo_id", "photo_id"),
        # A page of an album, in the order its photos were added (migration 0005).
        Index("ix_album_photos_album_added", "album_id", "added_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    album_id: Mapped[int] = mapped_column(ForeignKey("albums.id", ondelete="CASCADE"))
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    album: Mapped[Album] = relationship(back_populates="memberships")


class ShareLink(Base):
    __tablename__ = "share_links"
    __table_args__ = (Index("ix_share_links_album_id", "album_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    album_id: Mapped[int] = mapped_column(ForeignKey("albums.id", ondelete="CASCADE"))
    token: Mapped[str] = mapped_column(String(128), unique=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    view_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # False (the default): the public gets the original without its EXIF/XMP/GPS (the stripped copy).
    include_metadata: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class PendingObjectDeletion(Base):
    """A storage object whose delete failed after its row was gone; the reaper retries it."""

    __tablename__ = "pending_object_deletions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_key: Mapped[str] = mapped_column(String(512), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
