"""Real load balancers for end-to-end tests: HAProxy and nginx from Debian, configured from the shipped files.

The configs are *derived* from `ops/haproxy/photo-api.cfg` and `ops/nginx/photo-api.conf`: only what
differs on loopback is rewritten (listen address, the instance list, the check timing the test's
settings describe, paths of the nginx prefix, nginx's access log into the test's directory; HAProxy logs
to its stdout, kept in `haproxy.log`). Each rewrite must match exactly once, so a change to a
shipped file that the derivation no longer understands fails loudly instead of testing something else.
Both run in the foreground as children of the test, in a session of their own, killed at `close()`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.harness.ci import unavailable
from tests.harness.server import free_port

OPS = Path(__file__).resolve().parents[2] / "ops"
HAPROXY_CONFIG = OPS / "haproxy" / "photo-api.cfg"
NGINX_SITE = OPS / "nginx" / "photo-api.conf"
APT_LINE = "apt-get update && apt-get install -y --no-install-recommends haproxy nginx"
START_TIMEOUT_S = 10.0


def require_binary(name: str) -> str:
    """The path of a system binary the test needs; fail in CI, skip elsewhere, naming the install line."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    unavailable(f"{name} is not installed (Debian: {APT_LINE})")


def _sub_once(pattern: str, replacement: str, text: str, flags: int = re.MULTILINE) -> str:
    new, count = re.subn(pattern, replacement, text, flags=flags)
    if count != 1:
        raise AssertionError(f"shipped config: expected exactly one match of {pattern!r}, found {count}")
    return new


def _replace_servers(text: str, line_pattern: str, new_lines: list[str]) -> str:
    lines = text.splitlines()
    positions = [i for i, line in enumerate(lines) if re.match(line_pattern, line)]
    if not positions or positions != list(range(positions[0], positions[-1] + 1)):
        raise AssertionError(f"shipped config: expected one block of server lines matching {line_pattern!r}")
    return "\n".join(lines[: positions[0]] + new_lines + lines[positions[-1] + 1 :]) + "\n"


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class _Child:
    """A foreground server process with its output in a log file."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self, args: Sequence[str]) -> None:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
            )

    def _wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not listening on {port} after {START_TIMEOUT_S}s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        """Kill the process group and reap it. Idempotent."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


