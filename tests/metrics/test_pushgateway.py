"""Pushing to Debian's real `prometheus-pushgateway`: one aggregated group per instance, from the master.

As docs/operations.md ("Metrics") says: the push happens at PROMETHEUS_PUSH_INTERVAL_SECONDS from one
process (the sum over every worker, grouped by instance), a final push on shutdown keeps the last values
for PROMETHEUS_PUSH_LINGER_SECONDS, and then the group is deleted so that a scaled-in instance does not
linger.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.harness.server import free_port
from tests.metrics.conftest import INSTANCE_NAME, Scrape, StartInstance, debian_tool, get, scrape

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_S = 10
PUSH_INTERVAL_S = 1
LINGER_S = 3
JOB = "photo-api"
ME = {"method": "GET", "endpoint": "/auth/me", "status": "200", "job": JOB, "instance": INSTANCE_NAME}


class Pushgateway:
    """A Pushgateway process on a free loopback port, without persistence."""

    def __init__(self, url: str, process: subprocess.Popen[bytes]):
        self.url = url
        self.process = process

    def scrape(self) -> Scrape:
        """What Prometheus would scrape from the Pushgateway."""
        return scrape(f"{self.url}/metrics")

    def groups(self) -> list[dict[str, str]]:
        """The grouping labels of every group of our job."""
        body = requests.get(f"{self.url}/api/v1/metrics", timeout=5).json()
        return [group["labels"] for group in body["data"] if group["labels"].get("job") == JOB]

    def wait_for(self, condition: object, what: str, timeout: float = 10.0) -> Scrape:
        """Scrape until `condition(scrape)` holds."""
        assert callable(condition)
        deadline = time.monotonic() + timeout
        while True:
            current = self.scrape()
            if condition(current):
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for: {what}")
            time.sleep(0.1)


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Pushgateway]:
    """Start `prometheus-pushgateway` (Debian package) on loopback; killed at teardown."""
    binary = debian_tool("prometheus-pushgateway")
    port = free_port()
    with open(tmp_path / "pushgateway.log", "wb") as log:
        process = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pushgateway did not start: {(tmp_path / 'pushgateway.log').read_text()}")
            time.sleep(0.05)
        yield Pushgateway(url, process)
    finally:
        process.kill()
        process.wait()


def test_one_aggregated_group_per_instance_deleted_when_it_leaves(
    start_instance: StartInstance, pushgateway: Pushgateway
) -> None:
    instance = start_instance(
        {
            "PROMETHEUS_PUSHGATEWAY_URL": pushgateway.url,
            "PROMETHEUS_PUSH_INTERVAL_SECONDS": str(PUSH_INTERVAL_S),
            "PROMETHEUS_PUSH_LINGER_SECONDS": str(LINGER_S),
        },
        workers=2,
    )
    headers = instance.new_user()
    sent = 0
    for conn in instance.connection_per_worker().values():
        for _ in range(3):
            assert get(conn, "/auth/me", headers) == 200
            sent += 1
        conn.close()

    # The periodic push carries the sum over both workers, in a single group named after the instance.
    pushed = pushgateway.wait_for(
        lambda s: s.value("photo_api_http_requests_total", **ME) == sent, f"{sent} requests pushed"
    )
    assert pushgateway.groups() == [{"job": JOB, "instance": INSTANCE_NAME}]
    assert pushed.value("photo_api_draining", job=JOB, instance=INSTANCE_NAME) == 0

    # A last request right before SIGTERM: the values left on the Pushgateway must include it.
    _, conn = instance.connection()
    assert get(conn, "/auth/me", headers) == 200
    conn.close()
    stopped_at = time.monotonic()
    instance.server.signal(signal.SIGTERM)

    # After the workers are gone, the final values stay on the Pushgateway for the linger…
    final = pushgateway.wait_for(
        lambda s: (
            s.value("photo_api_draining", job=JOB, instance=INSTANCE_NAME) == 1
            and s.value("photo_api_http_requests_in_flight", job=JOB, instance=INSTANCE_NAME) == 0
            and not instance.server.worker_pids()
        ),
        "the final push, after the workers exited",
    )
    assert final.value("photo_api_http_requests_total", **ME) == sent + 1
    assert pushgateway.groups() == [{"job": JOB, "instance": INSTANCE_NAME}]

    # …and then the group is deleted, and the master exits 0.
    assert instance.server.wait(LINGER_S + 10) == 0
    assert time.monotonic() - stopped_at >= LINGER_S
    assert pushgateway.groups() == []
    assert pushgateway.scrape().values("photo_api_http_requests_total") == {}


def test_an_unreachable_pushgateway_never_stops_the_instance(start_instance: StartInstance) -> None:
    password = "push-password-do-not-log"
    nobody = f"http://pusher:{password}@127.0.0.1:{free_port()}"
    instance = start_instance(
        {
            "PROMETHEUS_PUSHGATEWAY_URL": nobody,
            "PROMETHEUS_PUSH_INTERVAL_SECONDS": str(PUSH_INTERVAL_S),
            "PROMETHEUS_PUSH_LINGER_SECONDS": "0",
        },
        workers=1,
    )
    time.sleep(PUSH_INTERVAL_S * 2.5)
    assert requests.get(instance.server.url("/health"), timeout=5).status_code == 200
    failures = [line for line in instance.server.log_lines() if "push to" in line.get("message", "")]
    assert len(failures) == 1  # logged when it starts failing, not once per interval
    assert "http://pusher:***@127.0.0.1:" in failures[0]["message"]
    assert password not in instance.server.stdout() + instance.server.stderr()
    assert instance.server.stop(signal.SIGTERM) == 0
