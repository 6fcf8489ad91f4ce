"""Login and registration throttling, in-process (Flask's test client), on the real Redis and in memory.

Redis is the local server, database THROTTLE_DB only (emptied per test); a Redis that is down is a port
nobody listens on. The client address is the WSGI REMOTE_ADDR the test client sends, as a socket gives it;
X-Forwarded-For counts only for TRUSTED_PROXY_COUNT hops. The metrics registry is shared by every app of
the test process, so tests compare before and after.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from photo_api import create_app, metrics
from photo_api.api.context import collaborators_of
from photo_api.config import Settings
from photo_api.greenlets import NativePool, PoolBusyError
from tests import python_child
from tests.harness.redis_db import THROTTLE_DB, fresh_redis
from tests.harness.server import free_port
from tests.harness.users import DEFAULT_PASSWORD, Users
from tests.metrics.conftest import Scrape, parse

ALICE = "10.0.0.1"
BOB = "10.0.0.2"
# Small limits, so that a test reaches them in a few requests; the hour limits of the defaults are set
# high, so that only the minute one can be what a test meets.
LIMITS = {
    "rate_limit_enabled": True,
    "rate_limit_login_per_account": "3 per minute",
    "rate_limit_login_per_address": "5 per minute",
    "rate_limit_register_per_address": "100 per minute",
}


def snapshot() -> Scrape:
    return parse(metrics.render().decode())


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return (after.value(name, **labels) or 0) - (before.value(name, **labels) or 0)


@pytest.fixture
def make_app(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        app = create_app(make_settings(**{**LIMITS, **overrides}))
        apps.append(app)
        return app

    yield build
    for app in apps:
        collaborators_of(app).db.dispose()


@pytest.fixture
def redis_url() -> str:
    return fresh_redis(THROTTLE_DB)


def login(client: FlaskClient, email: str, *, address: str, password: str = DEFAULT_PASSWORD, **headers: str) -> Any:
    return client.post(
        "/auth/login",
        json={"email": email, "password": password},
        headers=headers,
        environ_base={"REMOTE_ADDR": address},
    )


def assert_throttled(response: TestResponse) -> int:
    """A 429 problem+json with a Retry-After of whole seconds; the seconds."""
    assert response.status_code == 429, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == 429
    assert body["title"] == "Too Many Requests"
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    return retry_after


def test_per_account_limit_holds_across_addresses(make_app: Callable[..., Flask], redis_url: str) -> None:
    client = make_app(redis_url=redis_url).test_client()
    users = Users(client)
    user = users.register()
    before = snapshot()
    # Wrong passwords from three addresses: one account's budget, whoever spends it.
    for address in ("10.0.1.1", "10.0.1.2", "10.0.1.3"):
        assert login(client, user["email"], address=address, password="wrong password").status_code == 401
    # The right password from a fourth address is refused too: the account's limit is spent.
    assert_throttled(login(client, user["email"], address="10.0.1.4"))
    # The same account written another way is the same account (one normalisation with registration).
    assert_throttled(login(client, user["email"].upper(), address="10.0.1.5"))
    # Another account from those addresses is not affected.
    other = users.register()
    assert login(client, other["email"], address="10.0.1.1").status_code == 200
    assert delta(before, snapshot(), "photo_api_rate_limited_total", route="login", scope="account") == 2


def test_per_address_limit_holds_across_accounts(make_app: Callable[..., Flask], redis_url: str) -> None:
    client = make_app(redis_url=redis_url).test_client()
    before = snapshot()
    # Five different (unknown) accounts from one address: the address's limit, not any account's.
    for n in range(5):
        assert login(client, f"nobody{n}@example.com", address=ALICE).status_code == 401
    assert_throttled(login(client, "nobody5@example.com", address=ALICE))
    # Another address still logs in.
    user = Users(client).register()
    assert login(client, user["email"], address=BOB).status_code == 200
    assert delta(before, snapshot(), "photo_api_rate_limited_total", route="login", scope="address") == 1


def test_register_is_limited_per_address(make_app: Callable[..., Flask], redis_url: str) -> None:
    client = make_app(redis_url=redis_url, rate_limit_register_per_address="2 per minute").test_client()
    users = Users(client)

    def register(address: str) -> TestResponse:
        body = users.credentials(None, None, DEFAULT_PASSWORD)
        return client.post("/auth/register", json=body, environ_base={"REMOTE_ADDR": address})

    assert register(ALICE).status_code == 201
    assert register(ALICE).status_code == 201
    assert_throttled(register(ALICE))
    assert register(BOB).status_code == 201


def test_a_forged_forwarded_for_does_not_move_a_client_to_another_bucket(
    make_app: Callable[..., Flask], redis_url: str
) -> None:
    # No proxy in front: X-Forwarded-For is the client's own writing and means nothing.
    client = make_app(redis_url=redis_url).test_client()
    for n in range(5):
        login(client, f"nobody{n}@example.com", address=ALICE, **{"X-Forwarded-For": f"192.0.2.{n}"})
    assert_throttled(login(client, "x@example.com", address=ALICE, **{"X-Forwarded-For": "192.0.2.99"}))


def test_behind_one_proxy_only_the_hop_it_appended_counts(make_app: Callable[..., Flask], redis_url: str) -> None:
    # One trusted proxy (REMOTE_ADDR is the proxy): the last X-Forwarded-For value is the client, what the
    # client prepended itself is ignored.
    client = make_app(redis_url=redis_url, trusted_proxy_count=1).test_client()
    proxy = "10.9.9.9"
    for n in range(5):
        forwarded = f"198.51.100.{n}, {ALICE}"
        assert login(client, f"n{n}@example.com", address=proxy, **{"X-Forwarded-For": forwarded}).status_code == 401
    assert_throttled(login(client, "x@example.com", address=proxy, **{"X-Forwarded-For": f"203.0.113.7, {ALICE}"}))
    # Another client behind the same proxy has its own budget.
    assert login(client, "y@example.com", address=proxy, **{"X-Forwarded-For": BOB}).status_code == 401


def test_in_memory_store_without_redis(make_app: Callable[..., Flask]) -> None:
    # The embedded default: no REDIS_URL, counters in this worker's memory, the same answers.
    client = make_app(redis_url=None).test_client()
    user = Users(client).register()
    for _ in range(3):
        assert login(client, user["email"], address=ALICE, password="wrong password").status_code == 401
    assert_throttled(login(client, user["email"], address=BOB))


def test_two_apps_on_one_redis_share_the_limit(make_app: Callable[..., Flask], redis_url: str) -> None:
    first = make_app(redis_url=redis_url).test_client()
    second = make_app(redis_url=redis_url).test_client()
    for client in (first, second, first):
        assert login(client, "shared@example.com", address=ALICE).status_code == 401
    assert_throttled(login(second, "shared@example.com", address=BOB))


def test_disabled_throttling_never_refuses(make_app: Callable[..., Flask], redis_url: str) -> None:
    client = make_app(redis_url=redis_url, rate_limit_enabled=False).test_client()
    for _ in range(8):
        assert login(client, "a@example.com", address=ALICE).status_code == 401


def test_redis_down_logins_still_succeed_counted_and_logged(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    # A port nobody listens on: every connect is refused at once.
    client = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/{THROTTLE_DB}").test_client()
    before = snapshot()
    with caplog.at_level(logging.WARNING):
        started = time.monotonic()
        user = Users(client).register()  # the first request finds Redis down
        assert login(client, user["email"], address=ALICE).status_code == 200
        elapsed = time.monotonic() - started
    assert delta(before, snapshot(), "photo_api_rate_limit_store_errors_total") >= 1
    assert any("rate limit store failed" in record.getMessage() for record in caplog.records)
    # Fail open is not "no limit": the worker counts in its memory until Redis is back.
    assert login(client, user["email"], address=ALICE).status_code == 200
    assert login(client, user["email"], address=ALICE).status_code == 200
    assert_throttled(login(client, user["email"], address=ALICE))
    assert elapsed < 30  # sanity only: the bound on the wait is the e2e test's subject


@contextlib.contextmanager
def its_thread_taken(pool: NativePool) -> Iterator[None]:
    """`pool` (of one thread) busy with a call that returns on the way out of the block."""
    release = threading.Event()
    holder = threading.Thread(target=pool.run, args=(release.wait,))
    holder.start()
    try:
        deadline = time.monotonic() + 5
        while pool.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        yield
    finally:
        release.set()
        holder.join()


def test_a_full_hashing_pool_refuses_at_once() -> None:
    rejected: list[str] = []

    class Events:
        def waited(self, seconds: float) -> None:
            pass

        def rejected(self, reason: str) -> None:
            rejected.append(reason)

    pool = NativePool(1, queue_size=0, queue_timeout=5, name="Password hashing", events=Events())
    with its_thread_taken(pool):
        # A caller with work to do first (the login's user query) can ask before doing it.
        with pytest.raises(PoolBusyError):
            pool.refuse_if_full()
        assert rejected == ["queue_full"]
        rejected.clear()
        started = time.monotonic()
        with pytest.raises(PoolBusyError) as info:
            pool.run(lambda: "never")
        assert time.monotonic() - started < 1  # queue_size 0: no wait at all, whatever the timeout
        assert info.value.retry_after >= 1
        assert rejected == ["queue_full"]
        # With room in the queue, a call waits for the timeout, then is refused.
        queued = NativePool(1, queue_size=1, queue_timeout=0.2, events=Events())
        with its_thread_taken(queued), pytest.raises(PoolBusyError):
            queued.run(lambda: "never")
        assert rejected == ["queue_full", "timeout"]
    pool.refuse_if_full()  # a free thread: nothing to refuse
    assert pool.run(lambda: "free again") == "free again"


def test_a_refusal_for_a_full_queue_comes_after_the_refusal_delay() -> None:
    delay = 0.3
    pool = NativePool(1, queue_size=0, queue_timeout=5, refusal_delay=delay)
    with its_thread_taken(pool):
        for refused_call in (pool.refuse_if_full, lambda: pool.run(lambda: "never")):
            started = time.monotonic()
            with pytest.raises(PoolBusyError):
                refused_call()
            assert time.monotonic() - started >= delay
    started = time.monotonic()
    pool.refuse_if_full()  # a free thread: no refusal, no delay
    assert pool.run(lambda: "free") == "free"
    assert time.monotonic() - started < delay


def test_a_login_hands_its_database_connection_back_before_hashing(make_app: Callable[..., Flask]) -> None:
    # One pooled connection, a 0.05 s wait for it, and hashes at the production cost (~0.1 s or more): two
    # concurrent logins both succeed only if neither holds the connection while it hashes. When logins
    # held theirs, a flood exhausted the pool and /health's database probe timed out.
    app = make_app(
        rate_limit_enabled=False,
        db_pool_size=1,
        db_max_overflow=0,
        db_pool_timeout=0.05,
        password_hash_time_cost=3,
        password_hash_memory_kib=65_536,
        password_hash_parallelism=1,
    )
    if collaborators_of(app).db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no connection pool to exhaust")
    users = Users(app.test_client())
    accounts = [users.register() for _ in range(2)]
    start = threading.Barrier(2)
    statuses: list[int] = []

    def log_in(account: dict[str, str]) -> None:
        client = app.test_client()
        start.wait()
        statuses.append(login(client, account["email"], address=ALICE).status_code)

    threads = [threading.Thread(target=log_in, args=(account,)) for account in accounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200]


def test_hashing_threads_run_at_a_lower_priority() -> None:
    # The pool's threads lower their own nice value once; the caller's (the event loop's) is untouched.
    import os

    import gevent.threadpool

    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    pool = NativePool(1, queue_size=0, queue_timeout=0, nice=5)
    # Outside gevent `run` works in the caller's thread; the pool's own thread is what a worker uses.
    threads = gevent.threadpool.ThreadPool(1)
    try:
        seen = threads.apply(pool._call, (lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), (), {}))
    finally:
        threads.kill()
    assert seen == min(own + 5, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own


def test_a_full_hashing_pool_leaves_gevents_resolver_threads_free() -> None:
    # In a gevent worker host names are resolved on the hub's thread pool (10 threads). Hashing has its own
    # threads: with more hashes in progress than the hub has threads, a lookup still answers at once. Were
    # the hashes on the hub's pool, the lookup would wait for the first of them to end (HOLD_S).
    script = """
        from gevent import monkey
        monkey.patch_all()
        import socket, threading, time
        import gevent
        from photo_api.greenlets import NativePool

        HOLD_S = 3.0
        hub_threads = gevent.get_hub().threadpool.maxsize
        pool = NativePool(hub_threads + 2, queue_size=0, queue_timeout=0)
        hashes = [gevent.spawn(pool.run, time.sleep, HOLD_S) for _ in range(hub_threads + 2)]
        gevent.sleep(0.3)  # every hash has a thread of the pool
        assert pool.in_flight == hub_threads + 2, pool.in_flight
        started = time.monotonic()
        socket.getaddrinfo("localhost", 80)
        print(round(time.monotonic() - started, 3), HOLD_S)
        gevent.joinall(hashes)
    """
    done = subprocess.run(python_child(script), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lookup_s, hold_s = (float(x) for x in done.stdout.split())
    assert lookup_s < hold_s / 3, f"a host-name lookup waited {lookup_s} s behind the hashes"
