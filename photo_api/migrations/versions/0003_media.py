"""Media pipeline: processing state, renditions and metadata of photos (expand).

Every photo gets `processing_status` = 'pending' (the server default), so the photos stored before this
release are enqueued by the reaper like any photo whose job was never handed to a queue.

Revision ID: 0003_media
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_media"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: new columns, nullable or with a server default, and indexes; the previous release never reads
# them, and its inserts get the defaults.
schema_epoch = 1


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("processing_status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("processing_error", sa.String(length=255), nullable=True),
        sa.Column("processing_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("processing_enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("thumbhash", sa.String(length=64), nullable=True),
        sa.Column("rendition_type", sa.String(length=32), nullable=True),
        sa.Column("thumbnail_size", sa.BigInteger(), nullable=True),
        sa.Column("thumbnail_etag", sa.String(length=64), nullable=True),
        sa.Column("preview_size", sa.BigInteger(), nullable=True),
        sa.Column("preview_etag", sa.String(length=64), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("orientation", sa.SmallInteger(), nullable=True),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("taken_at_offset_minutes", sa.SmallInteger(), nullable=True),
        sa.Column("camera_make", sa.String(length=64), nullable=True),
        sa.Column("camera_model", sa.String(length=64), nullable=True),
        sa.Column("gps_latitude", sa.Float(), nullable=True),
        sa.Column("gps_longitude", sa.Float(), nullable=True),
        sa.Column("gps_altitude", sa.Float(), nullable=True),
        sa.Column("has_embedded_metadata", sa.Boolean(), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("photos", schema=None) as batch_op:
        for column in _columns():
            batch_op.add_column(column)
        batch_op.create_index(
            batch_op.f("ix_photos_owner_status_taken"), ["owner_id", "status", "taken_at", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_photos_processing_enqueued"),
            ["processing_status", "processing_enqueued_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("photos", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_photos_processing_enqueued"))
        batch_op.drop_index(batch_op.f("ix_photos_owner_status_taken"))
        for column in reversed(_columns()):
            batch_op.drop_column(column.name)
