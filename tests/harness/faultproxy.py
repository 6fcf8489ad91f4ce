"""A fault-injecting TCP proxy on loopback, switchable while a test runs: in front of Swift, a Keystone
double, or the shared PostgreSQL (which serves other tests and must not be stopped).

    with FaultProxy(("127.0.0.1", upstream_port)) as proxy:
        client_talks_to(proxy.url)
        proxy.set(Fault.http_error(503, count=2))   # the next two connections get a 503, then it passes again
        proxy.set(Fault.blackhole())                # accept, swallow the request, never answer
        proxy.connections                           # how many connections it accepted so far

Faults for new connections: `pass_through` forwards bytes; `latency(ms)` delays every forwarded read by
`ms` (looked up live, so it also slows keep-alive connections opened before the switch); `reset` closes a
new connection with a TCP RST; `blackhole` accepts and never answers; `http_error(status)` reads one HTTP
request head and answers it with `status` and `Connection: close`. A `count` limits a fault to that many
new connections, after which the proxy passes again. Switching to reset/blackhole/http_error also drops
the live connections (RST), so a client's pooled keep-alive connections meet the new fault too.

Two faults stand for an unreachable host and last until the next switch:
- `refuse`: the port is closed (a connect gets ECONNREFUSED) and live connections are closed, as when
  the database host is down;
- `partition`: the port accepts and nothing ever comes back, and live connections go silent both ways
  without being closed, as when a firewall or a dead network path drops every packet. This is the case
  a pool of connections must survive: a connection that stops answering. When the proxy forwards
  again the silent connections resume (what a healed network does) and those accepted meanwhile,
  which never reached the upstream, are closed.

One thread per connection, at most `max_connections` at once (more are reset and counted as refused);
`stop()` resets everything, joins the threads and returns within about a second.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Literal, Self

FaultKind = Literal["pass", "latency", "reset", "blackhole", "http_error", "refuse", "partition"]
# Faults under which bytes still flow: switching to one keeps the live connections.
FORWARDING: tuple[FaultKind, ...] = ("pass", "latency")
BUFFER_SIZE = 64 * 1024
# How often blocked loops look at the stop flag.
POLL_INTERVAL_S = 0.05
UPSTREAM_CONNECT_TIMEOUT_S = 5.0
# Bounds for reading the request head of an http_error connection and for draining it afterwards.
MAX_REQUEST_HEAD = 64 * 1024
REQUEST_HEAD_TIMEOUT_S = 5.0
DRAIN_AFTER_RESPONSE_S = 1.0
JOIN_TIMEOUT_S = 2.0
LISTEN_BACKLOG = 128
REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Fault:
    """What the proxy does with new connections (`count` of them, or all while it is set)."""

    kind: FaultKind = "pass"
    latency_ms: int = 0
    status: int = 503
    retry_after: int | None = None
    count: int | None = None

    @classmethod
    def pass_through(cls) -> Fault:
        """Forward everything unchanged."""
        return cls("pass")

    @classmethod
    def latency(cls, ms: int) -> Fault:
        """Forward, delaying every read by `ms` milliseconds (both directions)."""
        return cls("latency", latency_ms=ms)

    @classmethod
    def reset(cls, count: int | None = None) -> Fault:
        """Close new connections at once with a TCP RST."""
        return cls("reset", count=count)

    @classmethod
    def blackhole(cls, count: int | None = None) -> Fault:
        """Accept new connections, read and discard whatever arrives, never answer."""
        return cls("blackhole", count=count)

    @classmethod
    def http_error(cls, status: int = 503, *, count: int | None = None, retry_after: int | None = None) -> Fault:
        """Answer the first request of new connections with `status` (and Retry-After if given)."""
        return cls("http_error", status=status, retry_after=retry_after, count=count)

    @classmethod
    def refuse(cls) -> Fault:
        """Close the port (connects are refused) and the live connections: the host is down."""
        return cls("refuse")

    @classmethod
    def partition(cls) -> Fault:
        """Accept and never answer; live connections go silent without closing: the network path is dead."""
        return cls("partition")


class _Connection:
    """One accepted client socket and, when forwarding, its upstream socket."""

    def __init__(self, client: socket.socket, *, silenced: bool = False) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        # Accepted during a partition: it never reaches the upstream, and is closed when the partition ends.
        self.silenced = silenced
        self.closed = threading.Event()

    def close(self, *, rst: bool) -> None:
        """Close both sides; with `rst` the peers see a reset instead of an orderly close."""
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if rst:
                _set_rst(sock)
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """A TCP proxy from 127.0.0.1:<port> to `upstream`, with a fault that can be switched at runtime."""

    def __init__(self, upstream: tuple[str, int], *, max_connections: int = 64, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._fault = Fault()
        self._latency_s = 0.0
        self._live: set[_Connection] = set()
        self._threads: set[threading.Thread] = set()
        self._stop = threading.Event()
        self._started = False
        self._accepted = 0
        self._refused = 0
        self._acceptor: threading.Thread | None = None
        self._listener: socket.socket | None = self._listen(host, 0)
        self.host, self.port = self._listener.getsockname()[:2]

    # -- control --------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """http://host:port of the proxy."""
        return f"http://{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections accepted since start (including those that met a fault)."""
        with self._lock:
            return self._accepted

    def wait_for_connections(self, more_than: int, timeout: float = 5.0) -> int:
        """Wait until more than `more_than` connections were accepted; the count (AssertionError after `timeout`).

        A client's connect completes in the kernel's accept queue before this proxy's thread accepts it:
        a fault set meanwhile would meet a connection opened before it.
        """
        deadline = time.monotonic() + timeout
        while (accepted := self.connections) <= more_than:
            if time.monotonic() > deadline:
                raise AssertionError(f"fault proxy: {accepted} connections accepted after {timeout} s")
            time.sleep(0.01)
        return accepted

    @property
    def refused(self) -> int:
        """Connections reset because `max_connections` were already open."""
        with self._lock:
            return self._refused

    @property
    def active(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._live)

    @property
    def fault(self) -> Fault:
        """The fault new connections currently meet."""
        with self._lock:
            return self._fault

    def set(self, fault: Fault, *, drop_existing: bool | None = None) -> None:
        """Switch the fault.

        Live connections are reset unless the new fault forwards bytes (or `drop_existing` says otherwise);
        `refuse` closes them, `partition` silences them. Leaving a partition lets the silenced connections
        resume and closes those accepted during it; leaving `refuse` opens the port again.
        """
        with self._lock:
            previous, self._fault = self._fault, fault
            self._latency_s = fault.latency_ms / 1000 if fault.kind == "latency" else 0.0
            live = list(self._live)
        if fault.kind == "refuse":
            self._close_listener()
        elif previous.kind == "refuse":
            self._reopen_listener()
        if previous.kind == "partition" and fault.kind != "partition":
            for conn in live:
                if conn.silenced:
                    conn.close(rst=False)
        if drop_existing is None:
            drop_existing = fault.kind not in (*FORWARDING, "partition")
        if drop_existing:
            self.drop_connections(rst=fault.kind != "refuse")

    def pass_through(self) -> None:
        """Forward everything again (live connections are kept)."""
        self.set(Fault.pass_through())

    def drop_connections(self, *, rst: bool = True) -> None:
        """Close every live connection, with a reset unless `rst` is False."""
        with self._lock:
            live = list(self._live)
        for conn in live:
            conn.close(rst=rst)

    def start(self) -> Self:
        """Start accepting."""
        with self._lock:
            self._started = True
            listener = self._listener
        if listener is not None:
            self._start_acceptor(listener)
        return self

    def stop(self) -> None:
        """Stop accepting, reset every connection and join the threads."""
        self._stop.set()
        self._close_listener()
        self.drop_connections()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(JOIN_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the listening port ---------------------------------------------------------------------------

    @staticmethod
    def _listen(host: str, port: int) -> socket.socket:
        # SO_REUSEADDR (create_server sets it): the port is opened again after `refuse`, with the closed
        # connections of before still in TIME_WAIT.
        listener = socket.create_server((host, port), backlog=LISTEN_BACKLOG)
        listener.settimeout(POLL_INTERVAL_S)
        return listener

    def _start_acceptor(self, listener: socket.socket) -> None:
        acceptor = threading.Thread(
            target=self._accept_loop, args=(listener,), name=f"faultproxy-{self.port}", daemon=True
        )
        with self._lock:
            self._acceptor = acceptor
        acceptor.start()

    def _close_listener(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            acceptor, self._acceptor = self._acceptor, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        if acceptor is not None:
            acceptor.join(JOIN_TIMEOUT_S)

    def _reopen_listener(self) -> None:
        if self._stop.is_set():
            return
        listener = self._listen(self.host, self.port)
        with self._lock:
            self._listener = listener
            started = self._started
        if started:
            self._start_acceptor(listener)

    # -- workers --------------------------------------------------------------------------------------

    def _next_fault(self) -> Fault:
        """The fault for one new connection, counting down a limited fault."""
        with self._lock:
            fault = self._fault
            if fault.count is not None:
                left = fault.count - 1
                self._fault = Fault() if left <= 0 else replace(fault, count=left)
            return fault

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed: `refuse` or `stop`
                return
            with self._lock:
                self._accepted += 1
                full = len(self._live) >= self.max_connections
                if full:
                    self._refused += 1
            if full:
                _close_rst(client)
                continue
            fault = self._next_fault()
            if fault.kind in ("reset", "refuse"):  # `refuse`: accepted just before the port closed
                _close_rst(client)
                continue
            conn = _Connection(client, silenced=fault.kind == "partition")
            handlers: dict[FaultKind, Callable[[_Connection, Fault], None]] = {
                "blackhole": self._blackhole,
                "partition": self._blackhole,
                "http_error": self._http_error,
            }
            target = handlers.get(fault.kind, self._forward)
            thread = threading.Thread(target=self._run, args=(target, conn, fault), daemon=True)
            with self._lock:
                self._live.add(conn)
                self._threads.add(thread)
            thread.start()

    def _run(self, target: Callable[[_Connection, Fault], None], conn: _Connection, fault: Fault) -> None:
        try:
            target(conn, fault)
        except (OSError, ValueError):  # a socket closed under our feet by set() or stop()
            pass
        finally:
            conn.close(rst=False)
            with self._lock:
                self._live.discard(conn)
                self._threads.discard(threading.current_thread())

    def _running(self, conn: _Connection) -> bool:
        return not (self._stop.is_set() or conn.closed.is_set())

    def _partitioned(self) -> bool:
        with self._lock:
            return self._fault.kind == "partition"

    def _blackhole(self, conn: _Connection, fault: Fault) -> None:
        conn.client.settimeout(POLL_INTERVAL_S)
        while self._running(conn):
            try:
                if not conn.client.recv(BUFFER_SIZE):
                    return  # the client gave up
            except TimeoutError:
                continue

    def _http_error(self, conn: _Connection, fault: Fault) -> None:
        client = conn.client
        client.settimeout(POLL_INTERVAL_S)
        head = b""
        deadline = time.monotonic() + REQUEST_HEAD_TIMEOUT_S
        while b"\r\n\r\n" not in head and len(head) < MAX_REQUEST_HEAD and time.monotonic() < deadline:
            if not self._running(conn):
                return
            try:
                data = client.recv(BUFFER_SIZE)
            except TimeoutError:
                continue
            if not data:
                return
            head += data
        body = f"injected {fault.status}\n".encode()
        lines = [
            f"HTTP/1.1 {fault.status} {REASONS.get(fault.status, 'Error')}",
            "Content-Type: text/plain",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if fault.retry_after is not None:
            lines.append(f"Retry-After: {fault.retry_after}")
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        client.shutdown(socket.SHUT_WR)
        # Drain what the client still sends (a request body): closing with unread data would send a
        # RST that can destroy the response before the client has read it.
        until = time.monotonic() + DRAIN_AFTER_RESPONSE_S
        while time.monotonic() < until and self._running(conn):
            try:
                if not client.recv(BUFFER_SIZE):
                    return
            except TimeoutError:
                continue

    def _forward(self, conn: _Connection, fault: Fault) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=UPSTREAM_CONNECT_TIMEOUT_S)
        except OSError:
            _set_rst(conn.client)
            return
        conn.upstream = upstream
        if conn.closed.is_set():  # dropped while it connected
            conn.close(rst=True)
            return
        peers = {conn.client: upstream, upstream: conn.client}
        for sock in peers:
            sock.settimeout(UPSTREAM_CONNECT_TIMEOUT_S)  # bounds sendall to a peer that stopped reading
        open_sides = set(peers)
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                selector.register(sock, selectors.EVENT_READ)
            while open_sides and self._running(conn):
                if self._partitioned():
                    conn.closed.wait(POLL_INTERVAL_S)  # silent: read nothing, send nothing
                    continue
                for key, _ in selector.select(POLL_INTERVAL_S):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(BUFFER_SIZE)
                    sink = peers[source]
                    if not data:
                        # Half-close: pass the EOF on and keep the other direction flowing.
                        selector.unregister(source)
                        open_sides.discard(source)
                        with contextlib.suppress(OSError):
                            sink.shutdown(socket.SHUT_WR)
                        continue
                    with self._lock:
                        delay = self._latency_s
                    if delay:
                        time.sleep(delay)
                    sink.sendall(data)


def _set_rst(sock: socket.socket) -> None:
    """Make the next close() send a RST (SO_LINGER with a zero timeout)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _close_rst(sock: socket.socket) -> None:
    _set_rst(sock)
    with contextlib.suppress(OSError):
        sock.close()
