"""EXIF privacy on public shares and duplicate detection (expand).

- `share_links.include_metadata` (default false): whether the public gets the original with its metadata.
- `photos.stripped_key`, `stripped_size`, `stripped_etag`: the lossless copy of the original without its
  EXIF/XMP/GPS/comments, made by the background job; what a share without metadata serves.
- `photos.content_checksum`: the checksum of a ready photo, on one photo per owner and content only, under a
  unique index: the lookup of duplicate uploads and what settles two identical uploads racing. A separate
  column rather than a unique index on `checksum`, because a database may already hold identical photos of
  one owner (uploaded before this release): they keep their rows, and the oldest of each group becomes the
  one a new duplicate is answered with.

Revision ID: 0004_privacy_dedup
Revises: 0003_media
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_privacy_dedup"
down_revision: str | None = "0003_media"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: new nullable columns or with a server default, and indexes; the previous release never reads them,
# and its inserts get the defaults (a photo it stores has no `content_checksum`: it is not found as the
# original of a later duplicate, which is all that is lost during a rolling deploy).
schema_epoch = 1

_UNIQUE_CONTENT = "uq_photos_owner_content_checksum"
_UNSTRIPPED = "ix_photos_unstripped"


def upgrade() -> None:
    with op.batch_alter_table("share_links", schema=None) as batch_op:
        batch_op.add_column(sa.Column("include_metadata", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("photos", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_checksum", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("stripped_key", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("stripped_size", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("stripped_etag", sa.String(length=64), nullable=True))
    # The oldest ready photo of each (owner, checksum) group: a single statement, valid on both backends.
    op.execute(
        "UPDATE photos SET content_checksum = checksum WHERE status = 'ready' AND checksum IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM photos AS older WHERE older.owner_id = photos.owner_id "
        "AND older.checksum = photos.checksum AND older.status = 'ready' AND older.id < photos.id)"
    )
    op.create_index(
        _UNIQUE_CONTENT,
        "photos",
        ["owner_id", "content_checksum"],
        unique=True,
        postgresql_where=sa.text("content_checksum IS NOT NULL"),
        sqlite_where=sa.text("content_checksum IS NOT NULL"),
    )
    # The reaper's query for photos whose public copy is still to be made (every photo processed before).
    op.create_index(
        _UNSTRIPPED,
        "photos",
        ["id"],
        postgresql_where=sa.text("stripped_key IS NULL AND processing_status <> 'pending'"),
        sqlite_where=sa.text("stripped_key IS NULL AND processing_status <> 'pending'"),
    )


def downgrade() -> None:
    op.drop_index(_UNSTRIPPED, table_name="photos")
    op.drop_index(_UNIQUE_CONTENT, table_name="photos")
    with op.batch_alter_table("photos", schema=None) as batch_op:
        batch_op.drop_column("stripped_etag")
        batch_op.drop_column("stripped_size")
        batch_op.drop_column("stripped_key")
        batch_op.drop_column("content_checksum")
    with op.batch_alter_table("share_links", schema=None) as batch_op:
        batch_op.drop_column("include_metadata")
