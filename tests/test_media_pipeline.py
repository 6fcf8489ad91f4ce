"""The media pipeline through the API, in-process: the embedded default (no REDIS_URL), where jobs run on a
thread of the app process. Rendition routes, list sorting and filters by the time taken, what owners and
the public see, deletes, and the reaper catching photos whose job was lost.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import update

from photo_api.api.context import collaborators_of
from photo_api.config import Settings
from photo_api.jobs.queue import LocalQueue
from photo_api.models import Photo
from tests.harness.env import TEST_SECRET
from tests.harness.server import clean_environment, console_script
from tests.harness.users import Users
from tests.http_checks import assert_problem
from tests.images import photo_jpeg, png_bomb, upload

JOBS_IDLE_WITHIN_S = 30


def settle(app: Flask) -> None:
    """Wait until the app's in-process jobs have all run."""
    jobs = collaborators_of(app).jobs
    assert isinstance(jobs, LocalQueue)
    assert jobs.wait_idle(JOBS_IDLE_WITHIN_S), "jobs still running"


def put(client: FlaskClient, app: Flask, headers: dict[str, str], data: bytes, **fields: str) -> dict[str, Any]:
    r = upload(client, headers, data, **fields)
    assert r.status_code == 201, r.get_json()
    settle(app)
    found: dict[str, Any] = client.get(f"/photos/{r.get_json()['id']}", headers=headers).get_json()
    return found


def set_pending(app: Flask, photo_id: int) -> None:
    """What the migration leaves for a photo stored before this release: processing pending, no renditions."""
    with collaborators_of(app).db.session() as session:
        session.execute(update(Photo).where(Photo.id == photo_id).values(processing_status="pending"))
        session.commit()


def test_renditions_are_served_like_the_original(client: FlaskClient, app: Flask, users: Users) -> None:
    owner = users.create()["headers"]
    photo = put(client, app, owner, photo_jpeg(2400, 1800, orientation=6))
    assert photo["processing_status"] == "ready"
    assert (photo["thumbnail_url"], photo["preview_url"]) == (
        f"/photos/{photo['id']}/thumbnail",
        f"/photos/{photo['id']}/preview",
    )
    for url, size in ((photo["thumbnail_url"], (192, 256)), (photo["preview_url"], (1080, 1440))):
        r = client.get(url, headers=owner)
        assert r.status_code == 200 and r.mimetype == "image/webp"
        assert Image.open(io.BytesIO(r.data)).size == size
        assert r.headers["Content-Length"] == str(len(r.data))
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
        assert r.headers["Cache-Control"] == "private"
        assert "photo-" in r.headers["Content-Disposition"]
        etag = r.headers["ETag"]
        assert client.get(url, headers={**owner, "If-None-Match": etag}).status_code == 304
        part = client.get(url, headers={**owner, "Range": "bytes=10-19"})
        assert part.status_code == 206 and part.data == r.data[10:20]
        assert part.headers["Content-Range"] == f"bytes 10-19/{len(r.data)}"


def test_renditions_are_404_until_processing_is_ready(client: FlaskClient, app: Flask, users: Users) -> None:
    owner = users.create()["headers"]
    bomb = put(client, app, owner, png_bomb())
    assert bomb["processing_status"] == "failed" and "limit" in bomb["processing_error"]
    assert bomb["thumbnail_url"] is None and bomb["thumbhash"] is None
    assert "not ready" in assert_problem(client.get(f"/photos/{bomb['id']}/thumbnail", headers=owner), 404)["detail"]

    photo = put(client, app, owner, photo_jpeg(640, 480))
    set_pending(app, photo["id"])
    again = client.get(f"/photos/{photo['id']}", headers=owner).get_json()
    assert again["processing_status"] == "pending" and again["preview_url"] is None
    assert_problem(client.get(f"/photos/{photo['id']}/preview", headers=owner), 404)
    # Someone else's photo answers like a missing one.
    stranger = users.create()["headers"]
    assert_problem(client.get(f"/photos/{photo['id']}/thumbnail", headers=stranger), 404)


def test_owners_see_metadata_and_location_and_the_public_sees_neither(
    client: FlaskClient, app: Flask, users: Users
) -> None:
    owner = users.create()["headers"]
    photo = put(
        client,
        app,
        owner,
        photo_jpeg(800, 600, taken="2026:05:01 14:03:22", offset="-07:00", gps=(-33.8568, 151.2153), make="Sony"),
    )
    assert photo["taken_at"] == "2026-05-01T21:03:22Z" and photo["taken_at_offset"] == "-07:00"
    assert photo["location"] == {
        "latitude": pytest.approx(-33.8568, abs=1e-4),
        "longitude": pytest.approx(151.2153, abs=1e-4),
        "altitude": None,
    }
    assert photo["camera_make"] == "Sony"
    album = client.post("/albums", headers=owner, json={"name": "a"}).get_json()
    client.post(f"/albums/{album['id']}/photos", headers=owner, json={"photo_ids": [photo["id"]]})
    assert client.get(f"/albums/{album['id']}", headers=owner).get_json()["photos"][0]["location"] is not None
    token = client.post(f"/albums/{album['id']}/share", headers=owner).get_json()["token"]
    shared = client.get(f"/share/{token}")
    text = shared.get_data(as_text=True)
    for private in ("location", "latitude", "-33.85", "151.21", "Sony", "camera", "taken_at", "orientation"):
        assert private not in text, private
    (public,) = shared.get_json()["photos"]
    assert (public["width"], public["height"], public["thumbhash"]) == (800, 600, photo["thumbhash"])
    r = client.get(public["preview_url"])
    assert r.status_code == 200 and r.headers["Cache-Control"] == "private, no-cache"
    assert client.get(public["preview_url"]).data == client.get(photo["preview_url"], headers=owner).data
    other = put(client, app, owner, photo_jpeg(64, 64))  # not in the album
    assert_problem(client.get(f"/share/{token}/photos/{other['id']}/thumbnail"), 404)


