"""Run `photo-api serve` as a real process (gunicorn master + gevent workers) for tests and benchmarks.

`ServeProcess` starts the console script on a free loopback port in its own process group, with a
clean environment (nothing leaks in from the developer's shell), stdout and stderr captured to files.
It waits until `/health/liveness` answers, and always kills whatever is left of the group on `close()`,
so a failing test never leaves a gunicorn behind. `Servers` starts several and closes them all.
The console script is this virtualenv's unless `script=` names another (a fresh install of the wheel).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.05
LOG_TAIL_LINES = 40
# Which worker accepts a new connection is up to the kernel; a new worker accepts once its app is loaded.
CONNECT_TO_WORKER_S = 15.0
# How long a connection may wait to be accepted by some worker before it is tried again.
ACCEPT_WAIT_S = 1.0
ACCEPT_POLL_S = 0.01
RECONNECT_PAUSE_S = 0.02
CONNECTION_TIMEOUT_S = 5.0
# Variables a child process needs to run at all; everything else comes from the test, explicitly.
_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


def console_script(name: str) -> str:
    """The path of an installed console script of the running virtualenv (next to sys.executable)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed next to {sys.executable}")
    return str(path)


CLI_TIMEOUT_S = 120


def run_command(
    script: str, *args: str, env: Mapping[str, str] | None = None, cwd: Path, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run a console script (a path, or the name of one of this virtualenv's) with a clean environment."""
    path = script if os.sep in script else console_script(script)
    return subprocess.run(
        [path, *args], env=clean_environment(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a child process plus `extra`: no settings inherited from the caller."""
    env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different TCP ports nobody listens on right now (all held at once, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]


def _stat(pid: int | str) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no such process, or it ended while we looked
        return None
    # The command name in parentheses may contain spaces: the fields after the last ")" are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (dead, waiting to be reaped)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def child_pids(pid: int) -> list[int]:
    """The live (non-zombie) processes whose parent is `pid`, read from /proc so no `ps` is needed."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(entry.name)) is not None and stat[1] == pid and stat[0] != "Z":
            children.append(int(entry.name))
    return sorted(children)


def _tcp_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of the IPv4 loopback socket with these ports, from /proc/net/tcp (None if there is none)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], int(fields[9])
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port and inode:
            return inode
    return None


def pid_holding_socket(pids: Sequence[int], inode: int) -> int | None:
    """Which of `pids` has the socket `inode` open, read from /proc/<pid>/fd (None if none of them)."""
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):  # the process ended while we looked
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return pid
    return None


class ServeError(RuntimeError):
    """The server did not start or stop as expected; the message ends with the tail of its log."""


class ServeProcess:
    """One `photo-api serve` instance: start, address, inspect, signal and stop it."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        cwd: Path,
        log_dir: Path,
        workers: int = 1,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        script: str | None = None,
    ):
        self.env = clean_environment(env)
        # The `photo-api` console script: this virtualenv's, or another's (a fresh install of the wheel).
        self.script = script or console_script("photo-api")
        self.cwd = cwd
        self.workers = workers
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = list(extra_args)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / "stdout.log"
        self.stderr_path = log_dir / "stderr.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> ServeProcess:
        """Start the server and return once liveness answers 200 and every worker is forked."""
        if self.process is not None:
            raise ServeError("already started")
        args = [self.script, "serve", "--bind", f"{self.host}:{self.port}"]
        args += ["--workers", str(self.workers), *self.extra_args]
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            # A session of its own: its process group can be killed as a whole, and a Ctrl-C in the
            # test run does not reach it behind our back. `serve` execs gunicorn, so pid == master pid.
            self.process = subprocess.Popen(
                args, cwd=self.cwd, env=self.env, stdout=out, stderr=err, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self._live():
            if self.process.poll() is not None:
                raise ServeError(f"server exited with {self.process.returncode} during startup{self.log_tail()}")
            if time.monotonic() > deadline:
                self.close()
                raise ServeError(f"liveness did not answer within {timeout:g}s{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)
        self.wait_for(lambda: len(self.worker_pids()) >= self.workers, deadline - time.monotonic(), "workers forked")
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send `sig` to the master only (like systemd's KillMode=mixed), wait for it to exit, return its code.

        Raise ServeError (after killing the group) if it is still running after `timeout` seconds.
        """
        proc = self._started()
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise ServeError(f"server still running {timeout:g}s after {sig.name}{self.log_tail()}") from None
        return code

    def close(self) -> None:
        """Kill whatever is left of the process group (master, workers) and reap the master. Idempotent."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # nothing left: the group is gone
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> ServeProcess:
        return self if self.process is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- addressing and inspection --------------------------------------------------------------------

    def url(self, path: str = "/") -> str:
        """The absolute URL of `path` on this server."""
        return f"http://{self.host}:{self.port}{path}"

    @property
    def master_pid(self) -> int:
        """The gunicorn master's pid."""
        return self._started().pid

    def worker_pids(self) -> list[int]:
        """The pids of the master's current worker processes."""
        return child_pids(self.master_pid)

    def worker_serving(self, client: socket.socket) -> int | None:
        """The pid of the worker that accepted the client socket `client` (a connection to this server)."""
        inode = _tcp_inode(self.port, client.getsockname()[1])
        return None if inode is None else pid_holding_socket(self.worker_pids(), inode)

    def connection_to_worker(
        self, wanted: set[int] | None = None, timeout: float = CONNECT_TO_WORKER_S
    ) -> tuple[int, http.client.HTTPConnection]:
        """A new keep-alive connection and the pid of the worker that accepted it (one of `wanted`, if given)."""
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=CONNECTION_TIMEOUT_S)
            conn.connect()
            assert conn.sock is not None
            owner = self.worker_serving(conn.sock)
            deadline = time.monotonic() + ACCEPT_WAIT_S
            while owner is None and time.monotonic() < deadline:  # a worker accepts it asynchronously
                time.sleep(ACCEPT_POLL_S)
                owner = self.worker_serving(conn.sock)
            if owner is not None and (wanted is None or owner in wanted):
                return owner, conn
            conn.close()
            time.sleep(RECONNECT_PAUSE_S)
        raise ServeError(f"no connection reached a worker in {wanted} within {timeout:g}s{self.log_tail()}")

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the master only, without waiting."""
        os.kill(self.master_pid, sig)

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for the master to exit; its exit code, or None if still running."""
        try:
            return self._started().wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def is_running(self) -> bool:
        """True while the master has not exited."""
        return self._started().poll() is None

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `condition` until it holds; raise ServeError naming `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise ServeError(f"timed out after {timeout:g}s waiting for: {what}{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)

    def stdout(self) -> str:
        """Everything the server wrote to stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as JSON; raise ValueError naming the first line that is not a JSON object."""
        records = []
        for number, line in enumerate(self.stdout().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ValueError(f"stdout line {number} is not JSON: {line!r}") from None
            if not isinstance(record, dict):
                raise ValueError(f"stdout line {number} is not a JSON object: {line!r}")
            records.append(record)
        return records

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of stdout and stderr, formatted for an error message."""
        parts = []
        for name, path in (("stdout", self.stdout_path), ("stderr", self.stderr_path)):
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"\n--- {name} (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "".join(parts)

    # -- internals ------------------------------------------------------------------------------------

    def _started(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise ServeError("not started")
        return self.process

    def _live(self) -> bool:
        try:
            # A fresh connection each time (no Session): an idle keep-alive connection would hold up a
            # worker's graceful exit for up to `keepalive` seconds in stop tests.
            return requests.get(self.url("/health/liveness"), timeout=1).status_code == 200
        except requests.RequestException:
            return False


class JobWorker:
    """One `photo-api worker` process (REDIS_URL in `env`): start it, signal it, stop it, read its log."""

    def __init__(self, env: Mapping[str, str], *, cwd: Path, log_dir: Path, extra_args: Sequence[str] = ()):
        self.env = clean_environment(env)
        self.cwd = cwd
        self.extra_args = list(extra_args)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / "worker-stdout.log"
        self.stderr_path = log_dir / "worker-stderr.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> JobWorker:
        """Start the worker; return once it listens on the queue (its log says so)."""
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            # A session of its own, so that the whole group (RQ's scheduler process too) can be killed.
            self.process = subprocess.Popen(
                [console_script("photo-api"), "worker", *self.extra_args],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while "Listening on" not in self.stdout():
            if self.process.poll() is not None:
                raise ServeError(f"worker exited with {self.process.returncode} during startup{self.log_tail()}")
            if time.monotonic() > deadline:
                self.close()
                raise ServeError(f"worker did not listen within {timeout:g}s{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)
        return self

    @property
    def pid(self) -> int:
        """The worker's main process id."""
        assert self.process is not None, "not started"
        return self.process.pid

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the worker's main process only (like systemd's KillMode=mixed)."""
        os.kill(self.pid, sig)

    def kill_group(self) -> None:
        """SIGKILL the worker and every process of its group at once (a machine dying, an OOM kill)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(STOP_TIMEOUT_S)

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for the worker to exit; its exit code, or None if still running."""
        assert self.process is not None, "not started"
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Kill whatever is left of the worker's group. Idempotent."""
        if self.process is not None and self.process.poll() is None:
            self.kill_group()

    def stdout(self) -> str:
        """Everything the worker wrote to stdout so far (JSON log lines)."""
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of stdout and stderr, formatted for an error message."""
        parts = []
        for name, path in (("stdout", self.stdout_path), ("stderr", self.stderr_path)):
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"\n--- worker {name} (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "".join(parts)

    def __enter__(self) -> JobWorker:
        return self if self.process is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Servers:
    """Starts `photo-api serve` instances under one work directory and kills all of them on close()."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.started: list[ServeProcess] = []

    def start(
        self,
        env: Mapping[str, str],
        *,
        workers: int = 1,
        cwd: Path | None = None,
        name: str | None = None,
        port: int | None = None,
    ) -> ServeProcess:
        """Start one instance (logs in `work/<name>`, default `serve-<n>`) and return it once it is live."""
        server = ServeProcess(
            env,
            cwd=cwd or self.work,
            log_dir=self.work / (name or f"serve-{len(self.started)}"),
            workers=workers,
            port=port,
        )
        self.started.append(server)
        return server.start()

    def close(self) -> None:
        """Kill every instance started here (idempotent)."""
        for server in self.started:
            server.close()

    def __enter__(self) -> Servers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
