"""Slow and stalled clients against `photo-api serve` on a real Swift (every storage call through a fault
proxy): waiting for a client is the client's problem, never object storage's.

A client that stops sending its upload body gets a 408 after CLIENT_BODY_TIMEOUT and its connection is
closed, whether it stalls before the storage call (while the file's type is sniffed) or in the middle of
the chunked PUT to Swift; several of them at once leave the worker's storage breaker closed, /health says
object storage is healthy, and other users upload and download meanwhile. A client that is slow but keeps
sending may take longer than STORAGE_UPLOAD_TIMEOUT: only Swift's own time counts against that deadline.
A blackholed Swift still opens the breaker. One worker, so that every request meets the same breaker.
"""

from __future__ import annotations

import http.client
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.harness.databases import pg_database
from tests.harness.env import production_env
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.server import ServeProcess, free_port
from tests.harness.users import Users
from tests.images import png
from tests.swift.api_server import HTTP_TIMEOUT_S
from tests.swift.api_server import upload as upload_photo
from tests.swift.conftest import Swift

pytestmark = pytest.mark.slow

CLIENT_BODY_TIMEOUT_S = 2.0
# Shorter than the slow client below takes in all, longer than Swift needs for its part.
STORAGE_UPLOAD_TIMEOUT_S = 3.0
FAILURE_THRESHOLD = 3
SETTINGS = {
    "CLIENT_BODY_TIMEOUT": str(CLIENT_BODY_TIMEOUT_S),
    "STORAGE_UPLOAD_TIMEOUT": str(STORAGE_UPLOAD_TIMEOUT_S),
    "STORAGE_DOWNLOAD_TIMEOUT": "2",
    "STORAGE_AUTH_TIMEOUT": "2",
    "HTTP_TIMEOUT_CONNECT": "1",
    "STORAGE_BREAKER_FAILURE_THRESHOLD": str(FAILURE_THRESHOLD),
    # Long enough that an open circuit is still open when the test looks.
    "STORAGE_BREAKER_RECOVERY_TIMEOUT": "60",
}
# More stalled clients than the breaker's threshold: had any of them counted, the circuit would be open.
STALLED_CLIENTS = FAILURE_THRESHOLD + 2
# The case: 70 KB of a 300 KB body, so the stall comes while the first 256 KiB are sniffed; and a
# stall after 400 KB of 600 KB, in the middle of the chunked PUT to Swift.
BEFORE_STORAGE = (300_000, 70_000)
INSIDE_THE_PUT = (600_000, 400_000)
# From the stall to the 408: the timeout, plus a loaded 2-CPU machine's answer time.
ANSWER_SLACK_S = 1.5
# A slow but live client: the first 300 KB at once (past the sniffed head, so the PUT to Swift has
# begun), then the rest in slices with a pause before each, in all longer than STORAGE_UPLOAD_TIMEOUT.
SLOW_HEAD_BYTES = 300_000
SLOW_SLICES = 10
SLOW_PAUSE_S = 0.45


@dataclass
class Api:
    server: ServeProcess
    proxy: FaultProxy
    swift: Swift


@dataclass
class Stalled:
    """What a client that stopped sending got back."""

    status: int
    content_type: str
    seconds: float  # from the stall to the answer
    closed: bool  # the server closed the connection after answering


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with pg_database("photo_api_slow_clients") as url:
        yield url


@pytest.fixture
def api(swift: Swift, container: str, database: str, tmp_path: Path) -> Iterator[Api]:
    """A one-worker instance of its own (a fresh breaker) on Swift behind a fault proxy."""
    with FaultProxy(swift.address) as proxy:
        storage = swift.settings(container, proxy.url)
        env = production_env(
            database,
            None,
            swift=storage,
            cheap_hashing=True,
            log_level="WARNING",
            metrics_port=free_port(),
            metrics_dir=tmp_path / "prometheus",
            overrides=SETTINGS,
        )
        with ServeProcess(env, cwd=tmp_path, log_dir=tmp_path / "serve", workers=1) as server:
            yield Api(server, proxy, swift)


@pytest.fixture
def user(api: Api) -> dict[str, str]:
    headers: dict[str, str] = Users.at(api.server.url(), timeout=HTTP_TIMEOUT_S).create()["headers"]
    return headers


