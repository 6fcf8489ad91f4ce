"""A real HTTP server on a free loopback port, in a thread, answering through a plain Python function.

The doubles of NHN services are written against this: `handler(request) -> Reply`. Faults that need
the transport (slowness, a peer that never answers, a server that is down) are switches here, so every
double has them the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Request:
    """One request as it arrived on the wire: `path` is still percent-encoded, `query` is raw."""

    method: str
    path: str
    query: str
    headers: Message
    body: bytes

    def query_param(self, name: str) -> str | None:
        """The first raw (not percent-decoded) value of query parameter `name`."""
        for part in self.query.split("&"):
            key, sep, value = part.partition("=")
            if sep and key == name:
                return value
        return None


@dataclass
class Reply:
    """What the double answers."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Reply]


class LoopbackServer:
    """`ThreadingHTTPServer` on 127.0.0.1 with an OS-chosen port, started and stopped by fixtures.

    Switches: `delay` (seconds before each answer), `blackhole` (read the request, never answer until
    stopped), `stop()` then requests are refused (down).
    """

    def __init__(self, handler: Handler, *, max_body: int | None = None):
        self.handler = handler
        self.max_body = max_body  # larger bodies are read, discarded and answered 413
        self.delay = 0.0
        self.blackhole = False
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """http://127.0.0.1:{port}"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def netloc(self) -> str:
        """127.0.0.1:{port}"""
        return f"127.0.0.1:{self.port}"

    def start(self) -> LoopbackServer:
        """Listen (on the same port as before when restarted) and serve in a daemon thread."""
        self._released.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _make_handler_class(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; blackholed requests are released (their connections are closed unanswered)."""
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _respond(self, request: Request) -> Reply | None:
        if self.blackhole:
            self._released.wait()
            return None
        if self.delay:
            time.sleep(self.delay)
        return self.handler(request)


def _make_handler_class(owner: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        # One request per connection: once stopped, a double is really down (no pooled connection survives).
        protocol_version = "HTTP/1.0"

        def _handle(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if owner.max_body is not None and length > owner.max_body:
                remaining = length  # read it all, so the client sees the answer rather than a reset
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                self._send(Reply(413, b"request too large", {"Content-Type": "text/plain"}))
                return
            body = self.rfile.read(length) if length else b""
            reply = owner._respond(Request(self.command, split.path, split.query, self.headers, body))
            if reply is None:
                self.close_connection = True
                return
            self._send(reply)

        def _send(self, reply: Reply) -> None:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle  # http.server dispatches on do_<METHOD>

        def log_message(self, format: str, *args: object) -> None:
            pass

    return _Handler
