"""Deadline → backoff → breaker composition: retries, fail-fast when open, one half-open trial, deadlines."""

from __future__ import annotations

import subprocess
import textwrap
from typing import Any

import pytest
import requests

from photo_api.config import load_settings
from photo_api.resilience import (
    DependencyUnavailable,
    Policy,
    Resilient,
    TransientError,
    policy_for,
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
    with pytest.raises(DependencyUnavailable) as info:
        r.call(dep, idempotent=False)
    assert dep.calls == 1
    assert info.value.reason == "exhausted"


def test_breaker_opens_after_threshold_then_fails_fast_without_calling() -> None:
    r, events, _ = make(max_tries=1, failure_threshold=3)
    dep = Flaky(100)
    for _ in range(3):
        with pytest.raises(DependencyUnavailable):
            r.call(dep)
    assert dep.calls == 3
    assert r.state == "open"
    with pytest.raises(DependencyUnavailable) as info:
        r.call(dep)
    assert dep.calls == 3, "an open circuit must not touch the dependency"
    assert info.value.reason == "circuit_open"
    assert 1 <= info.value.retry_after <= 30
    assert ("closed", "open") in events.states
    assert events.rejections == 1


def test_open_breaker_stops_retries_mid_sequence() -> None:
    r, _, _ = make(max_tries=10, failure_threshold=2)
    dep = Flaky(100)
    with pytest.raises(DependencyUnavailable) as info:
        r.call(dep)
    assert dep.calls == 2, "the third attempt meets the open breaker and ends the retry loop"
    assert info.value.reason == "circuit_open"


def test_half_open_admits_exactly_one_trial_and_success_closes() -> None:
    r, events, clock = make(max_tries=1, failure_threshold=1, recovery_timeout=30)
    with pytest.raises(DependencyUnavailable):
        r.call(Flaky(1))
    clock.now += 31
    assert r.state == "half_open"
    inner_results: list[str] = []

    def trial() -> str:
        # A second caller arriving while the trial is in flight is rejected without I/O.
        try:
            r.call(lambda: "second")
        except DependencyUnavailable as exc:
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
        with pytest.raises(DependencyUnavailable):
            r.call(dep)
    clock.now += 11
    with pytest.raises(DependencyUnavailable) as info:
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
        from photo_api.resilience import Policy, Resilient, DependencyUnavailable
        p = Policy(service="dep", connect_timeout=1, read_timeout=1, deadline=0.3, max_tries=3, max_time=5,
                   base_delay=0, max_delay=0, failure_threshold=1, recovery_timeout=30)
        r = Resilient(p)
        start = time.monotonic()
        try:
            r.call(lambda: time.sleep(5))
        except DependencyUnavailable as exc:
            print(exc.reason, round(time.monotonic() - start, 2), r.state)
        """
    )
    out = subprocess.run(python_child(script), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    reason, elapsed, state = out.stdout.split()
    assert reason == "deadline"
    assert float(elapsed) < 1.0
    assert state == "open", "a gevent.Timeout must count as a failure, not reset the breaker"


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
    p = policy_for(settings, service, read_timeout=2)
    assert (p.max_tries, p.recovery_timeout, p.failure_threshold) == (7, 12, 5)
    other = policy_for(settings, "storage" if service != "storage" else "cdn", read_timeout=2)
    assert (other.max_tries, other.failure_threshold) == (3, 5)
