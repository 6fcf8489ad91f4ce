"""The SIGTERM drain of a real `photo-api serve` (gunicorn master + 2 gevent workers), timed from outside.

What the load balancer relies on (docs/operations.md "Instance lifecycle", lifecycle.py): readiness
turns 503 in every worker at once, the instance keeps accepting and serving for DRAIN_DELAY_SECONDS
with `Connection: close` on every response, a request in flight when the listeners close still
completes, and the master is gone before DRAIN_DELAY_SECONDS + GRACEFUL_TIMEOUT with exit code 0.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import pytest
import requests

from tests.e2e.conftest import StartServer
from tests.harness.env import lifecycle_env
from tests.harness.server import ServeProcess, pid_alive
from tests.harness.users import Users

pytestmark = pytest.mark.slow

DRAIN_S = 2.5
GRACEFUL_S = 6
# What the LB in front would be configured with: 0.5 s x 2 probes + 1 s timeout <= DRAIN_S.
FAST_LIFECYCLE = lifecycle_env(DRAIN_S, GRACEFUL_S, check_interval_s=0.5, unhealthy_threshold=2, check_timeout_s=1.0)
# The login stays blocked this long after the drain ends, i.e. it is in flight when the listeners close.
IN_FLIGHT_AFTER_DRAIN_S = 1.0
READINESS_FLIP_BOUND_S = 1.0
PROBE_INTERVAL_S = 0.05
HTTP_TIMEOUT_S = 5
# gunicorn's quick stop gives workers 2 s; the master notices the signal at once.
QUICK_STOP_BOUND_S = 4.0
RECYCLE_PROBE_TIMEOUT_S = 30
RECYCLE_PROBES = 60
RECYCLE_PROBE_INTERVAL_S = 0.03


@dataclass
class Probe:
    """One request on a new connection after SIGTERM: when it was sent and what came back."""

    sent_at: float
    path: str
    status: int | None  # None: the connection was refused or reset
    connection_header: str = ""
    error: str = ""


@dataclass
class DrainRun:
    probes: list[Probe] = field(default_factory=list)
    kept_alive: dict[int, tuple[float, int, str, str]] = field(default_factory=dict)  # pid -> (t, status, ...)
    login_status: int | None = None
    login_done_at: float | None = None
    exit_code: int | None = None
    exit_at: float | None = None


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str, dict[str, Any]]:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    return response.status, response.getheader("Connection", ""), json.loads(body) if body else {}


def _waiting_on_lock(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'users'::regclass"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return bool(cur.fetchone()[0])


def _probe_new_connections(server: ServeProcess, t0: float, run: DrainRun, stop: threading.Event) -> None:
    """Every PROBE_INTERVAL_S, readiness and liveness each on a new connection, until the port is gone."""
    refused_in_a_row = 0
    while not stop.is_set() and refused_in_a_row < 4:
        for path in ("/health/readiness", "/health/liveness"):
            sent = time.monotonic() - t0
            try:
                # A Session per request: a new connection each time, as a load balancer's prober does.
                with requests.Session() as http:
                    r = http.get(server.url(path), timeout=HTTP_TIMEOUT_S)
                run.probes.append(Probe(sent, path, r.status_code, r.headers.get("Connection", "")))
                refused_in_a_row = 0
            except requests.ConnectionError as exc:
                run.probes.append(Probe(sent, path, None, error=type(exc).__name__))
                refused_in_a_row += 1
        time.sleep(PROBE_INTERVAL_S)


def test_sigterm_drains_then_stops_gracefully(production_env: dict[str, str], serve: StartServer) -> None:
    server = serve({**production_env, **FAST_LIFECYCLE}, workers=2)
    workers = set(server.worker_pids())
    assert len(workers) == 2
    creds = Users.at(server.url(), timeout=HTTP_TIMEOUT_S).register()

    # One idle keep-alive connection on each worker, opened before SIGTERM.
    kept: dict[int, http.client.HTTPConnection] = {}
    while set(kept) != workers:
        pid, conn = server.connection_to_worker(workers - set(kept))
        status, _, _ = _get(conn, "/health/readiness")
        assert status == 200
        kept[pid] = conn

    run = DrainRun()
    db = psycopg2.connect(production_env["DATABASE_URL"])
    stop_probing = threading.Event()
    t0 = 0.0

    def login() -> None:
        r = requests.post(server.url("/auth/login"), json=creds, timeout=DRAIN_S + GRACEFUL_S + HTTP_TIMEOUT_S)
        run.login_status, run.login_done_at = r.status_code, time.monotonic() - t0

    login_thread = threading.Thread(target=login, daemon=True)
    prober: threading.Thread | None = None
    try:
        with db.cursor() as cur:
            cur.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")  # the login waits on it
        login_thread.start()
        server.wait_for(lambda: _waiting_on_lock(db), HTTP_TIMEOUT_S, "the login to wait on the lock")

        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        prober = threading.Thread(target=_probe_new_connections, args=(server, t0, run, stop_probing), daemon=True)
        prober.start()
        time.sleep(0.2)
        for pid, conn in kept.items():  # the idle keep-alive connections, one per worker
            status, connection, body = _get(conn, "/health/readiness")
            run.kept_alive[pid] = (time.monotonic() - t0, status, connection, body.get("status", ""))

        time.sleep(max(0.0, t0 + DRAIN_S + IN_FLIGHT_AFTER_DRAIN_S - time.monotonic()))
        db.rollback()  # releases the lock: the login, in flight since before SIGTERM, completes now
        run.exit_code = server.wait(DRAIN_S + GRACEFUL_S + 2)
        run.exit_at = time.monotonic() - t0
        login_thread.join(HTTP_TIMEOUT_S)
    finally:
        stop_probing.set()
        db.rollback()
        db.close()
        for conn in kept.values():
            conn.close()
    if prober is not None:
        prober.join(HTTP_TIMEOUT_S)

    _report(run)
    # Every worker answered 503 "draining" on its existing connection at once, and closed it.
    assert set(run.kept_alive) == workers
    for t, status, connection, body_status in run.kept_alive.values():
        assert (status, connection.lower(), body_status) == (503, "close", "draining")
        assert t < READINESS_FLIP_BOUND_S
    readiness = [p for p in run.probes if p.path == "/health/readiness" and p.status is not None]
    liveness = [p for p in run.probes if p.path == "/health/liveness" and p.status is not None]
    # The master flips the page as soon as it handles the signal; a probe sent in the same instant may
    # still see 200, none after the first 503 may.
    first_503 = next(i for i, p in enumerate(readiness) if p.status == 503)
    assert readiness[first_503].sent_at < READINESS_FLIP_BOUND_S
    assert {p.status for p in readiness[first_503:]} == {503}
    assert {p.status for p in liveness} == {200}  # liveness stays 200 while the instance serves
    # Every answer once the page has flipped closes its connection; like the 503s, one sent in the same
    # instant as the signal may not yet.
    flipped_at = readiness[first_503].sent_at
    assert {p.connection_header.lower() for p in readiness + liveness if p.sent_at >= flipped_at} == {"close"}
    # New connections were accepted for the whole drain delay, and refused soon after it.
    failed = [p for p in run.probes if p.status is None]
    assert failed, "the port never closed"
    assert min(p.sent_at for p in failed) >= DRAIN_S
    assert max(p.sent_at for p in readiness + liveness) >= DRAIN_S - 2 * PROBE_INTERVAL_S - 0.1
    # The request in flight when the listeners closed completed; the master exited in time with 0.
    assert run.login_status == 200
    assert run.login_done_at is not None and run.login_done_at > DRAIN_S
    assert run.exit_code == 0
    assert run.exit_at is not None and run.exit_at < DRAIN_S + GRACEFUL_S
    assert not [pid for pid in workers if pid_alive(pid)]
    messages = [rec["message"] for rec in server.log_lines()]
    assert any(m.startswith("SIGTERM: draining") for m in messages), messages


def _report(run: DrainRun) -> None:
    ok = [p for p in run.probes if p.status is not None]
    failed = [p for p in run.probes if p.status is None]
    first_503 = min((p.sent_at for p in ok if p.path == "/health/readiness" and p.status == 503), default=None)
    last_ok = max((p.sent_at for p in ok), default=None)
    first_failed = min((p.sent_at for p in failed), default=None)
    kept = {pid: f"{status} {connection} at {_s(t)}" for pid, (t, status, connection, _) in run.kept_alive.items()}
    print(
        f"\ndrain {DRAIN_S}s/graceful {GRACEFUL_S}s after SIGTERM: kept-alive connections {kept}; "
        f"first readiness 503 sent at {_s(first_503)}; last new connection served at {_s(last_ok)}; "
        f"first refused at {_s(first_failed)}; {len(ok)} answered / {len(failed)} refused; "
        f"in-flight login {run.login_status} at {_s(run.login_done_at)}; exit {run.exit_code} at {_s(run.exit_at)}"
    )


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}s"


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["second-sigterm", "sigint"])
def test_second_signal_during_the_drain_stops_quickly(
    production_env: dict[str, str], serve: StartServer, second: signal.Signals
) -> None:
    env = {**production_env, "DRAIN_DELAY_SECONDS": "30", "GRACEFUL_TIMEOUT": "30"}
    server = serve(env, workers=2)
    workers = server.worker_pids()
    server.signal(signal.SIGTERM)
    server.wait_for(
        lambda: requests.get(server.url("/health"), timeout=HTTP_TIMEOUT_S).status_code == 503, 2, "draining"
    )
    assert requests.get(server.url("/health/liveness"), timeout=HTTP_TIMEOUT_S).status_code == 200
    started = time.monotonic()
    server.signal(second)
    code = server.wait(QUICK_STOP_BOUND_S)
    print(f"\n{second.name} during the drain: exit {code} after {time.monotonic() - started:.2f}s")
    assert code == 0
    assert not [pid for pid in workers if pid_alive(pid)]


def test_worker_crashing_during_the_drain_is_replaced(production_env: dict[str, str], serve: StartServer) -> None:
    env = {**production_env, "DRAIN_DELAY_SECONDS": "30", "GRACEFUL_TIMEOUT": "30"}
    server = serve(env, workers=2)
    before = set(server.worker_pids())
    server.signal(signal.SIGTERM)
    server.wait_for(
        lambda: requests.get(server.url("/health"), timeout=HTTP_TIMEOUT_S).status_code == 503, 2, "draining"
    )
    crashed = min(before)
    os.kill(crashed, signal.SIGKILL)
    server.wait_for(lambda: len(set(server.worker_pids()) - before) == 1, 5, "a replacement worker")
    (replacement,) = set(server.worker_pids()) - before
    _, conn = server.connection_to_worker({replacement})
    try:
        status, connection, body = _get(conn, "/health/readiness")
    finally:
        conn.close()
    # The replacement inherits the shared page: it is draining from its first request.
    assert (status, connection.lower(), body["status"]) == (503, "close", "draining")
    assert server.stop(signal.SIGINT, timeout=QUICK_STOP_BOUND_S) == 0


def test_worker_recycled_by_max_requests_does_not_flip_readiness(
    production_env: dict[str, str], serve: StartServer
) -> None:
    env = {**production_env, "MAX_REQUESTS": "10", "MAX_REQUESTS_JITTER": "5"}
    server = serve(env, workers=2)
    before = set(server.worker_pids())
    statuses = []
    # Spread over a few seconds: a worker past its limit keeps accepting until its loop notices (<= 1 s).
    for _ in range(RECYCLE_PROBES):
        with requests.Session() as http:  # a new connection per request: both workers get some
            # A probe can wait for a fresh worker to import the app when both recycle at once (seconds on a
            # loaded machine): slow is allowed here, a 503 is not.
            statuses.append(http.get(server.url("/health/readiness"), timeout=RECYCLE_PROBE_TIMEOUT_S).status_code)
        time.sleep(RECYCLE_PROBE_INTERVAL_S)
    server.wait_for(lambda: bool(before - set(server.worker_pids())), 5, "a recycled worker")
    server.wait_for(lambda: len(server.worker_pids()) == 2, 5, "two workers again")
    recycled = before - set(server.worker_pids())
    print(f"\nmax_requests: {len(recycled)} worker(s) recycled; statuses {set(statuses)}")
    assert recycled, "no worker reached max_requests"
    assert statuses == [200] * len(statuses)