def image_bytes(size: int) -> bytes:
    """A real PNG of about `size` bytes (a tEXt chunk of random hex makes up the size)."""
    return png(32, 32, text=secrets.token_hex(size // 2).encode())


def multipart(data: bytes) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart upload of `data` as the `file` part."""
    boundary = secrets.token_hex(16)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return f"multipart/form-data; boundary={boundary}", head + data + f"\r\n--{boundary}--\r\n".encode()


def start_upload(api: Api, user: dict[str, str], content_type: str, length: int) -> http.client.HTTPConnection:
    """A POST /photos whose head is sent, announcing `length` bytes of body, none of which is sent yet."""
    conn = http.client.HTTPConnection(api.server.host, api.server.port, timeout=HTTP_TIMEOUT_S)
    conn.putrequest("POST", "/photos")
    for name, value in {**user, "Content-Type": content_type, "Content-Length": str(length)}.items():
        conn.putheader(name, value)
    conn.endheaders()
    return conn


def stall(api: Api, user: dict[str, str], total: int, sent: int) -> Stalled:
    """Upload a `total`-byte image but stop after `sent` bytes of the body; return what came back."""
    content_type, body = multipart(image_bytes(total))
    conn = start_upload(api, user, content_type, len(body))
    try:
        conn.send(body[:sent])
        stalled_at = time.monotonic()
        response = conn.getresponse()
        seconds = time.monotonic() - stalled_at
        response.read()
        assert conn.sock is not None
        closed = conn.sock.recv(1) == b""  # an orderly close: the answer was all there is
        return Stalled(response.status, response.getheader("Content-Type", ""), seconds, closed)
    finally:
        conn.close()


def slow_upload(api: Api, user: dict[str, str], data: bytes) -> tuple[int, float]:
    """POST /photos: SLOW_HEAD_BYTES at once, then the rest slowly; (status, seconds of the slow part)."""
    content_type, body = multipart(data)
    conn = start_upload(api, user, content_type, len(body))
    try:
        conn.send(body[:SLOW_HEAD_BYTES])
        started = time.monotonic()
        rest = body[SLOW_HEAD_BYTES:]
        step = -(-len(rest) // SLOW_SLICES)
        for offset in range(0, len(rest), step):
            time.sleep(SLOW_PAUSE_S)
            conn.send(rest[offset : offset + step])
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        conn.close()


def storage_check(api: Api) -> dict[str, str]:
    """The object storage entry of /health (the instance itself must stay healthy)."""
    r = requests.get(api.server.url("/health"), timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    check: dict[str, str] = r.json()["checks"]["object_storage"]
    return check


def round_trip(api: Api, user: dict[str, str]) -> None:
    """Another user's upload and download work."""
    data = image_bytes(50_000)
    photo = upload_photo(api.server, user, data)
    r = requests.get(api.server.url(f"/photos/{photo['id']}/image"), headers=user, timeout=HTTP_TIMEOUT_S)
    assert (r.status_code, r.content) == (200, data)


@pytest.mark.parametrize(("total", "sent"), [BEFORE_STORAGE, INSIDE_THE_PUT], ids=["before-storage", "inside-put"])
def test_stalled_clients_get_408_and_never_open_the_storage_breaker(
    api: Api, user: dict[str, str], total: int, sent: int
) -> None:
    other = Users.at(api.server.url(), timeout=HTTP_TIMEOUT_S).create()["headers"]
    round_trip(api, other)  # a token and pooled connections before the clients arrive
    with ThreadPoolExecutor(STALLED_CLIENTS + 1) as pool:
        stalls = [pool.submit(stall, api, user, total, sent) for _ in range(STALLED_CLIENTS)]
        # While they hang, another user's upload and download go through.
        round_trip(api, other)
        assert not all(future.done() for future in stalls), "the round trip ran while the clients stalled"
        answers = [future.result() for future in stalls]

    for answer in answers:
        assert (answer.status, answer.content_type) == (408, "application/problem+json"), answer
        assert CLIENT_BODY_TIMEOUT_S * 0.9 <= answer.seconds < CLIENT_BODY_TIMEOUT_S + ANSWER_SLACK_S, answer
        assert answer.closed, answer
    print(f"\n{total}/{sent}: 408 after {sorted(round(a.seconds, 2) for a in answers)} s")
    assert storage_check(api) == {"status": "healthy", "circuit": "closed"}
    round_trip(api, other)


def test_a_slow_but_live_client_may_take_longer_than_the_storage_deadline(api: Api, user: dict[str, str]) -> None:
    data = image_bytes(600_000)
    status, seconds = slow_upload(api, user, data)
    assert status == 201
    assert seconds > STORAGE_UPLOAD_TIMEOUT_S, "the client took longer than Swift's deadline during the PUT"
    print(f"\nslow upload: 201 after {seconds:.2f} s (STORAGE_UPLOAD_TIMEOUT {STORAGE_UPLOAD_TIMEOUT_S:g} s)")
    assert storage_check(api) == {"status": "healthy", "circuit": "closed"}


def test_a_blackholed_swift_still_opens_the_breaker(api: Api, user: dict[str, str]) -> None:
    round_trip(api, user)  # a token: the uploads below reach the object API, not the auth service
    api.proxy.set(Fault.blackhole())
    data = image_bytes(50_000)
    with ThreadPoolExecutor(FAILURE_THRESHOLD) as pool:
        uploads = [pool.submit(_post, api, user, data) for _ in range(FAILURE_THRESHOLD)]
        answers = [future.result() for future in uploads]
    assert all(r.status_code == 503 for r in answers), [r.text for r in answers]
    assert storage_check(api) == {"status": "unhealthy", "circuit": "open"}
    api.proxy.pass_through()
    assert _post(api, user, data).status_code == 503, "the circuit stays open until its recovery timeout"


def _post(api: Api, user: dict[str, str], data: bytes) -> requests.Response:
    return requests.post(
        api.server.url("/photos"),
        headers=user,
        files={"file": ("x.png", data, "application/octet-stream")},
        timeout=HTTP_TIMEOUT_S,
    )
