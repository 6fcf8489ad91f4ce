"""Metrics of a real `photo-api serve` (gunicorn master + 2 gevent workers), read the way Prometheus reads
them: one scrape of the master's METRICS_PORT.

What an operator relies on: the scrape is the exact sum over every worker; a worker killed and replaced
takes its gauges with it but never its counts, and the readiness gauges are back as soon as a new worker
boots; the master answers through the drain and the graceful stop; labels are route templates, never
paths or tokens.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import pytest
import requests

from photo_api.config import load_settings
from photo_api.metrics import AUTO_DIR_PREFIX, default_multiproc_dir
from tests.harness.server import ServeError, ServeProcess, free_port, pid_alive
from tests.metrics.conftest import HTTP_TIMEOUT_S, INSTANCE_NAME, Instance, StartInstance, file_value, get

pytestmark = pytest.mark.slow

ME = {"method": "GET", "endpoint": "/auth/me", "status": "200"}
ME_DURATION = {"method": "GET", "endpoint": "/auth/me"}
# Requests sent on each worker's connection: different numbers, so a mix-up between workers shows.
PER_WORKER = (7, 5)
# What follows the "{" of the held login (Content-Length 100): a well-formed login of nobody (401).
LOGIN_REST = b'"email": "nobody@example.com", "password": "not the password"}'
# PID_MAX_LIMIT on 64-bit Linux is 2**22: no process can have a larger pid.
IMPOSSIBLE_PID = 2**22 + 1


def _hold_request_open(instance: Instance) -> tuple[int, socket.socket]:
    """Start a login whose body never finishes: a request in flight on some worker. Its pid and socket."""
    owner, conn = instance.connection()
    assert conn.sock is not None
    conn.sock.sendall(
        b"POST /auth/login HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    instance.wait_for_metric(lambda s: s.value("photo_api_http_requests_in_flight") == 1, "one request in flight")
    return owner, conn.sock


def test_one_scrape_is_the_exact_sum_over_every_worker(start_instance: StartInstance) -> None:
    instance = start_instance(workers=2)
    headers = instance.new_user()
    conns = instance.connection_per_worker()
    assert len(conns) == 2

    for (pid, conn), count in zip(sorted(conns.items()), PER_WORKER, strict=True):
        for _ in range(count):
            assert get(conn, "/auth/me", headers) == 200
        # Each worker's own file holds exactly its share: the requests really were spread.
        assert file_value(instance.directory / f"counter_{pid}.db", "photo_api_http_requests_total", ME) == count

    scraped = instance.scrape()
    assert scraped.value("photo_api_http_requests_total", **ME) == sum(PER_WORKER)
    assert scraped.value("photo_api_http_request_duration_seconds_count", **ME_DURATION) == sum(PER_WORKER)
    assert scraped.value("photo_api_http_requests_in_flight") == 0
    assert scraped.value("photo_api_draining") == 0
    settings = load_settings(environ={})
    capacity = settings.db_pool_size + settings.db_max_overflow
    assert scraped.value("photo_api_db_pool_connections_max") == 2 * capacity
    (info_labels,) = scraped.values("photo_api_app_info")
    assert dict(info_labels)["instance"] == INSTANCE_NAME
    assert set(dict(info_labels)) == {"version", "instance", "node", "region"}


def test_labels_are_route_templates_never_paths_or_tokens(start_instance: StartInstance) -> None:
    instance = start_instance(workers=2)
    headers = instance.new_user()
    token = headers["Authorization"].split()[1]
    secret_path = "/no-such-route/4fd1c0ffee"
    share_token = "sharetoken" + "x" * 30

    assert (
        requests.get(instance.server.url("/photos/987654"), headers=headers, timeout=HTTP_TIMEOUT_S).status_code == 404
    )
    assert requests.get(instance.server.url(secret_path), timeout=HTTP_TIMEOUT_S).status_code == 404
    assert requests.get(instance.server.url(f"/share/{share_token}"), timeout=HTTP_TIMEOUT_S).status_code == 404
    assert requests.request("BREW", instance.server.url("/auth/me"), timeout=HTTP_TIMEOUT_S).status_code == 405
    assert requests.get(instance.server.url("/health"), timeout=HTTP_TIMEOUT_S).status_code == 200

    scraped = instance.scrape()
    assert (
        scraped.value("photo_api_http_requests_total", method="GET", endpoint="/photos/<int:photo_id>", status="404")
        == 1
    )
    assert scraped.value("photo_api_http_requests_total", method="GET", endpoint="/share/<token>", status="404") == 1
    assert scraped.value("photo_api_http_requests_total", method="GET", endpoint="unmatched", status="404") == 1
    # A method the client made up is not a label value either; a 405 matched no route.
    assert scraped.value("photo_api_http_requests_total", method="other", endpoint="unmatched", status="405") == 1
    for leaked in ("987654", "4fd1c0ffee", share_token, token, "BREW"):
        assert leaked not in scraped.text
    # The probe answered 200: ready, and the database check is healthy.
    assert scraped.value("photo_api_ready") == 1
    assert scraped.value("photo_api_health_check_status", check="database") == 1
    # Metrics are served by the master on their own port, never by the app on the public one.
    assert requests.get(instance.server.url("/metrics"), timeout=HTTP_TIMEOUT_S).status_code == 404


def test_a_killed_worker_takes_its_gauges_but_never_its_counts(start_instance: StartInstance) -> None:
    instance = start_instance(workers=2)
    headers = instance.new_user()
    before = 0
    for conn in instance.connection_per_worker().values():
        for _ in range(3):
            assert get(conn, "/auth/me", headers) == 200
            before += 1
        conn.close()
    assert instance.scrape().value("photo_api_http_requests_total", **ME) == before

    # The victim is in the middle of a request: without mark_process_dead its in-flight 1 would stay forever.
    victim, held = _hold_request_open(instance)
    survivor = next(p for p in instance.server.worker_pids() if p != victim)
    os.kill(victim, signal.SIGKILL)
    held.close()
    instance.server.wait_for(
        lambda: victim not in instance.server.worker_pids() and len(instance.server.worker_pids()) == 2,
        10,
        "the killed worker replaced",
    )
    (replacement,) = set(instance.server.worker_pids()) - {survivor}
    settings = load_settings(environ={})
    capacity = settings.db_pool_size + settings.db_max_overflow
    # Two live workers' pools once the replacement has loaded the app; with the dead worker's gauge it
    # would be three.
    scraped = instance.wait_for_metric(
        lambda s: s.value("photo_api_db_pool_connections_max") == 2 * capacity, "the replacement's gauges"
    )
    assert scraped.value("photo_api_http_requests_total", **ME) == before  # not one count lost
    assert scraped.value("photo_api_http_requests_in_flight") == 0  # the dead worker's 1 is gone
    assert not list(instance.directory.glob(f"gauge_live*_{victim}.db"))
    assert (instance.directory / f"counter_{victim}.db").exists()

    _, conn = instance.connection({replacement})
    for _ in range(4):
        assert get(conn, "/auth/me", headers) == 200
    assert instance.scrape().value("photo_api_http_requests_total", **ME) == before + 4


def test_readiness_gauges_exist_before_any_probe_and_after_every_worker_is_replaced(
    start_instance: StartInstance,
) -> None:
    instance = start_instance(workers=2)
    # No load balancer has probed /health yet: each worker probed once as it booted, before accepting.
    scraped = instance.scrape()
    assert scraped.value("photo_api_ready") == 1
    for check in ("database", "schema", "object_storage"):
        assert scraped.value("photo_api_health_check_status", check=check) == 1, check
    assert scraped.value("photo_api_health_check_status", check="cdn") is None  # no CDN configured
    assert scraped.value("photo_api_fallbacks_total", service="cdn") == 0  # known in advance: 0, not absent

    old = set(instance.server.worker_pids())
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    instance.server.wait_for(
        lambda: len(set(instance.server.worker_pids()) - old) == 2 and not old & set(instance.server.worker_pids()),
        10,
        "every worker replaced",
    )
    # An answer from the new workers means one of them has booted; still no /health request anywhere.
    assert requests.get(instance.server.url("/health/liveness"), timeout=HTTP_TIMEOUT_S).status_code == 200
    scraped = instance.scrape()
    assert scraped.value("photo_api_ready") == 1
    assert scraped.value("photo_api_health_check_status", check="database") == 1
    assert scraped.value("photo_api_health_check_status", check="schema") == 1


def test_the_master_answers_scrapes_through_the_drain_and_the_graceful_stop(start_instance: StartInstance) -> None:
    instance = start_instance(workers=2)
    requests.get(instance.server.url("/health"), timeout=HTTP_TIMEOUT_S)
    worker, held = _hold_request_open(instance)

    instance.server.signal(signal.SIGTERM)
    draining = instance.wait_for_metric(lambda s: s.value("photo_api_draining") == 1, "draining 1", timeout=2)
    assert draining.value("photo_api_http_requests_in_flight") == 1
    # The load balancer's probe now gets 503, and the scrape says so.
    assert requests.get(instance.server.url("/health"), timeout=HTTP_TIMEOUT_S).status_code == 503
    assert instance.scrape().value("photo_api_ready") == 0

    # Drain over, listeners closed: workers only finish what is in flight, and the master still answers.
    def public_port_closed() -> bool:
        try:
            requests.get(instance.server.url("/health/liveness"), timeout=1)
        except requests.ConnectionError:
            return True
        return False

    instance.server.wait_for(public_port_closed, 10, "the listeners closed after the drain")
    during_stop = instance.scrape()
    assert during_stop.value("photo_api_http_requests_in_flight") == 1
    assert during_stop.value("photo_api_draining") == 1

    held.sendall(LOGIN_REST.rjust(99))  # the body completes: the login is answered and the worker can exit
    assert instance.server.wait(10) == 0
    counted = file_value(
        instance.directory / f"counter_{worker}.db",
        "photo_api_http_requests_total",
        {"method": "POST", "endpoint": "/auth/login", "status": "401"},
    )
    assert counted == 1
    with pytest.raises(requests.ConnectionError):
        instance.scrape()


def test_a_second_instance_refuses_a_directory_in_use(start_instance: StartInstance, tmp_path: Path) -> None:
    first = start_instance(workers=1)
    headers = first.new_user()
    requests.get(first.server.url("/auth/me"), headers=headers, timeout=HTTP_TIMEOUT_S)

    with pytest.raises(ServeError, match="is in use by another running instance"):
        start_instance({"PROMETHEUS_MULTIPROC_DIR": str(first.directory)}, workers=1)

    # The first instance's counts were not wiped by the second one's start.
    assert first.scrape().value("photo_api_http_requests_total", **ME) == 1


def test_default_directory_is_private_swept_and_removed(start_instance: StartInstance) -> None:
    stale = default_multiproc_dir(IMPOSSIBLE_PID)  # left behind by a master that was killed
    stale.mkdir(mode=0o700)
    (stale / "counter_1.db").write_bytes(b"")

    instance = start_instance({"PROMETHEUS_MULTIPROC_DIR": None}, workers=1)
    directory = default_multiproc_dir(instance.server.master_pid)
    assert directory.is_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert directory.name.startswith(AUTO_DIR_PREFIX)
    assert not stale.exists()
    assert instance.scrape().value("photo_api_draining") == 0

    assert instance.server.stop(signal.SIGTERM) == 0
    assert not directory.exists()


def test_metrics_disabled_means_no_port_and_no_directory(start_instance: StartInstance, tmp_path: Path) -> None:
    directory = tmp_path / "never"
    instance = start_instance({"METRICS_ENABLED": "false", "PROMETHEUS_MULTIPROC_DIR": str(directory)}, workers=1)
    headers = instance.new_user()
    assert requests.get(instance.server.url("/auth/me"), headers=headers, timeout=HTTP_TIMEOUT_S).status_code == 200
    with pytest.raises(requests.ConnectionError):
        instance.scrape()
    assert not directory.exists()


def test_a_busy_metrics_port_does_not_stop_the_instance(start_instance: StartInstance) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        instance = start_instance({"METRICS_PORT": str(port)}, workers=1)
        assert requests.get(instance.server.url("/health"), timeout=HTTP_TIMEOUT_S).status_code == 200
        errors = [line for line in instance.server.log_lines() if line.get("level") == "ERROR"]
        assert any("cannot listen" in line["message"] for line in errors)


def test_serve_exports_the_directory_before_gunicorn_imports_prometheus_client(tmp_path: Path) -> None:
    # `photo-api serve` in development with nothing configured: the default directory is chosen by the
    # command, named after the pid that becomes the master's (exec), and the workers share it.
    metrics_port = free_port()
    env = {"METRICS_PORT": str(metrics_port), "DRAIN_DELAY_SECONDS": "0"}
    server = ServeProcess(env, cwd=tmp_path, log_dir=tmp_path / "dev", workers=2)
    with server:
        requests.get(server.url("/health"), timeout=HTTP_TIMEOUT_S)
        requests.get(server.url("/health"), timeout=HTTP_TIMEOUT_S)
        directory = default_multiproc_dir(server.master_pid)
        # Each worker writes its file as soon as it has loaded the app (not necessarily served anything).
        server.wait_for(
            lambda: (
                {p.name for p in directory.glob("counter_*.db")}
                == {f"counter_{pid}.db" for pid in server.worker_pids()}
            ),
            10,
            "one counter file per worker in the default directory",
        )
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=HTTP_TIMEOUT_S).text
        assert 'photo_api_http_requests_total{endpoint="/health",method="GET",status="200"} 2.0' in text
        assert "MonkeyPatchWarning" not in server.stderr()
        assert server.stop(signal.SIGTERM) == 0
    assert not pid_alive(server.master_pid)
    assert not directory.exists()
