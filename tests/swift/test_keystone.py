"""Keystone v2 auth (as NHN uses it) against a loopback Keystone double that hands out real Swift tokens."""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from photo_api.storage import ObjectNotFoundError, StorageUnavailableError, SwiftStorage
from photo_api.storage.keystone import REFRESH_MARGIN_FRACTION
from tests import python_child
from tests.harness.faultproxy import Fault, FaultProxy
from tests.swift.conftest import Clock, MakeStorage, Swift, fast_policy
from tests.swift.keystone_double import KeystoneDouble

pytestmark = pytest.mark.slow

TENANT = "0123456789abcdef0123456789abcdef"
USER = "photo-api@example.com"
PASSWORD = "api-password"
DEAD_URL = "http://127.0.0.1:9/v1/AUTH_nowhere"  # discard port: connection refused
THREADS = 16


@pytest.fixture
def keystone(swift: Swift, swift_proxy: FaultProxy) -> Iterator[KeystoneDouble]:
    """Keystone whose catalog points at the fault proxy in front of Swift (so its use is visible)."""
    endpoints = [("KR1", f"{swift_proxy.url}/v1/{swift.account}")]
    with KeystoneDouble(swift, tenant_id=TENANT, username=USER, password=PASSWORD, endpoints=endpoints) as double:
        yield double


@pytest.fixture
def make_v2(make_storage: MakeStorage, keystone: KeystoneDouble) -> Callable[..., SwiftStorage]:
    def make(**overrides: Any) -> SwiftStorage:
        values: dict[str, Any] = {
            "auth_url": keystone.auth_url,
            "auth_version": "2",
            "tenant_id": TENANT,
            "username": USER,
            "password": PASSWORD,
        }
        values.update(overrides)
        return make_storage(**values)

    return make


@pytest.fixture
def key() -> str:
    return f"keystone/{secrets.token_hex(8)}/photo.png"


