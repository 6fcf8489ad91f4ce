"""Albums through HTTP: CRUD and validation, photo counts in one query, membership, covers and ownership."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Executable, event, func, select
from werkzeug.test import TestResponse

from photo_api.api.context import collaborators_of
from photo_api.models import AlbumPhoto, Photo, PhotoStatus, ShareLink
from tests.harness.users import Users
from tests.http_checks import assert_problem, engine_of, error_fields
from tests.images import png

ALBUM_KEYS = {"id", "owner_id", "name", "description", "cover_photo_id", "photo_count", "created_at", "updated_at"}
PAGE_LIMIT_DEFAULT = 50


def insert_photo(
    app: Flask, owner_id: int, *, status: PhotoStatus = PhotoStatus.READY, data: bytes | None = None
) -> int:
    """Store a PNG and insert its photo row directly (not through the upload route); return the photo id."""
    data = png() if data is None else data
    key = f"u/{owner_id}/{uuid.uuid4().hex}.png"
    stored = collaborators_of(app).storage.put(key, io.BytesIO(data), content_type="image/png")
    photo = {
        "owner_id": owner_id,
        "filename": key,
        "original_filename": "private-name-of-owner.png",
        "content_type": "image/png",
        "file_size": len(data),
        "checksum": stored.etag,
        "title": "a title",
        "status": status,
    }
    with engine_of(app).begin() as conn:
        return int(conn.execute(Photo.__table__.insert().values(**photo).returning(Photo.id)).scalar_one())


def run_sql(app: Flask, statement: Executable) -> None:
    """Change rows behind the API's back, committed."""
    with engine_of(app).begin() as conn:
        conn.execute(statement)


def scalar(app: Flask, statement: Executable) -> Any:
    """One value read directly from the database."""
    with engine_of(app).connect() as conn:
        return conn.scalar(statement)


def new_album(client: FlaskClient, user: dict[str, Any], name: str = "Holidays", **fields: Any) -> dict[str, Any]:
    """Create an album through the API; return its body."""
    r = client.post("/albums", json={"name": name, **fields}, headers=user["headers"])
    assert r.status_code == 201, r.get_json()
    body: dict[str, Any] = r.get_json()
    return body


def add_photos(client: FlaskClient, user: dict[str, Any], album_id: int, ids: list[Any]) -> TestResponse:
    """POST /albums/{id}/photos."""
    return client.post(f"/albums/{album_id}/photos", json={"photo_ids": ids}, headers=user["headers"])


def remove_photos(client: FlaskClient, user: dict[str, Any], album_id: int, ids: list[Any]) -> TestResponse:
    """DELETE /albums/{id}/photos."""
    return client.delete(f"/albums/{album_id}/photos", json={"photo_ids": ids}, headers=user["headers"])


def get_album(client: FlaskClient, user: dict[str, Any], album_id: int) -> dict[str, Any]:
    """GET /albums/{id}, expecting 200."""
    r = client.get(f"/albums/{album_id}", headers=user["headers"])
    assert r.status_code == 200, r.get_json()
    body: dict[str, Any] = r.get_json()
    return body


def test_album_crud(client: FlaskClient, users: Users) -> None:
    alice = users.create()
    created = new_album(client, alice, "  Summer  ", description="By the sea\n\tand in the sun")
    assert set(created) == ALBUM_KEYS
    assert created["owner_id"] == alice["id"]
    assert created["name"] == "Summer"  # surrounding whitespace is dropped
    assert created["description"] == "By the sea\n\tand in the sun"  # descriptions may span lines
    assert created["cover_photo_id"] is None and created["photo_count"] == 0
    assert created["created_at"].endswith("Z")
    album_id = created["id"]

    body = get_album(client, alice, album_id)
    assert set(body) == ALBUM_KEYS | {"photos"}
    assert body["photos"] == [] and body["name"] == "Summer"

    r = client.patch(f"/albums/{album_id}", json={"name": "Autumn"}, headers=alice["headers"])
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["name"] == "Autumn"
    assert r.get_json()["description"] == created["description"]  # fields not sent are left alone

    r = client.patch(f"/albums/{album_id}", json={"description": None}, headers=alice["headers"])
    assert r.status_code == 200
    assert r.get_json()["description"] is None and r.get_json()["name"] == "Autumn"
    r = client.patch(f"/albums/{album_id}", json={}, headers=alice["headers"])
    assert r.status_code == 200 and r.get_json()["name"] == "Autumn"

    r = client.delete(f"/albums/{album_id}", headers=alice["headers"])
    assert r.status_code == 204 and r.get_data() == b""
    assert_problem(client.get(f"/albums/{album_id}", headers=alice["headers"]), 404)
    assert_problem(client.delete(f"/albums/{album_id}", headers=alice["headers"]), 404)


