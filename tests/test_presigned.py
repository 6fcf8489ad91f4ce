"""Direct uploads through HTTP: presign a pending photo, PUT its bytes to the signed URL, confirm."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from photo_api import create_app
from photo_api.api.context import Collaborators, collaborators_of, install
from photo_api.config import Settings
from photo_api.models import Album, AlbumPhoto, Photo, PhotoStatus, utcnow
from photo_api.services import uploads
from photo_api.storage import LocalStorage, ObjectNotFoundError
from tests.harness.users import Users

PROBLEM = "application/problem+json"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int = 1, height: int = 1) -> bytes:
    """A complete 8-bit greyscale PNG of the given size (black pixels)."""
    rows = b"".join(b"\x00" + bytes(width) for _ in range(height))  # filter byte 0, then the pixels
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


PNG = png()
# The classic 43-byte transparent 1x1 GIF89a.
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

# Plain text of exactly PNG's size, so only its type is wrong.
TEXT = b"just some text, not an image".ljust(len(PNG), b".")
# What an attacker would like a confirmed photo to serve instead of its verified bytes.
HTML = b"<html><body><script>document.title = 'stored content'</script></body></html>" * 25


class Clock:
    """A settable stand-in for time.time, for the storage that signs and checks upload URLs."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rt(app: Flask) -> Collaborators:
    return collaborators_of(app)


def presign(client: FlaskClient, user: dict[str, Any], **fields: Any) -> TestResponse:
    """POST /photos/presigned-url for a PNG of PNG's size, with `fields` overriding the body."""
    body = {"filename": "cat.png", "content_type": "image/png", "file_size": len(PNG), **fields}
    return client.post("/photos/presigned-url", json=body, headers=user["headers"])


def upload_target(upload_url: str) -> str:
    """The path and query of an absolute upload URL, as the test client requests it."""
    parts = urlsplit(upload_url)
    return f"{parts.path}?{parts.query}"


def put(client: FlaskClient, upload_url: str, data: bytes, **kwargs: Any) -> TestResponse:
    """PUT bytes to a presigned URL the way a client would: no bearer token, the signed headers."""
    return client.put(upload_target(upload_url), data=data, headers={"Content-Type": "image/png"}, **kwargs)


def confirm(client: FlaskClient, user: dict[str, Any], photo_id: int) -> TestResponse:
    return client.post("/photos/confirm", json={"photo_id": photo_id}, headers=user["headers"])


def upload_photo(client: FlaskClient, user: dict[str, Any], data: bytes = PNG, **fields: Any) -> dict[str, Any]:
    """Presign and PUT; return the presign body (the photo stays pending)."""
    r = presign(client, user, file_size=len(data), **fields)
    assert r.status_code == 201, r.get_json()
    body: dict[str, Any] = r.get_json()
    r = put(client, body["upload_url"], data)
    assert r.status_code == 201, r.get_json()
    return body


def photo_row(app: Flask, photo_id: int) -> Photo | None:
    with rt(app).db.session() as session:
        return session.get(Photo, photo_id)


def stored_bytes(app: Flask, key: str) -> bytes | None:
    """The object under `key`, or None when there is none."""
    try:
        with rt(app).storage.open(key) as reader:
            return b"".join(reader)
    except ObjectNotFoundError:
        return None


def stored_files(app: Flask) -> list[str]:
    """Every file under the storage root but the renditions (r/...), written in the background after a confirm
    at a moment these tests do not control (tests/test_media_pipeline.py counts them)."""
    storage = rt(app).storage
    assert isinstance(storage, LocalStorage)
    return sorted(
        str(p.relative_to(storage.root))
        for p in storage.root.rglob("*")
        if p.is_file() and p.relative_to(storage.root).parts[0] != "r"
    )


def expire_upload_window(app: Flask, photo_id: int) -> None:
    """Move a pending photo's upload window into the past, as if its time had run out."""
    with rt(app).db.session() as session:
        session.execute(
            update(Photo).where(Photo.id == photo_id).values(upload_expires_at=utcnow() - timedelta(minutes=5))
        )
        session.commit()


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., tuple[Flask, FlaskClient]]]:
    """An app and client built from settings overrides (disposed after the test)."""
    apps: list[Flask] = []

    def build(**overrides: Any) -> tuple[Flask, FlaskClient]:
        application = create_app(make_settings(**overrides))
        apps.append(application)
        return application, application.test_client()

    yield build
    for application in apps:
        rt(application).db.dispose()


