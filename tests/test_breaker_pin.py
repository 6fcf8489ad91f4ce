"""What photo_api/resilience/breaker.py relies on in the `circuitbreaker` package, checked on the library itself.

Each test is one "relied on" of the adapter's docstring. After upgrading circuitbreaker, run these: if
one fails, the adapter needs a change before the pinned version in requirements.txt may move.
"""

from __future__ import annotations

from importlib import metadata

import gevent
import pytest
from circuitbreaker import CircuitBreaker
from greenlet import GreenletExit

from photo_api.resilience.breaker import CHECKED_VERSION
from photo_api.resilience.failures import TransientError, counts_as_failure

THRESHOLD = 3


def library_breaker() -> CircuitBreaker:
    """The stock breaker, configured as the adapter configures it (a long recovery: stays open)."""
    return CircuitBreaker(failure_threshold=THRESHOLD, recovery_timeout=3600, expected_exception=counts_as_failure)


def exit_with(breaker: CircuitBreaker, exc: BaseException | None) -> None:
    """Leave the breaker's context as a call ending with `exc` (None: success) would; the library never swallows."""
    try:
        with breaker:
            if exc is not None:
                raise exc
    except BaseException as caught:
        assert caught is exc


def test_installed_version_is_the_one_the_adapter_was_checked_against() -> None:
    installed = metadata.version("circuitbreaker")
    assert installed == CHECKED_VERSION, (
        f"circuitbreaker {installed} is installed, the adapter was checked against {CHECKED_VERSION}: re-check "
        "what photo_api/resilience/breaker.py's docstring lists (the other tests here check each point), "
        "then update CHECKED_VERSION there"
    )


def test_a_failure_adds_one_and_the_threshold_opens() -> None:
    breaker = library_breaker()
    for count in range(1, THRESHOLD + 1):
        exit_with(breaker, TransientError("HTTP 503"))
        assert breaker.failure_count == count
    assert breaker.opened  # open exactly at the threshold, by the library's own reckoning
    exit_with(breaker, TransientError("HTTP 503"))  # a failed trial: still counted, still open
    assert breaker.failure_count == THRESHOLD + 1 and breaker.opened


@pytest.mark.parametrize("answer", [None, ValueError("HTTP 404 is an answer")], ids=["success", "answer"])
def test_anything_else_resets_the_count(answer: BaseException | None) -> None:
    breaker = library_breaker()
    for _ in range(THRESHOLD):
        exit_with(breaker, TransientError("HTTP 503"))
    exit_with(breaker, answer)
    assert breaker.failure_count == 0 and breaker.closed


def test_the_predicate_is_asked_about_base_exceptions_too() -> None:
    # gevent.Timeout is a BaseException: counted only because the predicate sees it.
    breaker = library_breaker()
    exit_with(breaker, gevent.Timeout(1))
    assert breaker.failure_count == 1


def test_the_library_itself_would_reset_on_a_killed_caller() -> None:
    # Why the adapter's __exit__ keeps GreenletExit away from the library.
    breaker = library_breaker()
    exit_with(breaker, TransientError("HTTP 503"))
    exit_with(breaker, GreenletExit())
    assert breaker.failure_count == 0