@pytest.mark.parametrize("name", ["", "   ", "x" * 256, None, 5, "bad\x00name", "line\nbreak"], ids=repr)
def test_create_rejects_bad_names(client: FlaskClient, users: Users, name: Any) -> None:
    alice = users.create()
    r = client.post("/albums", json={"name": name}, headers=alice["headers"])
    assert error_fields(assert_problem(r, 422)) == {"name"}


def test_create_validation(client: FlaskClient, users: Users) -> None:
    alice = users.create()
    assert error_fields(assert_problem(client.post("/albums", json={}, headers=alice["headers"]), 422)) == {"name"}
    r = client.post("/albums", json={"name": "ok", "description": "d" * 10_001}, headers=alice["headers"])
    assert error_fields(assert_problem(r, 422)) == {"description"}
    # PostgreSQL cannot store NUL: a 422, not a driver error.
    r = client.post("/albums", json={"name": "ok", "description": "a\x00b"}, headers=alice["headers"])
    assert error_fields(assert_problem(r, 422)) == {"description"}
    assert_problem(client.post("/albums", data="{", headers=alice["headers"], content_type="application/json"), 400)
    assert new_album(client, alice, "x" * 255)["name"] == "x" * 255


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"owner_id": 2}, "owner_id"),
        ({"photo_count": 3}, "photo_count"),
        ({"cover_photo_id": "1"}, "cover_photo_id"),
        ({"cover_photo_id": 0}, "cover_photo_id"),
        ({"description": "d" * 10_001}, "description"),
    ],
)
def test_patch_validation(client: FlaskClient, users: Users, patch: dict[str, Any], field: str) -> None:
    alice = users.create()
    album = new_album(client, alice)
    r = client.patch(f"/albums/{album['id']}", json=patch, headers=alice["headers"])
    assert error_fields(assert_problem(r, 422)) == {field}
    assert get_album(client, alice, album["id"])["name"] == "Holidays"


def test_list_albums_pagination(client: FlaskClient, users: Users) -> None:
    alice, bob = users.create(), users.create()
    ids = [new_album(client, alice, f"a{i}")["id"] for i in range(3)]
    new_album(client, bob, "not yours")

    for path in ("/albums", "/albums/"):
        r = client.get(path, headers=alice["headers"])
        assert r.status_code == 200
        assert [a["id"] for a in r.get_json()] == ids[::-1]  # newest first, only the caller's
    r = client.get("/albums?skip=1&limit=1", headers=alice["headers"])
    assert [a["id"] for a in r.get_json()] == [ids[1]]
    assert client.get("/albums?skip=3", headers=alice["headers"]).get_json() == []
    assert len(client.get("/albums?limit=100", headers=alice["headers"]).get_json()) == 3

    for query, field in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("skip=-1", "skip"),
        ("skip=x", "skip"),
    ]:
        assert error_fields(assert_problem(client.get(f"/albums?{query}", headers=alice["headers"]), 422)) == {field}


