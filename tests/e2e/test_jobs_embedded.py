"""The embedded default of the media pipeline: no REDIS_URL, so jobs run inside each gevent worker of
`photo-api serve`, outside the request, with the decoding on a native thread: the worker keeps answering
while a large photo is processed, and the README's one command gives thumbnails with nothing installed.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.e2e.conftest import StartServer
from tests.harness.server import ServeProcess
from tests.harness.users import Users
from tests.images import photo_jpeg, photo_pixels

pytestmark = pytest.mark.slow

HTTP_TIMEOUT_S = 30
PROCESSED_WITHIN_S = 60
PROBE_INTERVAL_S = 0.05
# A liveness answer from a worker whose event loop runs takes a few ms; a loop stuck in a decode would
# hold it for the whole job (about a second for this picture on this machine).
RESPONSIVE_S = 0.3
MIN_PROBES_WHILE_PENDING = 3


def big_png(width: int = 6000, height: int = 5000) -> bytes:
    """A 30-megapixel PNG: no reduced-scale decoding exists for PNG, so every pixel is decoded."""
    out = io.BytesIO()
    photo_pixels(width, height).save(out, "PNG", compress_level=1)
    return out.getvalue()


def upload(server: ServeProcess, headers: dict[str, str], data: bytes) -> dict[str, Any]:
    r = requests.post(server.url("/photos"), headers=headers, files={"file": ("p", data)}, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 201, r.text
    photo: dict[str, Any] = r.json()
    return photo


def status(server: ServeProcess, headers: dict[str, str], photo_id: int) -> dict[str, Any]:
    found: dict[str, Any] = requests.get(
        server.url(f"/photos/{photo_id}"), headers=headers, timeout=HTTP_TIMEOUT_S
    ).json()
    return found


def test_a_large_photo_is_processed_while_the_worker_keeps_answering(
    production_env: dict[str, str], serve: StartServer
) -> None:
    server = serve(production_env, workers=1)  # one worker: the job and the probes share its event loop
    headers = Users.at(server.url(), timeout=HTTP_TIMEOUT_S).create()["headers"]
    photo = upload(server, headers, big_png())

    probes: list[float] = []
    pending_probes = 0
    deadline = time.monotonic() + PROCESSED_WITHIN_S
    with requests.Session() as http:
        while True:
            started = time.perf_counter()
            assert http.get(server.url("/health/liveness"), timeout=HTTP_TIMEOUT_S).status_code == 200
            probes.append(time.perf_counter() - started)
            current = status(server, headers, photo["id"])
            if current["processing_status"] != "pending":
                break
            pending_probes += 1
            assert time.monotonic() < deadline, "still pending"
            time.sleep(PROBE_INTERVAL_S)
    print(f"\n{pending_probes} probes while pending; slowest {max(probes) * 1000:.0f} ms")
    assert current["processing_status"] == "ready", current
    assert (current["width"], current["height"]) == (6000, 5000)
    assert pending_probes >= MIN_PROBES_WHILE_PENDING  # the probes did overlap the job
    assert max(probes) < RESPONSIVE_S, probes


def test_the_readme_command_gives_thumbnails_with_nothing_installed(serve: StartServer, tmp_path: Path) -> None:
    home = tmp_path / "newcomer"
    home.mkdir()
    server = serve({}, cwd=home)  # no Redis, no settings: the embedded default
    headers = Users.at(server.url(), timeout=HTTP_TIMEOUT_S).create()["headers"]
    photo = upload(server, headers, photo_jpeg(2000, 1500, orientation=8))
    deadline = time.monotonic() + PROCESSED_WITHIN_S
    while (current := status(server, headers, photo["id"]))["processing_status"] == "pending":
        assert time.monotonic() < deadline, "still pending"
        time.sleep(0.1)
    assert current["processing_status"] == "ready"
    thumb = requests.get(server.url(current["thumbnail_url"]), headers=headers, timeout=HTTP_TIMEOUT_S)
    assert thumb.status_code == 200
    assert Image.open(io.BytesIO(thumb.content)).size == (192, 256)  # orientation 8: turned upright
    health = requests.get(server.url("/health"), timeout=HTTP_TIMEOUT_S).json()
    assert health["checks"]["jobs"] == {"status": "healthy", "queue_depth": 0}
