"""Deadline → backoff → breaker composition: retries, fail-fast when open, one half-open trial, deadlines;
the policies built from settings; the bulkhead."""

from __future__ import annotations

import subprocess
import textwrap
import threading
from typing import Any

import pytest
import requests
from greenlet import GreenletExit

from photo_api.config import load_settings
from photo_api.resilience import (
    Bulkhead,
    BulkheadFullError,
    CallerSideError,
    DependencyUnavailableError,
    Policies,
    Policy,
    Resilient,
    TransientError,
    raise_for_transient,
)
from tests import python_child


class Recorder:
    """Collects resilience events."""

    def __init__(self) -> None:
        self.retries: list[float] = []
        self.giveups: list[str] = []
        self.states: list[tuple[str, str]] = []
        self.rejections = 0

    def retry(self, service: str, exc: BaseException, wait: float) -> None:
        self.retries.append(wait)

    def giveup(self, service: str, exc: BaseException) -> None:
        self.giveups.append(type(exc).__name__)

    def state_change(self, service: str, old: str, new: str) -> None:
        self.states.append((old, new))

    def rejected(self, service: str) -> None:
        self.rejections += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(**overrides: Any) -> Policy:
    values: dict[str, Any] = dict(
        service="dep",
        connect_timeout=1,
        read_timeout=1,
        deadline=5,
        max_tries=3,
        max_time=5,
        base_delay=0,
        max_delay=0,
        failure_threshold=3,
        recovery_timeout=30,
    )
    values.update(overrides)
    return Policy(**values)


class Flaky:
    """A dependency stand-in failing `failures` times with `exc`, then answering."""

    def __init__(self, failures: int, exc: Exception | None = None):
        self.failures = failures
        self.calls = 0
        self.exc = exc or TransientError("HTTP 503", status=503)

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


def make(**overrides: Any) -> tuple[Resilient, Recorder, Clock]:
    events, clock = Recorder(), Clock()
    return Resilient(policy(**overrides), events=events, clock=clock), events, clock


def test_transient_failure_is_retried_and_recovers() -> None:
    r, events, _ = make()
    dep = Flaky(2)
    assert r.call(dep) == "ok"
    assert dep.calls == 3
    assert len(events.retries) == 2
    assert r.state == "closed"


def test_non_transient_error_is_not_retried_and_does_not_count() -> None:
    r, events, _ = make(failure_threshold=1)
    dep = Flaky(5, ValueError("bad request"))
    with pytest.raises(ValueError):
        r.call(dep)
    assert dep.calls == 1
    assert events.retries == []
    assert r.state == "closed"


def test_non_idempotent_call_gets_one_attempt() -> None:
    r, _, _ = make()
    dep = Flaky(1)
    with pytest.raises(DependencyUnavailableError) as info:
        r.call(dep, idempotent=False)
    assert dep.calls == 1
    assert info.value.reason == "exhausted"


def test_breaker_opens_after_threshold_then_fails_fast_without_calling() -> None:
    r, events, _ = make(max_tries=1, failure_threshold=3)
    dep = Flaky(100)
    for _ in range(3):
        with pytest.raises(DependencyUnavailableError):
            r.call(dep)
    assert dep.calls == 3
    assert r.state == "open"
    with pytest.raises(DependencyUnavailableError) as info:
        r.call(dep)
    assert dep.calls == 3, "an open circuit must not touch the dependency"
    assert info.value.reason == "circuit_open"
    assert 1 <= info.value.retry_after <= 30
    assert ("closed", "open") in events.states
    assert events.rejections == 1


def test_open_breaker_stops_retries_mid_sequence() -> None:
    r, _, _ = make(max_tries=10, failure_threshold=2)
    dep = Flaky(100)
    with pytest.raises(DependencyUnavailableError) as info:
        r.call(dep)
    assert dep.calls == 2, "the third attempt meets the open breaker and ends the retry loop"
    assert info.value.reason == "circuit_open"


