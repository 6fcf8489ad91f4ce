"""Share links through HTTP: create/list/revoke, public album and image routes, share_url, tokens out of logs."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from photo_api import create_app
from photo_api.api.context import collaborators_of
from photo_api.config import Settings
from photo_api.jobs.submit import requeue_waiting
from photo_api.models import AlbumPhoto, PhotoStatus, ShareLink, utcnow
from tests.harness.users import Users
from tests.http_checks import assert_problem, engine_of, error_fields
from tests.images import png
from tests.test_albums import PAGE_LIMIT_DEFAULT, add_photos, insert_photo, new_album, run_sql, scalar
from tests.test_media_pipeline import settle

SHARE_KEYS = {
    "id",
    "album_id",
    "token",
    "is_active",
    "expires_at",
    "view_count",
    "created_at",
    "share_url",
    "include_metadata",
}
SHARED_ALBUM_KEYS = {"album_name", "album_description", "photo_count", "created_at", "photos"}
SHARED_PHOTO_KEYS = {"id", "title", "description", "content_type", "file_size", "created_at", "url"} | {
    # the media pipeline: no camera, no location, no EXIF date (docs/api.md, "Public share routes")
    "processing_status",
    "thumbhash",
    "thumbnail_url",
    "preview_url",
    "width",
    "height",
}
# token_urlsafe(32): 32 random bytes are 43 base64url characters.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43,}")
CONCURRENT_VIEWS = 10


def create_share(client: FlaskClient, user: dict[str, Any], album_id: int, **body: Any) -> dict[str, Any]:
    """POST /albums/{id}/share, expecting 201."""
    r = client.post(f"/albums/{album_id}/share", json=body, headers=user["headers"])
    assert r.status_code == 201, r.get_json()
    link: dict[str, Any] = r.get_json()
    return link


def list_shares(client: FlaskClient, user: dict[str, Any], album_id: int) -> list[dict[str, Any]]:
    """GET /albums/{id}/share, expecting 200."""
    r = client.get(f"/albums/{album_id}/share", headers=user["headers"])
    assert r.status_code == 200, r.get_json()
    links: list[dict[str, Any]] = r.get_json()
    return links


def parse_time(value: str) -> datetime:
    """A `...Z` timestamp of the API."""
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@contextmanager
def app_with(make_settings: Callable[..., Settings], **overrides: Any) -> Iterator[tuple[Flask, FlaskClient, Users]]:
    """An app built with setting overrides, its client and a user factory."""
    application = create_app(make_settings(**overrides))
    try:
        client = application.test_client()
        yield application, client, Users(client)
    finally:
        collaborators_of(application).db.dispose()


@pytest.fixture
def shared(app: Flask, client: FlaskClient, users: Users) -> dict[str, Any]:
    """Alice's album with two ready photos and a pending one, and a share link to it."""
    alice = users.create()
    album = new_album(client, alice, "Trip", description="Mountains")["id"]
    photos = [insert_photo(app, alice["id"], data=png(text=label)) for label in (b"first", b"second")]
    add_photos(client, alice, album, photos)
    pending = insert_photo(app, alice["id"], status=PhotoStatus.PENDING)
    run_sql(app, AlbumPhoto.__table__.insert().values(album_id=album, photo_id=pending))
    link = create_share(client, alice, album)
    return {"user": alice, "album": album, "photos": photos, "pending": pending, "link": link}


