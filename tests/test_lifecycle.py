"""Lifecycle pieces that need no gunicorn: the shared DB probe, the connect gate, shutdown hooks, settings.

The drain itself (signals, listeners, timing) is shown with real processes in tests/e2e/.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from photo_api.config import ConfigError, Settings, load_settings
from photo_api.db import Database
from photo_api.health import HEALTHY, DatabaseProbe
from photo_api.lifecycle import ShutdownHooks
from photo_api.resilience import ConnectGate, capacity_refusal
from tests.harness.databases import limited_role, pg_database
from tests.harness.env import TEST_SECRET, production_env
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.server import free_port

PRODUCTION = production_env("postgresql://photo_api@db.example:5432/photo_api", "/srv/photos")
# The gate's background retry interval: tiny, so that its real retries take milliseconds.
RETRY_S = 0.005


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the shared database probe


def test_probe_result_is_shared_for_max_age(settings: Settings) -> None:
    db = Database(settings)
    clock = Clock()
    probe = DatabaseProbe(db, timeout=2, max_age=1.0, clock=clock)
    try:
        assert probe.last() is None
        first = probe.check()
        assert first["database"]["status"] == HEALTHY and first["database"]["latency_ms"] >= 0
        assert first["schema"]["status"] == HEALTHY
        clock.now += 0.9
        assert [probe.check() for _ in range(10)] == [first] * 10
        assert probe.runs == 1  # ten probes from the load balancers, one query
        clock.now += 0.2
        probe.check()
        assert probe.runs == 2
        assert probe.last() is not None
    finally:
        db.dispose()


def test_probe_with_no_cache_probes_every_time(settings: Settings) -> None:
    db = Database(settings)
    probe = DatabaseProbe(db, timeout=2, max_age=0)
    try:
        for _ in range(3):
            probe.check()
        assert probe.runs == 3
    finally:
        db.dispose()


# ---------------------------------------------------------------- the connect gate


class FlakyConnect:
    """A connect function that fails while `down` is set; counts its calls, and records who made them."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.callers: list[str] = []

    def __call__(self) -> Any:
        self.calls += 1
        self.callers.append(threading.current_thread().name)
        if self.down:
            raise ConnectionRefusedError("down")
        return self

    def close(self) -> None:
        """What the gate calls on the probe connection it made in the background."""

    def made_by_requests(self) -> int:
        """Connects tried by callers of `attempt` (this test's thread), not by the background retrier."""
        return sum(name != "db-connect-retry" for name in self.callers)


def unavailable(message: str) -> Exception:
    return RuntimeError(message)


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll for what a background thread does (the bound is only a failure guard, never waited out)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


def retrier_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "db-connect-retry"]


def test_gate_fails_fast_after_a_failed_connect_and_reopens_by_itself() -> None:
    clock = Clock()
    gate = ConnectGate(retry_interval=RETRY_S, clock=clock)
    connect = FlakyConnect()
    try:
        with pytest.raises(ConnectionRefusedError):
            gate.attempt(connect, unavailable)
        assert not gate.is_open
        assert connect.made_by_requests() == 1
        started = time.perf_counter()
        with pytest.raises(RuntimeError, match="database unreachable"):
            gate.attempt(connect, unavailable)
        assert time.perf_counter() - started < 0.01
        clock.now += 2.5
        with pytest.raises(RuntimeError, match=r"connect failing for 2\.5s"):
            gate.attempt(connect, unavailable)
        assert connect.made_by_requests() == 1  # rejected without trying: no I/O while the gate is closed

        wait_until(lambda: connect.calls >= 4)  # the background retries keep trying while it is down
        assert not gate.is_open
        connect.down = False
        wait_until(lambda: gate.is_open)  # recovered with no request at all
        assert gate.attempt(connect, unavailable) is connect
    finally:
        gate.close()


def test_gate_stops_retrying_once_closed() -> None:
    gate = ConnectGate(retry_interval=RETRY_S)
    connect = FlakyConnect()
    with pytest.raises(ConnectionRefusedError):
        gate.attempt(connect, unavailable)
    wait_until(lambda: connect.calls >= 2)  # retrying in the background
    gate.close()
    for thread in retrier_threads():
        thread.join(2)  # close() wakes the retrier, which ends instead of waiting out its interval
    assert not retrier_threads()
    calls = connect.calls
    with pytest.raises(RuntimeError, match="database unreachable"):
        gate.attempt(connect, unavailable)
    assert connect.calls == calls
    assert not retrier_threads()  # a closed gate starts no new retrier either


def test_gate_in_front_of_a_real_postgresql() -> None:
    # The engine's connects go through the gate: refused ones close it, a real reconnect opens it.
    with pg_database("photo_api_gate", migrated=False) as database_url:
        upstream = make_url(database_url)
        with FaultProxy((upstream.host or "127.0.0.1", upstream.port or 5432)) as proxy:
            url = upstream.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
            gate = ConnectGate(retry_interval=RETRY_S)
            db = Database(load_settings(environ={}, database_url=url, jwt_secret_key=TEST_SECRET), gate)
            try:
                assert db.ping(2, lambda conn: conn.execute(text("SELECT 1")).scalar())[1] == 1
                proxy.set(Fault.refuse())
                with pytest.raises(OperationalError):
                    db.ping(2, lambda conn: None)  # the pooled connection is gone, its reconnect refused
                assert not gate.is_open
                with pytest.raises(OperationalError, match="database unreachable"):
                    db.ping(2, lambda conn: None)  # no connect attempted at all
                proxy.pass_through()
                wait_until(lambda: gate.is_open)  # the background retry reached PostgreSQL again
                assert db.ping(2, lambda conn: conn.execute(text("SELECT 1")).scalar())[1] == 1
            finally:
                db.dispose()


