"""Stored bytes are the client's: only real images are accepted, and every image response tells browsers to
treat it as that image and nothing else.

A file whose first bytes carry an image signature but whose header is not that format's (a GIF signature in
front of an HTML page, a bare PNG signature) is refused like any non-image: 415 on upload, 422 at confirm.
Image responses carry `X-Content-Type-Options: nosniff`, a sandboxing `Content-Security-Policy` and an
`inline` Content-Disposition with a safe file name (RFC 8187 `filename*` for non-ASCII names; a neutral
name on public shares).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from photo_api.api.delivery import content_disposition
from tests.harness.users import Users
from tests.images import png, upload
from tests.test_media_pipeline import settle
from tests.test_presigned import confirm, presign, put

DISGUISED = {
    "gif-signature-before-html": b"GIF89a<html><script>alert(document.cookie)</script></html>" + b" " * 64,
    "bare-png-signature": b"\x89PNG\r\n\x1a\n",
    "png-signature-before-html": b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script></html>" + b" " * 64,
    "jpeg-metadata-then-html": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00<html><script>",
}
SAFETY = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}


def assert_safe_image_headers(headers: Any) -> None:
    for name, value in SAFETY.items():
        assert headers[name] == value, name


@pytest.mark.parametrize("name", sorted(DISGUISED))
def test_a_signature_in_front_of_something_else_is_not_an_image(client: FlaskClient, users: Users, name: str) -> None:
    user = users.create()
    r = upload(client, user["headers"], DISGUISED[name], filename="cat.gif", content_type="image/gif")
    assert r.status_code == 415, r.get_json()
    assert client.get("/photos", headers=user["headers"]).get_json() == []


@pytest.mark.parametrize("name", sorted(DISGUISED))
def test_confirm_refuses_a_disguised_file_and_removes_it(client: FlaskClient, users: Users, name: str) -> None:
    user = users.create()
    data = DISGUISED[name]
    declared = "image/gif" if data.startswith(b"GIF") else "image/png" if data[1:4] == b"PNG" else "image/jpeg"
    body = presign(client, user, content_type=declared, file_size=len(data)).get_json()
    assert put(client, body["upload_url"], data).status_code == 201
    r = confirm(client, user, body["photo_id"])
    assert r.status_code == 422, r.get_json()
    assert [e["field"] for e in r.get_json()["errors"]] == ["content_type"]
    assert client.get(f"/photos/{body['photo_id']}", headers=user["headers"]).status_code == 404


@pytest.mark.parametrize(
    ("original", "disposition"),
    [
        ("cat.png", 'inline; filename="cat.png"'),
        ("café.png", "inline; filename=\"cafe.png\"; filename*=UTF-8''" + quote("café.png")),
        ("고양이.png", "inline; filename=\"photo.png\"; filename*=UTF-8''" + quote("고양이.png")),
    ],
)
def test_owner_images_are_served_inline_with_their_safe_name(
    client: FlaskClient, users: Users, original: str, disposition: str
) -> None:
    user = users.create()
    photo = upload(client, user["headers"], png(), filename=original).get_json()
    for headers in ({}, {"Range": "bytes=0-9"}):
        r = client.get(f"/photos/{photo['id']}/image", headers={**user["headers"], **headers})
        assert r.status_code in (200, 206)
        assert_safe_image_headers(r.headers)
        assert r.headers["Content-Disposition"] == disposition


def test_shared_images_never_name_the_owner_s_file(client: FlaskClient, users: Users) -> None:
    user = users.create()
    photo = upload(client, user["headers"], png(), filename="alice-passport-scan.png").get_json()
    album = client.post("/albums", json={"name": "Public"}, headers=user["headers"]).get_json()
    client.post(f"/albums/{album['id']}/photos", json={"photo_ids": [photo["id"]]}, headers=user["headers"])
    token = client.post(f"/albums/{album['id']}/share", json={}, headers=user["headers"]).get_json()["token"]
    settle(client.application)  # the copy without metadata is made by the background job
    r = client.get(f"/share/{token}/photos/{photo['id']}/image")
    assert r.status_code == 200
    assert_safe_image_headers(r.headers)
    assert r.headers["Content-Disposition"] == f'inline; filename="photo-{photo["id"]}.png"'


def test_quotes_and_controls_never_reach_the_quoted_name() -> None:
    # Multipart clients escape such names in different ways; the header is checked on the name as stored.
    assert (
        content_disposition('say "hi".png') == "inline; filename=\"say _hi_.png\"; filename*=UTF-8''say%20%22hi%22.png"
    )
    assert content_disposition("a\\b\x07.png") == "inline; filename=\"a_b_.png\"; filename*=UTF-8''a%5Cb%07.png"
