"""No keep-alive connection is starved by another one that always has its next request ready.

gunicorn's gevent worker serves a keep-alive connection in a loop: parse a request, answer it, parse the
next. A socket read that finds bytes already waiting does not yield to the event loop, so a client that
always has its next request in flight (wrk at 32 connections, a proxy multiplexing many users on a few
upstream connections, or pipelining) is served back-to-back while the other connections of the worker
wait: wrk measured 1 to 2 s maxima on a route whose mean is ~7 ms. After each response the worker now lets
every other ready connection run first (gunicorn_conf.post_request).

Pipelining makes this deterministic: connection A sends a burst of requests in one write, so its next
request is always ready; connection B then sends one. B's answer must come after a few of A's, not
after the whole burst.
"""

from __future__ import annotations

import re
import select
import socket
import time
from datetime import datetime

import pytest

from tests.e2e.conftest import StartServer

pytestmark = pytest.mark.slow

BURST = 300
REQUEST = b"GET /health/liveness HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
STATUS_LINE = b"HTTP/1.1 200"
TIMESTAMP = re.compile(rb'"timestamp":"([^"]+)Z"')
TIMEOUT_S = 30
# With a fair worker B waits for a handful of A's answers (those in progress when B's bytes arrived);
# without it, for nearly the whole burst.
FAIR_AT_MOST = 20


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_a_connection_with_requests_always_ready_does_not_starve_another(
    serve: StartServer, production_env: dict[str, str]
) -> None:
    server = serve(production_env, workers=1)
    a, b = _connect(server.port), _connect(server.port)
    # B is accepted and its greenlet waits on its socket before A's burst starts.
    b.sendall(REQUEST)
    first = b""
    while TIMESTAMP.search(first) is None:
        first += b.recv(65536)

    a.sendall(REQUEST * BURST)
    received = {a: a.recv(1 << 20), b: b""}  # A's greenlet is now in its loop over the burst
    b.sendall(REQUEST)
    deadline = time.monotonic() + TIMEOUT_S
    while (len(TIMESTAMP.findall(received[a])) < BURST or TIMESTAMP.search(received[b]) is None) and (
        time.monotonic() < deadline
    ):
        for sock in select.select([a, b], [], [], 1)[0]:
            received[sock] += sock.recv(1 << 20)
    a.close()
    b.close()

    # Each answer carries the worker's clock to the microsecond: count A's answers made before B's.
    a_times = [datetime.fromisoformat(t.decode()) for t in TIMESTAMP.findall(received[a])]
    b_times = [datetime.fromisoformat(t.decode()) for t in TIMESTAMP.findall(received[b])]
    assert len(a_times) == BURST, "every pipelined request is answered"
    assert len(b_times) == 1, "B was answered"
    before_b = sum(t < b_times[0] for t in a_times)
    assert before_b <= FAIR_AT_MOST, f"B's one request waited for {before_b} of A's {BURST} pipelined requests"
