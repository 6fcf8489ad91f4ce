"""EXIF privacy on public shares: a link without `include_metadata` (the default) serves each original
without its EXIF/XMP/GPS, pixel for pixel the same, with the delivery behaviour of the original (ETag,
Range, 304); a link with it serves the original as stored. In-process, the embedded jobs (no REDIS_URL),
on PostgreSQL and SQLite.
"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from PIL import Image, PngImagePlugin
from sqlalchemy import update

from photo_api.api.context import collaborators_of
from photo_api.jobs.submit import requeue_waiting
from photo_api.models import Photo, utcnow
from tests.harness.users import Users
from tests.http_checks import assert_problem
from tests.images import GPS_IFD, exif_block, photo_heic, photo_jpeg, photo_pixels
from tests.test_media_pipeline import put, settle

CAMERA = {"gps": (37.5665, 126.978), "make": "Acme", "model": "Phone 9", "taken": "2026:05:01 14:03:22"}


def decoded(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, image.size, image.tobytes()


def share(client: FlaskClient, owner: dict[str, str], photo_ids: list[int], **body: Any) -> dict[str, Any]:
    album = client.post("/albums", headers=owner, json={"name": "Holiday"}).get_json()
    r = client.post(f"/albums/{album['id']}/photos", headers=owner, json={"photo_ids": photo_ids})
    assert r.status_code in (200, 201, 204), r.get_json()
    r = (
        client.post(f"/albums/{album['id']}/share", headers=owner, json=body)
        if body
        else client.post(f"/albums/{album['id']}/share", headers=owner)
    )
    assert r.status_code == 201, r.get_json()
    link: dict[str, Any] = r.get_json()
    return link


def test_a_default_share_serves_the_original_without_gps_or_exif_and_identical_pixels(
    client: FlaskClient, app: Flask, users: Users
) -> None:
    owner = users.create()["headers"]
    original = photo_jpeg(800, 600, **CAMERA)
    photo = put(client, app, owner, original)
    link = share(client, owner, [photo["id"]])
    assert link["include_metadata"] is False
    token = link["token"]

    album = client.get(f"/share/{token}")
    text = album.get_data(as_text=True)
    for private in ("Acme", "Phone 9", "camera", "location", "latitude", "37.56", "taken_at", "orientation"):
        assert private not in text, private
    (public,) = album.get_json()["photos"]

    r = client.get(public["url"])
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    served = r.data
    assert b"Exif\x00\x00" not in served and b"Acme" not in served
    with Image.open(io.BytesIO(served)) as image:
        assert len(image.getexif()) == 0 and not image.getexif().get_ifd(GPS_IFD)
    assert decoded(served) == decoded(original)  # lossless: the very same pixels
    assert public["file_size"] == len(served) < len(original)
    # Delivered like any stored object: ETag, 304, Range; the ETag is the public copy's, not the original's.
    assert r.headers["ETag"] != client.get(f"/photos/{photo['id']}/image", headers=owner).headers["ETag"]
    assert client.get(public["url"], headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    part = client.get(public["url"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.data == served[:100]
    assert part.headers["Content-Range"] == f"bytes 0-99/{len(served)}"
    assert r.headers["Cache-Control"] == "private, no-cache"

    # The owner's own original keeps everything.
    mine = client.get(f"/photos/{photo['id']}/image", headers=owner).data
    assert mine == original
    with Image.open(io.BytesIO(mine)) as image:
        assert image.getexif().get_ifd(GPS_IFD)


def test_a_share_with_metadata_serves_the_original_as_stored(client: FlaskClient, app: Flask, users: Users) -> None:
    owner = users.create()["headers"]
    original = photo_jpeg(320, 240, **CAMERA)
    photo = put(client, app, owner, original)
    link = share(client, owner, [photo["id"]], include_metadata=True)
    assert link["include_metadata"] is True
    listed = client.get(f"/albums/{link['album_id']}/share", headers=owner).get_json()
    assert [item["include_metadata"] for item in listed] == [True]
    (public,) = client.get(f"/share/{link['token']}").get_json()["photos"]
    assert public["file_size"] == len(original) and "camera_make" not in public  # JSON stays without camera
    assert client.get(public["url"]).data == original
    refused = client.post(f"/albums/{link['album_id']}/share", headers=owner, json={"include_metadata": "maybe"})
    assert_problem(refused, 422)


def test_a_photo_taken_sideways_keeps_only_its_orientation(client: FlaskClient, app: Flask, users: Users) -> None:
    owner = users.create()["headers"]
    original = photo_jpeg(640, 480, orientation=6, **CAMERA)
    photo = put(client, app, owner, original)
    token = share(client, owner, [photo["id"]])["token"]
    served = client.get(f"/share/{token}/photos/{photo['id']}/image").data
    with Image.open(io.BytesIO(served)) as image:
        assert dict(image.getexif()) == {0x0112: 6}  # shown upright, and nothing else
    assert b"Acme" not in served and decoded(served) == decoded(original)


def test_a_png_loses_its_exif_and_text_chunks(client: FlaskClient, app: Flask, users: Users) -> None:
    owner = users.create()["headers"]
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "taken at home, 12 Main Street")
    out = io.BytesIO()
    photo_pixels(120, 80).save(out, "PNG", pnginfo=info, exif=exif_block(**CAMERA).tobytes())
    original = out.getvalue()
    photo = put(client, app, owner, original, filename="home.png")
    token = share(client, owner, [photo["id"]])["token"]
    served = client.get(f"/share/{token}/photos/{photo['id']}/image").data
    assert b"eXIf" not in served and b"tEXt" not in served and b"Main Street" not in served
    assert decoded(served) == decoded(original)
    assert client.get(f"/photos/{photo['id']}/image", headers=owner).data == original


def test_heic_is_shared_as_its_preview(client: FlaskClient, app: Flask, users: Users) -> None:
    owner = users.create()["headers"]
    photo = put(client, app, owner, photo_heic(320, 240, **CAMERA))
    token = share(client, owner, [photo["id"]])["token"]
    (public,) = client.get(f"/share/{token}").get_json()["photos"]
    r = client.get(public["url"])
    assert r.status_code == 200 and r.mimetype == "image/webp"
    assert public["content_type"] == "image/webp" and public["file_size"] == len(r.data)
    assert r.data == client.get(public["preview_url"]).data


def test_nothing_is_served_publicly_until_the_copy_without_metadata_exists(
    client: FlaskClient, app: Flask, users: Users
) -> None:
    """As for a photo processed before public copies existed: 503 with Retry-After, never the original."""
    owner = users.create()["headers"]
    photo = put(client, app, owner, photo_jpeg(320, 240, **CAMERA))
    token = share(client, owner, [photo["id"]])["token"]
    with collaborators_of(app).db.session() as session:
        session.execute(update(Photo).where(Photo.id == photo["id"]).values(stripped_key=None, stripped_size=None))
        session.commit()
    r = client.get(f"/share/{token}/photos/{photo['id']}/image")
    assert_problem(r, 503)
    assert r.headers["Retry-After"] == "10"

    # The reaper hands such photos to the job again (once their enqueue is older than the stale time),
    # which now only makes the public copy.
    with collaborators_of(app).db.session() as session:
        session.execute(update(Photo).where(Photo.id == photo["id"]).values(processing_enqueued_at=None))
        session.commit()
        enqueued, refused = requeue_waiting(
            session, collaborators_of(app).jobs, now=utcnow(), stale_after=timedelta(minutes=30)
        )
    assert (enqueued, refused) == (1, 0)
    settle(app)
    r = client.get(f"/share/{token}/photos/{photo['id']}/image")
    assert r.status_code == 200 and b"Acme" not in r.data
    with collaborators_of(app).db.session() as session:  # nothing left for the reaper
        assert requeue_waiting(session, collaborators_of(app).jobs, now=utcnow(), stale_after=timedelta(0)) == (0, 0)
