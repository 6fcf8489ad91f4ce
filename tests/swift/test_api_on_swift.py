"""The API on a real Swift, end to end: `photo-api serve` (2 gevent workers, PostgreSQL) with
STORAGE_BACKEND=swift, every storage call (auth included) passing a fault proxy.

Healthy, the bytes go through Swift for real: a multipart upload and the presigned flow, where the
client PUTs to Swift's TempURL itself. Then the proxy blackholes Swift: an image request answers 503
with Retry-After within the storage deadline instead of hanging, and once a worker's breaker is open
within milliseconds and without a connection; the routes that need no storage keep answering at once,
and /health reports the open circuit while the instance stays in service. When Swift answers again,
images come back after the recovery timeout; a short burst of 503s is hidden by the retries.
"""

from __future__ import annotations

import hashlib
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import pytest
import requests

from tests.harness.databases import pg_database
from tests.harness.env import production_env
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.server import ServeProcess, free_port
from tests.harness.users import Users
from tests.images import jpeg, png
from tests.swift.api_server import HTTP_TIMEOUT_S, Answer, WorkerClient, pin_workers, serves
from tests.swift.api_server import upload as upload_photo
from tests.swift.conftest import Swift

pytestmark = pytest.mark.slow

WORKERS = 2
# STORAGE_DOWNLOAD_TIMEOUT: the read timeout and the whole deadline of a GET's headers (retries included).
STORAGE_TIMEOUT_S = 1.0
# Above the burst of 503s below, so that the retries of one request cannot open the breaker.
FAILURE_THRESHOLD = 3
RECOVERY_S = 3.0
BURST_503 = 2
STORAGE_SETTINGS = {
    "STORAGE_DOWNLOAD_TIMEOUT": str(STORAGE_TIMEOUT_S),
    "STORAGE_AUTH_TIMEOUT": str(STORAGE_TIMEOUT_S),
    "STORAGE_UPLOAD_TIMEOUT": "10",
    "HTTP_TIMEOUT_CONNECT": "1",
    "STORAGE_BREAKER_FAILURE_THRESHOLD": str(FAILURE_THRESHOLD),
    "STORAGE_BREAKER_RECOVERY_TIMEOUT": str(RECOVERY_S),
    "STORAGE_RETRY_MAX_TRIES": str(BURST_503 + 1),
    # Small backoff sleeps, so that three tries fit the one-second deadline with room to spare.
    "STORAGE_RETRY_BASE_DELAY": "0.02",
    "STORAGE_RETRY_MAX_DELAY": "0.1",
    # Fewer DB connections per worker than storage calls hung in it below: a request that kept its DB
    # connection during storage I/O would starve the routes that need only the database.
    "DB_POOL_SIZE": "2",
    "DB_MAX_OVERFLOW": "0",
    # No renditions jobs here: in-process jobs would call Swift through the same proxy and breakers as the
    # requests these tests count and fault; a job queue that refuses connections keeps every photo pending
    # (tests/swift/test_media_jobs.py runs the jobs on this Swift).
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "REDIS_TIMEOUT": "0.5",
}
# Slack over the deadline for a loaded 2-CPU machine: the request, the DB lookup, the error answer.
DEADLINE_SLACK_S = 0.75
# An open breaker answers without I/O: a few ms (the median must show it); no answer may come near the
# deadline, which would mean a storage call was made. Generous bounds: the 2 CPUs are shared.
FAIL_FAST_MEDIAN_S = 0.02
FAIL_FAST_MAX_S = STORAGE_TIMEOUT_S / 5
# Routes that need no storage, while storage calls hang: far below the storage deadline.
UNAFFECTED_S = 0.5
# Storage calls left hanging in each worker: the DB pool size plus one, and the breaker's threshold.
HUNG_PER_WORKER = 3
FAST_SAMPLES = 20
# Most the breakers can have opened before the test notes the time (the spread of the hung calls' ends).
OPENED_LAG_S = 0.5


@dataclass
class Api:
    """The running instance and what the tests need to reach and inspect it."""

    server: ServeProcess
    proxy: FaultProxy
    swift: Swift
    container: str