def test_full_server_does_not_trip_the_gate_and_the_checkout_waits_for_a_pooled_connection() -> None:
    # A role limited to one session: its second connect is refused (53300) like one to a full server.
    with pg_database("photo_api_gate", migrated=False) as database_url, limited_role(database_url, 1) as url:
        gate = ConnectGate(retry_interval=RETRY_S)
        settings = load_settings(
            environ={},
            database_url=url,
            jwt_secret_key=TEST_SECRET,
            db_pool_size=3,
            db_max_overflow=0,
            db_pool_timeout=1,
        )
        db = Database(settings, gate)
        refusals: list[str] = []
        db.refusal_hooks.append(refusals.append)
        try:
            held = db.engine.connect()
            held.execute(text("SELECT 1"))
            got: list[float] = []

            def second() -> None:
                started = time.monotonic()
                with db.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                got.append(time.monotonic() - started)

            waiter = threading.Thread(target=second)
            waiter.start()
            wait_until(lambda: refusals == ["too_many_connections"])
            assert gate.is_open  # the server answered: no outage
            time.sleep(0.2)
            assert not got  # still waiting for a pooled connection, not failed
            held.close()  # back to the pool: the waiting checkout takes it
            waiter.join(2)
            assert len(got) == 1 and got[0] >= 0.2
            # Nothing returned within DB_POOL_TIMEOUT: the pool's own timeout (a 503 for a request).
            with db.engine.connect(), pytest.raises(sqlalchemy.exc.TimeoutError):
                db.engine.connect()
            assert gate.is_open
        finally:
            db.dispose()


def test_capacity_refusal_tells_a_full_server_from_an_unreachable_one() -> None:
    with pg_database("photo_api_gate", migrated=False) as database_url, limited_role(database_url, 1) as url:
        parts = make_url(url)
        connect = {"host": parts.host, "port": parts.port or 5432, "user": parts.username, "dbname": parts.database}
        first = psycopg2.connect(**connect)
        try:
            with pytest.raises(psycopg2.OperationalError) as refused:
                psycopg2.connect(**connect)
        finally:
            first.close()
    assert capacity_refusal(refused.value) == "too_many_connections"
    with pytest.raises(psycopg2.OperationalError) as closed:
        psycopg2.connect(host="127.0.0.1", port=free_port(), user="x", dbname="x", connect_timeout=2)
    assert capacity_refusal(closed.value) is None
    assert capacity_refusal(ConnectionRefusedError("refused")) is None


def test_gate_ignores_a_killed_caller() -> None:
    gate = ConnectGate(retry_interval=RETRY_S)

    def interrupted() -> Any:
        raise KeyboardInterrupt  # like GreenletExit: says nothing about the database

    with pytest.raises(KeyboardInterrupt):
        gate.attempt(interrupted, unavailable)
    assert gate.is_open
    gate.close()


# ---------------------------------------------------------------- shutdown hooks


def test_shutdown_hooks_run_once_in_order_and_survive_a_failure() -> None:
    ran: list[str] = []
    hooks = ShutdownHooks("worker")
    hooks.add("pool", lambda: ran.append("pool"))
    hooks.add("broken", lambda: 1 / 0 and None)
    hooks.add("logs", lambda: ran.append("logs"))
    hooks.run()
    hooks.run()
    assert ran == ["pool", "logs"]


# ---------------------------------------------------------------- settings


def test_production_drain_must_cover_the_load_balancer() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={**PRODUCTION, "DRAIN_DELAY_SECONDS": "5"})
    assert info.value.settings_named() == {"DRAIN_DELAY_SECONDS"}
    assert "= 9s" in str(info.value)  # 2 s x 2 + 5 s with the default LB values

    settings = load_settings(
        environ={
            **PRODUCTION,
            "DRAIN_DELAY_SECONDS": "2",
            "LB_HEALTH_CHECK_INTERVAL": "0.5",
            "LB_UNHEALTHY_THRESHOLD": "2",
            "LB_HEALTH_CHECK_TIMEOUT": "1",
            "HEALTH_CHECK_TIMEOUT": "0.5",
            "GRACEFUL_TIMEOUT": "3",
            "DB_STATEMENT_TIMEOUT_MS": "3000",
            "CLIENT_BODY_TIMEOUT": "3",
        }
    )
    assert (settings.drain_delay_seconds, settings.graceful_timeout) == (2, 3)


def test_development_may_drain_briefly() -> None:
    assert load_settings(environ={"DRAIN_DELAY_SECONDS": "0"}).drain_delay_seconds == 0


def test_defaults_are_consistent_in_production() -> None:
    settings = load_settings(environ=PRODUCTION)
    needed = settings.lb_health_check_interval * settings.lb_unhealthy_threshold + settings.lb_health_check_timeout
    assert settings.drain_delay_seconds >= needed
    assert settings.max_requests == 0


def test_max_requests_jitter_needs_max_requests() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"MAX_REQUESTS_JITTER": "100"})
    assert info.value.settings_named() == {"MAX_REQUESTS_JITTER"}
