"""Photos through HTTP: streamed multipart upload, list, read, edit, delete; what is stored and what is not."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import BaseModel
from sqlalchemy import func, insert, select, update
from werkzeug.test import EnvironBuilder, TestResponse
from werkzeug.wrappers import Request

from photo_api import create_app
from photo_api.api.context import collaborators_of
from photo_api.api.schemas import UtcDatetime
from photo_api.config import Settings
from photo_api.models import Album, AlbumPhoto, PendingObjectDeletion, Photo, PhotoStatus, utcnow
from photo_api.storage import CHUNK_SIZE
from tests.harness.users import Users
from tests.http_checks import assert_problem, engine_of, error_fields
from tests.images import SAMPLES, gif, jpeg, large_jpeg_chunks, large_jpeg_size, photo_jpeg, png, upload, webp
from tests.test_media_pipeline import settle

PHOTO_KEYS = {
    "id",
    "owner_id",
    "filename",
    "original_filename",
    "content_type",
    "file_size",
    "title",
    "description",
    "created_at",
    "updated_at",
    "url",
    # the media pipeline (docs/api.md, "Renditions and metadata")
    "processing_status",
    "processing_error",
    "thumbhash",
    "thumbnail_url",
    "preview_url",
    "width",
    "height",
    "taken_at",
    "taken_at_offset",
    "camera_make",
    "camera_model",
    "orientation",
    "location",
}
BOUNDARY = "photo-api-test-boundary-5d41402abc4b2a76"
MIB = 1024 * 1024
SMALL_LIMIT = 2000  # MAX_UPLOAD_BYTES of the apps that test the size limit


# --- helpers -------------------------------------------------------------------------------------


def part(name: str, value: bytes, filename: str | None = None, content_type: str | None = None) -> bytes:
    """One multipart part, boundary line included."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode("utf-8") + b"\r\n" + value + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    """A complete multipart/form-data body made of `parts`."""
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post_body(client: FlaskClient, headers: dict[str, str], body: bytes) -> TestResponse:
    """POST a hand-made multipart body (with its Content-Length)."""
    return client.post("/photos", headers=headers, data=body, content_type=f"multipart/form-data; boundary={BOUNDARY}")


class ChunkStream:
    """wsgi.input fed by an iterator of chunks, counting what the app read."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._chunks, b"")
        take = len(self._pending) if size < 0 else size
        out, self._pending = self._pending[:take], self._pending[take:]
        self.bytes_read += len(out)
        return out


def post_stream(
    client: FlaskClient, headers: dict[str, str], stream: ChunkStream, content_length: int | None
) -> TestResponse:
    """POST /photos with a body read from `stream`; without a length it arrives as gunicorn passes a chunked body."""
    environ = EnvironBuilder(path="/photos", method="POST", headers=list(headers.items())).get_environ()
    environ["CONTENT_TYPE"] = f"multipart/form-data; boundary={BOUNDARY}"
    environ["wsgi.input"] = stream
    if content_length is None:
        # gunicorn (and werkzeug's server) de-chunk the body and mark the stream as terminated.
        environ.pop("CONTENT_LENGTH", None)
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(content_length)
    return client.open(Request(environ))


def streamed_upload(file_chunks: Iterable[bytes], *after: bytes, filename: str = "big.jpg") -> Iterator[bytes]:
    """A multipart body whose file part is produced chunk by chunk, followed by `after` parts."""
    disposition = f'form-data; name="file"; filename="{filename}"'
    yield f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
    yield from file_chunks
    yield b"\r\n"
    yield from after
    yield f"--{BOUNDARY}--\r\n".encode()


# Renditions (r/<owner>/<photo>/...) are written in the background after an upload, at a moment these tests
# do not control; tests/test_media_pipeline.py counts them (and their temp files) itself.
RENDITIONS_DIR = "r"
REFUSED_PORT = 1  # nothing listens on tcpmux on loopback: a connect is refused at once


def stored_files(settings: Settings) -> list[Path]:
    """Every file under the storage root (objects and temp files alike), renditions aside."""
    assert settings.local_storage_dir is not None
    root = Path(settings.local_storage_dir)
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != RENDITIONS_DIR)


def photo_count(app: Flask) -> int:
    with engine_of(app).connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Photo)) or 0)


def create_album(app: Flask, owner_id: int, name: str = "holiday") -> int:
    """An album row inserted directly (this suite does not depend on the albums routes)."""
    with engine_of(app).begin() as conn:
        now = utcnow()
        return int(
            conn.execute(
                insert(Album).values(owner_id=owner_id, name=name, created_at=now, updated_at=now).returning(Album.id)
            ).scalar_one()
        )


