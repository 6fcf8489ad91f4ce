"""The list routes read one page from an index, whatever the owner holds: PostgreSQL sorts nothing.

A page of `GET /photos` (each sort and order), of `GET /albums` and of an album's photos (`GET /albums/{id}`
and a shared album's page) is read in index order, its first rows only. An ORDER BY that no index matches
makes PostgreSQL read and sort every row of the owner (or album) for each page (5 ms at 20,000 photos and
growing, against 0.05 ms). With sorting disabled for the transaction, the plan of the statement each service
function runs shows a Sort node only if no index can give the order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from photo_api.config import load_settings
from photo_api.db import Database
from photo_api.services import albums, photos
from tests.harness.env import TEST_SECRET


def _plan_of_last_statement(database_url: str, run: Callable[[Session], Any]) -> list[str]:
    """EXPLAIN of the last statement `run(session)` sent to PostgreSQL, with sorting disabled."""
    db = Database(load_settings(environ={}, database_url=database_url, jwt_secret_key=TEST_SECRET))
    sent: list[tuple[str, Any]] = []
    event.listen(
        db.engine, "before_cursor_execute", lambda _c, _cur, stmt, params, _ctx, _many: sent.append((stmt, params))
    )
    try:
        with db.session() as session:
            run(session)
            statement, params = sent[-1]
            conn = session.connection()
            conn.exec_driver_sql("SET LOCAL enable_sort = off")
            return [str(line) for line in conn.exec_driver_sql("EXPLAIN " + statement, params).scalars()]
    finally:
        db.dispose()


@pytest.mark.parametrize("sort", ["created_at", "taken_at"])
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_a_page_of_photos_is_read_in_index_order(
    pg_database_url: str, sort: photos.SortField, order: photos.SortOrder
) -> None:
    plan = _plan_of_last_statement(
        pg_database_url,
        lambda session: photos.list_photos(session, ("id",), owner_id=1, skip=0, limit=50, sort=sort, order=order),
    )
    assert not [line for line in plan if "Sort" in line], plan
    assert [line for line in plan if "Index" in line], plan


def test_a_page_of_albums_is_read_in_index_order(pg_database_url: str) -> None:
    plan = _plan_of_last_statement(
        pg_database_url, lambda session: albums.list_albums(session, 1, ("id", albums.PHOTO_COUNT), skip=0, limit=20)
    )
    assert not [line for line in plan if "Sort" in line], plan
    assert [line for line in plan if "Index" in line], plan


def test_a_page_of_an_album_is_read_in_index_order(pg_database_url: str) -> None:
    plan = _plan_of_last_statement(
        pg_database_url, lambda session: session.scalars(albums.ready_photos_query(1).offset(0).limit(50)).all()
    )
    assert not [line for line in plan if "Sort" in line], plan
    assert [line for line in plan if "ix_album_photos_album_added" in line], plan
