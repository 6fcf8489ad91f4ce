"""`photo-api serve` on a real Swift reached through a fault proxy: URLs through the proxy, uploads, and
clients pinned to one gunicorn worker (the environment and users come from tests/harness/).

Breakers and bulkheads live in each worker, so a test about them must know which worker answered:
`pin_workers` opens keep-alive connections until every worker holds one. Shared by
tests/swift/test_api_on_swift.py and ops/bench/storage_bench.py, hence no pytest here.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from tests.harness.server import ServeProcess

HTTP_TIMEOUT_S = 30
# Connections opened at most to find every worker (the kernel hands each to whichever worker accepts first).
PIN_ATTEMPTS = 200


def through(url: str, proxy_url: str) -> str:
    """`url` with its scheme, host and port replaced by the proxy's: the same path, reached via the proxy."""
    parts = urlsplit(url)
    return proxy_url.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


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
