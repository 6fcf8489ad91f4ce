"""The upload reaper: expired pending photos go (row and object), recorded deletions are retried, and
any number of reapers may run at once; `photo-api reap-uploads` prints a one-line JSON summary."""

from __future__ import annotations

import io
import json
import subprocess
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from photo_api.config import Settings
from photo_api.models import PendingObjectDeletion, Photo, utcnow
from photo_api.services import uploads
from photo_api.services.uploads import ReapResult
from tests.harness.env import TEST_SECRET
from tests.harness.server import clean_environment, console_script
from tests.harness.users import Users
from tests.test_presigned import (
    PNG,
    confirm,
    expire_upload_window,
    photo_row,
    presign,
    rt,
    stored_bytes,
    upload_photo,
)

CLI_TIMEOUT_S = 60


def pending_key(body: dict[str, Any]) -> str:
    return body["upload_url"].split("/uploads/", 1)[1].split("?", 1)[0]


def reap(app: Flask, batch: int = uploads.DEFAULT_REAP_BATCH) -> ReapResult:
    runtime = rt(app)
    with runtime.db.session() as session:
        return uploads.reap(session, runtime.storage, now=utcnow(), batch=batch)


def photo_ids(app: Flask) -> list[int]:
    with rt(app).db.session() as session:
        return list(session.scalars(select(Photo.id).order_by(Photo.id)))


def record_deletion(app: Flask, key: str) -> None:
    with rt(app).db.session() as session:
        session.add(PendingObjectDeletion(object_key=key, next_attempt_at=utcnow() - timedelta(minutes=1)))
        session.commit()


def make_expired_uploads(app: Flask, client: FlaskClient, user: dict[str, Any], count: int) -> list[str]:
    """`count` pending photos with their objects uploaded, whose window has passed; return their keys."""
    keys = []
    for _ in range(count):
        body = upload_photo(client, user)
        expire_upload_window(app, body["photo_id"])
        keys.append(pending_key(body))
    return keys


def test_reaper_removes_expired_pending_photos_and_their_objects_only(
    app: Flask, client: FlaskClient, users: Users
) -> None:
    user = users.create()
    expired_uploaded = upload_photo(client, user)
    expired_never_uploaded = presign(client, user).get_json()
    fresh = upload_photo(client, user)
    ready = upload_photo(client, user)
    assert confirm(client, user, ready["photo_id"]).status_code == 200
    # Confirm cleared the ready photo's window; put one back in the past so that only its status protects it.
    for body in (expired_uploaded, expired_never_uploaded, ready):
        expire_upload_window(app, body["photo_id"])

    result = reap(app)

    assert result == ReapResult(expired_uploads_removed=2, deletions_retried=0, deletions_failed=0)
    assert photo_ids(app) == [fresh["photo_id"], ready["photo_id"]]
    assert stored_bytes(app, pending_key(expired_uploaded)) is None
    assert stored_bytes(app, pending_key(fresh)) == PNG
    ready_row = photo_row(app, ready["photo_id"])
    assert ready_row is not None
    assert stored_bytes(app, ready_row.filename) == PNG  # confirm copied it from the staging key
    assert confirm(client, user, expired_uploaded["photo_id"]).status_code == 404
    assert confirm(client, user, fresh["photo_id"]).status_code == 200
    assert reap(app) == ReapResult(0, 0, 0)


def test_staging_key_written_after_confirm_is_removed_once_its_url_has_expired(
    app: Flask, client: FlaskClient, users: Users
) -> None:
    user = users.create()
    body = upload_photo(client, user)
    staged = pending_key(body)
    pending = photo_row(app, body["photo_id"])
    assert pending is not None and pending.upload_expires_at is not None
    window_end = pending.upload_expires_at
    assert confirm(client, user, body["photo_id"]).status_code == 200
    assert stored_bytes(app, staged) is None  # deleted at confirm
    # A Swift TempURL cannot be revoked: until it expires a client may still PUT to the staging key.
    rt(app).storage.put(staged, io.BytesIO(b"late"), content_type="image/png")
    runtime = rt(app)
    with runtime.db.session() as session:
        early = uploads.reap(session, runtime.storage, now=window_end - timedelta(seconds=1))
        late = uploads.reap(session, runtime.storage, now=window_end + timedelta(seconds=1))
    assert (early.deletions_retried, late.deletions_retried) == (0, 1)
    assert stored_bytes(app, staged) is None
    row = photo_row(app, body["photo_id"])
    assert row is not None
    assert stored_bytes(app, row.filename) == PNG


def test_reaper_works_in_batches(app: Flask, client: FlaskClient, users: Users) -> None:
    keys = make_expired_uploads(app, client, users.create(), 5)
    assert reap(app, batch=2).expired_uploads_removed == 5
    assert photo_ids(app) == []
    assert all(stored_bytes(app, key) is None for key in keys)


