"""The harness's own behaviour that other tests rely on without showing it: the fault proxy's modes, on
loopback in front of a small echo server, and the lifecycle settings it refuses to build.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.harness.env import lifecycle_env, production_env
from tests.harness.faultproxy import Fault, FaultProxy

TIMEOUT_S = 2.0
# Long enough for a forwarded echo on a loaded machine, short enough to keep the silent cases quick.
SILENCE_S = 0.3


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A TCP echo server on loopback."""
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield str(host), int(port)
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    """A fault proxy in front of the echo server."""
    with FaultProxy(echo) as front:
        yield front


def connect(proxy: FaultProxy) -> socket.socket:
    """A client connection to the proxy."""
    return socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT_S)


def echoes(sock: socket.socket, data: bytes = b"ping") -> bool:
    """True if `data` comes back within SILENCE_S; False if nothing comes back."""
    sock.settimeout(SILENCE_S)
    sock.sendall(data)
    try:
        return sock.recv(1024) == data
    except TimeoutError:
        return False


def closed_by_peer(sock: socket.socket) -> bool:
    """True if the peer has closed (EOF or reset) within TIMEOUT_S."""
    sock.settimeout(TIMEOUT_S)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_pass_through_forwards_and_counts(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert echoes(sock)
    assert proxy.connections == 1


def test_refuse_closes_the_port_and_the_live_connections_until_it_passes_again(proxy: FaultProxy) -> None:
    live = connect(proxy)
    assert echoes(live)
    proxy.set(Fault.refuse())
    assert closed_by_peer(live)
    live.close()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.pass_through()
    with connect(proxy) as sock:  # the same port again
        assert echoes(sock)


def test_refused_from_the_start_then_opened(proxy: FaultProxy) -> None:
    proxy.set(Fault.refuse())
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.set(Fault.partition())
    with connect(proxy) as sock:  # accepted, never answered
        assert not echoes(sock)


def test_partition_silences_live_connections_which_resume_when_it_heals(proxy: FaultProxy) -> None:
    with connect(proxy) as live:
        assert echoes(live, b"before")
        proxy.set(Fault.partition())
        assert not echoes(live, b"during")
        accepted_meanwhile = connect(proxy)
        assert not echoes(accepted_meanwhile)
        proxy.pass_through()
        # The live connection was kept: what was sent into the silence arrives now, then new bytes flow.
        live.settimeout(TIMEOUT_S)
        assert live.recv(1024) == b"during"
        assert echoes(live, b"after")
        # The one accepted during the partition never reached the upstream: it is closed.
        assert closed_by_peer(accepted_meanwhile)
        accepted_meanwhile.close()


def test_blackhole_drops_live_connections_and_swallows_new_ones(proxy: FaultProxy) -> None:
    live = connect(proxy)
    assert echoes(live)
    proxy.set(Fault.blackhole())
    assert closed_by_peer(live)
    live.close()
    with connect(proxy) as sock:
        assert not echoes(sock)
        # The dropped connection's thread ends on its own; the swallowing one stays open.
        deadline = time.monotonic() + TIMEOUT_S
        while proxy.active != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.active == 1


def test_a_counted_fault_passes_again_after_its_connections(proxy: FaultProxy) -> None:
    proxy.set(Fault.reset(count=2))
    for _ in range(2):
        # On loopback the reset may beat connect() back to the client: it is then connect() that fails.
        try:
            sock = connect(proxy)
        except ConnectionResetError:
            continue
        with sock:
            assert closed_by_peer(sock)
    assert proxy.fault.kind == "pass"
    with connect(proxy) as sock:
        assert echoes(sock)
    assert proxy.connections == 3


def test_http_error_answers_the_first_request(proxy: FaultProxy) -> None:
    proxy.set(Fault.http_error(503, count=1, retry_after=7))
    with connect(proxy) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(1024):
                answer += chunk
    head = answer.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 503 ")
    assert "Retry-After: 7" in head.splitlines()


def test_latency_delays_live_connections_too(proxy: FaultProxy) -> None:
    delay_ms = 200
    with connect(proxy) as sock:
        assert echoes(sock)
        proxy.set(Fault.latency(delay_ms))
        sock.settimeout(TIMEOUT_S)
        started = time.monotonic()
        sock.sendall(b"slow")
        assert sock.recv(1024) == b"slow"
        # Delayed once on the way in and once on the way back.
        assert time.monotonic() - started >= 2 * delay_ms / 1000


def test_lifecycle_env_refuses_what_the_config_rules_refuse() -> None:
    assert lifecycle_env(2.0, 6)["DRAIN_DELAY_SECONDS"] == "2.0"
    with pytest.raises(ValueError, match="drain"):
        lifecycle_env(1.0, 6, check_interval_s=0.5, unhealthy_threshold=2, check_timeout_s=1.0)
    with pytest.raises(ValueError, match="health check timeout"):
        lifecycle_env(3.0, 6, check_timeout_s=1.0, health_check_timeout_s=1.0)


def test_production_env_overrides_win_and_none_removes() -> None:
    env = production_env("postgresql://db/x", "/srv/photos", overrides={"LOCAL_STORAGE_DIR": None, "X": "1"})
    assert env["ENVIRONMENT"] == "production"
    assert "LOCAL_STORAGE_DIR" not in env
    assert env["X"] == "1"
    with pytest.raises(ValueError):
        production_env("postgresql://db/x", None)
