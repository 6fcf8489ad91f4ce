"""STORAGE_BACKEND=swift from settings: the backend, its policies and per-service overrides (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from photo_api.api.context import collaborators_of
from photo_api.app import create_app, swift_storage_options
from photo_api.config import load_settings
from photo_api.resilience import Bulkhead, Policies
from photo_api.storage import SwiftStorage
from tests.harness.env import OFFLINE_SWIFT_ENV, TEST_SECRET


def settings(tmp_path: Path, **extra: str) -> Any:
    env = {
        **OFFLINE_SWIFT_ENV,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "JWT_SECRET_KEY": TEST_SECRET,
        **extra,
    }
    return load_settings(environ=env)


def test_the_app_builds_swift_storage_without_network(tmp_path: Path) -> None:
    app = collaborators_of(create_app(settings(tmp_path)))
    try:
        assert isinstance(app.storage, SwiftStorage)
        assert app.storage.name == "swift"
        assert app.storage.breaker_states == {"storage": "closed", "storage_auth": "closed"}
    finally:
        app.db.dispose()


def test_timeouts_map_onto_the_operations(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        HTTP_TIMEOUT_CONNECT="2",
        STORAGE_AUTH_TIMEOUT="7",
        STORAGE_DOWNLOAD_TIMEOUT="40",
        STORAGE_UPLOAD_TIMEOUT="90",
        HEALTH_CHECK_TIMEOUT="1.5",
    )
    options = swift_storage_options(s, Policies.from_settings(s))
    policy, auth = options["policy"], options["auth_policy"]
    assert (policy.service, policy.timeout, policy.deadline) == ("storage", (2, 40), 40)
    assert (auth.service, auth.timeout, auth.deadline) == ("storage_auth", (2, 7), 7)
    assert (options["upload_timeout"], options["check_timeout"]) == (90, 1.5)
    bulkhead = options["bulkhead"]
    assert isinstance(bulkhead, Bulkhead)
    assert (bulkhead.capacity, bulkhead.queue_timeout) == (20, 0.5)


def test_per_service_overrides_win_over_the_global_values(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        RETRY_MAX_TRIES="3",
        BREAKER_FAILURE_THRESHOLD="5",
        STORAGE_RETRY_MAX_TRIES="6",
        STORAGE_BREAKER_FAILURE_THRESHOLD="9",
        STORAGE_BREAKER_RECOVERY_TIMEOUT="12",
    )
    policies = Policies.from_settings(s)
    storage = policies.storage
    assert (storage.max_tries, storage.failure_threshold, storage.recovery_timeout) == (6, 9, 12)
    assert storage.max_time == s.retry_max_time  # not overridden: the global value
    other = policies.cdn  # a service without overrides
    assert (other.max_tries, other.failure_threshold, other.recovery_timeout) == (3, 5, s.breaker_recovery_timeout)
    assert other.deadline == s.cdn_timeout == 5


@pytest.mark.parametrize(("name", "value"), [("STORAGE_RETRY_MAX_TRIES", "0"), ("STORAGE_MAX_CONCURRENCY", "0")])
def test_overrides_are_validated(tmp_path: Path, name: str, value: str) -> None:
    from photo_api.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, **{name: value})
    assert name in caught.value.settings_named()