def test_reaper_retries_recorded_deletions(app: Flask) -> None:
    storage = rt(app).storage
    storage.put("u/9/orphan.png", io.BytesIO(PNG), content_type="image/png")
    record_deletion(app, "u/9/orphan.png")
    record_deletion(app, "u/9/already-gone.png")  # deleting a missing object is quiet: done too
    record_deletion(app, "u/9/.not-a-valid-key")  # LocalStorage refuses it: still failing

    result = reap(app)

    assert result == ReapResult(expired_uploads_removed=0, deletions_retried=2, deletions_failed=1)
    assert stored_bytes(app, "u/9/orphan.png") is None
    with rt(app).db.session() as session:
        left = session.scalars(select(PendingObjectDeletion)).all()
        assert [(row.object_key, row.attempts) for row in left] == [("u/9/.not-a-valid-key", 1)]
        assert left[0].next_attempt_at > utcnow()  # backed off, not retried again at once
    assert reap(app) == ReapResult(0, 0, 0)


def test_reaper_retries_recorded_deletions_batch_after_batch(app: Flask) -> None:
    # Every confirmed upload schedules a delete: one run must get through more than one batch of them.
    for i in range(5):
        record_deletion(app, f"staging/u/9/{i}.png")
    assert reap(app, batch=2) == ReapResult(expired_uploads_removed=0, deletions_retried=5, deletions_failed=0)
    with rt(app).db.session() as session:
        assert session.scalars(select(PendingObjectDeletion)).all() == []


def test_concurrent_reapers_remove_each_expired_upload_exactly_once(
    app: Flask, client: FlaskClient, users: Users
) -> None:
    keys = make_expired_uploads(app, client, users.create(), 12)
    reapers = 3
    barrier = threading.Barrier(reapers)
    results: list[ReapResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(reap(app, batch=2))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(reapers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sum(r.expired_uploads_removed for r in results) == len(keys)
    assert photo_ids(app) == []
    assert all(stored_bytes(app, key) is None for key in keys)
    with rt(app).db.session() as session:
        assert session.scalars(select(PendingObjectDeletion)).all() == []


def cli_env(settings: Settings) -> dict[str, str]:
    assert settings.database_url is not None
    return clean_environment(
        {
            "DATABASE_URL": settings.database_url,
            "JWT_SECRET_KEY": TEST_SECRET,
            "LOCAL_STORAGE_DIR": str(settings.local_storage_dir),
            "LOG_LEVEL": "WARNING",
        }
    )


def test_cli_prints_a_json_summary(
    app: Flask, client: FlaskClient, users: Users, settings: Settings, tmp_path: Path
) -> None:
    (key,) = make_expired_uploads(app, client, users.create(), 1)
    rt(app).storage.put("u/9/orphan.png", io.BytesIO(PNG), content_type="image/png")
    record_deletion(app, "u/9/orphan.png")

    result = subprocess.run(
        [console_script("photo-api"), "reap-uploads"],
        env=cli_env(settings),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert json.loads(result.stdout) == {
        "expired_uploads_removed": 1,
        "deletions_retried": 1,
        "deletions_failed": 0,
        # the media pipeline: no ready photo waits for its renditions here (tests/test_media_pipeline.py)
        "processing_enqueued": 0,
        "processing_not_enqueued": 0,
    }
    assert photo_ids(app) == []
    assert stored_bytes(app, key) is None
    assert stored_bytes(app, "u/9/orphan.png") is None


def test_cli_reapers_in_parallel_processes_share_the_work(
    app: Flask, client: FlaskClient, users: Users, settings: Settings, tmp_path: Path
) -> None:
    if settings.is_sqlite:
        pytest.skip("several instances share one PostgreSQL; SQLite is single-host development only")
    keys = make_expired_uploads(app, client, users.create(), 20)
    processes = [
        subprocess.Popen(
            [console_script("photo-api"), "reap-uploads", "--batch", "1"],
            env=cli_env(settings),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=CLI_TIMEOUT_S) for p in processes]

    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    summaries = [json.loads(out) for out, _ in outputs]
    assert sum(s["expired_uploads_removed"] for s in summaries) == len(keys)
    assert photo_ids(app) == []
    assert all(stored_bytes(app, key) is None for key in keys)


def test_cli_exits_non_zero_when_the_database_is_unreachable(tmp_path: Path) -> None:
    env = clean_environment(
        {
            # Port 1 on loopback: nothing listens, the connection is refused at once.
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/photo_api",
            "JWT_SECRET_KEY": TEST_SECRET,
            "LOCAL_STORAGE_DIR": str(tmp_path / "storage"),
        }
    )
    result = subprocess.run(
        [console_script("photo-api"), "reap-uploads"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "reap-uploads failed" in result.stderr
