"""The shipped nginx and HAProxy configs, run for real: no credential in their access logs, no client input
in nginx's own JSON error body.

A share link's token is in its path (`/share/<token>`), a direct upload's signature in its query string
(`/uploads/...?expires=...&signature=...`). Both go through each proxy; its access log must hold neither
(`/share/<token>` in their place, no query), while still recording the requests. nginx answers an
oversize body itself with a problem+json body naming the request ID: a hostile X-Request-ID must not
change that JSON, and HAProxy must not forward one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.e2e.conftest import StartServer
from tests.e2e.lb import Haproxy, Nginx
from tests.harness.env import PUBLIC_BASE_URL, production_env
from tests.harness.users import Users, bearer
from tests.images import png

pytestmark = pytest.mark.slow

HTTP_TIMEOUT_S = 30
LOG_WAIT_S = 10.0
UP_WAIT_S = 10.0
# Forges a field in a JSON body that interpolates the header unescaped.
HOSTILE_REQUEST_ID = 'x", "status": 200, "injected": "yes'
VALID_REQUEST_ID = "client-chosen.id_42"
PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}
NGINX_REQUEST_ID = re.compile(r"[0-9a-f]{32}")  # nginx's $request_id
HAPROXY_REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # uuid()
OVERSIZE_BYTES = 30 * 1024 * 1024  # above the site's client_max_body_size 25m


@dataclass
class Edge:
    """One proxy in front of the instance: its name, base URL and what its access log holds so far."""

    name: str
    url: Callable[[str], str]
    log: Callable[[], str]


@pytest.fixture
def backends(pg_database_url: str, tmp_path: Path, serve: StartServer) -> list[tuple[str, int]]:
    """A production instance (one worker), as the proxies' one backend."""
    env = production_env(
        pg_database_url, tmp_path / "storage", cheap_hashing=True, overrides={"TRUSTED_PROXY_COUNT": "1"}
    )
    server = serve(env)
    return [(server.host, server.port)]


def _start_edge(name: str, workdir: Path, backends: list[tuple[str, int]], stack: contextlib.ExitStack) -> Edge:
    if name == "nginx":
        nginx = Nginx(workdir, backends)
        stack.callback(nginx.close)
        nginx.start()
        return Edge(name, nginx.url, nginx.access_log)
    haproxy = Haproxy(workdir, backends, check_interval=0.5, unhealthy_threshold=2, check_timeout=1)
    stack.callback(haproxy.close)
    haproxy.start()
    haproxy.wait_state(haproxy.names[0], "UP", UP_WAIT_S)
    return Edge(name, haproxy.url, haproxy.log)


@pytest.fixture(params=["nginx", "haproxy"])
def edge(request: pytest.FixtureRequest, backends: list[tuple[str, int]], tmp_path: Path) -> Iterator[Edge]:
    """The shipped nginx, or the shipped HAProxy, in front of the instance."""
    with contextlib.ExitStack() as stack:
        yield _start_edge(request.param, tmp_path, backends, stack)


@pytest.fixture
def nginx(backends: list[tuple[str, int]], tmp_path: Path) -> Iterator[Edge]:
    """The shipped nginx in front of the instance."""
    with contextlib.ExitStack() as stack:
        yield _start_edge("nginx", tmp_path, backends, stack)


def _call(method: str, url: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, url, timeout=HTTP_TIMEOUT_S, **kwargs)


