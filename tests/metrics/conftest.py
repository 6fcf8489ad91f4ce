"""Fixtures for the metrics tests: real `photo-api serve` instances with their own metrics port and
multiprocess directory, a parser for what a scrape returns, and the Debian tools the tests drive.

Debian's `prometheus` (promtool) and `prometheus-pushgateway` are needed:
    apt-get install -y --no-install-recommends prometheus prometheus-pushgateway
Without them these tests are skipped on a developer machine and FAIL in CI (`CI` set).
"""

from __future__ import annotations

import http.client
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from photo_api import migrate
from tests.conftest import DEFAULT_PASSWORD, TEST_SECRET, create_pg_database, drop_pg_database, pg_url_for
from tests.e2e.server import ServeProcess, free_port

APT_LINE = "apt-get install -y --no-install-recommends prometheus prometheus-pushgateway"
HTTP_TIMEOUT_S = 5
MAX_CONNECT_TRIES = 60
# Short lifecycle settings that the production rules accept (the LB values are what the drain covers).
FAST_LIFECYCLE = {
    "DRAIN_DELAY_SECONDS": "2",
    "GRACEFUL_TIMEOUT": "6",
    "DB_STATEMENT_TIMEOUT_MS": "6000",
    "LB_HEALTH_CHECK_INTERVAL": "0.5",
    "LB_UNHEALTHY_THRESHOLD": "2",
    "LB_HEALTH_CHECK_TIMEOUT": "1",
    "HEALTH_CHECK_TIMEOUT": "0.5",
}
INSTANCE_NAME = "test-vm-1"


def debian_tool(name: str) -> str:
    """The path of a tool from a Debian package; skip without it, but fail in CI, where it must be installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed; install it with: {APT_LINE}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# -- what a scrape says --------------------------------------------------------------------------------


@dataclass
class Scrape:
    """One scrape: its text, and every sample by (name, labels)."""

    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the sample `name{labels}` (exactly these labels), or None when absent."""
        return self.samples.get((name, frozenset(labels.items())))

    def values(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample called `name`, by its labels."""
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    @property
    def names(self) -> set[str]:
        """The sample names present (`_bucket`, `_count`, `_total` … included)."""
        return {name for name, _ in self.samples}


def parse(text: str) -> Scrape:
    """Parse the Prometheus text format (strictly: a malformed exposition raises)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(text, samples)


def scrape(url: str) -> Scrape:
    """GET a metrics endpoint and parse it."""
    response = requests.get(url, timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    return parse(response.text)


def file_value(path: Path, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """A sample read straight from one process's multiprocess file (e.g. counter_<pid>.db)."""
    if not path.exists():
        return None
    for metric in MultiProcessCollector.merge([str(path)]):
        for sample in metric.samples:
            if sample.name == name and {k: v for k, v in sample.labels.items() if k != "pid"} == dict(labels or {}):
                return float(sample.value)
    return None


# -- a running instance ---------------------------------------------------------------------------------


class Instance:
    """A `photo-api serve` with metrics on METRICS_PORT and its multiprocess directory."""

    def __init__(self, server: ServeProcess, metrics_port: int, directory: Path):
        self.server = server
        self.metrics_port = metrics_port
        self.directory = directory

    @property
    def metrics_url(self) -> str:
        """The master's metrics endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def scrape(self) -> Scrape:
        """One scrape of the master's metrics endpoint."""
        return scrape(self.metrics_url)

    def new_user(self) -> dict[str, str]:
        """Register a user and log in; the auth headers."""
        name = f"u{uuid.uuid4().hex[:10]}"
        creds = {"email": f"{name}@example.com", "username": name, "password": DEFAULT_PASSWORD}
        r = requests.post(self.server.url("/auth/register"), json=creds, timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 201, r.text
        r = requests.post(
            self.server.url("/auth/login"),
            json={"email": creds["email"], "password": DEFAULT_PASSWORD},
            timeout=HTTP_TIMEOUT_S,
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def connection(self, wanted: set[int] | None = None) -> tuple[int, http.client.HTTPConnection]:
        """A new keep-alive connection and the pid of the worker that accepted it (one of `wanted`, if given)."""
        for _ in range(MAX_CONNECT_TRIES):
            conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=HTTP_TIMEOUT_S)
            conn.connect()
            assert conn.sock is not None
            deadline = time.monotonic() + 1.0
            owner = self.server.worker_serving(conn.sock)
            while owner is None and time.monotonic() < deadline:  # a worker accepts it asynchronously
                time.sleep(0.01)
                owner = self.server.worker_serving(conn.sock)
            if owner is not None and (wanted is None or owner in wanted):
                return owner, conn
            conn.close()
        raise AssertionError(f"no connection reached a worker in {wanted} after {MAX_CONNECT_TRIES} tries")

    def connection_per_worker(self) -> dict[int, http.client.HTTPConnection]:
        """One keep-alive connection to each current worker."""
        conns: dict[int, http.client.HTTPConnection] = {}
        for pid in self.server.worker_pids():
            owner, conn = self.connection({pid})
            conns[owner] = conn
        return conns

    def wait_for_metric(self, condition: Callable[[Scrape], bool], what: str, timeout: float = 10.0) -> Scrape:
        """Scrape until `condition` holds; fail naming `what`."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.scrape()
            if condition(current):
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for: {what}")
            time.sleep(0.05)


def get(conn: http.client.HTTPConnection, path: str, headers: Mapping[str, str] | None = None) -> int:
    """One GET on a keep-alive connection; its status (the body is read, so the connection can be reused)."""
    conn.request("GET", path, headers=dict(headers or {}))
    response = conn.getresponse()
    response.read()
    return response.status


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database of this test alone, migrated to head; dropped afterwards."""
    name = create_pg_database("photo_api_metrics")
    url = pg_url_for(name)
    migrate.upgrade(url)
    yield url
    drop_pg_database(name)


StartInstance = Callable[..., Instance]


@pytest.fixture
def start_instance(pg_database_url: str, tmp_path: Path) -> Iterator[StartInstance]:
    """Start production `photo-api serve` instances on the test database; every one is killed at teardown.

    Each has a free METRICS_PORT and an explicit PROMETHEUS_MULTIPROC_DIR under tmp_path (so that tests
    can look at the files of each worker), unless `env` says otherwise.
    """
    servers: list[ServeProcess] = []

    def start(env: Mapping[str, Any] | None = None, *, workers: int = 2) -> Instance:
        n = len(servers)
        metrics_port = free_port()
        values = {
            "ENVIRONMENT": "production",
            "DATABASE_URL": pg_database_url,
            "JWT_SECRET_KEY": TEST_SECRET,
            "LOCAL_STORAGE_DIR": str(tmp_path / "storage"),
            "INSTANCE_IP": INSTANCE_NAME,
            "METRICS_PORT": str(metrics_port),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"prom-{n}"),
            **FAST_LIFECYCLE,
            **(env or {}),
        }
        environment = {k: str(v) for k, v in values.items() if v is not None}
        server = ServeProcess(environment, cwd=tmp_path, log_dir=tmp_path / f"serve-{n}", workers=workers)
        servers.append(server)
        server.start()
        directory = Path(environment.get("PROMETHEUS_MULTIPROC_DIR", ""))
        return Instance(server, int(environment["METRICS_PORT"]), directory)

    yield start
    for server in servers:
        server.close()