class Haproxy(_Child):
    """HAProxy probing each instance's /health, from the shipped config."""

    def __init__(
        self,
        workdir: Path,
        backends: Sequence[tuple[str, int]],
        *,
        check_interval: float,
        unhealthy_threshold: int,
        check_timeout: float,
    ) -> None:
        super().__init__(workdir, "haproxy")
        self.binary = require_binary("haproxy")
        self.port = free_port()
        self.stats_socket = workdir / "haproxy.sock"
        self.names = [f"app{i + 1}" for i in range(len(backends))]
        text = HAPROXY_CONFIG.read_text()
        text = _sub_once(r"^(\s*bind) :80$", rf"\1 127.0.0.1:{self.port}", text)
        text = _sub_once(
            r"inter 2s fall 2 rise 2", f"inter {_ms(check_interval)} fall {unhealthy_threshold} rise 2", text
        )
        text = _sub_once(r"^(\s*timeout check) 5s$", rf"\1 {_ms(check_timeout)}", text)
        servers = [f"    server {name} {host}:{port}" for name, (host, port) in zip(self.names, backends, strict=True)]
        text = _replace_servers(text, r"^\s*server app\d+ ", servers)
        # The distribution's `global` section, reduced to what a foreground process in a test needs.
        global_section = (
            f"global\n    log stdout format raw local0 info\n    stats socket {self.stats_socket} mode 600\n\n"
        )
        self.config_path = workdir / "haproxy.cfg"
        self.config_path.write_text(global_section + text)

    def check_config(self) -> None:
        """`haproxy -c`: the derived config is valid."""
        result = subprocess.run([self.binary, "-c", "-f", str(self.config_path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self) -> Haproxy:
        """Run in the foreground (-db) and wait until it listens."""
        self.check_config()
        self._spawn([self.binary, "-db", "-f", str(self.config_path)])
        self._wait_listening(self.port)
        return self

    def url(self, path: str = "/") -> str:
        """The URL of `path` through HAProxy."""
        return f"http://127.0.0.1:{self.port}{path}"

    def server_states(self) -> dict[str, str]:
        """Each instance's check status as HAProxy sees it right now (UP, DOWN, UP 1/2, ...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return {
            row["svname"]: row["status"]
            for row in csv.DictReader(io.StringIO(text))
            if row.get("pxname") == "photo_api" and row.get("svname") in self.names
        }

    def _state_if_serving(self, name: str) -> str | None:
        """`name`'s status, None while HAProxy has not opened its stats socket yet (it may follow the port)."""
        try:
            return self.server_states().get(name)
        except (FileNotFoundError, ConnectionRefusedError):
            return None

    def wait_state(self, name: str, wanted: str, timeout: float) -> float:
        """Wait until instance `name` has status `wanted`; return how long it took."""
        started = time.monotonic()
        while (state := self._state_if_serving(name)) != wanted:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"HAProxy: {name} is {state!r}, not {wanted!r} after {timeout}s")
            time.sleep(0.05)
        return time.monotonic() - started


class Nginx(_Child):
    """nginx with the shipped site config (upstream per instance), in a temporary prefix."""

    def __init__(self, workdir: Path, backends: Sequence[tuple[str, int]]) -> None:
        super().__init__(workdir, "nginx")
        self.binary = require_binary("nginx")
        self.port = free_port()
        site = NGINX_SITE.read_text()
        site = _sub_once(r"^(\s*listen) 80;$", rf"\1 127.0.0.1:{self.port};", site)
        site = _sub_once(r"^\s*listen \[::\]:80;\n", "", site)
        servers = [f"    server {host}:{port} max_fails=1 fail_timeout=5s;" for host, port in backends]
        site = _replace_servers(site, r"^\s*server 10\.0\.0\.\d+:8000 ", servers)
        self.access_log_path = workdir / "photo-api.access.log"
        site = _sub_once(
            r"^(\s*access_log) /var/log/nginx/photo-api\.access\.log (\w+);$", rf"\1 {self.access_log_path} \2;", site
        )
        self.site_path = workdir / "photo-api.conf"
        self.site_path.write_text(site)
        temp = workdir / "temp"
        temp.mkdir(exist_ok=True)
        temp.chmod(0o777)  # nginx's workers run as an unprivileged user when the test runs as root
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
        self.config_path = workdir / "nginx.conf"
        self.config_path.write_text(
            f"{user}worker_processes 1;\nerror_log {workdir}/error.log info;\npid {workdir}/nginx.pid;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            # As in a distribution's nginx.conf, whose http-level log the site's own access_log replaces.
            "    access_log off;\n"
            + "".join(
                f"    {kind}_temp_path {temp}/{kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            + f"    include {self.site_path};\n"
            "}\n"
        )

    def _args(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.workdir), "-c", str(self.config_path), *extra]

    def check_config(self) -> None:
        """`nginx -t`: the derived config is valid."""
        result = subprocess.run(self._args("-t"), capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self) -> Nginx:
        """Run in the foreground (daemon off) and wait until it listens."""
        self.check_config()
        self._spawn(self._args("-g", "daemon off;"))
        self._wait_listening(self.port)
        return self

    def url(self, path: str = "/") -> str:
        """The URL of `path` through nginx."""
        return f"http://127.0.0.1:{self.port}{path}"

    def access_log(self) -> str:
        """What the site's access log holds so far."""
        return self.access_log_path.read_text(errors="replace") if self.access_log_path.exists() else ""


def validate_shipped_configs(workdir: Path) -> None:
    """`haproxy -c` and `nginx -t` on the shipped files as they are (example addresses included)."""
    global_section = workdir / "haproxy-global.cfg"
    global_section.write_text("global\n    log stdout format raw local0\n")
    result = subprocess.run(
        [require_binary("haproxy"), "-c", "-f", str(global_section), "-f", str(HAPROXY_CONFIG)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    main = workdir / "nginx-main.conf"
    main.write_text(
        f"error_log {workdir}/nginx-error.log;\npid {workdir}/nginx-t.pid;\nevents {{}}\n"
        f"http {{\n    include {NGINX_SITE};\n}}\n"
    )
    result = subprocess.run(
        [require_binary("nginx"), "-t", "-p", str(workdir), "-c", str(main)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
