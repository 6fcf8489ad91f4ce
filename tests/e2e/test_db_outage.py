"""PostgreSQL unreachable under a running `photo-api serve`, and back again, without restarting anything.

The shared PostgreSQL serves other tests and must not be stopped: the instance reaches it through the
harness's `FaultProxy`, which is switched to `refuse` (the database host is down: closed port) and to
a `partition`, the blackhole case (packets dropped: connects and pooled connections hang). In both cases /health answers
503 within HEALTH_CHECK_TIMEOUT + 100 ms every time, liveness stays 200, requests that need the
database get a fast 503 problem+json with Retry-After, and after the database returns everything is
200 again within 5 s. The pool is kept tiny (2 per worker, no overflow, 3 s checkout timeout) so that
a connection leaked by a timed-out probe or request would show up as failures after the recovery.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests
from sqlalchemy.engine import make_url

from tests.e2e.conftest import StartServer
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.server import ServeProcess
from tests.harness.users import Users

pytestmark = pytest.mark.slow

HEALTH_CHECK_TIMEOUT_S = 0.5
DB_CONNECT_TIMEOUT_S = 1.0
OUTAGE_S = 3.0
HEALTH_CACHE_S = 1.0
HEALTH_ONLY_S = 1.0
RECOVERY_BOUND_S = 5.0
RECOVERY_PROBE_CONCURRENCY = 6
# The contract's bound for every /health answer (docs/api.md, "Health").
HEALTH_BOUND_S = HEALTH_CHECK_TIMEOUT_S + 0.1
# A request needing the database: the pooled connection's ping (health timeout), then one connect
# attempt (connect deadline) at most; most fail at once because a recent connect failed.
API_BOUND_S = HEALTH_CHECK_TIMEOUT_S + DB_CONNECT_TIMEOUT_S + 0.3
LIVENESS_BOUND_S = 0.2
HTTP_TIMEOUT_S = 10
POLL_S = 0.1
AFTER_RECOVERY_REQUESTS = 30
# The two outages, by the name the report prints: the host down, and every packet dropped.
OUTAGES = {"refuse": Fault.refuse(), "blackhole": Fault.partition()}


@dataclass
class Timed:
    status: int
    seconds: float
    retry_after: str | None = None
    content_type: str = ""


@dataclass
class OutageRun:
    mode: str
    health: list[tuple[float, Timed]] = field(default_factory=list)  # (sent after the switch, answer)
    liveness: list[Timed] = field(default_factory=list)
    api: list[Timed] = field(default_factory=list)
    recovered_after: float | None = None


def _timed(method: str, url: str, **kwargs: object) -> Timed:
    started = time.perf_counter()
    with requests.Session() as http:  # a new connection each time, like a load balancer's probe
        r = http.request(method, url, timeout=HTTP_TIMEOUT_S, **kwargs)  # type: ignore[arg-type]
    return Timed(r.status_code, time.perf_counter() - started, r.headers.get("Retry-After"), r.headers["Content-Type"])


def _outage(server: ServeProcess, proxy: FaultProxy, mode: str, creds: dict[str, str], token: str) -> OutageRun:
    run = OutageRun(mode)
    auth = {"Authorization": f"Bearer {token}"}
    time.sleep(HEALTH_CACHE_S)  # no cached "healthy" left: the first probes meet the outage themselves
    proxy.set(OUTAGES[mode])
    switched = time.monotonic()
    while time.monotonic() - switched < OUTAGE_S:
        sent = time.monotonic() - switched
        run.health.append((sent, _timed("GET", server.url("/health"))))
        run.liveness.append(_timed("GET", server.url("/health/liveness")))
        if sent > HEALTH_ONLY_S:  # first the probes alone, so that they, not requests, find the outage
            run.api.append(_timed("GET", server.url("/auth/me"), headers=auth))
            run.api.append(_timed("POST", server.url("/auth/login"), json=creds))
        time.sleep(POLL_S)

    proxy.pass_through()
    back = time.monotonic()
    while time.monotonic() - back < RECOVERY_BOUND_S * 2:
        # Concurrent requests, so that every worker has to answer: sequential ones on an idle instance
        # are often all accepted by the same worker, which says nothing about the other's recovery.
        with ThreadPoolExecutor(RECOVERY_PROBE_CONCURRENCY) as pool:
            api = list(
                pool.map(
                    lambda _: _timed("GET", server.url("/auth/me"), headers=auth).status,
                    range(RECOVERY_PROBE_CONCURRENCY * 2),
                )
            )
        answers = [_timed("GET", server.url("/health")).status, *api]
        answers.append(_timed("POST", server.url("/auth/login"), json=creds).status)
        if set(answers) == {200}:
            run.recovered_after = time.monotonic() - back
            break
        time.sleep(POLL_S)
    return run


def _report(run: OutageRun) -> None:
    health = [t.seconds for _, t in run.health]
    api = [t.seconds for t in run.api]
    print(
        f"\n{run.mode}: /health {len(health)}x, max {max(health) * 1000:.0f} ms, first "
        f"{[round(t.seconds * 1000) for _, t in run.health[:4]]} ms, "
        f"statuses {sorted({t.status for _, t in run.health})}; liveness max "
        f"{max(t.seconds for t in run.liveness) * 1000:.0f} ms; API 503s {len(api)}x, median "
        f"{statistics.median(api) * 1000:.0f} ms, max {max(api) * 1000:.0f} ms; "
        f"recovered {run.recovered_after if run.recovered_after is None else round(run.recovered_after, 2)} s "
        "after the database returned"
    )


def test_database_outage_fails_fast_and_recovers(
    production_env: dict[str, str], pg_database_url: str, serve: StartServer
) -> None:
    url = make_url(pg_database_url)
    with FaultProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        env = {
            **production_env,
            "DATABASE_URL": url.set(port=proxy.port).render_as_string(hide_password=False),
            "HEALTH_CHECK_TIMEOUT": str(HEALTH_CHECK_TIMEOUT_S),
            "HEALTH_CHECK_CACHE_SECONDS": str(HEALTH_CACHE_S),
            "LB_HEALTH_CHECK_TIMEOUT": "1",
            "DB_CONNECT_TIMEOUT": str(DB_CONNECT_TIMEOUT_S),
            "DB_POOL_SIZE": "2",
            "DB_MAX_OVERFLOW": "0",
            "DB_POOL_TIMEOUT": "3",
        }
        server = serve(env, workers=2)
        workers = server.worker_pids()
        users = Users.at(server.url(), timeout=HTTP_TIMEOUT_S)
        registered = users.register()
        creds = {"email": registered["email"], "password": registered["password"]}
        token = users.login(creds)
        auth = {"Authorization": f"Bearer {token}"}
        # Warm both workers' pools: the blackhole must meet pooled connections that go silent.
        with ThreadPoolExecutor(8) as pool:
            warm = list(pool.map(lambda _: _timed("GET", server.url("/auth/me"), headers=auth).status, range(16)))
        assert set(warm) == {200}
        assert _timed("GET", server.url("/health")).status == 200

        for mode in OUTAGES:
            run = _outage(server, proxy, mode, creds, token)
            _report(run)
            assert all(t.seconds < HEALTH_BOUND_S for _, t in run.health), run.health
            assert {t.status for _, t in run.health} == {503}
            assert {t.status for t in run.liveness} == {200}
            assert max(t.seconds for t in run.liveness) < LIVENESS_BOUND_S
            assert {t.status for t in run.api} == {503}
            assert all(t.retry_after and int(t.retry_after) > 0 for t in run.api)
            assert {t.content_type for t in run.api} == {"application/problem+json"}
            assert max(t.seconds for t in run.api) < API_BOUND_S
            assert run.recovered_after is not None and run.recovered_after < RECOVERY_BOUND_S

            # No broken pooled connection and no leaked one: with 2 connections per worker and no
            # overflow, a leak would turn these into 503s after the 3 s checkout timeout.
            with ThreadPoolExecutor(4) as pool:
                after = list(
                    pool.map(
                        lambda _: _timed("GET", server.url("/auth/me"), headers=auth).status,
                        range(AFTER_RECOVERY_REQUESTS),
                    )
                )
            assert after == [200] * AFTER_RECOVERY_REQUESTS
            # Every worker's probe says healthy again once its cached outage result has expired.
            server.wait_for(
                lambda: all(_timed("GET", server.url("/health")).status == 200 for _ in range(6)),
                HEALTH_CACHE_S + 1,
                "every worker healthy",
            )

        assert server.worker_pids() == workers  # nothing was restarted


def test_readiness_waits_for_the_database_at_startup(
    production_env: dict[str, str], pg_database_url: str, serve: StartServer
) -> None:
    url = make_url(pg_database_url)
    with FaultProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        proxy.set(Fault.refuse())
        env = {
            **production_env,
            "DATABASE_URL": url.set(port=proxy.port).render_as_string(hide_password=False),
            "HEALTH_CHECK_TIMEOUT": str(HEALTH_CHECK_TIMEOUT_S),
            "LB_HEALTH_CHECK_TIMEOUT": "1",
        }
        server = serve(env, workers=1)  # starts: liveness answers without a database
        for _ in range(5):
            assert _timed("GET", server.url("/health")).status == 503
            assert _timed("GET", server.url("/health/liveness")).status == 200
            time.sleep(POLL_S)
        proxy.pass_through()
        back = time.monotonic()
        server.wait_for(lambda: _timed("GET", server.url("/health")).status == 200, RECOVERY_BOUND_S, "readiness")
        print(f"\nreadiness 200 {time.monotonic() - back:.2f} s after the database became reachable")
