"""Login throttling and the password hashing pool in real `photo-api serve` instances (gunicorn + gevent).

Two instances on one Redis (database THROTTLE_DB of the local server) share one limit, as instances behind
a load balancer must; a Redis that stops answering (a fault proxy blackholing it) costs a login at most
the limiter's socket timeout, never the login itself; a hashing pool that is full answers 503 without
hashing, after PASSWORD_HASH_REFUSAL_DELAY, during which the worker serves other requests.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.e2e.conftest import StartServer
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.redis_db import THROTTLE_DB, fresh_redis, redis_address, redis_url
from tests.harness.server import free_port
from tests.harness.users import Users
from tests.metrics.conftest import scrape

pytestmark = pytest.mark.slow

HTTP_TIMEOUT_S = 30
THROTTLED = {
    "RATE_LIMIT_ENABLED": "true",
    "RATE_LIMIT_LOGIN_PER_ACCOUNT": "4 per minute",
    "RATE_LIMIT_LOGIN_PER_ADDRESS": "100 per minute",
    "RATE_LIMIT_REGISTER_PER_ADDRESS": "100 per minute",
}
# The limiter's Redis socket timeout in these tests: what a login may wait for a silent Redis.
STORE_TIMEOUT_S = 0.3


def login(base_url: str, email: str, password: str) -> requests.Response:
    return requests.post(f"{base_url}/auth/login", json={"email": email, "password": password}, timeout=HTTP_TIMEOUT_S)


def test_two_instances_share_one_limit_through_redis(production_env: dict[str, str], serve: StartServer) -> None:
    env = {**production_env, **THROTTLED, "REDIS_URL": fresh_redis(THROTTLE_DB)}
    first, second = (serve({**env, "METRICS_PORT": str(free_port())}, workers=2) for _ in range(2))
    user = Users.at(first.url()).register()
    answers = [
        login(server.url().rstrip("/"), user["email"], "wrong password").status_code
        for server in (first, second, first, second)
    ]
    assert answers == [401] * 4
    # Eight workers could each have let four through with counters of their own; Redis counted four.
    for server in (first, second):
        refused = login(server.url().rstrip("/"), user["email"], user["password"])
        assert refused.status_code == 429, refused.text
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_a_silent_redis_costs_a_login_no_more_than_the_store_timeout(
    production_env: dict[str, str], serve: StartServer
) -> None:
    fresh_redis(THROTTLE_DB)
    with FaultProxy(redis_address()) as proxy:
        env = {
            **production_env,
            **THROTTLED,
            "REDIS_URL": redis_url(THROTTLE_DB, proxy.host, proxy.port),
            "RATE_LIMIT_REDIS_TIMEOUT": str(STORE_TIMEOUT_S),
            "METRICS_PORT": str(free_port()),
        }
        server = serve(env, workers=1)
        base = server.url().rstrip("/")
        user = Users.at(base).register()
        healthy = [login(base, user["email"], user["password"]).elapsed.total_seconds() for _ in range(2)]
        assert proxy.connections >= 1  # the limiter did go through the proxy
        proxy.set(Fault.blackhole(), drop_existing=True)
        started = time.monotonic()
        during = [login(base, user["email"], user["password"]) for _ in range(2)]
        spent = time.monotonic() - started
        assert [r.status_code for r in during] == [200, 200]
        # One timed-out Redis call, then the worker counts in memory; a hash each on top.
        assert spent < 2 * max(healthy) + STORE_TIMEOUT_S + 2, (spent, healthy)
        # Still limited in the worker's memory: four a minute (two counted on Redis before, two now).
        for _ in range(4):
            last = login(base, user["email"], user["password"])
            if last.status_code == 429:
                break
        assert last.status_code == 429
        errors = scrape(f"http://127.0.0.1:{env['METRICS_PORT']}/metrics").value(
            "photo_api_rate_limit_store_errors_total"
        )
        assert errors is not None and errors >= 1
        assert any("rate limit store failed" in line.get("message", "") for line in server.log_lines())


def test_a_full_hashing_pool_answers_503_fast(production_env: dict[str, str], serve: StartServer) -> None:
    # One hashing thread, no queue: of concurrent logins, those that find the thread busy get 503 at once.
    env = {
        **production_env,
        "METRICS_PORT": str(free_port()),
        "PASSWORD_HASH_WORKERS": "1",
        "PASSWORD_HASH_QUEUE_SIZE": "0",
        "PASSWORD_HASH_REFUSAL_DELAY": "0",
        "PASSWORD_HASH_TIME_COST": "4",
        "PASSWORD_HASH_MEMORY_KIB": "65536",
    }
    server = serve(env, workers=1)
    base = server.url().rstrip("/")
    user = Users.at(base).register()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: login(base, user["email"], user["password"]), range(8)))
    busy = [r for r in answers if r.status_code == 503]
    assert busy, [r.status_code for r in answers]
    assert {r.status_code for r in answers} <= {200, 503}
    slowest_ok = max(r.elapsed.total_seconds() for r in answers if r.status_code == 200)
    for refused in busy:
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert int(refused.headers["Retry-After"]) >= 1
        # Refused without hashing: faster than any hash that ran.
        assert refused.elapsed.total_seconds() < slowest_ok


def test_a_refused_login_waits_the_refusal_delay_while_the_worker_serves_others(
    production_env: dict[str, str], serve: StartServer
) -> None:
    # One worker, one hashing thread, no queue: of 6 concurrent logins, those refused are answered after the
    # delay, and meanwhile that same worker's event loop answers a probe at once (the wait is a greenlet's).
    delay = 1.5
    env = {
        **production_env,
        "METRICS_PORT": str(free_port()),
        "PASSWORD_HASH_WORKERS": "1",
        "PASSWORD_HASH_QUEUE_SIZE": "0",
        "PASSWORD_HASH_REFUSAL_DELAY": str(delay),
    }
    server = serve(env, workers=1)
    base = server.url().rstrip("/")
    user = Users.at(base).register()
    with ThreadPoolExecutor(6) as pool:
        logins = [pool.submit(login, base, user["email"], user["password"]) for _ in range(6)]
        time.sleep(delay / 3)  # the refused ones are waiting now
        probe = requests.get(f"{base}/health/liveness", timeout=HTTP_TIMEOUT_S)
        answers = [f.result() for f in logins]
    assert probe.status_code == 200
    assert probe.elapsed.total_seconds() < delay / 3, probe.elapsed
    refused = [r for r in answers if r.status_code == 503]
    assert refused, [r.status_code for r in answers]
    assert {r.status_code for r in answers} <= {200, 503}
    for r in refused:
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.elapsed.total_seconds() >= delay, r.elapsed
