"""`photo-api serve` for real: gunicorn + gevent workers over HTTP on loopback, PostgreSQL and SQLite.

The key test shows what psycogreen buys: a request stuck in PostgreSQL must not freeze the other
requests of its worker (without psycogreen, psycopg2 blocks the whole event loop while it waits for
PostgreSQL). It runs twice: with psycogreen, as deployed, and with the DISABLE_PSYCOGREEN diagnostic
switch, to prove the test fails when the patch is missing.
"""

from __future__ import annotations

import http.client
import json
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests

from photo_api import migrate
from tests.e2e.conftest import StartServer
from tests.harness.env import lifecycle_env
from tests.harness.server import ServeProcess, pid_alive
from tests.harness.users import Users, bearer
from tests.images import png

pytestmark = pytest.mark.slow

HTTP_TIMEOUT_S = 10
# How long the test holds the lock on `users`, i.e. how long the login request is stuck in the database.
LOCK_HOLD_S = 2.0
PROBES = 5
PROBE_INTERVAL_S = 0.2
# A health probe on a worker whose event loop runs: a few ms; the LB's probe timeout is seconds.
RESPONSIVE_PROBE_S = 0.5
DRAIN_S = 2.0
# The drain, then a gevent worker notices SIGTERM within 1 s (its run loop checks once a second) and exits.
SIGTERM_EXIT_BOUND_S = DRAIN_S + 5
# CLIENT_BODY_TIMEOUT of the stalled-upload test, and what a loaded machine adds to the answer.
STALL_TIMEOUT_S = 1.0
STALL_SLACK_S = 1.5


