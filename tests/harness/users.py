"""Register users and log them in through the API, in-process (Flask's test client) or over real HTTP.

    users = Users(client)                      # a Flask test client
    users = Users.at(server.url())             # a running instance, or a load balancer in front of some
    user = users.create()                      # the /auth/register body plus "token" and "headers"
    creds = users.register()                   # registered only: email, username and password

One implementation speaks to a `Transport`: a callable sending one JSON request. Names are numbered per
`Users`; over HTTP they also carry a random tag, because instances and test runs share databases.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from flask.testing import FlaskClient

DEFAULT_PASSWORD = "correct horse battery"
# Registration hashes with argon2 at production cost, slow on a loaded 2-CPU machine.
HTTP_TIMEOUT_S = 30.0
TAG_LENGTH = 8


@dataclass(frozen=True)
class Reply:
    """What a transport got back: the status, the body parsed as JSON (None if it is not JSON) and as text."""

    status: int
    body: Any
    text: str


class Transport(Protocol):
    """Sends one request with an optional JSON body and headers to `path` of the application."""

    def __call__(
        self, method: str, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> Reply: ...


class FlaskTransport:
    """A Transport over Flask's test client: no network, the application in this process."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def __call__(self, method: str, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None) -> Reply:
        """Send one request through the test client."""
        response = self.client.open(path, method=method, json=json, headers=dict(headers or {}))
        return Reply(response.status_code, response.get_json(silent=True), response.get_data(as_text=True))


class HttpTransport:
    """A Transport over real HTTP to `base_url` (an instance, or a load balancer), with `requests`."""

    def __init__(
        self, base_url: str, *, session: requests.Session | None = None, timeout: float = HTTP_TIMEOUT_S
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http: Any = session or requests
        self.timeout = timeout

    def __call__(self, method: str, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None) -> Reply:
        """Send one request and read the whole answer."""
        response = self.http.request(
            method, self.base_url + path, json=json, headers=dict(headers or {}), timeout=self.timeout
        )
        try:
            body = response.json()
        except ValueError:
            body = None
        return Reply(response.status_code, body, response.text)


class Users:
    """Registers users through the API and hands out their tokens and auth headers."""

    def __init__(self, transport: FlaskClient | Transport, *, tag: str = "") -> None:
        self.send: Transport = FlaskTransport(transport) if isinstance(transport, FlaskClient) else transport
        self.tag = tag
        self.count = 0

    @classmethod
    def at(cls, base_url: str, *, session: requests.Session | None = None, timeout: float = HTTP_TIMEOUT_S) -> Users:
        """Users of the running instance (or load balancer) at `base_url`, with names no other run uses."""
        return cls(HttpTransport(base_url, session=session, timeout=timeout), tag=uuid.uuid4().hex[:TAG_LENGTH])

    def credentials(
        self, email: str | None = None, username: str | None = None, password: str = DEFAULT_PASSWORD
    ) -> dict[str, str]:
        """Fresh credentials, not registered yet."""
        self.count += 1
        username = username or f"user{self.tag}{self.count}"
        return {"email": email or f"{username}@example.com", "username": username, "password": password}

    def register(
        self, email: str | None = None, username: str | None = None, password: str = DEFAULT_PASSWORD
    ) -> dict[str, str]:
        """Register a user (asserting 201); its credentials."""
        return self._register(self.credentials(email, username, password))[0]

    def login(self, credentials: Mapping[str, str]) -> str:
        """Log in with a user's email and password (asserting 200); the access token."""
        body = {"email": credentials["email"], "password": credentials["password"]}
        reply = self.send("POST", "/auth/login", json=body)
        _expect(reply, 200, "POST /auth/login")
        return str(reply.body["access_token"])

    def create(
        self, email: str | None = None, username: str | None = None, password: str = DEFAULT_PASSWORD
    ) -> dict[str, Any]:
        """Register a user and log in; the register body plus `token` and `headers` for authenticated calls."""
        creds, user = self._register(self.credentials(email, username, password))
        user["token"] = self.login(creds)
        user["headers"] = bearer(user["token"])
        return user

    def _register(self, creds: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
        reply = self.send("POST", "/auth/register", json=creds)
        _expect(reply, 201, "POST /auth/register")
        return creds, dict(reply.body)


def bearer(token: str) -> dict[str, str]:
    """The Authorization header carrying `token`."""
    return {"Authorization": f"Bearer {token}"}


def _expect(reply: Reply, status: int, what: str) -> None:
    # Raised, not asserted: the benchmarks run without pytest and may run with -O.
    if reply.status != status:
        raise AssertionError(f"{what} answered {reply.status}, not {status}: {reply.text[:500]}")