def test_create_list_and_revoke(client: FlaskClient, users: Users) -> None:
    alice = users.create()
    album = new_album(client, alice)["id"]
    before = datetime.now(UTC)
    forever = create_share(client, alice, album)
    weekly = create_share(client, alice, album, expires_in_days=7)
    # No body at all is the natural way to ask for a link that never expires.
    r = client.post(f"/albums/{album}/share", headers=alice["headers"])
    assert r.status_code == 201, r.get_json()
    bodiless = r.get_json()

    assert set(forever) == SHARE_KEYS
    assert forever["album_id"] == album and forever["is_active"] is True and forever["view_count"] == 0
    assert forever["expires_at"] is None and bodiless["expires_at"] is None
    assert create_share(client, alice, album, expires_in_days=None)["expires_at"] is None
    expires = parse_time(weekly["expires_at"])
    assert before + timedelta(days=7) <= expires <= datetime.now(UTC) + timedelta(days=7)
    tokens = {forever["token"], weekly["token"], bodiless["token"]}
    assert len(tokens) == 3 and all(TOKEN_SHAPE.fullmatch(t) for t in tokens)

    listed = list_shares(client, alice, album)
    assert [link["id"] for link in listed][1:] == [bodiless["id"], weekly["id"], forever["id"]]  # newest first
    assert all(set(link) == SHARE_KEYS for link in listed)

    r = client.delete(f"/albums/{album}/share/{weekly['id']}", headers=alice["headers"])
    assert r.status_code == 204 and r.get_data() == b""
    assert client.delete(f"/albums/{album}/share/{weekly['id']}", headers=alice["headers"]).status_code == 204
    state = {link["id"]: link["is_active"] for link in list_shares(client, alice, album)}
    assert state[weekly["id"]] is False and state[forever["id"]] is True
    assert_problem(client.delete(f"/albums/{album}/share/999999", headers=alice["headers"]), 404)


@pytest.mark.parametrize("days", [0, 366, -1, "7", 1.5, True])
def test_expires_in_days_validation(client: FlaskClient, users: Users, days: Any) -> None:
    alice = users.create()
    album = new_album(client, alice)["id"]
    r = client.post(f"/albums/{album}/share", json={"expires_in_days": days}, headers=alice["headers"])
    assert error_fields(assert_problem(r, 422)) == {"expires_in_days"}
    assert list_shares(client, alice, album) == []


def test_share_routes_of_other_users_answer_404(client: FlaskClient, users: Users) -> None:
    alice, bob = users.create(), users.create()
    album, other_album = new_album(client, alice)["id"], new_album(client, alice, "other")["id"]
    bobs_album = new_album(client, bob)["id"]
    link = create_share(client, alice, album)

    assert_problem(client.post(f"/albums/{album}/share", json={}, headers=bob["headers"]), 404)
    assert_problem(client.get(f"/albums/{album}/share", headers=bob["headers"]), 404)
    assert_problem(client.delete(f"/albums/{album}/share/{link['id']}", headers=bob["headers"]), 404)
    # A share id of another album, also one's own album or somebody else's, is not found through this one.
    assert_problem(client.delete(f"/albums/{bobs_album}/share/{link['id']}", headers=bob["headers"]), 404)
    assert_problem(client.delete(f"/albums/{other_album}/share/{link['id']}", headers=alice["headers"]), 404)
    assert list_shares(client, alice, album)[0]["is_active"] is True
    for method, path in [
        ("POST", f"/albums/{album}/share"),
        ("GET", f"/albums/{album}/share"),
        ("DELETE", f"/albums/{album}/share/{link['id']}"),
    ]:
        assert_problem(client.open(path, method=method, json={}), 401)


def test_public_view_shows_no_private_fields(client: FlaskClient, shared: dict[str, Any]) -> None:
    token = shared["link"]["token"]
    r = client.get(f"/share/{token}")  # no Authorization header
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert set(body) == SHARED_ALBUM_KEYS
    assert body["album_name"] == "Trip" and body["album_description"] == "Mountains"
    assert body["photo_count"] == 2  # the pending photo is neither listed nor counted
    assert [p["id"] for p in body["photos"]] == shared["photos"]
    for photo in body["photos"]:
        assert set(photo) == SHARED_PHOTO_KEYS
        assert photo["url"] == f"/share/{token}/photos/{photo['id']}/image"
        assert photo["content_type"] == "image/png" and photo["title"] == "a title"
    raw = r.get_data(as_text=True)
    for private in ("owner_id", "original_filename", "private-name-of-owner", "email", shared["user"]["email"]):
        assert private not in raw


