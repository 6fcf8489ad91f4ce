"""GET /photos/{id}/image: the bytes with their headers, ETag/304, a single Range/206, 416, and who may see them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from photo_api.config import Settings
from tests.harness.users import Users
from tests.http_checks import assert_problem
from tests.images import png, upload

IMAGE = png(24, 24)  # a few hundred bytes: room for the ranges below
SIZE = len(IMAGE)
ETAG = f'"{hashlib.md5(IMAGE).hexdigest()}"'


@pytest.fixture
def owner(users: Users) -> dict[str, Any]:
    return users.create()


@pytest.fixture
def photo(client: FlaskClient, owner: dict[str, Any]) -> dict[str, Any]:
    r = upload(client, owner["headers"], IMAGE, filename="grid.png")
    assert r.status_code == 201, r.get_json()
    body: dict[str, Any] = r.get_json()
    return body


def get_image(client: FlaskClient, owner: dict[str, Any], photo: dict[str, Any], **headers: str) -> Any:
    return client.get(photo["url"], headers={**owner["headers"], **headers})


def test_whole_image_with_its_headers(client: FlaskClient, owner: dict[str, Any], photo: dict[str, Any]) -> None:
    assert SIZE > 300
    r = get_image(client, owner, photo)
    assert r.status_code == 200
    assert r.data == IMAGE
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["Content-Length"] == str(SIZE)
    assert r.headers["ETag"] == ETAG
    assert r.headers["Cache-Control"] == "private"
    assert r.headers["Accept-Ranges"] == "bytes"
    assert "Content-Range" not in r.headers


def test_head_sends_the_headers_only(client: FlaskClient, owner: dict[str, Any], photo: dict[str, Any]) -> None:
    r = client.head(photo["url"], headers=owner["headers"])
    assert r.status_code == 200
    assert r.data == b""
    assert r.headers["Content-Length"] == str(SIZE)
    assert r.headers["ETag"] == ETAG


@pytest.mark.parametrize("if_none_match", [ETAG, f'"other", {ETAG}', f"W/{ETAG}", "*"])
def test_matching_if_none_match_is_304(
    client: FlaskClient, owner: dict[str, Any], photo: dict[str, Any], if_none_match: str
) -> None:
    r = get_image(client, owner, photo, **{"If-None-Match": if_none_match})
    assert r.status_code == 304
    assert r.data == b""
    assert r.headers["ETag"] == ETAG
    assert r.headers["Cache-Control"] == "private"


def test_stale_if_none_match_gets_the_image(client: FlaskClient, owner: dict[str, Any], photo: dict[str, Any]) -> None:
    r = get_image(client, owner, photo, **{"If-None-Match": '"0123456789abcdef0123456789abcdef"'})
    assert r.status_code == 200 and r.data == IMAGE


@pytest.mark.parametrize(
    ("range_header", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=-10", SIZE - 10, SIZE - 1),
        ("bytes=5-", 5, SIZE - 1),
        ("bytes=100-100", 100, 100),
        (f"bytes=200-{SIZE * 10}", 200, SIZE - 1),  # an end past the object is cut to it
        (f"bytes=-{SIZE * 10}", 0, SIZE - 1),  # a suffix longer than the object is all of it
        ("bytes=0-" + "9" * 5000, 0, SIZE - 1),  # more digits than int() takes
    ],
)
def test_single_range_is_206(
    client: FlaskClient, owner: dict[str, Any], photo: dict[str, Any], range_header: str, first: int, last: int
) -> None:
    r = get_image(client, owner, photo, Range=range_header)
    assert r.status_code == 206
    assert r.data == IMAGE[first : last + 1]
    assert r.headers["Content-Range"] == f"bytes {first}-{last}/{SIZE}"
    assert r.headers["Content-Length"] == str(last - first + 1)
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["ETag"] == ETAG


@pytest.mark.parametrize(
    "range_header", [f"bytes={SIZE}-", f"bytes={SIZE + 1000}-{SIZE + 2000}", "bytes=-0", "bytes=" + "9" * 5000 + "-"]
)
def test_range_past_the_end_is_416(
    client: FlaskClient, owner: dict[str, Any], photo: dict[str, Any], range_header: str
) -> None:
    r = get_image(client, owner, photo, Range=range_header)
    assert_problem(r, 416)
    assert r.headers["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize(
    "range_header", ["bytes=0-9,20-29", "bytes=0-9, -5", "items=0-9", "bytes=9-0", "bytes=-", "bytes=abc"]
)
def test_multiple_or_malformed_ranges_get_the_whole_image(
    client: FlaskClient, owner: dict[str, Any], photo: dict[str, Any], range_header: str
) -> None:
    r = get_image(client, owner, photo, Range=range_header)
    assert r.status_code == 200
    assert r.data == IMAGE
    assert "Content-Range" not in r.headers


def test_if_range_decides_between_part_and_whole(
    client: FlaskClient, owner: dict[str, Any], photo: dict[str, Any]
) -> None:
    fresh = get_image(client, owner, photo, Range="bytes=0-9", **{"If-Range": ETAG})
    assert fresh.status_code == 206 and fresh.data == IMAGE[:10]
    stale = get_image(client, owner, photo, Range="bytes=0-9", **{"If-Range": '"stale"'})
    assert stale.status_code == 200 and stale.data == IMAGE


def test_other_users_image_is_404(
    client: FlaskClient, users: Users, photo: dict[str, Any], owner: dict[str, Any]
) -> None:
    stranger = users.create()
    r = client.get(photo["url"], headers={**stranger["headers"], "If-None-Match": ETAG, "Range": "bytes=0-9"})
    assert assert_problem(r, 404)["detail"] == "Photo not found"
    assert "ETag" not in r.headers


def test_image_needs_auth(client: FlaskClient, photo: dict[str, Any]) -> None:
    assert_problem(client.get(photo["url"]), 401)


def test_object_missing_behind_a_row_is_404(
    client: FlaskClient, owner: dict[str, Any], photo: dict[str, Any], settings: Settings
) -> None:
    assert settings.local_storage_dir is not None
    (Path(settings.local_storage_dir) / photo["filename"]).unlink()
    assert_problem(get_image(client, owner, photo), 404)