def insert_pending_photo(app: Flask, owner_id: int) -> int:
    """A pending photo, as a presigned upload leaves it before confirmation."""
    with engine_of(app).begin() as conn:
        now = utcnow()
        return int(
            conn.execute(
                insert(Photo)
                .values(
                    owner_id=owner_id,
                    filename=f"u/{owner_id}/pending-{now.timestamp()}.png",
                    original_filename="pending.png",
                    content_type="image/png",
                    file_size=10,
                    status=PhotoStatus.PENDING,
                    upload_expires_at=now + timedelta(hours=1),
                    created_at=now + timedelta(days=1),  # would sort first if it were listed
                    updated_at=now,
                )
                .returning(Photo.id)
            ).scalar_one()
        )


@pytest.fixture
def owner(users: Users) -> dict[str, Any]:
    return users.create()


@pytest.fixture
def stranger(users: Users) -> dict[str, Any]:
    return users.create()


@pytest.fixture
def small_app(make_settings: Callable[..., Settings]) -> Iterator[Flask]:
    """An app whose MAX_UPLOAD_BYTES is tiny, to test the limit without big bodies."""
    application = create_app(make_settings(max_upload_bytes=SMALL_LIMIT))
    yield application
    collaborators_of(application).db.dispose()


@pytest.fixture
def small_client(small_app: Flask) -> FlaskClient:
    return small_app.test_client()


@pytest.fixture
def small_owner(small_client: FlaskClient) -> dict[str, Any]:
    return Users(small_client).create()


# --- upload: the happy path --------------------------------------------------------------------


@pytest.mark.parametrize("content_type", sorted(SAMPLES))
def test_upload_and_download_each_image_type(
    client: FlaskClient, owner: dict[str, Any], settings: Settings, content_type: str
) -> None:
    data, extension = SAMPLES[content_type]
    # The part's Content-Type and the name lie: the bytes decide.
    r = upload(client, owner["headers"], data, filename="holiday.bin", content_type="text/plain", title="Beach")
    assert r.status_code == 201, r.get_json()
    photo = r.get_json()
    assert set(photo) == PHOTO_KEYS | {"duplicate"} and photo["duplicate"] is False  # only upload answers say it
    assert photo["owner_id"] == owner["id"]
    assert photo["content_type"] == content_type
    assert photo["file_size"] == len(data)
    assert photo["original_filename"] == "holiday.bin"
    assert photo["title"] == "Beach" and photo["description"] is None
    assert photo["url"] == f"/photos/{photo['id']}/image"
    assert re.fullmatch(rf"u/{owner['id']}/[0-9a-f]{{32}}\{extension}", photo["filename"])
    assert photo["created_at"].endswith("Z")
    assert len(stored_files(settings)) == 1

    image = client.get(photo["url"], headers=owner["headers"])
    assert image.status_code == 200
    assert image.data == data
    assert image.headers["Content-Type"] == content_type
    assert image.headers["Content-Length"] == str(len(data))
    assert image.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert image.headers["Cache-Control"] == "private"

    with engine_of(client.application).connect() as conn:
        checksum = conn.scalar(select(Photo.checksum).where(Photo.id == photo["id"]))
    assert checksum == hashlib.md5(data).hexdigest()


def test_long_boundary_is_accepted(client: FlaskClient, owner: dict[str, Any]) -> None:
    # Longer than RFC 2046's 70 characters, as some clients send (werkzeug's test client now and then).
    boundary = "-" * 20 + "WerkzeugFormPart_" + "7" * 40
    body = multipart(part("file", png(), filename="a.png")).replace(BOUNDARY.encode(), boundary.encode())
    r = client.post(
        "/photos", headers=owner["headers"], data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert r.status_code == 201, r.get_json()


def test_fields_after_the_file_are_used(client: FlaskClient, owner: dict[str, Any]) -> None:
    body = multipart(
        part("file", png(), filename="a.png", content_type="image/png"),
        part("description", "Über den Wolken".encode()),
        part("title", b"Sky"),
    )
    r = post_body(client, owner["headers"], body)
    assert r.status_code == 201, r.get_json()
    assert (r.get_json()["title"], r.get_json()["description"]) == ("Sky", "Über den Wolken")


def test_file_sent_without_a_filename_is_accepted(client: FlaskClient, owner: dict[str, Any]) -> None:
    # curl -F 'file=<cat.gif' sends the file as a plain field.
    r = post_body(client, owner["headers"], multipart(part("file", gif())))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["original_filename"] == "upload"
    assert r.get_json()["content_type"] == "image/gif"


def test_empty_text_fields_count_as_absent(client: FlaskClient, owner: dict[str, Any]) -> None:
    r = upload(client, owner["headers"], webp(), title="", description="", album_id="")
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["title"] is None and r.get_json()["description"] is None


def test_unknown_fields_and_parts_are_ignored(client: FlaskClient, owner: dict[str, Any], settings: Settings) -> None:
    body = multipart(
        part("attachment", b"not ours", filename="notes.txt", content_type="text/plain"),
        part("colour", b"blue"),
        part("notes", b"n" * 100_000),  # unknown, so not even too long
        f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nnameless\r\n".encode() * 2,
        part("file", jpeg(), filename="a.jpg"),
    )
    r = post_body(client, owner["headers"], body)
    assert r.status_code == 201, r.get_json()
    assert len(stored_files(settings)) == 1


@pytest.mark.parametrize(
    ("client_name", "stored_name"),
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("/abs/dir/\x01ca\x7ft\x1b.png", "cat.png"),
        ("..", "upload"),
        ("x" * 300 + ".png", "x" * 251 + ".png"),
    ],
)
def test_client_filename_is_sanitised(
    client: FlaskClient, owner: dict[str, Any], client_name: str, stored_name: str
) -> None:
    r = upload(client, owner["headers"], png(), filename=client_name)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["original_filename"] == stored_name
    assert "/" not in r.get_json()["filename"].removeprefix(f"u/{owner['id']}/")


