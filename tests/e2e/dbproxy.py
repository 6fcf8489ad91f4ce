"""A TCP proxy in front of the shared PostgreSQL that a test switches between up, refused and blackholed.

The machine's PostgreSQL serves every other test, so an outage is simulated here, between one
instance and the server:

- `up`: bytes are forwarded both ways;
- `refuse`: the port is closed (new connects get ECONNREFUSED) and live connections are closed, as
  when the database host is down;
- `blackhole`: the port accepts, and nothing ever comes back; live connections go silent too (nothing
  is forwarded either way), as when a firewall or a dead network path drops every packet.

Back `up`, connections that went silent resume (what a healed network does) and those accepted
during the blackhole are closed. `tests/faultproxy.py` has no closed-port mode and resets live
connections when it switches, which would hide exactly the case the blackhole is for: a pooled
connection that stops answering.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType
from typing import Literal, Self

Mode = Literal["up", "refuse", "blackhole"]
BUFFER_SIZE = 64 * 1024
POLL_INTERVAL_S = 0.05
UPSTREAM_CONNECT_TIMEOUT_S = 3.0


class _Pair:
    """One client connection and, once forwarding, its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class DbProxy:
    """Listens on 127.0.0.1:`port` and forwards to `upstream` according to the current mode."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.mode: Mode = "up"
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.port = self._listen(0)

    # -- control --------------------------------------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        """Switch what the proxy does, for new and live connections alike."""
        with self._lock:
            previous, self.mode = self.mode, mode
            pairs = list(self._pairs)
        if mode == "refuse":
            self._close_listener()
            for pair in pairs:
                pair.close()
        elif mode == "up":
            for pair in pairs:
                if pair.upstream is None:  # accepted during the blackhole: never reached the database
                    pair.close()
            if previous == "refuse":
                self._listen(self.port)
        elif mode == "blackhole" and previous == "refuse":
            self._listen(self.port)

    def start(self) -> Self:
        """Nothing to do: the proxy listens from construction; kept for symmetry with `stop`."""
        return self

    def stop(self) -> None:
        """Close the listener and every connection."""
        self._stop.set()
        self._close_listener()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------------

    def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(128)
        listener.settimeout(POLL_INTERVAL_S)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        self._acceptor.start()
        return int(listener.getsockname()[1])

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(1.0)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # listener closed
                return
            upstream = None
            if self.mode == "up":
                try:
                    upstream = socket.create_connection(self.upstream, timeout=UPSTREAM_CONNECT_TIMEOUT_S)
                except OSError:
                    client.close()
                    continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: _Pair) -> None:
        try:
            while not (self._stop.is_set() or pair.closed.is_set()):
                if pair.upstream is None or self.mode == "blackhole":
                    pair.closed.wait(POLL_INTERVAL_S)  # silent: read nothing, send nothing
                    continue
                readable, _, _ = select.select([pair.client, pair.upstream], [], [], POLL_INTERVAL_S)
                for sock in readable:
                    data = sock.recv(BUFFER_SIZE)
                    if not data:
                        return
                    (pair.upstream if sock is pair.client else pair.client).sendall(data)
        except (OSError, ValueError):  # closed under our feet by set_mode/stop
            pass
        finally:
            pair.close()
            with self._lock:
                self._pairs.discard(pair)
