"""A real OpenStack Swift for the test session, started by the project's own `ops/swift-saio.sh`.

The first run installs Debian's python3-swift and memcached (as root; about 20 s), later starts take
about 4 s. Swift listens on free loopback ports in a temporary directory, with a TempURL key set on the
account, and is stopped at the end of the session. When it cannot be started the Swift tests are
skipped on a developer machine but FAIL when `CI` is set.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests

from photo_api.resilience import Bulkhead, Policy
from photo_api.storage import SwiftStorage
from tests.harness.ci import unavailable
from tests.harness.env import swift_settings
from tests.harness.faultproxy import FaultProxy
from tests.harness.server import free_ports
from tests.swift.api_server import through

REPO = Path(__file__).resolve().parents[2]
SAIO_SCRIPT = REPO / "ops" / "swift-saio.sh"
# The first start installs packages with apt; later starts take seconds.
START_TIMEOUT_S = 900
STOP_TIMEOUT_S = 60
TEMP_URL_KEY = "photo-api-test-tempurl-key-Xq3Lm8Rv2Tn6Wb9Yc4Hd"  # production refuses a guessable one
RESELLER_PREFIX = "AUTH_"  # tempauth's, as configured by swift-saio.sh
# An access line of Swift's proxy-logging middleware:
# "proxy-server: CLIENT_IP REMOTE_ADDR DATE HEAD /v1/AUTH_test/c%3Fformat%3Djson HTTP/1.0 204 ...";
# Swift's own subrequests have "-" as the client address.
_ACCESS_LINE = re.compile(r"proxy-server: (\S+) \S+ \S+ ([A-Z]+) (\S+) HTTP/1\.[01] (\d{3}) ")


@dataclass(frozen=True)
class Swift:
    """How to reach the session's Swift: tempauth v1 credentials, the account URL and its TempURL key."""

    auth_url: str
    user: str
    key: str
    storage_url: str
    account: str
    temp_url_key: str
    memcached_port: int
    directory: Path

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the Swift proxy server."""
        host, port = self.storage_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        return host, int(port)

    def settings(self, container: str, proxy_url: str | None = None) -> dict[str, str]:
        """The instance settings that store in `container` of this Swift, through the proxy at `proxy_url` if given."""
        return swift_settings(
            auth_url=through(self.auth_url, proxy_url) if proxy_url else self.auth_url,
            storage_url=through(self.storage_url, proxy_url) if proxy_url else self.storage_url,
            user=self.user,
            key=self.key,
            container=container,
            temp_url_key=self.temp_url_key,
        )

    def token(self) -> str:
        """A tempauth token (tempauth hands out the same one until it expires or is revoked)."""
        response = requests.get(self.auth_url, headers={"X-Auth-User": self.user, "X-Auth-Key": self.key}, timeout=10)
        response.raise_for_status()
        return response.headers["X-Auth-Token"]

    def revoke(self, token: str) -> None:
        """Make Swift reject `token` from now on (tempauth keeps tokens in memcached only)."""
        # Swift's memcache client stores md5(key); tempauth's key is "<reseller prefix>/token/<token>".
        key = hashlib.md5(f"{RESELLER_PREFIX}/token/{token}".encode()).hexdigest()
        with socket.create_connection(("127.0.0.1", self.memcached_port), timeout=5) as conn:
            conn.sendall(f"delete {key}\r\n".encode())
            reply = conn.recv(64)
        assert reply in (b"DELETED\r\n", b"NOT_FOUND\r\n"), reply

    def status_with_token(self, token: str) -> int:
        """The status Swift answers a HEAD of the account with `token` (200/204 valid, 401 rejected)."""
        return requests.head(self.storage_url, headers={"X-Auth-Token": token}, timeout=10).status_code

    def list_container(self, container: str) -> list[str]:
        """Object names in `container`, as Swift stores them."""
        response = requests.get(
            f"{self.storage_url}/{container}",
            params={"format": "json"},
            headers={"X-Auth-Token": self.token()},
            timeout=10,
        )
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return [item["name"] for item in response.json()]

    def access_log(self) -> list[tuple[str, str, int]]:
        """(method, decoded path without query, status) of every client request the Swift proxy logged."""
        text = (self.directory / "log" / "proxy.log").read_text(errors="replace")
        # The logged path is quoted with its query ("%3Fformat%3Djson"), so decode before cutting.
        return [(m[2], unquote(m[3]).split("?")[0], int(m[4])) for m in _ACCESS_LINE.finditer(text) if m[1] != "-"]


def _parse_exports(stdout: str) -> dict[str, str]:
    values = {}
    for line in stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export ") :].split("=", 1)
            values[name] = value
    return values


@pytest.fixture(scope="session")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swift]:
    """Start Swift for the session (skip locally, fail in CI when impossible); stop it afterwards."""
    directory = tmp_path_factory.mktemp("swift-saio")
    proxy, obj, container, account, memcached = free_ports(5)
    env = {
        **os.environ,
        "SWIFT_SAIO_PROXY_PORT": str(proxy),
        "SWIFT_SAIO_OBJECT_PORT": str(obj),
        "SWIFT_SAIO_CONTAINER_PORT": str(container),
        "SWIFT_SAIO_ACCOUNT_PORT": str(account),
        "SWIFT_SAIO_MEMCACHED_PORT": str(memcached),
        "SWIFT_SAIO_TEMPURL_KEY": TEMP_URL_KEY,
    }
    try:
        started = time.monotonic()
        try:
            result = subprocess.run(
                [str(SAIO_SCRIPT), "start", str(directory)],
                env=env,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            unavailable(f"Swift: {SAIO_SCRIPT.name} start failed: {exc}")
        if result.returncode != 0:
            tail = "\n".join(result.stderr.splitlines()[-15:])
            unavailable(f"Swift: {SAIO_SCRIPT.name} start exited {result.returncode}:\n{tail}")
        values = _parse_exports(result.stdout)
        print(f"\nSwift started in {time.monotonic() - started:.1f}s at {values.get('SWIFT_PROXY_URL')}")
        yield Swift(
            auth_url=values["SWIFT_AUTH_URL"],
            user=values["SWIFT_USER"],
            key=values["SWIFT_KEY"],
            storage_url=values["SWIFT_STORAGE_URL"],
            account=values["SWIFT_ACCOUNT"],
            temp_url_key=values["SWIFT_TEMPURL_KEY"],
            memcached_port=memcached,
            directory=directory,
        )
    finally:
        subprocess.run([str(SAIO_SCRIPT), "stop", str(directory)], env=env, capture_output=True, timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def container() -> str:
    """The container of this test session (tests use random keys, so they share it)."""
    return f"photo-api-test-{secrets.token_hex(4)}"


class Clock:
    """A settable monotonic clock: breakers and token expiry move only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