def test_photo_count_counts_ready_photos_only(app: Flask, client: FlaskClient, users: Users) -> None:
    alice = users.create()
    empty, one, many = (new_album(client, alice, name)["id"] for name in ("empty", "one", "many"))
    ready = [insert_photo(app, alice["id"]) for _ in range(3)]
    assert add_photos(client, alice, one, ready[:1]).get_json() == {"added": 1}
    assert add_photos(client, alice, many, ready).get_json() == {"added": 3}
    # A pending photo can end up in an album through an upload's album_id; it is not shown or counted.
    pending = insert_photo(app, alice["id"], status=PhotoStatus.PENDING)
    run_sql(app, AlbumPhoto.__table__.insert().values(album_id=many, photo_id=pending))

    listed = {a["id"]: a["photo_count"] for a in client.get("/albums", headers=alice["headers"]).get_json()}
    assert listed == {empty: 0, one: 1, many: 3}
    # The list is read as table rows, an album's page from its ORM object: every field agrees.
    for album in client.get("/albums", headers=alice["headers"]).get_json():
        assert album == {k: v for k, v in get_album(client, alice, album["id"]).items() if k != "photos"}
    detail = get_album(client, alice, many)
    assert detail["photo_count"] == 3
    assert [p["id"] for p in detail["photos"]] == ready
    r = client.patch(f"/albums/{many}", json={"name": "renamed"}, headers=alice["headers"])
    assert r.get_json()["photo_count"] == 3


