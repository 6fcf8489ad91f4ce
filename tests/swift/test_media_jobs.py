"""The media pipeline end to end: `photo-api serve` (PostgreSQL, Swift) enqueues on a real Redis, real
`photo-api worker` processes make the renditions and store them in the real Swift.

- a JPEG with EXIF (orientation, date, camera, GPS), a HEIC and a decompression bomb, uploaded and
  processed: renditions upright and served like the original (ETag, Range, 304), metadata to the owner,
  nothing of it in public answers, the bomb failed quickly with its reason;
- Redis refused at upload: the upload succeeds, the reaper enqueues the job once Redis is back;
- a worker SIGKILLed in the middle of a job: after a restart the job is done, exactly once in effect;
- SIGTERM: the worker finishes the job in hand, then exits 0.

The worker reaches Swift through a fault proxy of its own, which is how a job is held "in the middle".
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from sqlalchemy import create_engine, text

from photo_api.db import driver_url
from tests.harness.databases import pg_database
from tests.harness.env import production_env
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.redis_db import JOBS_DB, fresh_redis, redis_address, redis_url
from tests.harness.server import JobWorker, ServeProcess, clean_environment, console_script, free_port
from tests.harness.users import Users
from tests.images import photo_heic, photo_jpeg, png_bomb
from tests.metrics.conftest import scrape
from tests.swift.api_server import HTTP_TIMEOUT_S
from tests.swift.conftest import Swift

pytestmark = pytest.mark.slow

# Short job settings the config rules accept: a lost job is looked for again after 11 s.
JOB_SETTINGS = {
    "JOB_TIMEOUT": "10",
    "PROCESSING_STALE_SECONDS": "11",
    "JOB_MAX_ATTEMPTS": "3",
    "JOB_RETRY_BASE_DELAY": "1",
    "DB_STATEMENT_TIMEOUT_MS": "10000",
    "GRACEFUL_TIMEOUT": "10",
    "CLIENT_BODY_TIMEOUT": "10",  # the config rules: a request body is never waited for past the graceful stop
}
STALE_S = 11
PROCESSED_WITHIN_S = 30  # a loaded 2-CPU machine; a 12-megapixel JPEG takes ~0.3 s to process
BOMB_FAILS_WITHIN_S = 10
# Latency per forwarded read on the worker's Swift proxy: a job then takes seconds, long enough to signal.
SLOW_STORAGE_MS = 400


@dataclass
class Stack:
    """The API, its database and Redis, and how to start workers and the reaper beside it."""

    server: ServeProcess
    database_url: str
    redis_proxy: FaultProxy  # between the API and Redis
    swift_proxy: FaultProxy  # between the workers and Swift
    swift: Swift
    container: str
    work: Path
    api_env: dict[str, str]
    worker_env: dict[str, str]

    def worker(self, name: str, **extra: str) -> JobWorker:
        """A `photo-api worker` (not started) with its logs under work/<name>."""
        return JobWorker({**self.worker_env, **extra}, cwd=self.work, log_dir=self.work / name)

    def reap(self) -> dict[str, Any]:
        """Run `photo-api reap-uploads` once (Redis reached directly) and return its JSON summary."""
        result = subprocess.run(
            [console_script("photo-api"), "reap-uploads"],
            env=clean_environment(self.worker_env),
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        summary: dict[str, Any] = json.loads(result.stdout)
        return summary

    def row(self, photo_id: int) -> dict[str, Any]:
        """The photo's processing columns, read from the database."""
        engine = create_engine(driver_url(self.database_url))
        try:
            with engine.connect() as conn:
                found = conn.execute(
                    text(
                        "SELECT processing_status, processing_attempts, processing_enqueued_at, thumbnail_etag, "
                        "preview_etag FROM photos WHERE id = :id"
                    ),
                    {"id": photo_id},
                ).one()
        finally:
            engine.dispose()
        return dict(found._mapping)

    def objects(self, prefix: str) -> list[str]:
        """Object names in the container that start with `prefix`."""
        return [name for name in self.swift.list_container(self.container) if name.startswith(prefix)]