def test_windows_path_in_filename_is_cut(client: FlaskClient, owner: dict[str, Any]) -> None:
    # Backslashes escaped inside the quoted filename, as RFC 7578 clients send them.
    body = multipart(part("file", png(), filename="C:\\\\Users\\\\ann\\\\cat.png"))
    r = post_body(client, owner["headers"], body)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["original_filename"] == "cat.png"


def test_upload_needs_auth(client: FlaskClient, settings: Settings) -> None:
    r = upload(client, {}, png())
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert stored_files(settings) == []


def test_collection_path_with_trailing_slash(client: FlaskClient, owner: dict[str, Any]) -> None:
    r = client.post(
        "/photos/",
        headers=owner["headers"],
        data={"file": (io.BytesIO(png()), "a.png")},
        content_type="multipart/form-data",
    )
    assert r.status_code == 201, r.get_json()
    listed = client.get("/photos/", headers=owner["headers"])
    assert listed.status_code == 200 and len(listed.get_json()) == 1


# --- upload: what is refused, and that nothing stays behind ------------------------------------


def test_text_file_named_jpg_is_415_and_nothing_is_stored(
    client: FlaskClient, owner: dict[str, Any], settings: Settings
) -> None:
    r = upload(
        client, owner["headers"], b"just some text, honestly\n" * 10, filename="x.jpg", content_type="image/jpeg"
    )
    body = assert_problem(r, 415)
    assert "image/jpeg" in body["detail"]
    assert photo_count(client.application) == 0
    assert stored_files(settings) == []


@pytest.mark.parametrize(
    "data", [b"\xff\xd8", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"<svg xmlns='http://www.w3.org/2000/svg'/>"]
)
def test_near_misses_are_415(client: FlaskClient, owner: dict[str, Any], settings: Settings, data: bytes) -> None:
    assert_problem(upload(client, owner["headers"], data, filename="x.png", content_type="image/png"), 415)
    assert stored_files(settings) == []


def test_empty_file_is_422_on_file(client: FlaskClient, owner: dict[str, Any], settings: Settings) -> None:
    body = multipart(part("file", b"", filename="a.png"), part("title", b"t" * 256))
    r = post_body(client, owner["headers"], body)
    # Parsing goes on past the empty file, so every failing field is listed.
    assert error_fields(assert_problem(r, 422)) == {"file", "title"}
    assert photo_count(client.application) == 0
    assert stored_files(settings) == []


def test_missing_file_is_422_on_file(client: FlaskClient, owner: dict[str, Any]) -> None:
    r = client.post("/photos", headers=owner["headers"], data={"title": "x"}, content_type="multipart/form-data")
    body = assert_problem(r, 422)
    assert body["errors"] == [{"field": "file", "message": "a file is required"}]


def test_two_files_are_422(client: FlaskClient, owner: dict[str, Any], settings: Settings) -> None:
    body = multipart(part("file", png(), filename="a.png"), part("file", gif(), filename="b.gif"))
    assert error_fields(assert_problem(post_body(client, owner["headers"], body), 422)) == {"file"}
    assert photo_count(client.application) == 0
    assert stored_files(settings) == []


@pytest.mark.parametrize(
    ("headers", "data"),
    [
        ({"Content-Type": "application/json"}, b'{"file": "x"}'),
        ({"Content-Type": "image/png"}, png()),
        ({"Content-Type": "multipart/form-data"}, multipart(part("file", png(), filename="a.png"))),  # no boundary
        ({"Content-Type": f"multipart/form-data; boundary={'b' * 201}"}, b"--" + b"b" * 201 + b"--\r\n"),
        ({}, b""),
    ],
)
def test_not_multipart_is_400(client: FlaskClient, owner: dict[str, Any], headers: dict[str, str], data: bytes) -> None:
    r = client.post("/photos", headers={**owner["headers"], **headers}, data=data)
    assert_problem(r, 400)


