"""Image delivery through the CDN: 302 to a signed URL the edge accepts, and streaming when the CDN fails.

Through HTTP with the test client; the CDN token API and edge are the loopback doubles of tests/doubles.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from photo_api import create_app, metrics
from photo_api.api.context import collaborators_of
from photo_api.config import Settings
from tests.doubles.nhn_cdn import CdnApiDouble, CdnEdgeDouble
from tests.harness.users import Users
from tests.images import photo_jpeg, png
from tests.metrics.conftest import parse
from tests.test_media_pipeline import settle

APP_KEY = "cdn-app-key-1"
SECRET_KEY = "cdn-secret-key-1"
ENCRYPT_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"
DOMAIN = "photos.cdn.example"
CONTAINER = "photos"


@pytest.fixture
def api() -> Iterator[CdnApiDouble]:
    double = CdnApiDouble(app_key=APP_KEY, secret_key=SECRET_KEY)
    with double.server:
        yield double


@pytest.fixture
def edge() -> CdnEdgeDouble:
    return CdnEdgeDouble(encrypt_key=ENCRYPT_KEY)  # only its token check is used: no server needed


def cdn_app(make_settings: Callable[..., Settings], **overrides: Any) -> Flask:
    values: dict[str, Any] = {
        "nhn_cdn_domain": DOMAIN,
        "nhn_cdn_encrypt_key": ENCRYPT_KEY,
        "nhn_storage_container": CONTAINER,
        "cdn_token_mode": "local",
        "retry_base_delay": 0,
        "retry_max_delay": 0,
    }
    values.update(overrides)
    return create_app(make_settings(**values))


def fallbacks() -> float:
    """How many images were streamed because the CDN was unavailable (this process's registry)."""
    return parse(metrics.render().decode()).value("photo_api_fallbacks_total", service="cdn") or 0


def upload(client: FlaskClient, headers: dict[str, str], data: bytes) -> dict[str, Any]:
    r = client.post("/photos", headers=headers, data={"file": (io.BytesIO(data), "a.png")})
    assert r.status_code == 201, r.get_json()
    body: dict[str, Any] = r.get_json()
    return body


def check_redirect(location: str, edge: CdnEdgeDouble, key: str, duration: int) -> None:
    """The URL is on the CDN domain, for the object's path, with a token the edge accepts for `duration`."""
    parts = urlsplit(location)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", DOMAIN, f"/{CONTAINER}/{key}")
    token = parse_qs(parts.query)["token"][0]
    assert edge.token_is_valid(token, parts.path)
    expires = int(token.split("~")[0].removeprefix("exp="))
    assert abs(expires - (time.time() + duration)) < 30


def test_local_token_mode_redirects_owner_and_share_images_with_their_own_durations(
    make_settings: Callable[..., Settings], edge: CdnEdgeDouble
) -> None:
    app = cdn_app(make_settings, image_token_expire_seconds=600, share_image_token_expire_seconds=7200)
    client = app.test_client()
    user = Users(client).create()
    photo = upload(client, user["headers"], png())

    r = client.get(f"/photos/{photo['id']}/image", headers=user["headers"])
    assert r.status_code == 302
    assert r.headers["Cache-Control"] == "private, no-store"
    check_redirect(r.headers["Location"], edge, photo["filename"], 600)

    album = client.post("/albums", headers=user["headers"], json={"name": "a"}).get_json()
    client.post(f"/albums/{album['id']}/photos", headers=user["headers"], json={"photo_ids": [photo["id"]]})
    share = client.post(f"/albums/{album['id']}/share", headers=user["headers"], json={}).get_json()
    settle(app)  # the public copy is made by the background job
    r = client.get(f"/share/{share['token']}/photos/{photo['id']}/image")
    assert r.status_code == 302
    # A PNG without metadata is its own public copy.
    check_redirect(r.headers["Location"], edge, photo["filename"], 7200)
    # A photo with EXIF: the CDN is sent to its copy without metadata, never to the original.
    camera = upload(client, user["headers"], photo_jpeg(64, 48, gps=(37.5, 127.0)))
    client.post(f"/albums/{album['id']}/photos", headers=user["headers"], json={"photo_ids": [camera["id"]]})
    settle(app)
    r = client.get(f"/share/{share['token']}/photos/{camera['id']}/image")
    assert r.status_code == 302
    check_redirect(r.headers["Location"], edge, f"r/{user['id']}/{camera['id']}/public.jpg", 7200)
    assert client.get("/health").get_json()["checks"]["cdn"] == {"status": "healthy", "circuit": "closed"}


def test_api_token_mode_redirects_with_the_apis_token(
    make_settings: Callable[..., Settings], api: CdnApiDouble, edge: CdnEdgeDouble
) -> None:
    app = cdn_app(
        make_settings,
        cdn_token_mode="api",
        nhn_cdn_app_key=APP_KEY,
        nhn_cdn_secret_key=SECRET_KEY,
        nhn_cdn_api_url=api.server.url,
    )
    client = app.test_client()
    user = Users(client).create()
    photo = upload(client, user["headers"], png())
    r = client.get(f"/photos/{photo['id']}/image", headers=user["headers"])
    assert r.status_code == 302
    check_redirect(r.headers["Location"], edge, photo["filename"], collaborators_of(app).limits.image_token_seconds)
    assert api.requests == 1
    assert api.received[0]["singlePath"] == f"/{CONTAINER}/{photo['filename']}"


def test_failing_cdn_api_falls_back_to_streaming_the_right_bytes_then_the_breaker_skips_it(
    make_settings: Callable[..., Settings], api: CdnApiDouble
) -> None:
    app = cdn_app(
        make_settings,
        cdn_token_mode="api",
        nhn_cdn_app_key=APP_KEY,
        nhn_cdn_secret_key=SECRET_KEY,
        nhn_cdn_api_url=api.server.url,
        retry_max_tries=1,
        breaker_failure_threshold=2,
    )
    client = app.test_client()
    user = Users(client).create()
    data = png(text=b"fallback")
    photo = upload(client, user["headers"], data)
    api.http_failures = [503] * 10
    fallbacks_before = fallbacks()

    for _ in range(2):
        r = client.get(f"/photos/{photo['id']}/image", headers=user["headers"])
        assert r.status_code == 200
        assert r.data == data
        # The fallback is a normal stream, with the same content-safety headers.
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert api.requests == 2
    assert client.get("/health").get_json()["checks"]["cdn"] == {"status": "unhealthy", "circuit": "open"}

    # Open circuit: streamed at once, the token API is not called any more.
    r = client.get(f"/photos/{photo['id']}/image", headers=user["headers"])
    assert r.status_code == 200 and r.data == data
    assert api.requests == 2
    assert fallbacks() == fallbacks_before + 3