def run_together(count: int, fn: Callable[[], object]) -> list[BaseException]:
    """Run `fn` in `count` threads released at the same moment; return what they raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_v2_auth_uses_the_catalog_storage_url(
    make_v2: Callable[..., SwiftStorage], keystone: KeystoneDouble, swift_proxy: FaultProxy, key: str
) -> None:
    storage = make_v2()
    storage.put(key, io.BytesIO(b"via keystone"), content_type="image/png")
    with storage.open(key) as reader:
        assert b"".join(reader) == b"via keystone"
    assert keystone.requests == 1  # one token for every call
    assert swift_proxy.connections >= 1  # the catalog's publicURL (the proxy) was used, not a guess


def test_region_picks_the_matching_endpoint(
    make_v2: Callable[..., SwiftStorage], keystone: KeystoneDouble, swift_proxy: FaultProxy, key: str
) -> None:
    keystone.endpoints = [("KR2", DEAD_URL), ("KR1", keystone.endpoints[0][1])]
    make_v2(region="kr1").put(key, io.BytesIO(b"kr1"), content_type="image/png")
    # Without a region the first endpoint is used, which here refuses connections.
    with pytest.raises(StorageUnavailableError):
        make_v2(region="", policy=fast_policy(max_tries=1)).head(key)
    with pytest.raises(StorageUnavailableError, match="region 'JP1'"):
        make_v2(region="JP1").head(key)


def test_configured_storage_url_overrides_the_catalog(
    make_v2: Callable[..., SwiftStorage], keystone: KeystoneDouble, swift: Swift, key: str
) -> None:
    keystone.endpoints = [("KR1", DEAD_URL)]
    storage = make_v2(storage_url=swift.storage_url)
    storage.put(key, io.BytesIO(b"override"), content_type="image/png")
    assert storage.head(key).size == len(b"override")


def test_wrong_credentials_fail_clearly_and_are_not_retried(
    make_v2: Callable[..., SwiftStorage], keystone: KeystoneDouble, key: str
) -> None:
    storage = make_v2(password="not-the-password")
    with pytest.raises(StorageUnavailableError, match="requires authentication") as caught:
        storage.head(key)
    assert "not-the-password" not in str(caught.value)
    assert (keystone.requests, keystone.rejected) == (1, 1)
    # Callers arriving right after share that answer instead of asking Keystone again.
    with pytest.raises(StorageUnavailableError):
        storage.head(key)
    assert keystone.requests == 1
    assert storage.breaker_states["storage_auth"] == "closed"  # a refusal is an answer, not an outage


def test_token_is_refreshed_before_expiry_with_one_request(
    make_v2: Callable[..., SwiftStorage], keystone: KeystoneDouble, key: str
) -> None:
    lifetime = 600.0
    keystone.token_lifetime = lifetime
    clock = Clock()
    storage = make_v2(clock=clock)
    storage.put(key, io.BytesIO(b"refresh"), content_type="image/png")
    assert keystone.requests == 1
    # Inside the refresh margin the token still works: one caller refreshes, nobody waits for it.
    clock.advance(lifetime * (1 - REFRESH_MARGIN_FRACTION) + 1)
    assert run_together(THREADS, lambda: storage.head(key)) == []
    assert keystone.requests == 2
    # Past expiry everybody needs the new token, and still only one request is made for it.
    clock.advance(lifetime + 1)
    assert run_together(THREADS, lambda: storage.head(key)) == []
    assert keystone.requests == 3
    storage.head(key)
    assert keystone.requests == 3


def test_revoked_token_reauthenticates_once(
    make_v2: Callable[..., SwiftStorage], keystone: KeystoneDouble, swift: Swift, key: str
) -> None:
    storage = make_v2()
    storage.put(key, io.BytesIO(b"revoked"), content_type="image/png")
    old = keystone.issued[-1]
    keystone.expire_tokens()
    assert swift.status_with_token(old) == 401  # it is the real Swift that refuses it
    assert run_together(8, lambda: storage.head(key)) == []
    assert keystone.requests == 2
    assert keystone.issued[-1] != old


def test_keystone_5xx_burst_is_retried(
    make_v2: Callable[..., SwiftStorage], keystone: KeystoneDouble, key: str
) -> None:
    with FaultProxy(("127.0.0.1", keystone.port)) as front:
        front.set(Fault.http_error(503, count=2))
        storage = make_v2(auth_url=f"{front.url}/v2.0")
        with pytest.raises(ObjectNotFoundError):
            storage.head(key)
        assert front.connections == 3
        assert keystone.requests == 1


def test_blackholed_keystone_is_bounded_by_the_auth_timeout(make_v2: Callable[..., SwiftStorage], key: str) -> None:
    with FaultProxy(("127.0.0.1", 9)) as front:
        front.set(Fault.blackhole())
        auth = fast_policy("storage_auth", read_timeout=0.3, deadline=0.3, max_tries=2, max_time=0.5)
        storage = make_v2(auth_url=f"{front.url}/v2.0", auth_policy=auth)
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="auth"):
            storage.head(key)
        # Outside gevent the read timeout bounds each try: 2 tries x 0.3 s plus a tiny backoff.
        assert 0.6 <= time.monotonic() - started < 1.5


GEVENT_REFRESH = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import io, json, sys, gevent
    from photo_api.resilience import Bulkhead
    from photo_api.storage import SwiftStorage
    from tests.swift.conftest import Clock, fast_policy
    auth_url, tenant, user, password, container, key, lifetime = sys.argv[1:8]
    clock = Clock()
    storage = SwiftStorage(auth_url=auth_url, auth_version="2", tenant_id=tenant, username=user, password=password,
                           container=container, policy=fast_policy(), auth_policy=fast_policy("storage_auth"),
                           upload_timeout=10, check_timeout=2, bulkhead=Bulkhead(100, 0.5), clock=clock)
    storage.put(key, io.BytesIO(b"green"), content_type="image/png")
    clock.advance(float(lifetime) + 1)   # expired: every greenlet needs a new token at once
    jobs = [gevent.spawn(storage.head, key) for _ in range(50)]
    gevent.joinall(jobs, timeout=30)
    errors = [repr(j.exception) for j in jobs if j.exception]
    print(json.dumps({"ok": sum(1 for j in jobs if j.successful()), "errors": errors}))
    """
)


def test_greenlets_share_one_refresh_under_gevent(keystone: KeystoneDouble, container: str, key: str) -> None:
    keystone.token_lifetime = 300
    # gevent must patch before anything else is imported, hence a fresh interpreter.
    out = subprocess.run(
        [*python_child(GEVENT_REFRESH), keystone.auth_url, TENANT, USER, PASSWORD, container, key, "300"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"ok": 50, "errors": []}
    assert keystone.requests == 2  # the first token, then exactly one refresh for 50 greenlets