def test_view_count_counts_each_successful_view(client: FlaskClient, shared: dict[str, Any]) -> None:
    token, album = shared["link"]["token"], shared["album"]
    for _ in range(3):
        assert client.get(f"/share/{token}").status_code == 200
    # Images and failed views are not album views.
    client.get(f"/share/{token}/photos/{shared['photos'][0]}/image")
    assert list_shares(client, shared["user"], album)[0]["view_count"] == 3
    client.delete(f"/albums/{album}/share/{shared['link']['id']}", headers=shared["user"]["headers"])
    assert_problem(client.get(f"/share/{token}"), 410)
    assert list_shares(client, shared["user"], album)[0]["view_count"] == 3


def test_shared_album_photos_are_paginated(app: Flask, client: FlaskClient, users: Users) -> None:
    alice = users.create()
    album = new_album(client, alice)["id"]
    ready = [insert_photo(app, alice["id"]) for _ in range(PAGE_LIMIT_DEFAULT + 1)]
    add_photos(client, alice, album, ready)
    pending = insert_photo(app, alice["id"], status=PhotoStatus.PENDING)
    run_sql(app, AlbumPhoto.__table__.insert().values(album_id=album, photo_id=pending))
    link = create_share(client, alice, album)

    def page(query: str = "") -> list[int]:
        r = client.get(f"/share/{link['token']}?{query}")
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert set(body) == SHARED_ALBUM_KEYS  # the same shape as before, on every page
        assert body["photo_count"] == len(ready)  # the total, not the page's length
        return [p["id"] for p in body["photos"]]

    assert page() == ready[:PAGE_LIMIT_DEFAULT]  # the default page
    assert page("limit=2") == ready[:2]
    assert page("skip=2&limit=3") == ready[2:5]
    assert page(f"skip={PAGE_LIMIT_DEFAULT}") == ready[PAGE_LIMIT_DEFAULT:]
    assert page("limit=100") == ready
    assert page(f"skip={len(ready)}") == []
    for query, field in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("skip=-1", "skip"),
        ("skip=x", "skip"),
    ]:
        assert error_fields(assert_problem(client.get(f"/share/{link['token']}?{query}"), 422)) == {field}
    # Opening the album counts a view; its later pages and the refused queries do not.
    assert list_shares(client, alice, album)[0]["view_count"] == 3  # page(), limit=2, limit=100
    # A dead link answers 410 on a later page too.
    client.delete(f"/albums/{album}/share/{link['id']}", headers=alice["headers"])
    assert_problem(client.get(f"/share/{link['token']}?skip=50"), 410)
    assert_problem(client.get("/share/unknown-token?skip=50"), 404)


def test_concurrent_views_all_count(app: Flask, client: FlaskClient, shared: dict[str, Any]) -> None:
    if not collaborators_of(app).db.is_postgresql:
        pytest.skip("SQLite serialises writers; concurrent increments are a PostgreSQL question")
    token = shared["link"]["token"]
    start = threading.Barrier(CONCURRENT_VIEWS)
    statuses: list[int] = []

    def view() -> None:
        own_client = app.test_client()
        start.wait()
        statuses.append(own_client.get(f"/share/{token}").status_code)

    threads = [threading.Thread(target=view) for _ in range(CONCURRENT_VIEWS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert statuses == [200] * CONCURRENT_VIEWS
    assert scalar(app, select(ShareLink.view_count).where(ShareLink.token == token)) == CONCURRENT_VIEWS


def test_expired_revoked_and_unknown_links(app: Flask, client: FlaskClient, shared: dict[str, Any]) -> None:
    alice, album, photo = shared["user"], shared["album"], shared["photos"][0]
    expired = create_share(client, alice, album, expires_in_days=1)
    run_sql(
        app,
        update(ShareLink)
        .where(ShareLink.id == expired["id"])
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)),
    )
    revoked = create_share(client, alice, album)
    client.delete(f"/albums/{album}/share/{revoked['id']}", headers=alice["headers"])
    valid = create_share(client, alice, album, expires_in_days=1)  # expires tomorrow: still usable

    for link in (expired, revoked):
        assert_problem(client.get(f"/share/{link['token']}"), 410)
        assert_problem(client.get(f"/share/{link['token']}/photos/{photo}/image"), 410)
        # A cached copy does not bypass the check.
        r = client.get(f"/share/{link['token']}/photos/{photo}/image", headers={"If-None-Match": "*"})
        assert_problem(r, 410)
    assert client.get(f"/share/{valid['token']}").status_code == 200

    unknown = "A" * 43
    assert_problem(client.get(f"/share/{unknown}"), 404)
    assert_problem(client.get(f"/share/{unknown}/photos/{photo}/image"), 404)
    for malformed in ("a" * 129, "abc%00def", "abc%20def", "%E2%98%83"):
        assert_problem(client.get(f"/share/{malformed}"), 404)
        assert_problem(client.get(f"/share/{malformed}/photos/{photo}/image"), 404)