@pytest.fixture(scope="module")
def stack(swift: Swift, container: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("media-jobs")
    redis_host, redis_port = redis_address()
    fresh_redis(JOBS_DB)
    with (
        pg_database("photo_api_media") as url,
        FaultProxy((redis_host, redis_port)) as redis_proxy,
        FaultProxy(swift.address) as swift_proxy,
    ):

        def storage(proxy: FaultProxy | None) -> dict[str, str]:
            return swift.settings(container, proxy.url if proxy else None)

        proxy_host, proxy_port = redis_proxy.url.split("://", 1)[1].split(":")
        api_env = production_env(
            url,
            None,
            swift=storage(None),
            cheap_hashing=True,
            log_level="WARNING",
            metrics_port=free_port(),
            metrics_dir=work / "prometheus-api",
            overrides={**JOB_SETTINGS, "REDIS_URL": redis_url(JOBS_DB, proxy_host, int(proxy_port))},
        )
        worker_env = production_env(
            url,
            None,
            swift=storage(swift_proxy),
            log_level="INFO",
            overrides={
                **JOB_SETTINGS,
                "REDIS_URL": redis_url(JOBS_DB),
                "METRICS_ENABLED": "false",
                # The job's GET of the original waits this long on a silent Swift: longer than any test here.
                "STORAGE_DOWNLOAD_TIMEOUT": "60",
            },
        )
        with ServeProcess(api_env, cwd=work, log_dir=work / "serve", workers=2) as server:
            yield Stack(server, url, redis_proxy, swift_proxy, swift, container, work, api_env, worker_env)


@pytest.fixture(autouse=True)
def everything_reachable(stack: Stack) -> Iterator[None]:
    stack.redis_proxy.pass_through()
    stack.swift_proxy.pass_through()
    yield
    stack.redis_proxy.pass_through()
    stack.swift_proxy.pass_through()


@pytest.fixture
def owner(stack: Stack) -> dict[str, str]:
    headers: dict[str, str] = Users.at(stack.server.url(), timeout=HTTP_TIMEOUT_S).create()["headers"]
    return headers


def upload(stack: Stack, headers: dict[str, str], data: bytes, name: str = "photo.jpg") -> dict[str, Any]:
    r = requests.post(
        stack.server.url("/photos"), headers=headers, files={"file": (name, data)}, timeout=HTTP_TIMEOUT_S
    )
    assert r.status_code == 201, r.text
    photo: dict[str, Any] = r.json()
    return photo


def get(stack: Stack, path: str, headers: dict[str, str] | None = None, **extra: str) -> requests.Response:
    return requests.get(stack.server.url(path), headers={**(headers or {}), **extra}, timeout=HTTP_TIMEOUT_S)


def wait_processed(stack: Stack, headers: dict[str, str], photo_id: int, timeout: float) -> dict[str, Any]:
    """Poll GET /photos/{id} until its processing is no longer pending; the photo."""
    deadline = time.monotonic() + timeout
    while True:
        photo: dict[str, Any] = get(stack, f"/photos/{photo_id}", headers).json()
        if photo["processing_status"] != "pending":
            return photo
        assert time.monotonic() < deadline, f"photo {photo_id} still pending after {timeout:g}s"
        time.sleep(0.1)


def wait_for(condition: Any, timeout: float, what: str, worker: JobWorker | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}" + (worker.log_tail() if worker else "")
        time.sleep(0.05)


def enqueued(stack: Stack, photo_id: int) -> None:
    """Make sure the photo's job is on the queue: an API worker that met Redis down a moment ago does not try
    Redis again for a few seconds (ENQUEUE_PAUSE_S) and leaves the job to the reaper, which we run now."""
    if stack.row(photo_id)["processing_enqueued_at"] is None:
        assert stack.reap()["processing_enqueued"] >= 1


def test_uploads_get_renditions_metadata_and_placeholders_from_a_worker(stack: Stack, owner: dict[str, str]) -> None:
    metrics_port = free_port()
    worker = stack.worker(
        "worker-main",
        METRICS_ENABLED="true",
        WORKER_METRICS_PORT=str(metrics_port),
        PROMETHEUS_MULTIPROC_DIR=str(stack.work / "prometheus-worker"),
    )
    with worker:
        jpeg = upload(
            stack,
            owner,
            photo_jpeg(
                4000,
                3000,
                orientation=6,
                taken="2026:05:01 14:03:22",
                offset="+09:00",
                gps=(37.5665, 126.978),
                make="Apple",
                model="iPhone 15",
            ),
        )
        assert jpeg["processing_status"] == "pending" and jpeg["thumbnail_url"] is None
        heic = upload(stack, owner, photo_heic(1200, 900, taken="2026:04:01 10:00:00"), name="IMG_0001.HEIC")
        assert heic["content_type"] == "image/heic"
        started = time.monotonic()
        bomb = upload(stack, owner, png_bomb(), name="bomb.png")

        failed = wait_processed(stack, owner, bomb["id"], BOMB_FAILS_WITHIN_S)
        assert time.monotonic() - started < BOMB_FAILS_WITHIN_S
        assert failed["processing_status"] == "failed" and "limit" in failed["processing_error"]
        assert get(stack, f"/photos/{bomb['id']}/thumbnail", owner).status_code == 404

        photo = wait_processed(stack, owner, jpeg["id"], PROCESSED_WITHIN_S)
        assert photo["processing_status"] == "ready" and photo["processing_error"] is None
        assert (photo["width"], photo["height"]) == (3000, 4000)  # upright
        assert photo["taken_at"] == "2026-05-01T05:03:22Z" and photo["taken_at_offset"] == "+09:00"
        assert (photo["camera_make"], photo["camera_model"], photo["orientation"]) == ("Apple", "iPhone 15", 6)
        assert photo["location"]["latitude"] == pytest.approx(37.5665, abs=1e-4)
        assert 20 <= len(photo["thumbhash"]) <= 36
        assert photo["thumbnail_url"] == f"/photos/{jpeg['id']}/thumbnail"
        assert photo["updated_at"] == jpeg["updated_at"]  # processing is no edit of the photo

        thumb = get(stack, photo["thumbnail_url"], owner)
        assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/webp"
        assert thumb.headers["X-Content-Type-Options"] == "nosniff"
        picture = Image.open(io.BytesIO(thumb.content))
        assert picture.size == (192, 256) and len(picture.getexif()) == 0
        etag = thumb.headers["ETag"]
        assert get(stack, photo["thumbnail_url"], owner, **{"If-None-Match": etag}).status_code == 304
        part = get(stack, photo["thumbnail_url"], owner, Range="bytes=0-99")
        assert part.status_code == 206 and part.content == thumb.content[:100]
        preview = get(stack, photo["preview_url"], owner)
        assert Image.open(io.BytesIO(preview.content)).size == (1080, 1440)
        prefix = f"r/{photo['owner_id']}/{photo['id']}/"
        # The renditions, and the original without its metadata (what a share serves by default).
        assert sorted(stack.objects(prefix)) == [prefix + "preview.webp", prefix + "public.jpg", prefix + "thumb.webp"]

        processed_heic = wait_processed(stack, owner, heic["id"], PROCESSED_WITHIN_S)
        assert processed_heic["processing_status"] == "ready" and (
            processed_heic["width"],
            processed_heic["height"],
        ) == (
            1200,
            900,
        )
        assert get(stack, f"/photos/{heic['id']}/preview", owner).status_code == 200

        # Sorted by the time taken: the JPEG (May) before the HEIC (April), the bomb (no date) last.
        listed = get(stack, "/photos?sort=taken_at", owner).json()
        assert [p["id"] for p in listed] == [jpeg["id"], heic["id"], bomb["id"]]

        # What the public sees: placeholders and renditions, never the camera, the place or the EXIF date.
        album = requests.post(stack.server.url("/albums"), headers=owner, json={"name": "trip"}, timeout=30).json()
        requests.post(
            stack.server.url(f"/albums/{album['id']}/photos"),
            headers=owner,
            json={"photo_ids": [jpeg["id"]]},
            timeout=30,
        )
        token = requests.post(stack.server.url(f"/albums/{album['id']}/share"), headers=owner, timeout=30).json()[
            "token"
        ]
        shared = get(stack, f"/share/{token}")
        assert shared.status_code == 200
        (public,) = shared.json()["photos"]
        assert public["thumbnail_url"] == f"/share/{token}/photos/{jpeg['id']}/thumbnail"
        assert public["thumbhash"] == photo["thumbhash"]
        for private in ("location", "camera_make", "camera_model", "taken_at", "37.56", "iPhone", "Apple"):
            assert private not in shared.text
        public_thumb = get(stack, public["thumbnail_url"])
        assert public_thumb.status_code == 200 and public_thumb.content == thumb.content

        scraped = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.value("photo_api_jobs_total", job="renditions", result="ready") == 2
        assert scraped.value("photo_api_jobs_total", job="renditions", result="failed") == 1
        assert scraped.value("photo_api_job_duration_seconds_count", job="renditions") == 3
        assert scraped.value("photo_api_job_queue_depth") == 0


def decoded(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as picture:
        picture.load()
        return picture.mode, picture.size, picture.tobytes()


def test_shares_serve_originals_without_metadata_from_swift_and_duplicates_store_nothing(
    stack: Stack, owner: dict[str, str]
) -> None:
    original = photo_jpeg(1200, 900, orientation=6, gps=(37.5665, 126.978), make="Apple", model="iPhone 15")
    me = requests.get(stack.server.url("/auth/me"), headers=owner, timeout=HTTP_TIMEOUT_S).json()
    originals = f"u/{me['id']}/"
    # The container is the test session's: the other modules' databases have users with the same ids.
    earlier = set(stack.objects(originals))
    with stack.worker("worker-privacy"):
        jpeg = upload(stack, owner, original)
        photo = wait_processed(stack, owner, jpeg["id"], PROCESSED_WITHIN_S)
        assert set(stack.objects(originals)) - earlier == {photo["filename"]}

        # The same bytes again: the existing photo, 200, and the streamed copy removed from Swift.
        again = requests.post(
            stack.server.url("/photos"), headers=owner, files={"file": ("again.jpg", original)}, timeout=HTTP_TIMEOUT_S
        )
        assert again.status_code == 200, again.text
        assert again.json()["duplicate"] is True and again.json()["id"] == photo["id"]
        assert set(stack.objects(originals)) - earlier == {photo["filename"]}

        album = requests.post(stack.server.url("/albums"), headers=owner, json={"name": "public"}, timeout=30).json()
        requests.post(
            stack.server.url(f"/albums/{album['id']}/photos"),
            headers=owner,
            json={"photo_ids": [photo["id"]]},
            timeout=30,
        )
        token = requests.post(stack.server.url(f"/albums/{album['id']}/share"), headers=owner, timeout=30).json()[
            "token"
        ]
        url = f"/share/{token}/photos/{photo['id']}/image"
        served = get(stack, url)
        assert served.status_code == 200 and served.headers["Content-Type"] == "image/jpeg"
        assert b"Apple" not in served.content and b"iPhone" not in served.content
        with Image.open(io.BytesIO(served.content)) as picture:
            assert dict(picture.getexif()) == {0x0112: 6}  # the orientation only: shown upright
        assert decoded(served.content) == decoded(original)
        # Streamed from Swift like the original: Content-Length, ETag and 304, one Range.
        assert served.headers["Content-Length"] == str(len(served.content))
        assert get(stack, url, **{"If-None-Match": served.headers["ETag"]}).status_code == 304
        part = get(stack, url, Range="bytes=100-199")
        assert part.status_code == 206 and part.content == served.content[100:200]
        # The owner's original keeps its EXIF; a share with metadata serves it as stored.
        assert get(stack, f"/photos/{photo['id']}/image", owner).content == original
        with_metadata = requests.post(
            stack.server.url(f"/albums/{album['id']}/share"), headers=owner, json={"include_metadata": True}, timeout=30
        ).json()
        assert get(stack, f"/share/{with_metadata['token']}/photos/{photo['id']}/image").content == original


def test_an_upload_succeeds_while_redis_is_down_and_the_reaper_enqueues_it_later(
    stack: Stack, owner: dict[str, str]
) -> None:
    with stack.worker("worker-redis-down"):
        stack.redis_proxy.set(Fault.refuse())
        photo = upload(stack, owner, photo_jpeg(800, 600))
        assert photo["processing_status"] == "pending"
        health = get(stack, "/health")
        assert health.status_code == 200  # the queue never takes an instance out of rotation
        assert stack.row(photo["id"])["processing_enqueued_at"] is None

        stack.redis_proxy.pass_through()
        summary = stack.reap()
        assert summary["processing_enqueued"] >= 1 and summary["processing_not_enqueued"] == 0
        assert wait_processed(stack, owner, photo["id"], PROCESSED_WITHIN_S)["processing_status"] == "ready"
        assert stack.row(photo["id"])["processing_attempts"] == 1


def test_a_worker_killed_mid_job_finishes_it_after_a_restart_exactly_once(stack: Stack, owner: dict[str, str]) -> None:
    first = stack.worker("worker-killed").start()
    try:
        stack.swift_proxy.set(Fault.partition())  # the job's GET of the original hangs: the job is mid-way
        photo = upload(stack, owner, photo_jpeg(1600, 1200))
        enqueued(stack, photo["id"])
        enqueued_at = time.monotonic()
        wait_for(lambda: stack.row(photo["id"])["processing_attempts"] == 1, 20, "the job to start", first)
        first.kill_group()
    finally:
        first.close()
    assert stack.row(photo["id"])["processing_status"] == "pending"
    stack.swift_proxy.pass_through()

    with stack.worker("worker-restarted"):
        # The killed job's queue entry is gone with the worker; the reaper finds the photo once the job
        # has been waiting longer than PROCESSING_STALE_SECONDS, and enqueues it again.
        time.sleep(max(0.0, STALE_S + 1 - (time.monotonic() - enqueued_at)))
        assert stack.reap()["processing_enqueued"] >= 1
        done = wait_processed(stack, owner, photo["id"], PROCESSED_WITHIN_S)
    assert done["processing_status"] == "ready"
    row = stack.row(photo["id"])
    assert row["processing_attempts"] == 2  # the killed run and the one that finished
    prefix = f"r/{photo['owner_id']}/{photo['id']}/"
    assert sorted(stack.objects(prefix)) == [prefix + "preview.webp", prefix + "public.jpg", prefix + "thumb.webp"]
    thumb = get(stack, done["thumbnail_url"], owner)
    assert thumb.headers["ETag"] == f'"{row["thumbnail_etag"]}"'
    # The reaper does not enqueue a processed photo again, however old its enqueue time.
    assert stack.reap()["processing_enqueued"] == 0


def test_sigterm_lets_the_job_in_hand_finish_then_the_worker_exits_0(stack: Stack, owner: dict[str, str]) -> None:
    worker = stack.worker("worker-sigterm").start()
    try:
        stack.swift_proxy.set(Fault.latency(SLOW_STORAGE_MS))
        # 800 x 600: through the slow proxy the job (GET of the original, PUT of its copy without metadata
        # and of the renditions) takes seconds, well inside JOB_TIMEOUT; 1600 x 1200 passed 10 s.
        photo = upload(stack, owner, photo_jpeg(800, 600))
        enqueued(stack, photo["id"])
        wait_for(lambda: stack.row(photo["id"])["processing_attempts"] == 1, 20, "the job to start", worker)
        assert stack.row(photo["id"])["processing_status"] == "pending"  # in hand, not done
        worker.signal(signal.SIGTERM)
        code = worker.wait(60)
    finally:
        worker.close()
    assert code == 0, worker.log_tail()
    row = stack.row(photo["id"])
    assert (row["processing_status"], row["processing_attempts"]) == ("ready", 1)
    assert "warm shut down" in worker.stdout()