@contextmanager
def count_statements(app: Flask) -> Iterator[list[str]]:
    """Collect every SQL statement the app's engine sends while the block runs."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = engine_of(app)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_listing_albums_takes_the_same_number_of_queries_for_1_or_20_albums(
    app: Flask, client: FlaskClient, users: Users
) -> None:
    alice = users.create()
    photos = [insert_photo(app, alice["id"]) for _ in range(3)]

    def statements_for_listing(expected_albums: int) -> list[str]:
        with count_statements(app) as statements:
            r = client.get("/albums", headers=alice["headers"])
        assert r.status_code == 200 and len(r.get_json()) == expected_albums
        assert all(a["photo_count"] == 3 for a in r.get_json())
        return statements

    add_photos(client, alice, new_album(client, alice)["id"], photos)
    client.get("/albums", headers=alice["headers"])  # warm-up: first-connect queries are not the listing's
    with_one = statements_for_listing(1)
    for i in range(19):
        add_photos(client, alice, new_album(client, alice, f"a{i}")["id"], photos)
    with_twenty = statements_for_listing(20)
    assert len(with_twenty) == len(with_one), with_twenty
    # The user lookup of auth plus one query for the whole page.
    assert sum("album" in s.lower() for s in with_twenty) == 1, with_twenty


def test_add_photos_ignores_others_pending_unknown_and_duplicates(
    app: Flask, client: FlaskClient, users: Users
) -> None:
    alice, bob = users.create(), users.create()
    album = new_album(client, alice)["id"]
    mine = [insert_photo(app, alice["id"]) for _ in range(3)]
    bobs = insert_photo(app, bob["id"])
    pending = insert_photo(app, alice["id"], status=PhotoStatus.PENDING)

    r = add_photos(client, alice, album, [mine[2], bobs, mine[0], pending, 999_999, mine[2]])
    assert r.status_code == 200 and r.get_json() == {"added": 2}
    assert add_photos(client, alice, album, [mine[2], mine[0]]).get_json() == {"added": 0}  # already in
    assert add_photos(client, alice, album, [mine[1], mine[0]]).get_json() == {"added": 1}
    # Album order is the order of adding, and within one request the order given.
    assert [p["id"] for p in get_album(client, alice, album)["photos"]] == [mine[2], mine[0], mine[1]]
    with engine_of(app).connect() as conn:
        in_album = conn.scalars(select(AlbumPhoto.photo_id).where(AlbumPhoto.album_id == album)).all()
    assert sorted(in_album) == sorted(mine)
    # Bob cannot add his photo to Alice's album either.
    assert_problem(add_photos(client, bob, album, [bobs]), 404)


@pytest.mark.parametrize(
    "body",
    [
        {"photo_ids": []},
        {"photo_ids": list(range(1, 502))},
        {"photo_ids": ["1"]},
        {"photo_ids": [1.5]},
        {"photo_ids": [True]},
        {"photo_ids": [0]},
        {"photo_ids": [-3]},
        {"photo_ids": [2**31]},
        {"photo_ids": [None]},
        {"photo_ids": 1},
        {"photo_ids": None},
        {},
    ],
    ids=lambda body: repr(body)[:40],
)
@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_photo_ids_validation(client: FlaskClient, users: Users, method: str, body: dict[str, Any]) -> None:
    alice = users.create()
    album = new_album(client, alice)["id"]
    r = client.open(f"/albums/{album}/photos", method=method, json=body, headers=alice["headers"])
    fields = error_fields(assert_problem(r, 422))
    assert fields and all(f.startswith("photo_ids") for f in fields), fields


def test_500_ids_are_accepted(app: Flask, client: FlaskClient, users: Users) -> None:
    alice = users.create()
    album = new_album(client, alice)["id"]
    photo = insert_photo(app, alice["id"])
    ids = [photo, *range(10_000, 10_499)]
    assert add_photos(client, alice, album, ids).get_json() == {"added": 1}
    assert remove_photos(client, alice, album, ids).get_json() == {"removed": 1}


def test_remove_photos_keeps_the_photos_and_clears_the_cover(app: Flask, client: FlaskClient, users: Users) -> None:
    alice = users.create()
    album = new_album(client, alice)["id"]
    other_album = new_album(client, alice, "other")["id"]
    photos = [insert_photo(app, alice["id"]) for _ in range(3)]
    add_photos(client, alice, album, photos)
    add_photos(client, alice, other_album, photos[:1])
    r = client.patch(f"/albums/{album}", json={"cover_photo_id": photos[0]}, headers=alice["headers"])
    assert r.get_json()["cover_photo_id"] == photos[0]
    client.patch(f"/albums/{other_album}", json={"cover_photo_id": photos[0]}, headers=alice["headers"])

    r = remove_photos(client, alice, album, [photos[1], 999_999])
    assert r.status_code == 200 and r.get_json() == {"removed": 1}
    assert get_album(client, alice, album)["cover_photo_id"] == photos[0]  # the cover was not removed

    assert remove_photos(client, alice, album, [photos[0], photos[0]]).get_json() == {"removed": 1}
    body = get_album(client, alice, album)
    assert body["cover_photo_id"] is None
    assert [p["id"] for p in body["photos"]] == [photos[2]] and body["photo_count"] == 1
    assert remove_photos(client, alice, album, [photos[0]]).get_json() == {"removed": 0}
    # The photos themselves stay, and so does the other album's membership and cover.
    assert scalar(app, select(func.count()).select_from(Photo)) == 3
    other = get_album(client, alice, other_album)
    assert other["cover_photo_id"] == photos[0] and other["photo_count"] == 1


def test_cover_must_be_a_ready_photo_in_this_album(app: Flask, client: FlaskClient, users: Users) -> None:
    alice, bob = users.create(), users.create()
    album = new_album(client, alice)["id"]
    inside, outside = insert_photo(app, alice["id"]), insert_photo(app, alice["id"])
    pending = insert_photo(app, alice["id"], status=PhotoStatus.PENDING)
    bobs = insert_photo(app, bob["id"])
    add_photos(client, alice, album, [inside])
    run_sql(app, AlbumPhoto.__table__.insert().values(album_id=album, photo_id=pending))

    for candidate in (outside, pending, bobs, 999_999):
        r = client.patch(
            f"/albums/{album}", json={"cover_photo_id": candidate, "name": "changed"}, headers=alice["headers"]
        )
        assert error_fields(assert_problem(r, 422)) == {"cover_photo_id"}
    assert get_album(client, alice, album)["name"] == "Holidays"  # nothing of a rejected PATCH is applied

    r = client.patch(f"/albums/{album}", json={"cover_photo_id": inside}, headers=alice["headers"])
    assert r.status_code == 200 and r.get_json()["cover_photo_id"] == inside
    r = client.patch(f"/albums/{album}", json={"cover_photo_id": None}, headers=alice["headers"])
    assert r.status_code == 200 and r.get_json()["cover_photo_id"] is None


def test_deleting_the_photo_row_clears_the_cover(app: Flask, client: FlaskClient, users: Users) -> None:
    alice = users.create()
    album = new_album(client, alice)["id"]
    photos = [insert_photo(app, alice["id"]) for _ in range(2)]
    add_photos(client, alice, album, photos)
    client.patch(f"/albums/{album}", json={"cover_photo_id": photos[0]}, headers=alice["headers"])

    run_sql(app, Photo.__table__.delete().where(Photo.id == photos[0]))
    body = get_album(client, alice, album)
    assert body["cover_photo_id"] is None  # ON DELETE SET NULL
    assert [p["id"] for p in body["photos"]] == [photos[1]]  # membership gone by ON DELETE CASCADE


def test_delete_album_keeps_photos_and_removes_memberships_and_share_links(
    app: Flask, client: FlaskClient, users: Users
) -> None:
    alice = users.create()
    album, kept = new_album(client, alice)["id"], new_album(client, alice, "kept")["id"]
    photos = [insert_photo(app, alice["id"]) for _ in range(2)]
    for album_id in (album, kept):
        add_photos(client, alice, album_id, photos)
        assert client.post(f"/albums/{album_id}/share", json={}, headers=alice["headers"]).status_code == 201

    assert client.delete(f"/albums/{album}", headers=alice["headers"]).status_code == 204
    assert scalar(app, select(func.count()).select_from(Photo)) == 2
    assert scalar(app, select(func.count()).select_from(AlbumPhoto).where(AlbumPhoto.album_id == album)) == 0
    assert scalar(app, select(func.count()).select_from(ShareLink).where(ShareLink.album_id == album)) == 0
    assert get_album(client, alice, kept)["photo_count"] == 2
    assert scalar(app, select(func.count()).select_from(ShareLink)) == 1


def test_other_users_albums_answer_404_like_missing_ones(app: Flask, client: FlaskClient, users: Users) -> None:
    alice, bob = users.create(), users.create()
    album = new_album(client, alice)["id"]
    bobs_photo = insert_photo(app, bob["id"])
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/albums/{}", None),
        ("PATCH", "/albums/{}", {"name": "mine now"}),
        ("DELETE", "/albums/{}", None),
        ("POST", "/albums/{}/photos", {"photo_ids": [bobs_photo]}),
        ("DELETE", "/albums/{}/photos", {"photo_ids": [bobs_photo]}),
        ("POST", "/albums/{}/share", {}),
        ("GET", "/albums/{}/share", None),
    ]
    for method, path, body in calls:
        theirs = client.open(path.format(album), method=method, json=body, headers=bob["headers"])
        missing = client.open(path.format(album + 1000), method=method, json=body, headers=bob["headers"])
        assert assert_problem(theirs, 404)["detail"] == assert_problem(missing, 404)["detail"], (method, path)
    assert get_album(client, alice, album)["name"] == "Holidays"
    assert client.get("/albums", headers=bob["headers"]).get_json() == []


def test_album_routes_need_auth(client: FlaskClient, users: Users) -> None:
    alice = users.create()
    album = new_album(client, alice)["id"]
    for method, path in [
        ("GET", "/albums"),
        ("POST", "/albums"),
        ("GET", f"/albums/{album}"),
        ("PATCH", f"/albums/{album}"),
        ("DELETE", f"/albums/{album}"),
        ("POST", f"/albums/{album}/photos"),
        ("DELETE", f"/albums/{album}/photos"),
    ]:
        r = client.open(path, method=method, json={"name": "x", "photo_ids": [1]})
        assert_problem(r, 401)
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_album_routes_are_documented(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    expected = {
        ("/albums", "get"): {"200", "401", "422"},
        ("/albums", "post"): {"201", "401", "422"},
        ("/albums/{album_id}", "get"): {"200", "401", "404", "422"},
        ("/albums/{album_id}", "patch"): {"200", "401", "404", "422"},
        ("/albums/{album_id}", "delete"): {"204", "401", "404"},
        ("/albums/{album_id}/photos", "post"): {"200", "401", "404", "422"},
        ("/albums/{album_id}/photos", "delete"): {"200", "401", "404", "422"},
    }
    for (path, method), statuses in expected.items():
        operation = paths[path][method]
        assert statuses <= set(operation["responses"]), (path, method)
        assert operation["security"] == [{"bearerAuth": []}]
    # Both lists of an owner's things are pages: `skip` and `limit` (1 to 100, 50 by default).
    for path in ("/albums", "/albums/{album_id}"):
        parameters = {p["name"]: p for p in paths[path]["get"]["parameters"] if p["in"] == "query"}
        assert set(parameters) == {"skip", "limit"}, path
        limit = parameters["limit"]["schema"]
        assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, PAGE_LIMIT_DEFAULT), path


def test_album_photos_are_paginated(app: Flask, client: FlaskClient, users: Users) -> None:
    alice = users.create()
    album = new_album(client, alice)["id"]
    ready = [insert_photo(app, alice["id"]) for _ in range(PAGE_LIMIT_DEFAULT + 1)]
    assert add_photos(client, alice, album, ready).get_json() == {"added": len(ready)}
    pending = insert_photo(app, alice["id"], status=PhotoStatus.PENDING)
    run_sql(app, AlbumPhoto.__table__.insert().values(album_id=album, photo_id=pending))

    def page(query: str) -> dict[str, Any]:
        r = client.get(f"/albums/{album}?{query}", headers=alice["headers"])
        assert r.status_code == 200, r.get_json()
        body: dict[str, Any] = r.get_json()
        assert set(body) == ALBUM_KEYS | {"photos"}  # the same shape as before, on every page
        assert body["photo_count"] == len(ready)  # the total, not the page's length
        return body

    # The default page: the first 50 photos in album order.
    assert [p["id"] for p in get_album(client, alice, album)["photos"]] == ready[:PAGE_LIMIT_DEFAULT]
    assert [p["id"] for p in page("limit=2")["photos"]] == ready[:2]
    assert [p["id"] for p in page("skip=2&limit=3")["photos"]] == ready[2:5]
    assert [p["id"] for p in page(f"skip={PAGE_LIMIT_DEFAULT}")["photos"]] == ready[PAGE_LIMIT_DEFAULT:]
    assert [p["id"] for p in page("limit=100")["photos"]] == ready
    assert page(f"skip={len(ready)}")["photos"] == []
    # A client walks the album until skip reaches photo_count.
    walked: list[int] = []
    while len(walked) < page("limit=1")["photo_count"]:
        walked += [p["id"] for p in page(f"skip={len(walked)}&limit=7")["photos"]]
    assert walked == ready

    for query, field in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("skip=-1", "skip"),
        ("skip=x", "skip"),
    ]:
        r = client.get(f"/albums/{album}?{query}", headers=alice["headers"])
        assert error_fields(assert_problem(r, 422)) == {field}


def test_album_photo_count_is_right_on_every_kind_of_page(app: Flask, client: FlaskClient, users: Users) -> None:
    # The count is taken from the page when the page reaches the album's end, from a query otherwise.
    alice = users.create()
    empty, three = new_album(client, alice, "empty")["id"], new_album(client, alice, "three")["id"]
    add_photos(client, alice, three, [insert_photo(app, alice["id"]) for _ in range(3)])
    for album, query, shown, count in [
        (empty, "", 0, 0),
        (empty, "skip=5", 0, 0),
        (three, "", 3, 3),
        (three, "limit=3", 3, 3),
        (three, "limit=2", 2, 3),
        (three, "skip=2&limit=2", 1, 3),
        (three, "skip=3", 0, 3),
        (three, "skip=9", 0, 3),
    ]:
        body = client.get(f"/albums/{album}?{query}", headers=alice["headers"]).get_json()
        assert (len(body["photos"]), body["photo_count"]) == (shown, count), (album, query)