@pytest.mark.parametrize(
    "body",
    [
        b"garbage without any boundary",
        multipart(part("file", png(), filename="a.png"))[:-30],  # cut off before the closing boundary
        f"--{BOUNDARY}\r\nX-No-Disposition: 1\r\n\r\nvalue\r\n--{BOUNDARY}--\r\n".encode(),
        multipart(*[part(f"field{n}", b"x") for n in range(20)], part("file", png(), filename="a.png")),
    ],
)
def test_malformed_multipart_is_400_and_nothing_is_stored(
    client: FlaskClient, owner: dict[str, Any], settings: Settings, body: bytes
) -> None:
    assert_problem(post_body(client, owner["headers"], body), 400)
    assert photo_count(client.application) == 0
    assert stored_files(settings) == []


@pytest.mark.parametrize(
    ("fields", "failing"),
    [
        ({"title": "t" * 256}, {"title"}),
        ({"description": "d" * 10_001}, {"description"}),
        ({"title": "t" * 256, "description": "d" * 10_001, "album_id": "abc"}, {"title", "description", "album_id"}),
        ({"album_id": "0"}, {"album_id"}),
        ({"album_id": str(2**31)}, {"album_id"}),
    ],
)
def test_invalid_fields_are_422_and_nothing_is_stored(
    client: FlaskClient, owner: dict[str, Any], settings: Settings, fields: dict[str, str], failing: set[str]
) -> None:
    r = upload(client, owner["headers"], png(), **fields)
    assert error_fields(assert_problem(r, 422)) == failing
    assert photo_count(client.application) == 0
    assert stored_files(settings) == []


def test_invalid_field_after_the_file_removes_the_stored_object(
    client: FlaskClient, owner: dict[str, Any], settings: Settings
) -> None:
    body = multipart(part("file", png(), filename="a.png"), part("title", b"t" * 256))
    assert error_fields(assert_problem(post_body(client, owner["headers"], body), 422)) == {"title"}
    assert photo_count(client.application) == 0
    assert stored_files(settings) == []


def test_longest_title_and_description_are_accepted(client: FlaskClient, owner: dict[str, Any]) -> None:
    r = upload(client, owner["headers"], png(), title="é" * 255, description="ß" * 10_000)
    assert r.status_code == 201, r.get_json()
    assert len(r.get_json()["title"]) == 255 and len(r.get_json()["description"]) == 10_000


@pytest.mark.parametrize("value", [b"x" * 100_000, b"\xff\xfe not utf-8"])
def test_oversized_or_binary_text_field_is_422(client: FlaskClient, owner: dict[str, Any], value: bytes) -> None:
    body = multipart(part("title", value), part("file", png(), filename="a.png"))
    assert error_fields(assert_problem(post_body(client, owner["headers"], body), 422)) == {"title"}


def test_field_given_twice_is_422(client: FlaskClient, owner: dict[str, Any]) -> None:
    body = multipart(part("title", b"one"), part("title", b"two"), part("file", png(), filename="a.png"))
    assert error_fields(assert_problem(post_body(client, owner["headers"], body), 422)) == {"title"}


# --- upload: the size limit --------------------------------------------------------------------


def test_declared_oversize_body_is_413_before_it_is_read(
    small_client: FlaskClient, small_owner: dict[str, Any], settings: Settings
) -> None:
    body = multipart(part("file", b"".join(large_jpeg_chunks(100_000)), filename="a.jpg"))
    stream = ChunkStream([body])
    r = post_stream(small_client, small_owner["headers"], stream, content_length=len(body))
    assert_problem(r, 413)
    assert stream.bytes_read == 0
    assert photo_count(small_client.application) == 0
    assert stored_files(settings) == []


def test_chunked_oversize_file_is_413_while_streaming(
    small_client: FlaskClient, small_owner: dict[str, Any], settings: Settings
) -> None:
    stream = ChunkStream(streamed_upload(large_jpeg_chunks(10 * MIB)))
    r = post_stream(small_client, small_owner["headers"], stream, content_length=None)
    assert_problem(r, 413)
    # Refused as soon as the file passed the limit, not after reading the 10 MiB.
    assert stream.bytes_read < 256 * 1024
    assert photo_count(small_client.application) == 0
    assert stored_files(settings) == []


def test_chunked_body_past_the_request_limit_is_413(
    small_client: FlaskClient, small_owner: dict[str, Any], settings: Settings
) -> None:
    # The file is small, but a part we skip is huge: the request limit (not the file limit) stops it.
    skipped = part("attachment", b"\x00" * (2 * MIB), filename="junk.bin")
    stream = ChunkStream(streamed_upload([jpeg()], skipped))
    r = post_stream(small_client, small_owner["headers"], stream, content_length=None)
    assert_problem(r, 413)
    assert stream.bytes_read < MIB
    assert photo_count(small_client.application) == 0
    assert stored_files(settings) == []


def test_chunked_upload_within_the_limit_is_stored(
    small_client: FlaskClient, small_owner: dict[str, Any], settings: Settings
) -> None:
    data = jpeg(comment=b"c" * (SMALL_LIMIT - len(jpeg()) - 4))  # exactly the limit
    assert len(data) == SMALL_LIMIT
    stream = ChunkStream(streamed_upload([data[:700], data[700:701], data[701:]], part("title", b"chunked")))
    r = post_stream(small_client, small_owner["headers"], stream, content_length=None)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["file_size"] == SMALL_LIMIT and r.get_json()["title"] == "chunked"
    assert small_client.get(r.get_json()["url"], headers=small_owner["headers"]).data == data