def _register_login_me(http: requests.Session, server: ServeProcess) -> tuple[str, dict[str, Any]]:
    """Register a new user, log in and fetch /auth/me; return the token and the /auth/me body."""
    users = Users.at(server.url(), session=http, timeout=HTTP_TIMEOUT_S)
    creds = users.register()
    token = users.login(creds)
    r = http.get(server.url("/auth/me"), headers=bearer(token), timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    assert r.json()["email"] == creds["email"]
    return token, r.json()


def test_serve_on_postgresql_over_http(production_env: dict[str, str], serve: StartServer) -> None:
    server = serve(production_env, workers=1)
    with requests.Session() as http:
        _register_login_me(http, server)
        r = http.get(server.url("/auth/me"), headers={"X-Request-ID": "e2e-check-42"}, timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 401
        assert r.headers["X-Request-ID"] == "e2e-check-42"
        r = http.get(server.url("/health"), timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 200
        assert r.json()["checks"]["database"]["status"] == "healthy"
        assert len(r.headers["X-Request-ID"]) == 32  # generated when the client sends none

    # The access line is written before the response leaves the worker, so it is already on stdout.
    records = server.log_lines()  # raises on the first stdout line that is not JSON
    messages = [(rec["logger"], rec["message"]) for rec in records]
    assert ("gunicorn.error", "Using worker: gevent") in messages
    access = [rec for rec in records if rec["logger"] == "photo_api.access"]
    assert any(rec["request_id"] == "e2e-check-42" and rec["status"] == 401 for rec in access), access
    assert not any("DISABLE_PSYCOGREEN" in rec["message"] for rec in records)


@dataclass
class BlockedLoginRun:
    """What the key scenario measured."""

    probe_status: list[int] = field(default_factory=list)
    probe_seconds: list[float] = field(default_factory=list)
    login_blocked_after_probes: bool = False
    login_status: int | None = None
    login_seconds: float | None = None


def _login_waiting_for_lock(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'users'::regclass"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return bool(cur.fetchone()[0])


def _blocked_login_scenario(server: ServeProcess, database_url: str) -> BlockedLoginRun:
    """Hold an ACCESS EXCLUSIVE lock on `users` while a login waits on it, and probe /health meanwhile."""
    run = BlockedLoginRun()
    creds = Users.at(server.url(), timeout=HTTP_TIMEOUT_S).register()
    assert requests.get(server.url("/health"), timeout=HTTP_TIMEOUT_S).status_code == 200

    def login() -> None:
        started = time.perf_counter()
        response = requests.post(server.url("/auth/login"), json=creds, timeout=LOCK_HOLD_S + HTTP_TIMEOUT_S)
        run.login_status, run.login_seconds = response.status_code, time.perf_counter() - started

    conn = psycopg2.connect(database_url)
    release = threading.Timer(LOCK_HOLD_S, conn.rollback)
    login_thread = threading.Thread(target=login, daemon=True)
    try:
        with conn.cursor() as cur:
            cur.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")  # held until the rollback
        login_thread.start()
        server.wait_for(lambda: _login_waiting_for_lock(conn), HTTP_TIMEOUT_S, "the login to wait on the lock")
        # From here the lock is held LOCK_HOLD_S more; the release runs on a timer because without
        # psycogreen the probe below does not return until it happens.
        release.start()
        for _ in range(PROBES):
            started = time.perf_counter()
            probe = requests.get(server.url("/health"), timeout=LOCK_HOLD_S + HTTP_TIMEOUT_S)
            run.probe_seconds.append(time.perf_counter() - started)
            run.probe_status.append(probe.status_code)
            time.sleep(PROBE_INTERVAL_S)
        run.login_blocked_after_probes = run.login_status is None
        login_thread.join(LOCK_HOLD_S + HTTP_TIMEOUT_S)
    finally:
        release.cancel()
        if release.ident is not None:  # started
            release.join()
        conn.rollback()
        conn.close()
    return run


@pytest.mark.parametrize("psycogreen", [True, False], ids=["psycogreen", "without-psycogreen"])
def test_slow_query_does_not_freeze_the_worker(
    production_env: dict[str, str], serve: StartServer, psycogreen: bool
) -> None:
    if psycogreen:
        env = production_env
    else:
        # The switch is refused in production; ENVIRONMENT changes nothing on the database path.
        env = {**production_env, "ENVIRONMENT": "development", "DISABLE_PSYCOGREEN": "true"}
    server = serve(env, workers=1)
    workers = server.worker_pids()
    assert len(workers) == 1

    run = _blocked_login_scenario(server, production_env["DATABASE_URL"])
    probes = ", ".join(f"{s:.3f}" for s in run.probe_seconds)
    print(f"\npsycogreen={psycogreen}: /health probes [{probes}] s; blocked login {run.login_seconds or 0:.3f} s")

    assert run.probe_status == [200] * PROBES
    assert run.login_status == 200
    assert run.login_seconds is not None and run.login_seconds >= LOCK_HOLD_S  # it really waited on the lock
    assert server.worker_pids() == workers  # the same worker served everything: no timeout, no restart
    if psycogreen:
        # Every probe answered while the login was still stuck in the database.
        assert run.login_blocked_after_probes
        assert max(run.probe_seconds) < RESPONSIVE_PROBE_S, run.probe_seconds
    else:
        # The control: a blocking driver freezes the worker, so the first probe waits for the lock.
        assert any("DISABLE_PSYCOGREEN" in rec["message"] for rec in server.log_lines())
        assert run.probe_seconds[0] > LOCK_HOLD_S * 0.75, run.probe_seconds


def test_sigterm_stops_the_master_with_exit_0(production_env: dict[str, str], serve: StartServer) -> None:
    # The drain and its timing are tested in test_lifecycle_drain.py; a short one keeps this test quick.
    server = serve({**production_env, **lifecycle_env(DRAIN_S, graceful_s=5)}, workers=2)
    workers = server.worker_pids()
    assert len(workers) == 2
    assert requests.get(server.url("/health"), timeout=HTTP_TIMEOUT_S).status_code == 200

    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=SIGTERM_EXIT_BOUND_S) == 0
    print(f"\nmaster exited {time.monotonic() - started:.2f} s after SIGTERM")
    assert not [pid for pid in workers if pid_alive(pid)]
    messages = [rec["message"] for rec in server.log_lines()]
    assert "Handling signal: term" in messages
    assert "Shutting down: Master" in messages


def test_development_serve_with_no_configuration(serve: StartServer, tmp_path: Path) -> None:
    """The README's one command: no DATABASE_URL, no secret, no ENVIRONMENT, in an empty directory."""
    home = tmp_path / "newcomer"
    home.mkdir()
    server = serve({}, cwd=home)
    var = home / "var"
    assert (var / "photo_api.db").is_file()
    assert (var / "storage").is_dir()
    assert (var / "jwt-secret").is_file()
    assert migrate.current(f"sqlite:///{var / 'photo_api.db'}") == migrate.head()
    with requests.Session() as http:
        token, me = _register_login_me(http, server)
    server.log_lines()  # every stdout line is JSON in development too
    assert server.stop(signal.SIGINT) == 0  # a developer's Ctrl-C: the quick stop, no drain

    # A second start reuses the database and the secret: the token issued before still works.
    again = serve({}, cwd=home)
    r = requests.get(again.url("/auth/me"), headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200
    assert r.json()["id"] == me["id"]


def _stalled(server: ServeProcess, method: str, target: str, headers: dict[str, str], body: bytes, sent: int) -> Any:
    """Send a request announcing `body` but only its first `sent` bytes; (status, seconds to answer, closed)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=HTTP_TIMEOUT_S)
    try:
        conn.putrequest(method, target)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders()
        conn.send(body[:sent])
        started = time.monotonic()
        response = conn.getresponse()
        seconds = time.monotonic() - started
        response.read()
        assert conn.sock is not None
        return response.status, seconds, conn.sock.recv(1) == b""
    finally:
        conn.close()


def test_a_stalled_json_body_is_408_and_closes_the_connection(
    production_env: dict[str, str], serve: StartServer
) -> None:
    server = serve({**production_env, "CLIENT_BODY_TIMEOUT": str(STALL_TIMEOUT_S)}, workers=1)
    account = Users.at(server.url(), timeout=HTTP_TIMEOUT_S).register()
    body = json.dumps({"email": account["email"], "password": account["password"]}).encode()
    status, seconds, closed = _stalled(server, "POST", "/auth/login", {"Content-Type": "application/json"}, body, 10)
    assert status == 408
    assert STALL_TIMEOUT_S * 0.9 <= seconds < STALL_TIMEOUT_S + STALL_SLACK_S, seconds
    assert closed
    # The worker serves on: the whole body, sent at once, logs in.
    r = requests.post(server.url("/auth/login"), data=body, headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 200, r.text


def test_a_stalled_upload_to_local_storage_is_408_and_leaves_no_file(
    production_env: dict[str, str], serve: StartServer, tmp_path: Path
) -> None:
    server = serve({**production_env, "CLIENT_BODY_TIMEOUT": str(STALL_TIMEOUT_S)}, workers=1)
    user = Users.at(server.url(), timeout=HTTP_TIMEOUT_S).create()["headers"]
    data = png(32, 32, text=secrets.token_hex(300_000).encode())  # 600 KB: past the sniffed head

    # The signed PUT route of a direct upload: LocalStorage is writing its temp file when the client stops.
    r = requests.post(
        server.url("/photos/presigned-url"),
        headers=user,
        json={"filename": "a.png", "content_type": "image/png", "file_size": len(data)},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 201, r.text
    target = r.json()["upload_url"].split("//", 1)[1].split("/", 1)[1]
    put = _stalled(server, "PUT", f"/{target}", {"Content-Type": "image/png"}, data, len(data) // 2)

    # A multipart upload, stalled in the middle of LocalStorage.put as well.
    boundary = secrets.token_hex(8)
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="b.png"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    multipart = {**user, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    post = _stalled(server, "POST", "/photos", multipart, form, len(form) // 2)

    for status, seconds, closed in (put, post):
        assert status == 408
        assert STALL_TIMEOUT_S * 0.9 <= seconds < STALL_TIMEOUT_S + STALL_SLACK_S, seconds
        assert closed
    print(f"\nlocal storage: 408 after {put[1]:.2f} s (PUT), {post[1]:.2f} s (POST)")
    storage = tmp_path / "storage"
    assert [p for p in storage.rglob("*") if p.is_file()] == [], "no temp file and no object stays behind"