@pytest.fixture(scope="module")
def api(swift: Swift, container: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A database, a fault proxy in front of Swift and `photo-api serve` on both, for this module."""
    work = tmp_path_factory.mktemp("api-on-swift")
    with pg_database("photo_api_swift_e2e") as url, FaultProxy(swift.address) as proxy:
        storage = swift.settings(container, proxy.url)
        env = production_env(
            url,
            None,
            swift=storage,
            cheap_hashing=True,
            log_level="WARNING",
            # A port of its own: other instances (other test runs) may hold the default one.
            metrics_port=free_port(),
            metrics_dir=work / "prometheus",
            overrides=STORAGE_SETTINGS,
        )
        with ServeProcess(env, cwd=work, log_dir=work / "serve", workers=WORKERS) as server:
            yield Api(server, proxy, swift, container)


@pytest.fixture(autouse=True)
def passing(api: Api) -> Iterator[None]:
    """Every test starts and ends with Swift reachable."""
    api.proxy.pass_through()
    yield
    api.proxy.pass_through()


@pytest.fixture
def user(api: Api) -> dict[str, str]:
    headers: dict[str, str] = Users.at(api.server.url(), timeout=HTTP_TIMEOUT_S).create()["headers"]
    return headers


@pytest.fixture
def pinned(api: Api) -> Iterator[list[list[WorkerClient]]]:
    """For each worker, 1 + HUNG_PER_WORKER keep-alive connections that it serves."""
    clients = pin_workers(api.server, per_worker=1 + HUNG_PER_WORKER)
    yield clients
    for client in (c for per_worker in clients for c in per_worker):
        client.close()


def image_bytes(size: int) -> bytes:
    """A real PNG of about `size` bytes (a tEXt chunk of random hex makes up the size)."""
    return png(32, 32, text=secrets.token_hex(size // 2).encode())


def get_image(api: Api, user: dict[str, str], photo_id: int, **headers: str) -> requests.Response:
    return requests.get(
        api.server.url(f"/photos/{photo_id}/image"), headers={**user, **headers}, timeout=HTTP_TIMEOUT_S
    )


def assert_serves(api: Api, user: dict[str, str], photo_id: int, data: bytes, content_type: str) -> None:
    """The photo's image is exactly `data`, typed `content_type`, with its size and MD5 ETag."""
    r = get_image(api, user, photo_id)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Content-Type"] == content_type
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'


def assert_unavailable(answer: Answer | requests.Response, max_retry_after: float) -> None:
    """503 problem+json naming object storage, with a Retry-After in whole seconds within bounds."""
    status = answer.status if isinstance(answer, Answer) else answer.status_code
    assert status == 503, answer
    assert answer.headers["Content-Type"] == "application/problem+json"
    body = answer.json()
    assert (body["status"], body["detail"]) == (503, "Object storage unavailable")
    assert 1 <= int(answer.headers["Retry-After"]) <= max_retry_after


def circuit(client: WorkerClient) -> str:
    """The storage circuit this worker reports on /health (which must still say the instance is healthy)."""
    health = client.get("/health")
    assert health.status == 200, health.body
    body = health.json()
    assert (body["status"], body["checks"]["database"]["status"]) == ("healthy", "healthy")
    return str(body["checks"]["object_storage"]["circuit"])


# ---------------------------------------------------------------------- bytes through Swift


def test_multipart_upload_and_download_through_swift(api: Api, user: dict[str, str]) -> None:
    data = image_bytes(300_000)
    photo = upload_photo(api.server, user, data, "holiday.png")
    assert (photo["content_type"], photo["file_size"]) == ("image/png", len(data))
    assert photo["filename"] in api.swift.list_container(api.container)

    r = get_image(api, user, photo["id"])
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'

    r = get_image(api, user, photo["id"], Range="bytes=100-199")
    assert r.status_code == 206
    assert r.content == data[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"


def test_presigned_upload_puts_to_a_swift_tempurl(api: Api, user: dict[str, str]) -> None:
    # A JPEG padded with a comment segment: at confirm, its type is judged from the bytes Swift holds.
    data = jpeg(comment=secrets.token_bytes(50_000))
    r = requests.post(
        api.server.url("/photos/presigned-url"),
        headers=user,
        json={"filename": "direct.jpg", "content_type": "image/jpeg", "file_size": len(data)},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 201, r.text
    presigned = r.json()
    # Straight to Swift (through the proxy, like every storage call here), signed by the TempURL key.
    assert presigned["upload_url"].startswith(f"{api.proxy.url}/v1/{api.swift.account}/{api.container}/")
    assert "temp_url_sig=" in presigned["upload_url"]

    confirm = {"photo_id": presigned["photo_id"]}
    r = requests.post(api.server.url("/photos/confirm"), headers=user, json=confirm, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 422, "nothing was uploaded yet"
    assert [e["field"] for e in r.json()["errors"]] == ["photo_id"]

    put = requests.put(presigned["upload_url"], data=data, headers=presigned["upload_headers"], timeout=HTTP_TIMEOUT_S)
    assert put.status_code == 201, put.text
    assert put.headers["Etag"].strip('"') == hashlib.md5(data).hexdigest()

    r = requests.post(api.server.url("/photos/confirm"), headers=user, json=confirm, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    assert (r.json()["content_type"], r.json()["file_size"]) == ("image/jpeg", len(data))
    listed = requests.get(api.server.url("/photos"), headers=user, timeout=HTTP_TIMEOUT_S).json()
    assert [p["id"] for p in listed] == [presigned["photo_id"]]

    assert_serves(api, user, presigned["photo_id"], data, "image/jpeg")

    # The TempURL is still valid, and Swift takes the PUT; it lands on the staging key the URL names,
    # never on the object the photo is served from.
    html = b"<html><script>alert(document.domain)</script></html>" * 40
    evil = {"Content-Type": "text/html"}
    put = requests.put(presigned["upload_url"], data=html, headers=evil, timeout=HTTP_TIMEOUT_S)
    assert put.status_code == 201, put.text
    assert_serves(api, user, presigned["photo_id"], data, "image/jpeg")
    final_key = r.json()["filename"]
    assert final_key in api.swift.list_container(api.container)
    assert final_key not in presigned["upload_url"]


def test_a_tempurl_put_racing_the_confirm_never_reaches_the_confirmed_photo(api: Api, user: dict[str, str]) -> None:
    data = image_bytes(40_000)
    r = requests.post(
        api.server.url("/photos/presigned-url"),
        headers=user,
        json={"filename": "race.png", "content_type": "image/png", "file_size": len(data)},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 201, r.text
    presigned = r.json()
    put = requests.put(presigned["upload_url"], data=data, headers=presigned["upload_headers"], timeout=HTTP_TIMEOUT_S)
    assert put.status_code == 201, put.text

    # A second PUT through the same URL sends half its body, confirm runs and answers, then the PUT ends.
    html = b"<html><body>" + b"x" * 60_000 + b"</body></html>"
    half_sent, confirmed = threading.Event(), threading.Event()

    def body() -> Iterator[bytes]:
        yield html[: len(html) // 2]
        half_sent.set()
        assert confirmed.wait(HTTP_TIMEOUT_S)
        yield html[len(html) // 2 :]

    with ThreadPoolExecutor(1) as pool:
        racing = pool.submit(
            requests.put, presigned["upload_url"], data=body(), headers={"Content-Type": "text/html"}, timeout=30
        )
        assert half_sent.wait(HTTP_TIMEOUT_S)
        confirm = {"photo_id": presigned["photo_id"]}
        r = requests.post(api.server.url("/photos/confirm"), headers=user, json=confirm, timeout=HTTP_TIMEOUT_S)
        confirmed.set()
        assert r.status_code == 200, r.text
        assert racing.result().status_code == 201  # Swift took it: the URL was still valid
    assert (r.json()["content_type"], r.json()["file_size"]) == ("image/png", len(data))
    assert_serves(api, user, presigned["photo_id"], data, "image/png")


# ---------------------------------------------------------------------- faults


def test_a_burst_of_503s_is_hidden_by_retries(api: Api, user: dict[str, str], pinned: list[list[WorkerClient]]) -> None:
    data = image_bytes(20_000)
    photo = upload_photo(api.server, user, data)
    path = f"/photos/{photo['id']}/image"
    client = pinned[0][0]
    assert client.get(path, user).status == 200  # this worker's token and connections are warm

    api.proxy.set(Fault.http_error(503, count=BURST_503))
    before = api.proxy.connections
    r = client.get(path, user)
    assert r.status == 200
    assert r.body == data
    assert api.proxy.connections - before == BURST_503 + 1, "one connection per try"
    assert api.proxy.fault.kind == "pass", "the whole burst was met"
    assert circuit(client) == "closed"


def test_a_blackholed_swift_fails_fast_and_the_rest_of_the_api_keeps_serving(
    api: Api, user: dict[str, str], pinned: list[list[WorkerClient]]
) -> None:
    data = image_bytes(20_000)
    photo = upload_photo(api.server, user, data)
    path = f"/photos/{photo['id']}/image"
    probes = [clients[0] for clients in pinned]  # one per worker, for the checks
    hanging = [client for clients in pinned for client in clients[1:]]
    for client in probes:  # each worker has a token and pooled connections before the outage
        assert client.get(path, user).body == data

    api.proxy.set(Fault.blackhole())

    # 1. HUNG_PER_WORKER storage calls hang in each worker; meanwhile the routes that need no storage
    #    answer at full speed in both, and each image request gets its 503 at the deadline.
    with ThreadPoolExecutor(len(hanging)) as pool:
        hung = [pool.submit(client.get, path, user) for client in hanging]
        _wait_until(lambda: api.proxy.active >= len(hanging), "every storage call is stuck at the proxy")
        for client in probes:
            for route in ("/photos", "/auth/me", "/health"):
                r = client.get(route, user)
                assert r.status == 200, (route, r.body)
                assert r.seconds < UNAFFECTED_S, (route, r.seconds)
        assert not any(future.done() for future in hung), "the checks ran while the storage calls hung"
        for future in hung:
            r = future.result()
            assert_unavailable(r, max_retry_after=STORAGE_TIMEOUT_S)
            assert STORAGE_TIMEOUT_S * 0.9 <= r.seconds < STORAGE_TIMEOUT_S + DEADLINE_SLACK_S, r.seconds

    # 2. Those were FAILURE_THRESHOLD failures per worker: the breakers are open (a retry may have made a
    #    worker count one more, never fewer). An image request is now refused within milliseconds, with
    #    no connection to storage; the rest of the API is unaffected, and /health reports the circuit
    #    while the instance stays healthy (storage is informational for the load balancer).
    opened = time.monotonic()
    connections = api.proxy.connections
    for client in probes:
        assert circuit(client) == "open"
        answers = [client.get(path, user) for _ in range(FAST_SAMPLES)]
        for r in answers:
            assert_unavailable(r, max_retry_after=RECOVERY_S)
        seconds = sorted(r.seconds for r in answers)
        assert statistics.median(seconds) < FAIL_FAST_MEDIAN_S, seconds
        assert seconds[-1] < FAIL_FAST_MAX_S, seconds
        for route in ("/photos", "/auth/me"):
            r = client.get(route, user)
            assert (r.status, route) == (200, route)
            assert r.seconds < UNAFFECTED_S, (route, r.seconds)
    assert api.proxy.connections == connections, "an open breaker must not open connections"
    assert time.monotonic() - opened < RECOVERY_S, "the checks above ran while the breakers were open"

    # 3. Swift answers again, but the breakers turn requests away until the recovery timeout; then the
    #    trial request succeeds and closes the breaker.
    api.proxy.pass_through()
    for client in probes:
        _wait_until(partial(serves, client, path, user), "images are served again", RECOVERY_S + 5)
        assert time.monotonic() - opened >= RECOVERY_S - OPENED_LAG_S
        r = client.get(path, user)
        assert (r.status, r.body) == (200, data)
        assert circuit(client) == "closed"


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting until {what}")
        time.sleep(0.02)