def test_presign_put_confirm_stores_the_bytes_and_makes_the_photo_ready(
    app: Flask, client: FlaskClient, users: Users, settings: Settings
) -> None:
    user = users.create()
    r = presign(client, user, filename="C:\\Users\\me\\cat.png", title="Cat", description="on the mat")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert set(body) == {"photo_id", "upload_url", "upload_method", "upload_headers", "expires_in"}
    assert body["upload_method"] == "PUT"
    assert body["upload_headers"] == {"Content-Type": "image/png"}
    assert body["expires_in"] == settings.upload_url_expire_seconds
    # LocalStorage signs a path on this service; the client gets an absolute URL built from the request.
    assert body["upload_url"].startswith("http://localhost/uploads/staging/u/")
    assert set(parse_qs(urlsplit(body["upload_url"]).query)) == {"expires", "signature"}

    pending = photo_row(app, body["photo_id"])
    assert pending is not None
    assert pending.status == PhotoStatus.PENDING
    assert pending.checksum is None
    assert pending.original_filename == "cat.png"
    assert pending.upload_expires_at is not None
    remaining = (pending.upload_expires_at - utcnow()).total_seconds()
    assert settings.upload_url_expire_seconds - 5 < remaining <= settings.upload_url_expire_seconds

    r = put(client, body["upload_url"], PNG)
    assert r.status_code == 201, r.get_json()
    assert r.data == b""
    md5 = hashlib.md5(PNG).hexdigest()
    assert r.headers["ETag"] == f'"{md5}"'

    r = confirm(client, user, body["photo_id"])
    assert r.status_code == 200, r.get_json()
    photo = r.get_json()
    assert photo["id"] == body["photo_id"]
    assert photo["owner_id"] == user["id"]
    assert photo["content_type"] == "image/png"
    assert photo["file_size"] == len(PNG)
    assert photo["original_filename"] == "cat.png"
    assert (photo["title"], photo["description"]) == ("Cat", "on the mat")
    assert photo["url"] == f"/photos/{body['photo_id']}/image"
    assert photo["filename"].startswith(f"u/{user['id']}/") and photo["filename"].endswith(".png")

    ready = photo_row(app, body["photo_id"])
    assert ready is not None
    assert ready.status == PhotoStatus.READY
    assert ready.checksum == md5
    assert ready.upload_expires_at is None
    assert stored_bytes(app, ready.filename) == PNG


def assert_serves(client: FlaskClient, user: dict[str, Any], photo_id: int, data: bytes, content_type: str) -> None:
    """GET /photos/{id}/image answers exactly `data` as `content_type`, with its size and MD5 ETag."""
    r = client.get(f"/photos/{photo_id}/image", headers=user["headers"])
    assert r.status_code == 200
    assert r.data == data
    assert r.headers["Content-Type"] == content_type
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'


def test_confirmed_photo_cannot_be_overwritten_through_its_still_valid_url(
    app: Flask, client: FlaskClient, users: Users
) -> None:
    user = users.create()
    body = upload_photo(client, user)
    r = confirm(client, user, body["photo_id"])
    assert r.status_code == 200
    # The URL named a staging key; the photo is served from a key of its own that no URL covers.
    staged = _signed_parts(body["upload_url"])[0]
    assert staged.startswith(f"staging/u/{user['id']}/")
    assert r.get_json()["filename"].startswith(f"u/{user['id']}/")
    r = put(client, body["upload_url"], HTML)
    assert r.status_code == 404
    row = photo_row(app, body["photo_id"])
    assert row is not None
    assert stored_bytes(app, row.filename) == PNG
    assert stored_files(app) == [row.filename]  # the staged object is gone
    assert_serves(client, user, body["photo_id"], PNG, "image/png")


class StreamWithSideEffect(io.BytesIO):
    """A request body that runs `action` when the server starts reading it: something happening mid-upload."""

    def __init__(self, data: bytes, action: Callable[[], None]) -> None:
        super().__init__(data)
        self.action: Callable[[], None] | None = action

    def _maybe_act(self) -> None:
        if self.action is not None:
            action, self.action = self.action, None
            action()

    def read(self, size: int | None = -1) -> bytes:
        self._maybe_act()
        return super().read(size)

    def readinto(self, buffer: Any) -> int:
        self._maybe_act()
        return super().readinto(buffer)