def process_waiting(app: Flask) -> None:
    """Run the background job of every photo inserted without it (as the reaper does), and wait for it."""
    with collaborators_of(app).db.session() as session:
        requeue_waiting(session, collaborators_of(app).jobs, now=utcnow(), stale_after=timedelta(0))
    settle(app)


def test_shared_image(app: Flask, client: FlaskClient, users: Users, shared: dict[str, Any]) -> None:
    alice, token, photo = shared["user"], shared["link"]["token"], shared["photos"][1]
    # Until the job has made the copy without metadata, nothing is served (tests/test_share_privacy.py).
    assert_problem(client.get(f"/share/{token}/photos/{photo}/image"), 503)
    process_waiting(app)
    r = client.get(f"/share/{token}/photos/{photo}/image")
    assert r.status_code == 200
    public = png()  # the original without its tEXt chunk (a link without include_metadata)
    assert r.get_data() == public
    assert r.mimetype == "image/png"
    assert r.headers["Content-Length"] == str(len(public))
    etag = f'"{hashlib.md5(public).hexdigest()}"'
    assert r.headers["ETag"] == etag
    assert r.headers["Cache-Control"] == "private, no-cache"

    r = client.get(f"/share/{token}/photos/{photo}/image", headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.get_data() == b""
    r = client.get(f"/share/{token}/photos/{photo}/image", headers={"Range": "bytes=0-7"})
    assert r.status_code == 206 and r.get_data() == public[:8]

    elsewhere = new_album(client, alice, "elsewhere")["id"]
    in_other_album, loose = insert_photo(app, alice["id"]), insert_photo(app, alice["id"])
    add_photos(client, alice, elsewhere, [in_other_album])
    bobs = insert_photo(app, users.create()["id"])
    for not_shared in (in_other_album, loose, bobs, shared["pending"], 999_999):
        assert_problem(client.get(f"/share/{token}/photos/{not_shared}/image"), 404)
    # Removed from the album: no longer reachable through the link.
    client.delete(f"/albums/{shared['album']}/photos", json={"photo_ids": [photo]}, headers=alice["headers"])
    assert_problem(client.get(f"/share/{token}/photos/{photo}/image"), 404)


def test_share_url_from_public_base_url(make_settings: Callable[..., Settings]) -> None:
    with app_with(make_settings, public_base_url="https://photos.example.com/", trusted_proxy_count=1) as (
        _,
        client,
        users,
    ):
        alice = users.create()
        album = new_album(client, alice)["id"]
        r = client.post(f"/albums/{album}/share", json={}, headers={**alice["headers"], "X-Forwarded-Host": "x.test"})
        link = r.get_json()
        assert link["share_url"] == f"https://photos.example.com/share/{link['token']}"


@pytest.mark.parametrize(
    ("trusted", "headers", "base"),
    [
        (0, {}, "http://localhost"),
        # Without a trusted proxy anybody could write these headers: they are ignored.
        (0, {"X-Forwarded-Host": "evil.test", "X-Forwarded-Proto": "https"}, "http://localhost"),
        (1, {}, "http://localhost"),
        (1, {"X-Forwarded-Host": "photos.example.com", "X-Forwarded-Proto": "https"}, "https://photos.example.com"),
        # The client's own value comes first; the value our one proxy appended is the last.
        (
            1,
            {"X-Forwarded-Host": "evil.test, photos.example.com", "X-Forwarded-Proto": "https"},
            "https://photos.example.com",
        ),
        (2, {"X-Forwarded-Host": "evil.test, edge.example.com, inner.example.com"}, "http://edge.example.com"),
        (2, {"X-Forwarded-Host": "only-one.example.com"}, "http://localhost"),
        (1, {"X-Forwarded-Proto": "javascript"}, "http://localhost"),
    ],
)
def test_share_url_from_the_request(
    make_settings: Callable[..., Settings], trusted: int, headers: dict[str, str], base: str
) -> None:
    with app_with(make_settings, trusted_proxy_count=trusted) as (_, client, users):
        alice = users.create()
        album = new_album(client, alice)["id"]
        r = client.post(f"/albums/{album}/share", json={}, headers={**alice["headers"], **headers})
        link = r.get_json()
        assert link["share_url"] == f"{base}/share/{link['token']}"
        listed = client.get(f"/albums/{album}/share", headers={**alice["headers"], **headers}).get_json()
        assert listed[0]["share_url"] == link["share_url"]


def test_share_token_never_reaches_the_logs(
    make_settings: Callable[..., Settings], capfd: pytest.CaptureFixture[str]
) -> None:
    # Built inside the test so the app's log handler writes to the stream capfd captures; DEBUG lets every line out.
    with app_with(make_settings, log_level="DEBUG") as (app, client, users):
        alice = users.create()
        album = new_album(client, alice)["id"]
        photo = insert_photo(app, alice["id"])
        add_photos(client, alice, album, [photo])
        link = create_share(client, alice, album)
        revoked = create_share(client, alice, album)
        client.delete(f"/albums/{album}/share/{revoked['id']}", headers=alice["headers"])
        process_waiting(app)
        capfd.readouterr()

        token = link["token"]
        assert client.get(f"/share/{token}").status_code == 200
        assert client.get(f"/share/{token}/photos/{photo}/image").status_code == 200
        assert client.get(f"/share/{token}/photos/999999/image").status_code == 404
        assert client.get(f"/share/{revoked['token']}").status_code == 410
        out, err = capfd.readouterr()

    logged = out + err
    assert '"endpoint": "/share/<token>"' in logged  # the access log ran, with the route template
    assert f'"share_link_id": {link["id"]}' in logged  # the link is named by its id
    assert token not in logged and revoked["token"] not in logged


def test_database_errors_do_not_carry_bound_tokens(app: Flask) -> None:
    # A 500 logs the exception with its traceback; SQLAlchemy puts the bound parameters into the message.
    token = "t0ken-that-must-not-be-logged-0123456789ab"
    with engine_of(app).connect() as conn, pytest.raises(DBAPIError) as caught:
        conn.execute(text("SELECT id FROM no_such_table WHERE token = :token"), {"token": token})
    assert "no_such_table" in str(caught.value)
    assert token not in str(caught.value)


def test_share_routes_are_documented(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    expected = {
        ("/albums/{album_id}/share", "post"): ({"201", "401", "404", "422"}, True),
        ("/albums/{album_id}/share", "get"): ({"200", "401", "404"}, True),
        ("/albums/{album_id}/share/{share_id}", "delete"): ({"204", "401", "404"}, True),
        ("/share/{token}", "get"): ({"200", "404", "410", "422"}, False),
        ("/share/{token}/photos/{photo_id}/image", "get"): ({"200", "206", "304", "404", "410", "416"}, False),
    }
    for (path, method), (statuses, auth) in expected.items():
        operation = paths[path][method]
        assert statuses <= set(operation["responses"]), (path, method)
        assert ("security" in operation) is auth, (path, method)
    parameters = {p["name"]: p for p in paths["/share/{token}"]["get"]["parameters"] if p["in"] == "query"}
    assert set(parameters) == {"skip", "limit"}
    limit = parameters["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, PAGE_LIMIT_DEFAULT)
