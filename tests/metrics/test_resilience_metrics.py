"""Breaker state, retries and outbound call durations as metrics, with failures injected by a real HTTP
server on loopback (the double of a dependency) and `Resilient` driven with `metrics.ResilienceMetrics`.

In one process (the registry outside gunicorn) and across processes (multiprocess files, as the workers
of an instance write them): the state of the worst worker shows, and a dead worker's state goes with it.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import greenlet
import pytest
import requests
from prometheus_client.multiprocess import mark_process_dead

from photo_api import metrics
from photo_api.config import load_settings
from photo_api.resilience import DependencyUnavailableError, Policy, Resilient, raise_for_transient
from tests import python_child
from tests.harness.env import OFFLINE_SWIFT_ENV, TEST_SECRET
from tests.metrics.conftest import parse

FAILURE_THRESHOLD = 3
MAX_TRIES = 3
RECOVERY_S = 30.0


class Dependency(http.server.ThreadingHTTPServer):
    """An HTTP dependency on loopback that answers each request with the next queued status (default 200)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests = 0
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/object"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Dependency

    def do_GET(self) -> None:
        self.server.requests += 1
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def dependency() -> Iterator[Dependency]:
    server = Dependency()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class Recorder:
    """The inner Events: what ResilienceMetrics passes on (to the logs, in production)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def retry(self, service: str, exc: BaseException, wait: float) -> None:
        self.events.append("retry")

    def giveup(self, service: str, exc: BaseException) -> None:
        self.events.append("giveup")

    def state_change(self, service: str, old: str, new: str) -> None:
        self.events.append(new)

    def rejected(self, service: str) -> None:
        self.events.append("rejected")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(service: str) -> Policy:
    return Policy(
        service=service,
        connect_timeout=1,
        read_timeout=2,
        deadline=5,
        max_tries=MAX_TRIES,
        max_time=5,
        base_delay=0,
        max_delay=0,
        failure_threshold=FAILURE_THRESHOLD,
        recovery_timeout=RECOVERY_S,
    )


def fetch(url: str) -> requests.Response:
    return raise_for_transient(requests.get(url, timeout=2))


def value(name: str, **labels: str) -> float | None:
    return parse(metrics.render().decode()).value(name, **labels)


def test_breaker_state_retries_and_durations_follow_injected_failures(dependency: Dependency) -> None:
    metrics.enable(load_settings(environ={}))
    service = f"store-{uuid.uuid4().hex[:8]}"  # the process-wide registry is shared by every test
    inner, clock = Recorder(), Clock()
    client = Resilient(policy(service), events=metrics.ResilienceMetrics(service, inner=inner), clock=clock)
    # The dependency's series exist before anything happened: closed, nothing retried.
    assert value("photo_api_circuit_breaker_state", service=service) == 0
    assert value("photo_api_retry_attempts_total", service=service, result="retry") == 0
    assert value("photo_api_retry_attempts_total", service=service, result="giveup") == 0
    assert value("photo_api_circuit_breaker_rejected_total", service=service) == 0
    for state in ("closed", "open", "half_open"):
        assert value("photo_api_circuit_breaker_transitions_total", service=service, state=state) == 0, state

    # Three 503s: two retries, the third failure gives up and opens the circuit.
    dependency.statuses = [503] * MAX_TRIES
    with pytest.raises(DependencyUnavailableError):
        client.call(fetch, dependency.url, operation="get")
    assert value("photo_api_retry_attempts_total", service=service, result="retry") == MAX_TRIES - 1
    assert value("photo_api_retry_attempts_total", service=service, result="giveup") == 1
    assert value("photo_api_circuit_breaker_state", service=service) == 1
    assert value("photo_api_circuit_breaker_transitions_total", service=service, state="open") == 1

    # Open: refused without a request reaching the dependency.
    reached = dependency.requests
    with pytest.raises(DependencyUnavailableError):
        client.call(fetch, dependency.url, operation="get")
    assert dependency.requests == reached
    assert value("photo_api_circuit_breaker_rejected_total", service=service) == 1

    # After the recovery timeout one trial goes through (half-open) and its success closes the circuit.
    clock.now += RECOVERY_S + 1
    client.call(fetch, dependency.url, operation="get")
    assert value("photo_api_circuit_breaker_state", service=service) == 0
    assert value("photo_api_circuit_breaker_transitions_total", service=service, state="half_open") == 1
    assert value("photo_api_circuit_breaker_transitions_total", service=service, state="closed") == 1

    # Resilient reports each logical call's duration to the events (ResilienceMetrics.finished).
    count = "photo_api_external_request_duration_seconds_count"
    assert value(count, service=service, operation="get", outcome="unavailable") == 1
    assert value(count, service=service, operation="get", outcome="circuit_open") == 1
    assert value(count, service=service, operation="get", outcome="ok") == 1
    # Every event still reached the inner Events (the log lines).
    assert inner.events == ["retry", "retry", "open", "giveup", "rejected", "half_open", "closed"]


def test_outcomes_other_than_answers_and_unavailability() -> None:
    metrics.enable(load_settings(environ={}))
    service = f"store-{uuid.uuid4().hex[:8]}"
    client = Resilient(policy(service), events=metrics.ResilienceMetrics(service, inner=Recorder()))

    def broken() -> None:
        raise ValueError("a bug, not a transient failure")

    def stalled() -> None:
        raise gevent.Timeout()  # what the deadline raises in a gevent worker once it has passed

    def cancelled() -> None:
        raise greenlet.GreenletExit()  # the caller's greenlet was killed: says nothing about the dependency

    with pytest.raises(ValueError):
        client.call(broken, operation="put")
    with pytest.raises(DependencyUnavailableError):
        client.call(stalled, operation="put")
    with pytest.raises(greenlet.GreenletExit):
        client.call(cancelled, operation="put")
    count = "photo_api_external_request_duration_seconds_count"
    for outcome in ("error", "timeout", "cancelled"):
        assert value(count, service=service, operation="put", outcome=outcome) == 1, outcome


BOOT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from photo_api import create_app, metrics
    from photo_api.api.context import collaborators_of
    from photo_api.config import load_settings

    app = create_app(load_settings(environ=json.loads(sys.argv[1])))
    collaborators_of(app).db.dispose()
    sys.stdout.write(metrics.render().decode())
    """
)