def test_upload_whose_row_is_reaped_meanwhile_leaves_no_orphan(app: Flask, client: FlaskClient, users: Users) -> None:
    user = users.create()
    body = presign(client, user).get_json()

    def reaper_runs() -> None:
        expire_upload_window(app, body["photo_id"])
        with rt(app).db.session() as session:
            assert uploads.reap(session, rt(app).storage, now=utcnow()).expired_uploads_removed == 1

    stream = StreamWithSideEffect(PNG, reaper_runs)
    r = client.put(upload_target(body["upload_url"]), input_stream=stream, content_length=len(PNG))
    assert r.status_code == 410
    assert stream.action is None  # the body was read
    assert stored_files(app) == []


def test_upload_finishing_after_confirm_is_a_conflict(app: Flask, client: FlaskClient, users: Users) -> None:
    user = users.create()
    body = upload_photo(client, user)

    def confirm_runs() -> None:
        with rt(app).db.session() as session:
            runtime = rt(app)
            uploads.confirm(
                session,
                runtime.storage,
                owner_id=user["id"],
                photo_id=body["photo_id"],
                max_upload_bytes=runtime.limits.max_upload_bytes,
            )

    # A second PUT through the same URL is in flight when confirm runs, and lands after it returned.
    r = client.put(
        upload_target(body["upload_url"]),
        input_stream=StreamWithSideEffect(HTML, confirm_runs),
        content_length=len(HTML),
    )
    assert r.status_code == 409
    row = photo_row(app, body["photo_id"])
    assert row is not None and row.status == PhotoStatus.READY
    assert row.checksum == hashlib.md5(PNG).hexdigest()  # the row still names the bytes that were verified
    assert row.file_size == len(PNG)
    # ...and so does what is stored and served: the late bytes landed on the staging key and were removed.
    assert stored_bytes(app, row.filename) == PNG
    assert stored_files(app) == [row.filename]
    assert_serves(client, user, body["photo_id"], PNG, "image/png")


def test_upload_url_uses_public_base_url_when_set(make_client: Callable[..., tuple[Flask, FlaskClient]]) -> None:
    _app, client = make_client(public_base_url="https://photos.example.com/")
    user = Users(client).create()
    r = presign(client, user)
    assert r.status_code == 201
    assert r.get_json()["upload_url"].startswith("https://photos.example.com/uploads/staging/u/")


def test_upload_url_follows_trusted_proxies_only(make_client: Callable[..., tuple[Flask, FlaskClient]]) -> None:
    forwarded = {"X-Forwarded-Host": "evil.test, photos.example.com", "X-Forwarded-Proto": "https"}
    for trusted, base in ((0, "http://localhost"), (1, "https://photos.example.com")):
        _, client = make_client(trusted_proxy_count=trusted)
        user = Users(client).create(email=f"proxied{trusted}@example.com", username=f"proxied{trusted}")
        r = client.post(
            "/photos/presigned-url",
            json={"filename": "a.png", "content_type": "image/png", "file_size": len(PNG)},
            headers={**user["headers"], **forwarded},
        )
        assert r.status_code == 201, r.get_json()
        assert r.get_json()["upload_url"].startswith(f"{base}/uploads/staging/u/"), (
            trusted,
            r.get_json()["upload_url"],
        )


def test_pending_photo_cannot_be_confirmed_by_another_user(app: Flask, client: FlaskClient, users: Users) -> None:
    owner, other = users.create(), users.create()
    body = upload_photo(client, owner)
    r = confirm(client, other, body["photo_id"])
    assert r.status_code == 404
    assert r.mimetype == PROBLEM
    row = photo_row(app, body["photo_id"])
    assert row is not None and row.status == PhotoStatus.PENDING  # untouched
    assert confirm(client, owner, body["photo_id"]).status_code == 200


def test_confirm_is_idempotent(client: FlaskClient, users: Users) -> None:
    user = users.create()
    body = upload_photo(client, user)
    first = confirm(client, user, body["photo_id"])
    second = confirm(client, user, body["photo_id"])
    assert first.status_code == second.status_code == 200
    assert first.get_json() == second.get_json()


