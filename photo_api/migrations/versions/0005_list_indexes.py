"""Indexes that give two list pages their order (expand).

- `ix_photos_owner_status_taken_desc`: `GET /photos?sort=taken_at&order=desc` orders by `taken_at DESC NULLS
  LAST` (photos without a date last). PostgreSQL reads `ix_photos_owner_status_taken` backward only as
  `DESC NULLS FIRST`, so without this index it read and sorted every photo of the owner for each page (5 ms
  at 20,000 photos, and growing with them, against 0.05 ms through an index). On SQLite NULL sorts first in
  ascending order, so a plain descending index is that order already.
- `ix_album_photos_album_added`: a page of an album (`GET /albums/{id}`, and a shared album's public page)
  is in the order photos were added; without it every page read and sorted all of the album's photos.

Revision ID: 0005_list_indexes
Revises: 0004_privacy_dedup
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_list_indexes"
down_revision: str | None = "0004_privacy_dedup"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: indexes only; the previous release's queries are unchanged by them.
schema_epoch = 1

_TAKEN_DESC = "ix_photos_owner_status_taken_desc"
_ALBUM_ADDED = "ix_album_photos_album_added"


def upgrade() -> None:
    # IF NOT EXISTS: an operator may have made them beforehand with CREATE INDEX CONCURRENTLY (docs/deploy.md).
    nulls_last = " NULLS LAST" if op.get_bind().dialect.name == "postgresql" else ""
    op.execute(
        f"CREATE INDEX IF NOT EXISTS {_TAKEN_DESC} ON photos (owner_id, status, taken_at DESC{nulls_last}, id DESC)"
    )
    op.execute(f"CREATE INDEX IF NOT EXISTS {_ALBUM_ADDED} ON album_photos (album_id, added_at, id)")


def downgrade() -> None:
    op.drop_index(_ALBUM_ADDED, table_name="album_photos")
    op.drop_index(_TAKEN_DESC, table_name="photos")