class Recorder:
    """Collects resilience events (the `Events` protocol) for assertions."""

    def __init__(self) -> None:
        self.retries: list[tuple[str, float]] = []
        self.giveups: list[tuple[str, str]] = []
        self.states: list[tuple[str, str, str]] = []
        self.rejections: list[str] = []

    def retry(self, service: str, exc: BaseException, wait: float) -> None:
        self.retries.append((service, wait))

    def giveup(self, service: str, exc: BaseException) -> None:
        self.giveups.append((service, type(exc).__name__))

    def state_change(self, service: str, old: str, new: str) -> None:
        self.states.append((service, old, new))

    def rejected(self, service: str) -> None:
        self.rejections.append(service)


def fast_policy(service: str = "storage", **overrides: Any) -> Policy:
    """Short timeouts and tiny backoff sleeps, so that fault tests take a fraction of a second."""
    values: dict[str, Any] = {
        "service": service,
        "connect_timeout": 2.0,
        "read_timeout": 10.0,
        "deadline": 10.0,
        "max_tries": 3,
        "max_time": 5.0,
        "base_delay": 0.01,
        "max_delay": 0.05,
        "failure_threshold": 5,
        "recovery_timeout": 30.0,
    }
    values.update(overrides)
    return Policy(**values)


MakeStorage = Callable[..., SwiftStorage]


@pytest.fixture
def make_storage(swift: Swift, container: str) -> Iterator[MakeStorage]:
    """Build SwiftStorage objects on the session's Swift (tempauth v1 by default); closed at teardown."""
    with ExitStack() as stack:

        def make(**overrides: Any) -> SwiftStorage:
            kwargs: dict[str, Any] = {
                "auth_url": swift.auth_url,
                "auth_version": "1",
                "username": swift.user,
                "password": swift.key,
                "container": container,
                "policy": fast_policy(),
                "auth_policy": fast_policy("storage_auth"),
                "upload_timeout": 30.0,
                "check_timeout": 2.0,
                "bulkhead": Bulkhead(20, 0.5),
                "temp_url_key": swift.temp_url_key,
            }
            kwargs.update(overrides)
            storage = SwiftStorage(**kwargs)
            stack.callback(storage.close)
            return storage

        yield make


@pytest.fixture
def swift_proxy(swift: Swift) -> Iterator[FaultProxy]:
    """A fault proxy in front of the Swift proxy server (passing until a test switches it)."""
    with FaultProxy(swift.address) as proxy:
        yield proxy