def test_concurrent_confirms_both_answer_the_ready_photo(app: Flask, client: FlaskClient, users: Users) -> None:
    user = users.create()
    body = upload_photo(client, user)
    barrier = threading.Barrier(2)
    results: list[TestResponse] = []

    def confirm_in_thread() -> None:
        own_client = app.test_client()
        barrier.wait()
        results.append(confirm(own_client, user, body["photo_id"]))

    threads = [threading.Thread(target=confirm_in_thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200], [r.get_json() for r in results]
    assert results[0].get_json() == results[1].get_json()
    # Each confirm copied to a key of its own; the loser's copy and the staged object are gone.
    assert stored_files(app) == [results[0].get_json()["filename"]]
    assert_serves(client, user, body["photo_id"], PNG, "image/png")


def test_expired_upload_url_is_refused_and_nothing_is_stored(
    app: Flask, client: FlaskClient, users: Users, settings: Settings
) -> None:
    # The storage that signs and checks upload URLs, with a clock the test moves: the URL is signed
    # through the API, then its lifetime passes.
    clock = Clock(utcnow().timestamp())
    assert settings.local_storage_dir is not None
    storage = LocalStorage(settings.local_storage_dir, signing_key=b"k" * 32, clock=clock)
    install(app, dataclasses.replace(rt(app), storage=storage))
    user = users.create()
    body = presign(client, user).get_json()

    clock.now += settings.upload_url_expire_seconds - 1
    assert storage.verify_upload(*_signed_parts(body["upload_url"]))  # valid up to the last second
    clock.now += 1
    r = put(client, body["upload_url"], PNG)
    assert r.status_code == 401
    assert r.mimetype == PROBLEM
    assert stored_files(app) == []


def test_upload_after_the_rows_window_closed_is_gone(app: Flask, client: FlaskClient, users: Users) -> None:
    # The signature is still valid, but the row's window (the second barrier) has closed.
    user = users.create()
    body = presign(client, user).get_json()
    expire_upload_window(app, body["photo_id"])
    r = put(client, body["upload_url"], PNG)
    assert r.status_code == 410
    assert stored_files(app) == []


def _signed_parts(upload_url: str) -> tuple[str, str, str]:
    parts = urlsplit(upload_url)
    query = parse_qs(parts.query)
    return parts.path.removeprefix("/uploads/"), query["expires"][0], query["signature"][0]


@pytest.mark.parametrize("tamper", ["signature", "expires", "key", "missing"])
def test_tampered_upload_url_is_refused(app: Flask, client: FlaskClient, users: Users, tamper: str) -> None:
    user = users.create()
    body = presign(client, user).get_json()
    other = presign(client, user).get_json()  # a second pending photo: a real key to redirect to
    key, expires, signature = _signed_parts(body["upload_url"])
    if tamper == "signature":
        signature = ("0" if signature[0] != "0" else "1") + signature[1:]
    elif tamper == "expires":
        expires = str(int(expires) + 3600)  # a longer window than was signed
    elif tamper == "key":
        key = _signed_parts(other["upload_url"])[0]
    query = "" if tamper == "missing" else "?" + urlencode({"expires": expires, "signature": signature})
    r = client.put(f"/uploads/{key}{query}", data=PNG, headers={"Content-Type": "image/png"})
    assert r.status_code == 401
    assert r.mimetype == PROBLEM
    assert stored_files(app) == []


def test_upload_larger_than_the_limit_is_refused(
    make_client: Callable[..., tuple[Flask, FlaskClient]],
) -> None:
    limit = 1024
    app, client = make_client(max_upload_bytes=limit)
    user = Users(client).create()
    body = presign(client, user, file_size=limit).get_json()
    too_big = PNG + bytes(limit + 1 - len(PNG))

    # With a Content-Length, refused before a byte is read.
    r = put(client, body["upload_url"], too_big)
    assert r.status_code == 413
    assert r.mimetype == PROBLEM
    assert stored_files(app) == []

    # Without one (chunked, behind gunicorn), refused while streaming.
    chunked = {"wsgi.input_terminated": True}
    r = client.put(upload_target(body["upload_url"]), input_stream=io.BytesIO(too_big), environ_overrides=chunked)
    assert r.status_code == 413
    assert r.mimetype == PROBLEM
    assert stored_files(app) == []

    # Exactly the limit is fine, streamed or not.
    exact = PNG + bytes(limit - len(PNG))
    r = client.put(upload_target(body["upload_url"]), input_stream=io.BytesIO(exact), environ_overrides=chunked)
    assert r.status_code == 201, r.get_json()
    assert confirm(client, user, body["photo_id"]).status_code == 200


def test_presign_rejects_sizes_above_the_limit_and_types_not_allowed(
    make_client: Callable[..., tuple[Flask, FlaskClient]],
) -> None:
    app, client = make_client(max_upload_bytes=1000)
    user = Users(client).create()
    r = presign(client, user, file_size=1001, content_type="image/svg+xml")
    assert r.status_code == 422
    errors = {e["field"]: e["message"] for e in r.get_json()["errors"]}
    assert set(errors) == {"file_size", "content_type"}
    assert "1000 bytes" in errors["file_size"] and "MAX_UPLOAD_BYTES" in errors["file_size"]
    assert presign(client, user, file_size=0).status_code == 422
    assert presign(client, user, file_size=1000).status_code == 201
    with rt(app).db.session() as session:
        assert session.scalars(select(Photo.file_size)).all() == [1000]


def test_presign_accepts_the_content_type_in_any_case(app: Flask, client: FlaskClient, users: Users) -> None:
    body = presign(client, users.create(), content_type="Image/PNG").get_json()
    row = photo_row(app, body["photo_id"])
    assert row is not None and row.content_type == "image/png"


def test_confirm_before_the_upload_keeps_the_pending_photo(app: Flask, client: FlaskClient, users: Users) -> None:
    user = users.create()
    body = presign(client, user).get_json()
    r = confirm(client, user, body["photo_id"])
    assert r.status_code == 422
    assert [e["field"] for e in r.get_json()["errors"]] == ["photo_id"]
    assert photo_row(app, body["photo_id"]) is not None
    assert put(client, body["upload_url"], PNG).status_code == 201
    assert confirm(client, user, body["photo_id"]).status_code == 200


def test_confirm_without_upload_after_the_window_is_gone(app: Flask, client: FlaskClient, users: Users) -> None:
    user = users.create()
    body = presign(client, user).get_json()
    expire_upload_window(app, body["photo_id"])
    assert confirm(client, user, body["photo_id"]).status_code == 410


@pytest.mark.parametrize(
    ("declared", "data", "field", "says"),
    [
        ({"file_size": len(PNG) + 1}, PNG, "file_size", f"{len(PNG)} bytes"),
        ({}, TEXT, "content_type", "not an image"),
        ({"content_type": "image/jpeg", "filename": "cat.jpg"}, PNG, "content_type", "image/png"),
        ({"content_type": "image/gif"}, PNG, "content_type", "image/gif was declared"),
    ],
    ids=["size-mismatch", "text-as-png", "png-declared-jpeg", "png-declared-gif"],
)
def test_confirm_rejects_an_object_that_does_not_match_and_removes_row_and_object(
    app: Flask, client: FlaskClient, users: Users, declared: dict[str, Any], data: bytes, field: str, says: str
) -> None:
    user = users.create()
    r = presign(client, user, **declared)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert put(client, body["upload_url"], data).status_code == 201
    key = _signed_parts(body["upload_url"])[0]
    assert stored_bytes(app, key) == data

    r = confirm(client, user, body["photo_id"])
    assert r.status_code == 422
    assert r.mimetype == PROBLEM
    errors = r.get_json()["errors"]
    assert [e["field"] for e in errors] == [field]
    assert says in errors[0]["message"]
    assert photo_row(app, body["photo_id"]) is None
    assert stored_bytes(app, key) is None
    assert confirm(client, user, body["photo_id"]).status_code == 404


def test_presign_with_album_adds_the_photo_at_confirm(app: Flask, client: FlaskClient, users: Users) -> None:
    owner, other = users.create(), users.create()
    with rt(app).db.session() as session:
        mine, theirs = Album(owner_id=owner["id"], name="mine"), Album(owner_id=other["id"], name="theirs")
        session.add_all([mine, theirs])
        session.commit()
        mine_id, theirs_id = mine.id, theirs.id

    r = presign(client, owner, album_id=theirs_id)
    assert r.status_code == 404
    assert r.get_json()["detail"] == "Album not found"
    assert presign(client, owner, album_id=2**31 - 1).status_code == 404
    assert presign(client, owner, album_id=2**31).status_code == 422  # beyond any id, never a DB error

    body = upload_photo(client, owner, album_id=mine_id)
    assert confirm(client, owner, body["photo_id"]).status_code == 200
    with rt(app).db.session() as session:
        members = session.scalars(select(AlbumPhoto.photo_id).where(AlbumPhoto.album_id == mine_id)).all()
        assert members == [body["photo_id"]]
        assert session.scalars(select(Photo.id)).all() == [body["photo_id"]]  # the 404s created nothing


def test_presign_and_confirm_need_a_token(client: FlaskClient) -> None:
    assert client.post("/photos/presigned-url", json={}).status_code == 401
    assert client.post("/photos/confirm", json={"photo_id": 1}).status_code == 401


def test_upload_routes_are_documented(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    presign_op = paths["/photos/presigned-url"]["post"]
    assert {"201", "401", "404", "422", "429"} <= set(presign_op["responses"])
    assert "Retry-After" in presign_op["responses"]["429"]["headers"]
    confirm_op = paths["/photos/confirm"]["post"]
    assert {"200", "404", "409", "410", "422"} <= set(confirm_op["responses"])
    put_op = paths["/uploads/{key}"]["put"]
    assert put_op["requestBody"]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    assert "security" not in put_op  # the signature is the credential
    assert {"201", "401", "404", "408", "410", "413"} <= set(put_op["responses"])
    assert "ETag" in put_op["responses"]["201"]["headers"]


def test_pending_uploads_per_user_are_capped_with_429_until_one_is_confirmed_or_expires(
    make_client: Callable[..., tuple[Flask, FlaskClient]],
) -> None:
    app, client = make_client(max_pending_uploads_per_user=3, upload_url_expire_seconds=600)
    users = Users(client)
    owner, other = users.create(), users.create()
    bodies = [upload_photo(client, owner) for _ in range(3)]
    # The first reservation expires soonest: its expiry is when room frees up without a confirm.
    with rt(app).db.session() as session:
        session.execute(
            update(Photo)
            .where(Photo.id == bodies[0]["photo_id"])
            .values(upload_expires_at=utcnow() + timedelta(seconds=100))
        )
        session.commit()

    r = presign(client, owner)
    assert r.status_code == 429
    assert r.mimetype == PROBLEM
    assert "MAX_PENDING_UPLOADS_PER_USER" in r.get_json()["detail"]
    assert 95 <= int(r.headers["Retry-After"]) <= 100
    with rt(app).db.session() as session:
        assert len(session.scalars(select(Photo.id).where(Photo.owner_id == owner["id"])).all()) == 3
    assert presign(client, other).status_code == 201  # per user

    assert confirm(client, owner, bodies[1]["photo_id"]).status_code == 200  # a confirmed one no longer counts
    assert presign(client, owner).status_code == 201
    assert presign(client, owner).status_code == 429
    expire_upload_window(app, bodies[2]["photo_id"])  # nor does one whose window has closed, reaped or not
    assert presign(client, owner).status_code == 201


def test_pending_upload_bytes_per_user_are_capped(make_client: Callable[..., tuple[Flask, FlaskClient]]) -> None:
    _app, client = make_client(max_upload_bytes=1000, max_pending_upload_bytes_per_user=2500)
    owner = Users(client).create()
    assert [presign(client, owner, file_size=1000).status_code for _ in range(2)] == [201, 201]
    r = presign(client, owner, file_size=1000)
    assert r.status_code == 429
    assert "MAX_PENDING_UPLOAD_BYTES_PER_USER" in r.get_json()["detail"]
    assert 1 <= int(r.headers["Retry-After"]) <= 3600
    assert presign(client, owner, file_size=500).status_code == 201  # exactly the limit
    assert presign(client, owner, file_size=1).status_code == 429


def test_concurrent_presigns_never_pass_the_pending_limit(
    make_client: Callable[..., tuple[Flask, FlaskClient]], settings: Settings
) -> None:
    if settings.is_sqlite:
        pytest.skip("several workers share one PostgreSQL; SQLite is single-host development only")
    limit, attempts = 3, 12
    app, client = make_client(max_pending_uploads_per_user=limit)
    owner = Users(client).create()
    barrier = threading.Barrier(attempts)
    statuses: list[int] = []

    def presign_in_thread() -> None:
        own_client = app.test_client()
        barrier.wait()
        statuses.append(presign(own_client, owner).status_code)

    threads = [threading.Thread(target=presign_in_thread) for _ in range(attempts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201] * limit + [429] * (attempts - limit)
    with rt(app).db.session() as session:
        assert len(session.scalars(select(Photo.id).where(Photo.owner_id == owner["id"])).all()) == limit