def test_file_one_byte_over_the_limit_is_413(
    small_client: FlaskClient, small_owner: dict[str, Any], settings: Settings
) -> None:
    data = jpeg(comment=b"c" * (SMALL_LIMIT - len(jpeg()) - 3))
    assert len(data) == SMALL_LIMIT + 1
    assert_problem(upload(small_client, small_owner["headers"], data), 413)
    assert stored_files(settings) == []


def test_a_read_ending_inside_the_closing_delimiter_stores_the_file_exactly(
    client: FlaskClient, owner: dict[str, Any]
) -> None:
    # The body is read 64 KiB at a time; here the first read ends between the two dashes that close it.
    overhead = len(b"".join(streamed_upload([b""])))
    data = png() + b"\0" * (CHUNK_SIZE + 3 - overhead - len(png()))
    body = b"".join(streamed_upload([data]))
    assert body[CHUNK_SIZE - 1 : CHUNK_SIZE + 1] == b"--" and body.endswith(b"--\r\n")
    r = post_stream(client, owner["headers"], ChunkStream([body]), content_length=len(body))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["file_size"] == len(data)
    assert client.get(r.get_json()["url"], headers=owner["headers"]).data == data


@pytest.fixture
def queue_down_client(make_settings: Callable[..., Settings]) -> Iterator[FlaskClient]:
    """An app whose job queue (Redis) refuses connections: uploads succeed and no job runs in the process.

    For measuring an upload alone: with the embedded default, the renditions job of the very photo being
    uploaded would decode it on a thread of this process, inside the measured window.
    """
    application = create_app(make_settings(redis_url=f"redis://127.0.0.1:{REFUSED_PORT}/0", redis_timeout=0.5))
    yield application.test_client()
    collaborators_of(application).db.dispose()


def test_upload_memory_stays_far_below_the_file_size(queue_down_client: FlaskClient, settings: Settings) -> None:
    client = queue_down_client
    owner = Users(client).create()
    size = large_jpeg_size(20 * MIB)
    body = list(streamed_upload(large_jpeg_chunks(20 * MIB)))  # the segments are shared, not copied
    length = sum(len(chunk) for chunk in body)
    client.get("/photos", headers=owner["headers"])  # warm up: first-request imports and query compilation
    tracemalloc.start()
    try:
        r = post_stream(client, owner["headers"], ChunkStream(body), content_length=length)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["file_size"] == size
    assert peak < 4 * MIB, f"peak {peak / MIB:.1f} MiB while uploading {size / MIB:.0f} MiB"
    assert stored_files(settings)[0].stat().st_size >= size


def test_no_database_connection_is_held_while_the_body_streams(client: FlaskClient, owner: dict[str, Any]) -> None:
    db = collaborators_of(client.application).db
    held: list[int] = []

    def file_chunks() -> Iterator[bytes]:
        data = png()
        for start in range(0, len(data), 100):
            held.append(db.pool_status()["checked_out"])  # read mid-request, between two chunks of the body
            yield data[start : start + 100]

    r = post_stream(client, owner["headers"], ChunkStream(streamed_upload(file_chunks())), content_length=None)
    assert r.status_code == 201, r.get_json()
    assert held and set(held) == {0}


# --- upload into an album ----------------------------------------------------------------------


def test_upload_into_own_album_adds_the_photo(client: FlaskClient, owner: dict[str, Any]) -> None:
    album_id = create_album(client.application, owner["id"])
    r = upload(client, owner["headers"], png(), album_id=str(album_id))
    assert r.status_code == 201, r.get_json()
    with engine_of(client.application).connect() as conn:
        members = conn.scalars(select(AlbumPhoto.photo_id).where(AlbumPhoto.album_id == album_id)).all()
    assert members == [r.get_json()["id"]]


@pytest.mark.parametrize("whose", ["stranger", "nobody"])
def test_upload_into_foreign_or_missing_album_is_404_and_leaves_no_object(
    client: FlaskClient, owner: dict[str, Any], stranger: dict[str, Any], settings: Settings, whose: str
) -> None:
    album_id = create_album(client.application, stranger["id"]) if whose == "stranger" else 999_999
    r = upload(client, owner["headers"], png(), album_id=str(album_id))
    assert assert_problem(r, 404)["detail"] == "Album not found"
    assert photo_count(client.application) == 0
    assert stored_files(settings) == []


@pytest.fixture
def photos_refuse_inserts(app: Flask) -> Iterator[None]:
    """A trigger that makes every INSERT into photos fail: a real database error at the row step."""
    engine = engine_of(app)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_photo() RETURNS trigger LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_photos BEFORE INSERT ON photos FOR EACH ROW EXECUTE FUNCTION refuse_photo()"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_photos BEFORE INSERT ON photos BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
    yield
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP TRIGGER refuse_photos ON photos")
            conn.exec_driver_sql("DROP FUNCTION refuse_photo()")
        else:
            conn.exec_driver_sql("DROP TRIGGER refuse_photos")