def test_list_sorts_and_filters_by_the_time_taken(client: FlaskClient, app: Flask, users: Users) -> None:
    owner = users.create()["headers"]
    ids = {}
    for name, taken in (("may", "2026:05:01 10:00:00"), ("jan", "2026:01:15 10:00:00"), ("mar", "2026:03:01 10:00:00")):
        ids[name] = put(client, app, owner, photo_jpeg(64, 48, taken=taken, offset="+00:00"))["id"]
    ids["none"] = put(client, app, owner, photo_jpeg(64, 48))["id"]

    def listed(query: str) -> list[int]:
        r = client.get(f"/photos?{query}", headers=owner)
        assert r.status_code == 200, r.get_json()
        return [p["id"] for p in r.get_json()]

    assert listed("") == [ids["none"], ids["mar"], ids["jan"], ids["may"]]  # upload time, newest first
    assert listed("sort=taken_at") == [ids["may"], ids["mar"], ids["jan"], ids["none"]]
    assert listed("sort=taken_at&order=asc") == [ids["jan"], ids["mar"], ids["may"], ids["none"]]
    assert listed("sort=taken_at&skip=1&limit=2") == [ids["mar"], ids["jan"]]
    assert listed("sort=taken_at&taken_after=2026-02-01T00:00:00Z") == [ids["may"], ids["mar"]]
    assert listed("taken_after=2026-01-15T10:00:00%2B00:00&taken_before=2026-05-01T10:00:00Z") == [
        ids["mar"],
        ids["jan"],
    ]
    for bad in ("sort=size", "order=up", "taken_after=2026-02-01T00:00:00", "taken_before=yesterday"):
        field = bad.split("=")[0]
        assert field in {e["field"] for e in assert_problem(client.get(f"/photos?{bad}", headers=owner), 422)["errors"]}


def test_deleting_a_photo_removes_its_renditions(
    client: FlaskClient, app: Flask, users: Users, settings: Settings
) -> None:
    owner = users.create()["headers"]
    photo = put(client, app, owner, photo_jpeg(640, 480))
    assert settings.local_storage_dir is not None
    renditions = Path(settings.local_storage_dir) / "r" / str(photo["owner_id"]) / str(photo["id"])
    # Pillow writes an EXIF block into every JPEG: the public copy without it is stored beside the renditions.
    assert sorted(p.name for p in renditions.iterdir()) == ["preview.webp", "public.jpg", "thumb.webp"]
    assert client.delete(f"/photos/{photo['id']}", headers=owner).status_code == 204
    assert sorted(p.name for p in renditions.iterdir()) == []


def test_the_reaper_processes_photos_left_pending_without_redis(
    client: FlaskClient, app: Flask, users: Users, settings: Settings, tmp_path: Path
) -> None:
    owner = users.create()["headers"]
    photo = put(client, app, owner, photo_jpeg(640, 480))
    set_pending(app, photo["id"])  # as after the upgrade: never enqueued (processing_enqueued_at is NULL)
    with collaborators_of(app).db.session() as session:
        session.execute(update(Photo).where(Photo.id == photo["id"]).values(processing_enqueued_at=None))
        session.commit()
    env = {
        "DATABASE_URL": str(settings.database_url),
        "JWT_SECRET_KEY": TEST_SECRET,
        "LOCAL_STORAGE_DIR": str(settings.local_storage_dir),
    }
    result = subprocess.run(
        [console_script("photo-api"), "reap-uploads"],
        env=clean_environment(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["processing_enqueued"] == 1
    assert client.get(f"/photos/{photo['id']}", headers=owner).get_json()["processing_status"] == "ready"


def test_openapi_documents_the_rendition_routes_and_list_parameters(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    paths = spec["paths"]
    for path in (
        "/photos/{photo_id}/thumbnail",
        "/photos/{photo_id}/preview",
        "/share/{token}/photos/{photo_id}/thumbnail",
        "/share/{token}/photos/{photo_id}/preview",
    ):
        assert set(paths[path]) == {"get"}, path
    names = {p["name"] for p in paths["/photos"]["get"]["parameters"]}
    assert names >= {"skip", "limit", "sort", "order", "taken_after", "taken_before"}