def test_half_open_admits_exactly_one_trial_and_success_closes() -> None:
    r, events, clock = make(max_tries=1, failure_threshold=1, recovery_timeout=30)
    with pytest.raises(DependencyUnavailableError):
        r.call(Flaky(1))
    clock.now += 31
    assert r.state == "half_open"
    inner_results: list[str] = []

    def trial() -> str:
        # A second caller arriving while the trial is in flight is rejected without I/O.
        try:
            r.call(lambda: "second")
        except DependencyUnavailableError as exc:
            inner_results.append(exc.reason)
        return "trial-ok"

    assert r.call(trial) == "trial-ok"
    assert inner_results == ["circuit_open"]
    assert r.state == "closed"
    assert ("half_open", "closed") in events.states


def test_failed_trial_reopens() -> None:
    r, _, clock = make(max_tries=1, failure_threshold=2, recovery_timeout=10)
    dep = Flaky(100)
    for _ in range(2):
        with pytest.raises(DependencyUnavailableError):
            r.call(dep)
    clock.now += 11
    with pytest.raises(DependencyUnavailableError) as info:
        r.call(dep)
    assert info.value.reason == "exhausted"
    assert r.state == "open"
    assert dep.calls == 3


def test_retry_after_is_honoured() -> None:
    r, events, _ = make(max_delay=5, max_time=30)
    dep = Flaky(1, TransientError("HTTP 429", status=429, retry_after=0.05))
    assert r.call(dep) == "ok"
    assert events.retries == [pytest.approx(0.05)]


def test_full_jitter_bounds_waits() -> None:
    draws: list[tuple[float, float]] = []

    def rand(a: float, b: float) -> float:
        draws.append((a, b))
        return 0.0

    r = Resilient(
        policy(base_delay=0.2, max_delay=0.5, max_tries=4, failure_threshold=10), events=Recorder(), rand=rand
    )
    assert r.call(Flaky(3)) == "ok"
    assert draws == [(0, 0.2), (0, 0.4), (0, 0.5)]


def test_raise_for_transient_maps_statuses() -> None:
    def response(status: int, headers: dict[str, str] | None = None) -> requests.Response:
        resp = requests.Response()
        resp.status_code = status
        resp.headers.update(headers or {})
        return resp

    assert raise_for_transient(response(404)).status_code == 404
    with pytest.raises(TransientError) as info:
        raise_for_transient(response(429, {"Retry-After": "3"}))
    assert info.value.retry_after == 3.0
    with pytest.raises(TransientError):
        raise_for_transient(response(503))