def test_database_error_at_the_row_step_removes_the_object(
    client: FlaskClient, owner: dict[str, Any], settings: Settings, photos_refuse_inserts: None
) -> None:
    r = upload(client, owner["headers"], png())
    body = assert_problem(r, 500)
    assert "refused" not in body["detail"]
    assert photo_count(client.application) == 0
    assert stored_files(settings) == []


def body_cut_after_the_file(then: bytes) -> list[bytes]:
    """A streamed body whose file part is complete (the next delimiter arrived), cut after `then`."""
    *whole, _closing = streamed_upload([png()], f"--{BOUNDARY}\r\n".encode() + then)
    return whole


def test_client_leaving_after_the_file_removes_the_stored_object(
    client: FlaskClient, owner: dict[str, Any], settings: Settings
) -> None:
    stream = ChunkStream(body_cut_after_the_file(b"Content-Disposition: form-data"))
    r = post_stream(client, owner["headers"], stream, content_length=None)
    assert assert_problem(r, 400)["detail"] == "Malformed multipart body"
    assert photo_count(client.application) == 0
    assert stored_files(settings) == []


class WorkerKilled(BaseException):
    """Stands for what gevent's Timeout or a worker's shutdown raises into a request: not an Exception."""


def test_base_exception_after_the_file_removes_the_stored_object(
    client: FlaskClient, owner: dict[str, Any], settings: Settings
) -> None:
    def interrupted() -> Iterator[bytes]:
        yield from body_cut_after_the_file(b"")
        raise WorkerKilled

    with pytest.raises(WorkerKilled):
        post_stream(client, owner["headers"], ChunkStream(interrupted()), content_length=None)
    assert photo_count(client.application) == 0
    assert stored_files(settings) == []


# --- list and read -----------------------------------------------------------------------------


def test_list_is_newest_first_and_paginated(client: FlaskClient, owner: dict[str, Any]) -> None:
    # Different bytes each: the same bytes again would be a duplicate (tests/test_duplicates.py).
    ids = [upload(client, owner["headers"], png(16 + n), title=str(n)).get_json()["id"] for n in range(5)]
    # Two photos with the same timestamp: the id decides.
    with engine_of(client.application).begin() as conn:
        created = conn.scalar(select(Photo.created_at).where(Photo.id == ids[1]))
        conn.execute(update(Photo).where(Photo.id == ids[2]).values(created_at=created))
    newest_first = [ids[4], ids[3], ids[2], ids[1], ids[0]]

    r = client.get("/photos", headers=owner["headers"])
    assert r.status_code == 200
    assert [p["id"] for p in r.get_json()] == newest_first
    assert all(set(p) == PHOTO_KEYS for p in r.get_json())
    page = client.get("/photos?skip=1&limit=2", headers=owner["headers"]).get_json()
    assert [p["id"] for p in page] == newest_first[1:3]
    assert client.get("/photos?skip=5", headers=owner["headers"]).get_json() == []
    assert len(client.get("/photos?limit=100", headers=owner["headers"]).get_json()) == 5


def test_a_listed_photo_is_what_its_own_page_shows(client: FlaskClient, owner: dict[str, Any]) -> None:
    # The list is read as table rows and serialised in one call, the photo's own page from its ORM object:
    # every field, computed ones included, must agree; a camera's zone comes out in UTC, with a Z.
    h = owner["headers"]
    exif = {"taken": "2026:05:01 14:03:22", "offset": "+09:00", "gps": (37.5665, -122.4194), "make": "Canon"}
    upload(client, h, photo_jpeg(64, 48, **exif), title="Seoul", description="with EXIF")
    upload(client, h, png())
    settle(client.application)
    listed = client.get("/photos", headers=h).get_json()
    assert len(listed) == 2
    for item in listed:
        assert item == client.get(f"/photos/{item['id']}", headers=h).get_json()
    seoul = next(p for p in listed if p["title"] == "Seoul")
    assert seoul["taken_at"] == "2026-05-01T05:03:22Z" and seoul["taken_at_offset"] == "+09:00"
    assert seoul["location"]["latitude"] == pytest.approx(37.5665, abs=1e-4)
    assert seoul["processing_status"] == "ready" and seoul["thumbnail_url"] == f"/photos/{seoul['id']}/thumbnail"


def test_a_time_in_another_zone_is_answered_in_utc() -> None:
    class Stamp(BaseModel):
        at: UtcDatetime

    seoul = timezone(timedelta(hours=9))
    assert Stamp(at=datetime(2026, 5, 1, 14, 3, 22, 5, tzinfo=seoul)).model_dump_json() == (
        '{"at":"2026-05-01T05:03:22.000005Z"}'
    )


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=101", "limit"), ("skip=-1", "skip"), ("limit=abc", "limit"), ("skip=x", "skip")],
)
def test_list_pagination_out_of_range_is_422(
    client: FlaskClient, owner: dict[str, Any], query: str, field: str
) -> None:
    assert error_fields(assert_problem(client.get(f"/photos?{query}", headers=owner["headers"]), 422)) == {field}


