"""Duplicate detection: the same bytes uploaded again by their owner answer the existing photo (200,
`duplicate: true`) and store nothing; another user's identical bytes are a photo of their own.

Through the API (Flask's test client), on PostgreSQL and SQLite; two identical uploads racing on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, func, select, text

from photo_api.api.context import collaborators_of
from photo_api.db import driver_url
from photo_api.metrics import registry
from photo_api.models import AlbumPhoto, Photo
from photo_api.storage import LocalStorage
from tests.harness.users import Users
from tests.images import photo_jpeg, png, upload
from tests.test_presigned import confirm, presign, put

PHOTO = photo_jpeg(64, 48, gps=(37.5, 127.0))


def stored_originals(app: Flask) -> list[str]:
    """The originals (and staged uploads) in storage: every file but the renditions (r/...)."""
    storage = collaborators_of(app).storage
    assert isinstance(storage, LocalStorage)
    return sorted(
        str(p.relative_to(storage.root))
        for p in storage.root.rglob("*")
        if p.is_file() and p.relative_to(storage.root).parts[0] != "r"
    )


def photo_count(app: Flask) -> int:
    with collaborators_of(app).db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Photo)) or 0)


def duplicates_counted(method: str) -> float:
    value = registry().get_sample_value("photo_api_duplicate_uploads_total", {"method": method})
    return value or 0.0


def test_the_same_bytes_again_answer_the_existing_photo_and_store_nothing(
    app: Flask, client: FlaskClient, users: Users
) -> None:
    user = users.create()
    first = upload(client, user["headers"], PHOTO, "a.jpg", title="First")
    assert first.status_code == 201, first.get_json()
    assert first.get_json()["duplicate"] is False
    before = duplicates_counted("multipart")
    files = stored_originals(app)

    album = client.post("/albums", json={"name": "Trip"}, headers=user["headers"]).get_json()
    again = upload(client, user["headers"], PHOTO, "copy.jpg", title="Second", album_id=str(album["id"]))
    assert again.status_code == 200, again.get_json()
    body = again.get_json()
    assert body["duplicate"] is True
    assert body["id"] == first.get_json()["id"] and body["title"] == "First"  # the existing photo, unchanged
    assert photo_count(app) == 1
    assert stored_originals(app) == files  # the streamed copy was deleted again
    assert duplicates_counted("multipart") == before + 1
    # With album_id the existing photo joins the album (the uploader's intent), once.
    listed = client.get(f"/albums/{album['id']}", headers=user["headers"]).get_json()
    assert [p["id"] for p in listed["photos"]] == [body["id"]]
    upload(client, user["headers"], PHOTO, "third.jpg", album_id=str(album["id"]))
    with collaborators_of(app).db.session() as session:
        assert session.scalar(select(func.count()).select_from(AlbumPhoto)) == 1

    # Different bytes are a new photo; the same bytes of another user are that user's own photo.
    assert upload(client, user["headers"], png(), "b.png").status_code == 201
    other = users.create()
    theirs = upload(client, other["headers"], PHOTO, "a.jpg")
    assert theirs.status_code == 201 and theirs.get_json()["duplicate"] is False
    assert theirs.get_json()["filename"] != body["filename"]  # not shared: an object of their own
    assert photo_count(app) == 3


def test_a_deleted_photo_is_no_duplicate_any_more(client: FlaskClient, users: Users) -> None:
    user = users.create()
    photo_id = upload(client, user["headers"], PHOTO).get_json()["id"]
    assert client.delete(f"/photos/{photo_id}", headers=user["headers"]).status_code == 204
    again = upload(client, user["headers"], PHOTO)
    assert again.status_code == 201 and again.get_json()["duplicate"] is False


def test_a_presigned_upload_of_known_bytes_is_discarded_at_confirm(
    app: Flask, client: FlaskClient, users: Users
) -> None:
    user = users.create()
    data = png(24, 24)
    existing = upload(client, user["headers"], data, "a.png").get_json()
    before = duplicates_counted("presigned")
    album = client.post("/albums", json={"name": "Later"}, headers=user["headers"]).get_json()
    started = presign(client, user, file_size=len(data), album_id=album["id"]).get_json()
    assert put(client, started["upload_url"], data).status_code == 201

    r = confirm(client, user, started["photo_id"])
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["duplicate"] is True and body["id"] == existing["id"]
    assert duplicates_counted("presigned") == before + 1
    assert photo_count(app) == 1
    assert stored_originals(app) == [existing["filename"]]  # staged object gone, no final copy left
    listed = client.get(f"/albums/{album['id']}", headers=user["headers"]).get_json()
    assert [p["id"] for p in listed["photos"]] == [existing["id"]]
    # The pending photo is gone: confirming it again is 404.
    assert confirm(client, user, started["photo_id"]).status_code == 404

    # A confirm of new bytes is no duplicate.
    other = presign(client, user, file_size=len(png(25, 25))).get_json()
    put(client, other["upload_url"], png(25, 25))
    fresh = confirm(client, user, other["photo_id"]).get_json()
    assert fresh["duplicate"] is False and fresh["id"] == other["photo_id"]


def test_the_checksum_is_the_md5_of_the_bytes(app: Flask, client: FlaskClient, users: Users) -> None:
    user = users.create()
    photo_id = upload(client, user["headers"], PHOTO).get_json()["id"]
    with collaborators_of(app).db.session() as session:
        photo = session.get(Photo, photo_id)
        assert photo is not None
        assert photo.checksum == photo.content_checksum == hashlib.md5(PHOTO).hexdigest()


def against_a_held_winner(database_url: str, owner_id: int, data: bytes, request: Callable[[], Any]) -> tuple[int, Any]:
    """Run `request` while another transaction holds an uncommitted ready photo of `owner_id` with `data`'s
    checksum: the request's look-up finds nothing and its write waits on the unique index; then commit that
    photo, so the write fails. Returns the held photo's id and what `request` returned."""
    engine = create_engine(driver_url(database_url))
    results: list[Any] = []
    try:
        with engine.connect() as conn:
            trans = conn.begin()
            winner_id = conn.execute(
                text(
                    "INSERT INTO photos (owner_id, filename, original_filename, content_type, file_size, checksum, "
                    "content_checksum, status, created_at, updated_at) VALUES (:owner, 'u/winner', 'w', "
                    "'image/png', :size, :sum, :sum, 'ready', now(), now()) RETURNING id"
                ),
                {"owner": owner_id, "size": len(data), "sum": hashlib.md5(data).hexdigest()},
            ).scalar_one()
            thread = threading.Thread(target=lambda: results.append(request()))
            thread.start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until the request's write waits for our transaction
                with engine.connect() as probe:
                    waiting = probe.execute(
                        text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = :db"),
                        {"db": engine.url.database},
                    ).scalar_one()
                if waiting:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the request never waited on the unique index")
            trans.commit()
            thread.join(timeout=30)
    finally:
        engine.dispose()
    assert len(results) == 1
    return winner_id, results[0]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_upload_losing_the_race_to_an_identical_one_answers_the_winner(
    app: Flask, users: Users, database_url: str
) -> None:
    """The loser's insert fails on the unique index: it answers the winner (200) and leaves no object behind."""
    user = users.create()

    def post() -> Any:
        with app.test_client() as c:
            return upload(c, user["headers"], PHOTO)

    winner_id, r = against_a_held_winner(database_url, user["id"], PHOTO, post)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["id"] == winner_id and r.get_json()["duplicate"] is True
    assert photo_count(app) == 1
    assert stored_originals(app) == []  # the loser's streamed object was deleted; the winner's row is ours


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_confirm_losing_the_race_to_an_identical_photo_answers_it(
    app: Flask, client: FlaskClient, users: Users, database_url: str
) -> None:
    """The confirm's flip to ready fails on the unique index: its copy and staged object go, the winner is
    answered, and the pending photo is gone."""
    user = users.create()
    data = png(30, 30)
    started = presign(client, user, file_size=len(data)).get_json()
    assert put(client, started["upload_url"], data).status_code == 201

    def post() -> Any:
        with app.test_client() as c:
            return confirm(c, user, started["photo_id"])

    winner_id, r = against_a_held_winner(database_url, user["id"], data, post)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["id"] == winner_id and r.get_json()["duplicate"] is True
    assert photo_count(app) == 1
    assert stored_originals(app) == []  # neither the staged object nor the final copy is left


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_identical_uploads_at_once_make_one_photo(app: Flask, users: Users) -> None:
    user = users.create()
    barrier = threading.Barrier(4)
    results: list[Any] = []

    def one() -> None:
        with app.test_client() as c:
            barrier.wait(timeout=10)
            results.append(upload(c, user["headers"], PHOTO))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200, 200, 201], [r.get_json() for r in results]
    assert len({r.get_json()["id"] for r in results}) == 1
    assert photo_count(app) == 1
    assert len(stored_originals(app)) == 1