def test_deadline_under_gevent_cuts_a_hung_call_and_counts_as_failure() -> None:
    # gevent must patch before anything else is imported, hence a fresh interpreter.
    script = textwrap.dedent(
        """
        from gevent import monkey; monkey.patch_all()
        import time
        from photo_api.resilience import Policy, Resilient, DependencyUnavailableError
        p = Policy(service="dep", connect_timeout=1, read_timeout=1, deadline=0.3, max_tries=3, max_time=5,
                   base_delay=0, max_delay=0, failure_threshold=1, recovery_timeout=30)
        r = Resilient(p)
        start = time.monotonic()
        try:
            r.call(lambda: time.sleep(5))
        except DependencyUnavailableError as exc:
            print(exc.reason, round(time.monotonic() - start, 2), r.state)
        """
    )
    out = subprocess.run(python_child(script), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    reason, elapsed, state = out.stdout.split()
    assert reason == "deadline"
    assert float(elapsed) < 1.0
    assert state == "open", "a gevent.Timeout must count as a failure, not reset the breaker"


# What a loaded 2-CPU machine may add to a gevent timer.
TIMER_SLACK_S = 0.3


def test_time_outside_deadlines_does_not_count_under_gevent() -> None:
    # Waiting for a client's body inside a storage call: only the call's own time uses up its deadline.
    script = textwrap.dedent(
        """
        from gevent import monkey; monkey.patch_all()
        import time, gevent
        from photo_api.greenlets import deadline, outside_deadlines

        def run(before, outside, after):
            started = time.monotonic()
            try:
                with deadline(0.5):
                    time.sleep(before)
                    with outside_deadlines():
                        time.sleep(outside)
                    time.sleep(after)
            except gevent.Timeout:
                return f"timeout@{time.monotonic() - started:.1f}"
            return "done"

        def inner_deadline():
            try:
                with deadline(5), outside_deadlines(), deadline(0.2, ValueError("client")):
                    time.sleep(1)
            except ValueError as exc:
                return str(exc)

        def others_keep_theirs():
            def paused():
                with deadline(0.3), outside_deadlines():
                    time.sleep(1)
            other = gevent.spawn(paused)
            result = run(0, 0, 1)  # this greenlet's deadline runs while the other's is paused
            other.join()
            return result

        print(run(0.2, 1.0, 0.2), run(0.3, 1.0, 0.3), run(0, 0, 0.7), inner_deadline(), others_keep_theirs())
        """
    )
    out = subprocess.run(python_child(script), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    fits, paused_late, plain, inner, other = out.stdout.split()
    # 0.4 s of own time fits 0.5 s although 1.4 s passed; with 0.3 s before and after a 1 s pause, the
    # deadline fires 0.2 s after it (at 1.5 s); unpaused it fires at 0.5 s.
    assert (fits, inner) == ("done", "client")
    for result, expected in ((paused_late, 1.5), (plain, 0.5), (other, 0.5)):
        kind, _, seconds = result.partition("@")
        assert kind == "timeout" and expected <= float(seconds) < expected + TIMER_SLACK_S, result


@pytest.mark.parametrize("service", ["storage", "cdn", "log"])
def test_per_service_overrides_replace_the_global_values(service: str) -> None:
    settings = load_settings(
        environ={
            "RETRY_MAX_TRIES": "3",
            "BREAKER_FAILURE_THRESHOLD": "5",
            f"{service.upper()}_RETRY_MAX_TRIES": "7",
            f"{service.upper()}_BREAKER_RECOVERY_TIMEOUT": "12",
        }
    )
    policies = Policies.from_settings(settings)
    p = getattr(policies, service)
    assert (p.max_tries, p.recovery_timeout, p.failure_threshold) == (7, 12, 5)
    other = getattr(policies, "storage" if service != "storage" else "cdn")
    assert (other.max_tries, other.failure_threshold) == (3, 5)


def test_policies_carry_each_dependency_timeouts_and_deadline() -> None:
    settings = load_settings(
        environ={
            "HTTP_TIMEOUT_CONNECT": "2",
            "STORAGE_DOWNLOAD_TIMEOUT": "40",
            "STORAGE_AUTH_TIMEOUT": "7",
            "CDN_TIMEOUT": "4",
            "LOG_SERVICE_TIMEOUT": "9",
            "RETRY_MAX_TIME": "20",
            "STORAGE_RETRY_MAX_TRIES": "6",
        }
    )
    policies = Policies.from_settings(settings)
    summary = {
        name: (p.service, p.timeout, p.deadline)
        for name, p in (
            ("storage", policies.storage),
            ("storage_auth", policies.storage_auth),
            ("cdn", policies.cdn),
            ("log", policies.log),
        )
    }
    assert summary == {
        "storage": ("storage", (2, 40), 40),
        "storage_auth": ("storage_auth", (2, 7), 7),
        "cdn": ("cdn", (2, 4), 4),
        # In the background: the whole retry budget, then one last connect and read.
        "log": ("log", (2, 9), 20 + 2 + 9),
    }
    assert policies.storage_auth.max_tries == policies.storage.max_tries == 6  # STORAGE_ covers auth too


def test_a_killed_caller_neither_counts_nor_resets() -> None:
    r, _, _ = make(max_tries=1, failure_threshold=3)
    for _ in range(2):
        with pytest.raises(DependencyUnavailableError):
            r.call(Flaky(1))
    assert r.breaker.failure_count == 2

    def killed() -> str:
        raise KeyboardInterrupt  # like GreenletExit: says nothing about the dependency

    with pytest.raises(KeyboardInterrupt):
        r.call(killed)
    assert r.breaker.failure_count == 2
    with pytest.raises(DependencyUnavailableError):
        r.call(Flaky(1))
    assert r.state == "open"  # the third real failure still opens it


def test_a_caller_side_error_neither_counts_nor_resets() -> None:
    # The caller's upload source stalled or failed mid-call: nothing is known about the dependency.
    r, events, clock = make(max_tries=1, failure_threshold=3, recovery_timeout=10)
    for _ in range(2):
        with pytest.raises(DependencyUnavailableError):
            r.call(Flaky(1))
    stalled = Flaky(1, CallerSideError("the client stopped sending"))
    with pytest.raises(CallerSideError):
        r.call(stalled)
    assert stalled.calls == 1, "not retried"
    assert (r.breaker.failure_count, r.state) == (2, "closed")
    with pytest.raises(DependencyUnavailableError):
        r.call(Flaky(1))
    assert r.state == "open", "the third real failure opens it: the caller's error did not reset the count"

    # A trial that ends with the caller's error leaves the circuit half-open for the next trial.
    clock.now += 11
    with pytest.raises(CallerSideError):
        r.call(Flaky(1, CallerSideError("stalled again")))
    assert r.state == "half_open"
    assert r.call(Flaky(0)) == "ok"
    assert r.state == "closed"
    assert events.states == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_open_circuit_follows_the_injected_clock() -> None:
    r, events, clock = make(max_tries=1, failure_threshold=1, recovery_timeout=30)
    with pytest.raises(DependencyUnavailableError):
        r.call(Flaky(1))
    assert r.breaker.open_remaining == 30
    clock.now += 12
    with pytest.raises(DependencyUnavailableError) as info:
        r.call(Flaky(0))
    assert info.value.retry_after == 18  # what is left of the open period, rounded up
    clock.now += 18
    assert r.state == "half_open"
    assert r.call(Flaky(0)) == "ok"
    assert events.states == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_only_the_trial_itself_frees_the_half_open_slot() -> None:
    # A call admitted while closed and killed during the trial must not let a second trial in.
    r, _, clock = make(max_tries=1, failure_threshold=1, recovery_timeout=10)
    started, finish = threading.Event(), threading.Event()
    ended: list[str] = []

    def killed_later() -> str:
        started.set()
        finish.wait(5)
        raise GreenletExit  # its greenlet is killed: nothing said about the dependency

    def in_flight() -> None:
        try:
            r.call(killed_later)
        except GreenletExit:
            ended.append("killed")

    caller = threading.Thread(target=in_flight)
    caller.start()
    started.wait(5)
    with pytest.raises(DependencyUnavailableError):
        r.call(Flaky(1))  # opens the circuit while that call is still in flight
    clock.now += 11
    rejected: list[str] = []

    def trial() -> str:
        finish.set()
        caller.join(5)  # the older call ends while the trial is in flight...
        try:
            r.call(lambda: "second trial")  # ...which must not admit a second one
        except DependencyUnavailableError as exc:
            rejected.append(exc.reason)
        return "trial"

    assert r.state == "half_open"
    assert r.call(trial) == "trial"
    assert ended == ["killed"]
    assert rejected == ["circuit_open"]
    assert r.state == "closed"


def test_bulkhead_refuses_beyond_capacity_and_gives_slots_back() -> None:
    bulkhead = Bulkhead(2, queue_timeout=0, name="dep")
    with bulkhead.slot(), bulkhead.slot():
        assert bulkhead.in_flight == 2
        with pytest.raises(BulkheadFullError) as info, bulkhead.slot():
            pass
        assert info.value.retry_after == 1
    assert bulkhead.in_flight == 0
    with pytest.raises(ValueError), bulkhead.slot():
        raise ValueError("the call failed")
    assert bulkhead.in_flight == 0  # a failed call gives its slot back too
    with bulkhead.slot(), bulkhead.slot():
        pass


def test_bulkhead_waiter_gets_a_slot_freed_within_the_queue_timeout() -> None:
    bulkhead = Bulkhead(1, queue_timeout=5)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with bulkhead.slot():
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    threading.Timer(0.05, release.set).start()
    with bulkhead.slot():  # waits for the holder rather than failing
        assert bulkhead.in_flight == 1
    holder.join(5)


@pytest.mark.parametrize(("capacity", "queue_timeout"), [(0, 1), (1, -1)])
def test_bulkhead_refuses_nonsense(capacity: int, queue_timeout: float) -> None:
    with pytest.raises(ValueError):
        Bulkhead(capacity, queue_timeout)