def test_list_shows_only_own_ready_photos(client: FlaskClient, owner: dict[str, Any], stranger: dict[str, Any]) -> None:
    mine = upload(client, owner["headers"], png()).get_json()["id"]
    upload(client, stranger["headers"], png())
    insert_pending_photo(client.application, owner["id"])
    assert [p["id"] for p in client.get("/photos", headers=owner["headers"]).get_json()] == [mine]


def test_get_photo(client: FlaskClient, owner: dict[str, Any]) -> None:
    created = upload(client, owner["headers"], gif(), title="Gif").get_json()
    r = client.get(f"/photos/{created['id']}", headers=owner["headers"])
    assert r.status_code == 200
    assert r.get_json() == {k: v for k, v in created.items() if k != "duplicate"}  # only uploads say it


def test_pending_photo_is_invisible(client: FlaskClient, owner: dict[str, Any]) -> None:
    pending = insert_pending_photo(client.application, owner["id"])
    h = owner["headers"]
    assert_problem(client.get(f"/photos/{pending}", headers=h), 404)
    assert_problem(client.get(f"/photos/{pending}/image", headers=h), 404)
    assert_problem(client.patch(f"/photos/{pending}", headers=h, json={"title": "x"}), 404)
    assert_problem(client.delete(f"/photos/{pending}", headers=h), 404)
    assert client.get("/photos", headers=h).get_json() == []


@pytest.mark.parametrize("photo_id", ["999999", str(2**31), "99999999999999999999999", "0"])
def test_unknown_photo_is_404(client: FlaskClient, owner: dict[str, Any], photo_id: str) -> None:
    h = owner["headers"]
    assert assert_problem(client.get(f"/photos/{photo_id}", headers=h), 404)["detail"] == "Photo not found"
    assert_problem(client.get(f"/photos/{photo_id}/image", headers=h), 404)
    assert_problem(client.patch(f"/photos/{photo_id}", headers=h, json={"title": "x"}), 404)
    assert_problem(client.delete(f"/photos/{photo_id}", headers=h), 404)


def test_other_users_photo_answers_exactly_like_a_missing_one(
    client: FlaskClient, owner: dict[str, Any], stranger: dict[str, Any], settings: Settings
) -> None:
    theirs = upload(client, stranger["headers"], png(), title="theirs").get_json()["id"]
    h = owner["headers"]
    missing = theirs + 1000

    def answers(photo_id: int) -> list[tuple[int, str]]:
        responses = [
            client.get(f"/photos/{photo_id}", headers=h),
            client.get(f"/photos/{photo_id}/image", headers=h),
            client.patch(f"/photos/{photo_id}", headers=h, json={"title": "mine now"}),
            client.delete(f"/photos/{photo_id}", headers=h),
        ]
        return [(r.status_code, assert_problem(r, 404)["detail"]) for r in responses]

    assert answers(theirs) == [(404, "Photo not found")] * 4 == answers(missing)
    # Untouched.
    r = client.get(f"/photos/{theirs}", headers=stranger["headers"])
    assert r.get_json()["title"] == "theirs"
    assert len(stored_files(settings)) == 1


# --- edit ----------------------------------------------------------------------------------------


def test_patch_changes_only_the_fields_given(client: FlaskClient, owner: dict[str, Any]) -> None:
    created = upload(client, owner["headers"], png(), title="Old", description="Keep me").get_json()
    url = f"/photos/{created['id']}"
    r = client.patch(url, headers=owner["headers"], json={"title": "New"})
    assert r.status_code == 200
    assert (r.get_json()["title"], r.get_json()["description"]) == ("New", "Keep me")
    assert r.get_json()["updated_at"] >= created["updated_at"]

    r = client.patch(url, headers=owner["headers"], json={"description": None})
    assert (r.get_json()["title"], r.get_json()["description"]) == ("New", None)

    r = client.patch(url, headers=owner["headers"], json={})
    assert (r.get_json()["title"], r.get_json()["description"]) == ("New", None)

    assert client.get(url, headers=owner["headers"]).get_json()["title"] == "New"


def test_patch_null_clears_both(client: FlaskClient, owner: dict[str, Any]) -> None:
    created = upload(client, owner["headers"], png(), title="T", description="D").get_json()
    r = client.patch(f"/photos/{created['id']}", headers=owner["headers"], json={"title": None, "description": None})
    assert (r.get_json()["title"], r.get_json()["description"]) == (None, None)