def _wait_for_log(edge: Edge, fragments: list[str]) -> str:
    """The edge's log once it holds every fragment (proxies may write a line after answering)."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        text = edge.log()
        if all(fragment in text for fragment in fragments):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{edge.name}'s log lacks {fragments}:\n{text[-3000:]}")
        time.sleep(0.05)


def test_access_log_holds_no_share_token_and_no_upload_signature(edge: Edge) -> None:
    user = Users.at(edge.url("/"), timeout=HTTP_TIMEOUT_S).create()
    headers = bearer(user["token"])
    album = _call("POST", edge.url("/albums"), json={"name": "Trip"}, headers=headers).json()["id"]
    # With metadata: the image below is the original at once (the copy without metadata comes from a job).
    link = _call("POST", edge.url(f"/albums/{album}/share"), json={"include_metadata": True}, headers=headers).json()
    token = link["token"]
    # Production builds the link from PUBLIC_BASE_URL, not from the proxy's Host.
    assert link["share_url"] == f"{PUBLIC_BASE_URL}/share/{token}"

    data = png()
    presigned = _call(
        "POST",
        edge.url("/photos/presigned-url"),
        json={"filename": "a.png", "content_type": "image/png", "file_size": len(data), "album_id": album},
        headers=headers,
    ).json()
    upload = urlsplit(presigned["upload_url"])
    assert f"{upload.scheme}://{upload.netloc}" == PUBLIC_BASE_URL
    query = parse_qs(upload.query)
    signature, expires = query["signature"][0], query["expires"][0]
    put = _call("PUT", edge.url(f"{upload.path}?{upload.query}"), data=data, headers=presigned["upload_headers"])
    assert put.status_code == 201, put.text
    confirmed = _call("POST", edge.url("/photos/confirm"), json={"photo_id": presigned["photo_id"]}, headers=headers)
    assert confirmed.status_code == 200, confirmed.text

    shared = _call("GET", edge.url(f"/share/{token}?skip=0&limit=1"))
    assert shared.status_code == 200, shared.text
    assert [p["id"] for p in shared.json()["photos"]] == [presigned["photo_id"]]
    image = _call("GET", edge.url(f"/share/{token}/photos/{presigned['photo_id']}/image"))
    assert image.content == data
    assert _call("GET", edge.url("/docs")).status_code == 404  # off by default in production

    text = _wait_for_log(
        edge, ["/share/<token> ", f"/share/<token>/photos/{presigned['photo_id']}/image", upload.path, "/docs"]
    )
    assert token not in text, edge.name
    for secret in (signature, f"signature={signature}", f"expires={expires}", "signature=", "expires=", "?"):
        assert secret not in text, (edge.name, secret)
    assert "limit=1" not in text, edge.name  # no query string at all
    assert user["token"] not in text, edge.name


def _raw_request(url: str, head: str) -> tuple[int, dict[str, str], bytes]:
    """Send `head` (request line and headers, no body) and read the answer, up to its Content-Length.

    Not until the server closes: after refusing a body it never read, nginx keeps the connection for its
    `lingering_timeout` (5 s) in case the client is still sending.
    """
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=HTTP_TIMEOUT_S) as sock:
        sock.sendall(head.encode("latin-1"))
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        body = answer.read()
    return answer.status, {name.lower(): value for name, value in answer.getheaders()}, body


def _oversize_post(url: str, request_id: str | None) -> tuple[int, dict[str, str], bytes]:
    # Content-Length alone is over the limit: nginx answers from the headers, without reading a body.
    request_id_line = f"X-Request-ID: {request_id}\r\n" if request_id is not None else ""
    head = (
        f"POST /photos HTTP/1.1\r\nHost: photos.test\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {OVERSIZE_BYTES}\r\n{request_id_line}Connection: close\r\n\r\n"
    )
    return _raw_request(url, head)


def test_nginx_413_body_never_carries_a_hostile_request_id(nginx: Edge) -> None:
    for sent in (HOSTILE_REQUEST_ID, "", "a" * 129, None):
        status, headers, body = _oversize_post(nginx.url("/"), sent)
        assert status == 413
        assert headers["content-type"] == "application/problem+json"
        problem = json.loads(body)
        assert set(problem) == PROBLEM_KEYS, problem
        assert problem["status"] == 413
        assert NGINX_REQUEST_ID.fullmatch(problem["request_id"]), problem
        assert headers["x-request-id"] == problem["request_id"]
    # A request ID following the app's rule is the client's to choose, and is kept.
    status, headers, body = _oversize_post(nginx.url("/"), VALID_REQUEST_ID)
    assert (status, json.loads(body)["request_id"], headers["x-request-id"]) == (
        413,
        VALID_REQUEST_ID,
        VALID_REQUEST_ID,
    )


def test_proxy_replaces_an_invalid_request_id(edge: Edge) -> None:
    generated = {"nginx": NGINX_REQUEST_ID, "haproxy": HAPROXY_REQUEST_ID}[edge.name]
    echoed = []
    for sent in (HOSTILE_REQUEST_ID, "a" * 129, "semi;colon"):
        answered = _call("GET", edge.url("/health/liveness"), headers={"X-Request-ID": sent})
        # The ID the app used and echoes is the one the proxy made (and logged), not one the app made up.
        assert generated.fullmatch(answered.headers["X-Request-ID"]), answered.headers
        echoed.append(answered.headers["X-Request-ID"])
    answered = _call("GET", edge.url("/health/liveness"), headers={"X-Request-ID": VALID_REQUEST_ID})
    assert answered.headers["X-Request-ID"] == VALID_REQUEST_ID
    text = _wait_for_log(edge, [*echoed, VALID_REQUEST_ID])  # the proxy's log line and the app's agree
    assert HOSTILE_REQUEST_ID not in text and "semi;colon" not in text