def test_every_policy_of_swift_storage_has_its_series_from_boot(tmp_path: Path) -> None:
    # A fresh process: the registry of this one has seen other tests' events.
    env = {**OFFLINE_SWIFT_ENV, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "JWT_SECRET_KEY": TEST_SECRET}
    child_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.run(
        [*python_child(BOOT_SCRIPT), json.dumps(env)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    booted = parse(proc.stdout)
    # Objects and Keystone/Swift auth are two policies with two breakers: both on the dashboard at 0.
    for service in ("storage", "storage_auth"):
        assert booted.value("photo_api_circuit_breaker_state", service=service) == 0, service
        assert booted.value("photo_api_circuit_breaker_rejected_total", service=service) == 0, service
        for result in ("retry", "giveup"):
            assert booted.value("photo_api_retry_attempts_total", service=service, result=result) == 0, service
        for state in ("closed", "open", "half_open"):
            assert booted.value("photo_api_circuit_breaker_transitions_total", service=service, state=state) == 0, (
                service
            )


WORKER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import requests
    from photo_api import metrics
    from photo_api.config import load_settings
    from photo_api.resilience import DependencyUnavailableError, Policy, Resilient, raise_for_transient

    url, service, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    policy = Policy(service=service, connect_timeout=1, read_timeout=2, deadline=5, max_tries=3, max_time=5,
                    base_delay=0, max_delay=0, failure_threshold=3, recovery_timeout=30)
    # Built before metrics are enabled, as Runtime.build runs before metrics.init_app in create_app.
    client = Resilient(policy, events=metrics.ResilienceMetrics(service, inner=None))
    metrics.enable(load_settings(environ={}))
    if mode != "idle":
        try:
            client.call(lambda: raise_for_transient(requests.get(url + ("?fail" if mode == "fail" else ""), timeout=2)))
        except DependencyUnavailableError:
            pass
    print(json.dumps({"state": client.state, "pid": os.getpid()}))
    """
)


class FailingOnQuery(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503 if "?fail" in self.path else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_across_workers_the_worst_breaker_shows_until_its_worker_dies(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingOnQuery)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    directory = tmp_path / "prom"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    try:
        # Two "workers" of one instance: one sees its dependency fail and opens its circuit, one does not.
        runs = {}
        for mode in ("fail", "ok", "idle"):
            proc = subprocess.run(
                [*python_child(WORKER_SCRIPT), url, "idle" if mode == "idle" else "store", mode],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        server.shutdown()
        server.server_close()
    assert runs["fail"]["state"] == "open"
    assert runs["ok"]["state"] == "closed"

    aggregate = parse(_render_directory(directory))
    assert aggregate.value("photo_api_circuit_breaker_state", service="store") == 1  # livemax: the worst worker
    assert aggregate.value("photo_api_retry_attempts_total", service="store", result="retry") == 2
    assert aggregate.value("photo_api_retry_attempts_total", service="store", result="giveup") == 1
    # A dependency that has seen no call yet is on the dashboard all the same: closed, nothing retried.
    assert aggregate.value("photo_api_circuit_breaker_state", service="idle") == 0
    assert aggregate.value("photo_api_retry_attempts_total", service="idle", result="retry") == 0

    # The failing worker dies (child_exit marks it): its open circuit goes, its counts stay.
    mark_process_dead(runs["fail"]["pid"], str(directory))
    after = parse(_render_directory(directory))
    assert after.value("photo_api_circuit_breaker_state", service="store") == 0
    assert after.value("photo_api_retry_attempts_total", service="store", result="retry") == 2


def _render_directory(directory: Path) -> str:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return generate_latest(registry).decode()
