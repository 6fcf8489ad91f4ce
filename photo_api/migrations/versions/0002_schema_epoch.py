"""Record the schema epoch, so that an older release can tell an expand-only database from a contracted one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: a new table that the previous release never reads.
schema_epoch = 1


def upgrade() -> None:
    # One row (id = 1): the epoch of the database's revision, written by `db upgrade` after every step.
    op.create_table(
        "photo_api_schema",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_photo_api_schema_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_photo_api_schema")),
    )


def downgrade() -> None:
    op.drop_table("photo_api_schema")
