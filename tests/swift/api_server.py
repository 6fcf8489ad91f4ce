"""`photo-api serve` on a real Swift reached through a fault proxy: its environment, a user, and clients
pinned to one gunicorn worker.

Breakers and bulkheads live in each worker, so a test about them must know which worker answered:
`pin_workers` opens keep-alive connections until every worker holds one. Shared by
tests/swift/test_api_on_swift.py and ops/bench/storage_bench.py, hence no pytest here.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from tests.e2e.server import ServeProcess, free_port

PASSWORD = "correct horse battery"
HTTP_TIMEOUT_S = 30
# The cheapest argon2 cost production accepts (config.MIN_PRODUCTION_HASH_*): registrations stay quick.
PRODUCTION_HASH_FLOOR = {
    "PASSWORD_HASH_TIME_COST": "2",
    "PASSWORD_HASH_MEMORY_KIB": "19456",
    "PASSWORD_HASH_PARALLELISM": "1",
}
# Connections opened at most to find every worker (the kernel hands each to whichever worker accepts first).
PIN_ATTEMPTS = 200


def through(url: str, proxy_url: str) -> str:
    """`url` with its scheme, host and port replaced by the proxy's: the same path, reached via the proxy."""
    parts = urlsplit(url)
    return proxy_url.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def swift_settings(
    *, auth_url: str, storage_url: str, user: str, key: str, container: str, temp_url_key: str
) -> dict[str, str]:
    """STORAGE_BACKEND=swift with tempauth (v1) credentials.

    Give `auth_url` and `storage_url` as the proxy's addresses: tempauth answers with Swift's own storage
    URL, so NHN_STORAGE_URL must override it for object calls to pass the proxy too.
    """
    return {
        "STORAGE_BACKEND": "swift",
        "NHN_STORAGE_AUTH_VERSION": "1",
        "NHN_STORAGE_AUTH_URL": auth_url,
        "NHN_STORAGE_URL": storage_url,
        "NHN_STORAGE_IAM_USER": user,
        "NHN_STORAGE_IAM_PASSWORD": key,
        "NHN_STORAGE_CONTAINER": container,
        "NHN_STORAGE_TEMP_URL_KEY": temp_url_key,
    }


def production_env(database_url: str, work: Path, **overrides: str) -> dict[str, str]:
    """Production settings on `database_url` with metrics files under `work`, plus `overrides`."""
    env = {
        "ENVIRONMENT": "production",
        "DATABASE_URL": database_url,
        "JWT_SECRET_KEY": "e2e-swift-secret-0123456789-abcdefghijklmnopqrstuvwxyz",
        **PRODUCTION_HASH_FLOOR,
        "LOG_LEVEL": "WARNING",
        # A port of its own: other instances (other test runs) may hold the default one.
        "METRICS_PORT": str(free_port()),
        "PROMETHEUS_MULTIPROC_DIR": str(work / "prometheus"),
    }
    env.update(overrides)
    return env


def register(server: ServeProcess) -> dict[str, str]:
    """Register a fresh user and return its Authorization header."""
    name = f"u{uuid.uuid4().hex[:10]}"
    creds = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    r = requests.post(server.url("/auth/register"), json=creds, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 201, r.text
    r = requests.post(server.url("/auth/login"), json=creds, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def upload(server: ServeProcess, headers: Mapping[str, str], data: bytes, filename: str = "photo.png") -> Any:
    """POST /photos (multipart) and return the created photo; fail on anything but 201."""
    r = requests.post(
        server.url("/photos"),
        headers=dict(headers),
        files={"file": (filename, data, "application/octet-stream")},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 201, r.text
    return r.json()


@dataclass
class Answer:
    """One response read whole, and how long it took from sending the request to its last byte."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    seconds: float

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class WorkerClient:
    """A keep-alive HTTP/1.1 connection that one known worker accepted: every request goes to that worker."""

    def __init__(self, server: ServeProcess, conn: http.client.HTTPConnection, pid: int) -> None:
        self.server = server
        self.pid = pid
        self._conn = conn

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Answer:
        """GET `path` on this worker; raise if the worker closed the connection (the pin would be lost)."""
        started = time.perf_counter()
        self._conn.request("GET", path, headers=dict(headers or {}))
        response = self._conn.getresponse()
        body = response.read()
        seconds = time.perf_counter() - started
        if response.will_close:
            raise ConnectionError(f"worker {self.pid} closed the pinned connection after GET {path}")
        return Answer(response.status, response.headers, body, seconds)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def serves(client: WorkerClient, path: str, headers: Mapping[str, str]) -> bool:
    """True when the worker answers GET `path` with 200 (to poll for a recovery)."""
    return client.get(path, headers).status == 200


def storage_circuit(client: WorkerClient) -> str:
    """The object storage circuit (closed | open | half_open) that this worker reports on /health."""
    health = client.get("/health")
    return str(health.json()["checks"]["object_storage"]["circuit"])


def pin_workers(server: ServeProcess, per_worker: int = 1, timeout: float = HTTP_TIMEOUT_S) -> list[list[WorkerClient]]:
    """`per_worker` WorkerClients for each worker of `server`; connections beyond that are closed again."""
    pinned: dict[int, list[WorkerClient]] = {pid: [] for pid in server.worker_pids()}
    for _ in range(PIN_ATTEMPTS * per_worker):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
        conn.request("GET", "/health/liveness")
        conn.getresponse().read()  # answered: a worker has accepted the connection
        assert conn.sock is not None
        pid = server.worker_serving(conn.sock)
        if pid is None or len(pinned.setdefault(pid, [])) >= per_worker:
            conn.close()
        else:
            pinned[pid].append(WorkerClient(server, conn, pid))
        if all(len(clients) == per_worker for clients in pinned.values()):
            return list(pinned.values())
    for client in (c for clients in pinned.values() for c in clients):
        client.close()
    raise RuntimeError(f"could not pin {per_worker} connection(s) to each of the workers {sorted(pinned)}")
