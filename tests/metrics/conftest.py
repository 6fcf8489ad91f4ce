"""Fixtures for the metrics tests: real `photo-api serve` instances with their own metrics port and
multiprocess directory, a parser for what a scrape returns, and the Debian tools the tests drive.

Debian's `prometheus` (promtool) and `prometheus-pushgateway` are needed:
    apt-get install -y --no-install-recommends prometheus prometheus-pushgateway
Without them these tests are skipped on a developer machine and FAIL in CI (`CI` set).
"""

from __future__ import annotations

import http.client
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.ci import unavailable
from tests.harness.env import lifecycle_env, production_env
from tests.harness.server import ServeProcess, Servers, free_port
from tests.harness.users import Users

APT_LINE = "apt-get install -y --no-install-recommends prometheus prometheus-pushgateway"
HTTP_TIMEOUT_S = 5
# Short lifecycle settings that the production rules accept (the LB values are what the drain covers).
FAST_LIFECYCLE = lifecycle_env(2, 6, check_interval_s=0.5, unhealthy_threshold=2, check_timeout_s=1)
INSTANCE_NAME = "test-vm-1"


def debian_tool(name: str) -> str:
    """The path of a tool from a Debian package; skip without it, but fail in CI, where it must be installed."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed; install it with: {APT_LINE}")
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
        headers: dict[str, str] = Users.at(self.server.url(), timeout=HTTP_TIMEOUT_S).create()["headers"]
        return headers

    def connection(self, wanted: set[int] | None = None) -> tuple[int, http.client.HTTPConnection]:
        """A new keep-alive connection and the pid of the worker that accepted it (one of `wanted`, if given)."""
        return self.server.connection_to_worker(wanted)

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


StartInstance = Callable[..., Instance]


@pytest.fixture
def start_instance(pg_database_url: str, tmp_path: Path) -> Iterator[StartInstance]:
    """Start production `photo-api serve` instances on the test database; every one is killed at teardown.

    Each has a free METRICS_PORT and an explicit PROMETHEUS_MULTIPROC_DIR under tmp_path (so that tests
    can look at the files of each worker), unless `env` says otherwise.
    """
    with Servers(tmp_path) as servers:

        def start(env: Mapping[str, Any] | None = None, *, workers: int = 2) -> Instance:
            environment = production_env(
                pg_database_url,
                tmp_path / "storage",
                lifecycle=FAST_LIFECYCLE,
                metrics_port=free_port(),
                metrics_dir=tmp_path / f"prom-{len(servers.started)}",
                overrides={
                    "INSTANCE_IP": INSTANCE_NAME,
                    **{name: None if value is None else str(value) for name, value in (env or {}).items()},
                },
            )
            server = servers.start(environment, workers=workers)
            directory = Path(environment.get("PROMETHEUS_MULTIPROC_DIR", ""))
            return Instance(server, int(environment["METRICS_PORT"]), directory)

        yield start