@pytest.mark.parametrize(
    ("body", "failing"),
    [
        ({"title": "x", "owner_id": 2}, {"owner_id"}),
        ({"filename": "u/1/other.png"}, {"filename"}),
        ({"title": "t" * 256}, {"title"}),
        ({"description": "d" * 10_001}, {"description"}),
        ({"title": 5}, {"title"}),
    ],
)
def test_patch_invalid_is_422_and_changes_nothing(
    client: FlaskClient, owner: dict[str, Any], body: dict[str, Any], failing: set[str]
) -> None:
    photo_id = upload(client, owner["headers"], png(), title="Same").get_json()["id"]
    settle(client.application)  # processing fills in width, height, ...: not what is compared here
    before = client.get(f"/photos/{photo_id}", headers=owner["headers"]).get_json()
    r = client.patch(f"/photos/{photo_id}", headers=owner["headers"], json=body)
    assert error_fields(assert_problem(r, 422)) == failing
    assert client.get(f"/photos/{photo_id}", headers=owner["headers"]).get_json() == before


def test_patch_needs_json(client: FlaskClient, owner: dict[str, Any]) -> None:
    created = upload(client, owner["headers"], png()).get_json()
    assert_problem(client.patch(f"/photos/{created['id']}", headers=owner["headers"], data="title=x"), 400)


# --- delete --------------------------------------------------------------------------------------


def test_delete_removes_row_object_memberships_and_cover(
    client: FlaskClient, owner: dict[str, Any], settings: Settings
) -> None:
    album_id = create_album(client.application, owner["id"])
    doomed = upload(client, owner["headers"], png(), album_id=str(album_id)).get_json()
    kept = upload(client, owner["headers"], gif(), album_id=str(album_id)).get_json()
    with engine_of(client.application).begin() as conn:
        conn.execute(update(Album).where(Album.id == album_id).values(cover_photo_id=doomed["id"]))
    assert len(stored_files(settings)) == 2

    r = client.delete(f"/photos/{doomed['id']}", headers=owner["headers"])
    assert r.status_code == 204 and r.data == b""

    assert_problem(client.get(f"/photos/{doomed['id']}", headers=owner["headers"]), 404)
    assert_problem(client.delete(f"/photos/{doomed['id']}", headers=owner["headers"]), 404)
    assert [p.name for p in stored_files(settings)] == [Path(kept["filename"]).name]
    with engine_of(client.application).connect() as conn:
        assert conn.scalar(select(Album.cover_photo_id).where(Album.id == album_id)) is None
        assert conn.scalars(select(AlbumPhoto.photo_id)).all() == [kept["id"]]
        assert conn.scalar(select(func.count()).select_from(PendingObjectDeletion)) == 0


def test_failed_object_delete_is_recorded_for_the_reaper(
    client: FlaskClient, owner: dict[str, Any], settings: Settings, tmp_path: Path
) -> None:
    photo = upload(client, owner["headers"], png()).get_json()
    assert settings.local_storage_dir is not None
    owner_dir = Path(settings.local_storage_dir) / "u" / str(owner["id"])
    # The owner's directory now leads outside the store, which LocalStorage refuses to touch; unlike
    # chmod this also fails for root, as CI runs.
    elsewhere = tmp_path / "elsewhere"
    shutil.move(owner_dir, elsewhere)
    os.symlink(elsewhere, owner_dir)

    r = client.delete(f"/photos/{photo['id']}", headers=owner["headers"])
    assert r.status_code == 204

    assert_problem(client.get(f"/photos/{photo['id']}", headers=owner["headers"]), 404)
    with engine_of(client.application).connect() as conn:
        pending = conn.execute(select(PendingObjectDeletion.object_key, PendingObjectDeletion.last_error)).all()
    assert [key for key, _ in pending] == [photo["filename"]]
    assert pending[0][1]  # the error's name, for the operator
    assert (elsewhere / Path(photo["filename"]).name).exists()  # still there for the reaper to retry


# --- OpenAPI -------------------------------------------------------------------------------------


def test_openapi_documents_the_photo_routes(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    paths = spec["paths"]
    assert set(paths["/photos"]) == {"get", "post"}
    assert set(paths["/photos/{photo_id}"]) == {"get", "patch", "delete"}
    post = paths["/photos"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"]
    assert form["properties"]["file"] == {
        "type": "string",
        "format": "binary",
        "description": "JPEG, PNG, WebP, GIF or HEIC/HEIF",
    }
    assert {"201", "400", "401", "404", "413", "415", "422"} <= set(post["responses"])
    assert "An empty file is 422" in post["description"]
    image = paths["/photos/{photo_id}/image"]["get"]
    assert image["responses"]["200"]["content"] == {"image/*": {"schema": {"type": "string", "format": "binary"}}}
    assert {"206", "304", "404", "416"} <= set(image["responses"])
    assert {"200", "404", "422"} <= set(paths["/photos/{photo_id}"]["patch"]["responses"])
    assert "204" in paths["/photos/{photo_id}"]["delete"]["responses"]
    assert all(op.get("security") for path in paths if path.startswith("/photos") for op in paths[path].values())
