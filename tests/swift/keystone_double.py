"""A Keystone v2 identity service on loopback, written from NHN's documented contract (docs/nhn-cloud.md).

`POST /v2.0/tokens` with `auth.tenantId` + `auth.passwordCredentials` answers 200 with `access.token`
(`id`, `expires`, `issued_at`, `tenant`), a `serviceCatalog` whose object-store endpoints are set by
the test, and `user`/`metadata`. The token it hands out is a real tempauth token of the session's Swift,
fetched on each request, so the real Swift accepts it. Wrong credentials get 401 with Keystone's error
body; a malformed request gets 400. `expire_tokens()` revokes every token handed out so far in Swift,
which is what a token expiring (or a password change) looks like to a client: Swift answers 401.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from tests.swift.conftest import Swift

TOKENS_PATH = "/v2.0/tokens"
MAX_BODY = 64 * 1024


class QuietHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that does not print a traceback when a client resets its connection."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore connection resets (fault proxies cause them on purpose); report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class KeystoneDouble:
    """Keystone v2 `POST /v2.0/tokens` handing out the real Swift's tokens; counts what it is asked."""

    def __init__(
        self,
        swift: Swift,
        *,
        tenant_id: str,
        username: str,
        password: str,
        endpoints: list[tuple[str, str]],
        token_lifetime: float = 3600.0,
    ) -> None:
        self.swift = swift
        self.tenant_id = tenant_id
        self.username = username
        self.password = password
        self.endpoints = endpoints  # (region, publicURL) of the object-store service, in catalog order
        self.token_lifetime = token_lifetime
        self.issued: list[str] = []
        self.requests = 0  # every POST /v2.0/tokens
        self.rejected = 0  # those answered 401
        self._lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                double._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    @property
    def auth_url(self) -> str:
        """What NHN_STORAGE_AUTH_URL would be: the identity base, to which clients append /tokens."""
        return f"http://127.0.0.1:{self.port}/v2.0"

    def expire_tokens(self) -> None:
        """Revoke every token handed out so far, in Swift: clients holding one now get 401."""
        with self._lock:
            issued = list(self.issued)
        for token in issued:
            self.swift.revoke(token)

    def start(self) -> Self:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ the endpoint

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests += 1
        if request.path.rstrip("/") != TOKENS_PATH:
            return _send(request, 404, _error(404, "Not Found", "The resource could not be found."))
        length = int(request.headers.get("Content-Length") or 0)
        try:
            body = json.loads(request.rfile.read(min(length, MAX_BODY)))
            auth = body["auth"]
            tenant_id = auth["tenantId"]
            username = auth["passwordCredentials"]["username"]
            password = auth["passwordCredentials"]["password"]
        except (ValueError, KeyError, TypeError):
            return _send(request, 400, _error(400, "Bad Request", "Malformed request body."))
        if (tenant_id, username, password) != (self.tenant_id, self.username, self.password):
            with self._lock:
                self.rejected += 1
            return _send(
                request, 401, _error(401, "Unauthorized", "The request you have made requires authentication.")
            )
        token = self.swift.token()
        with self._lock:
            if token not in self.issued:
                self.issued.append(token)
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=self.token_lifetime)
        access = {
            "token": {
                "id": token,
                "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.%f"),
                "tenant": {
                    "id": self.tenant_id,
                    "name": "photo-api",
                    "groupId": "0000",
                    "enabled": True,
                    "description": "",
                    "project_domain": "NORMAL",
                    "swift": True,
                },
            },
            "serviceCatalog": [
                {
                    "type": "identity",
                    "name": "keystone",
                    "endpoints": [{"region": "KR1", "publicURL": self.auth_url}],
                    "endpoints_links": [],
                },
                {
                    "type": "object-store",
                    "name": "swift",
                    "endpoints": [{"region": region, "publicURL": url} for region, url in self.endpoints],
                    "endpoints_links": [],
                },
            ],
            "user": {"id": "a1b2c3", "name": self.username, "username": self.username, "roles": []},
            "metadata": {"roles": [], "is_admin": 0},
        }
        _send(request, 200, {"access": access})


def _error(code: int, title: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "title": title, "message": message}}


def _send(request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)
