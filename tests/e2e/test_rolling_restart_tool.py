"""`ops/rolling-restart` run for real against two instances behind HAProxy, each kept running by a small
supervisor loop standing in for systemd's `Restart=`: the restart command sends SIGTERM to the master and
waits for it to exit, like `systemctl restart` waits for the stop before it starts again.

Pass: the tool restarts both instances one after the other (new master pids), waits for each to be ready,
and not one request through the load balancer fails; it stops at a host that does not come back, leaving
the next one untouched; and it restarts nothing while a host is already unhealthy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests import REPO
from tests.e2e.lb import Haproxy
from tests.harness.env import lifecycle_env
from tests.harness.server import clean_environment, console_script, free_port, pid_alive

pytestmark = pytest.mark.slow

TOOL = REPO / "ops" / "rolling-restart"
DRAIN_S = 2.5
LIFECYCLE = lifecycle_env(DRAIN_S, 5, check_interval_s=0.5, unhealthy_threshold=2, check_timeout_s=1.0)
UP_BOUND_S = 15.0
TOOL_TIMEOUT_S = 120
# Longer than HAProxy below takes to route to a restarted instance again (rise 2 x inter 0.5 s = 1 s), with
# a margin for probes delayed on a busy machine (docs/deploy.md). It was 1 s, no margin, when one CI run
# got 37 of HAProxy's 503s (no server left) while the second of the two instances restarted.
SETTLE_S = 2.0
HTTP_TIMEOUT_S = 10
# The restart command of an instance: SIGTERM to its master, then wait until it has exited (the drain and
# graceful stop); its supervisor starts it again. {dir} is the test's folder; {host} is added by the tool.
RESTART = (
    'pid=$(cat "{dir}"/{{host}}.pid) && kill -TERM "$pid" && while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done'
)
# A supervisor that restarts `photo-api serve` whenever it exits, until the stop file exists.
SUPERVISOR = """
while [ ! -e "$STOP_FILE" ]; do
    "$PHOTO_API" serve --bind "$BIND" --workers 1 >>"$LOG" 2>&1 &
    echo $! >"$PID_FILE"
    wait $!
done
"""


@dataclass
class Supervised:
    """One instance under its supervisor loop."""

    host: str  # 127.0.0.1:PORT, as the tool names it
    pid_file: Path
    stop_file: Path
    process: subprocess.Popen[bytes]

    @property
    def master_pid(self) -> int:
        return int(self.pid_file.read_text())

    def healthy(self) -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"http://{self.host}/health", timeout=HTTP_TIMEOUT_S).status_code == 200
        return False

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + UP_BOUND_S
        while not self.healthy():
            assert time.monotonic() < deadline, f"{self.host} did not become healthy"
            time.sleep(0.05)

    def close(self) -> None:
        self.stop_file.touch()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def fleet(production_env: dict[str, str], tmp_path: Path) -> Iterator[list[Supervised]]:
    """Two supervised instances on the same database and storage, healthy."""
    instances: list[Supervised] = []
    try:
        for n in range(2):
            port = free_port()
            host = f"127.0.0.1:{port}"
            env = clean_environment(
                {
                    **production_env,
                    **LIFECYCLE,
                    "METRICS_PORT": str(free_port()),
                    "PHOTO_API": console_script("photo-api"),
                    "BIND": host,
                    "LOG": str(tmp_path / f"app{n}.log"),
                    "PID_FILE": str(tmp_path / f"{host}.pid"),
                    "STOP_FILE": str(tmp_path / f"{host}.stop"),
                }
            )
            process = subprocess.Popen(["sh", "-c", SUPERVISOR], env=env, cwd=tmp_path, start_new_session=True)
            instances.append(Supervised(host, tmp_path / f"{host}.pid", tmp_path / f"{host}.stop", process))
        for instance in instances:
            instance.wait_healthy()
        yield instances
    finally:
        for instance in instances:
            instance.close()


def run_tool(
    tmp_path: Path, hosts: list[str], restart: str | None = None, *extra: str
) -> subprocess.CompletedProcess[str]:
    command = restart if restart is not None else RESTART.format(dir=tmp_path)
    args = [str(TOOL), "--restart", command, "--health-url", "http://{host}/health", "--settle", str(SETTLE_S)]
    args += ["--interval", "0.2", "--timeout", "30", *extra, *hosts]
    return subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)


def test_the_tool_rolls_every_instance_and_no_request_fails(fleet: list[Supervised], tmp_path: Path) -> None:
    backends = [("127.0.0.1", int(instance.host.rsplit(":", 1)[1])) for instance in fleet]
    haproxy = Haproxy(tmp_path, backends, check_interval=0.5, unhealthy_threshold=2, check_timeout=1.0).start()
    statuses: Counter[int | str] = Counter()
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as http:
            while not stop.is_set():
                try:
                    statuses[http.get(haproxy.url("/health/liveness"), timeout=HTTP_TIMEOUT_S).status_code] += 1
                except requests.RequestException as exc:
                    statuses[type(exc).__name__] += 1
                time.sleep(0.01)

    try:
        for name in haproxy.names:
            haproxy.wait_state(name, "UP", UP_BOUND_S)
        before = [instance.master_pid for instance in fleet]
        threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
        for thread in threads:
            thread.start()
        result = run_tool(tmp_path, [instance.host for instance in fleet])
        stop.set()
        for thread in threads:
            thread.join(HTTP_TIMEOUT_S)
    finally:
        haproxy.close()

    print(f"\n{result.stdout}requests through HAProxy by status: {dict(statuses)}")
    assert result.returncode == 0, result.stdout + result.stderr
    after = [instance.master_pid for instance in fleet]
    assert all(old != new for old, new in zip(before, after, strict=True)), (before, after)
    assert not [pid for pid in before if pid_alive(pid)]
    lines = result.stdout.splitlines()
    # One at a time: the second restart starts only once the first instance is ready again.
    assert [line.split(": ", 2)[1] for line in lines if "ready again" in line or "restarting" in line] == [
        fleet[0].host,
        fleet[0].host,
        fleet[1].host,
        fleet[1].host,
    ]
    assert set(statuses) == {200}, statuses


def test_the_tool_stops_at_a_host_that_does_not_come_back(fleet: list[Supervised], tmp_path: Path) -> None:
    first, second = fleet
    second_pid = second.master_pid
    # The first instance's supervisor is told to give up: it stays down after the SIGTERM.
    first.stop_file.touch()
    result = run_tool(tmp_path, [first.host, second.host], None, "--timeout", "8")
    assert result.returncode == 1
    assert f"{first.host}: not ready within 8s; stopped, not touched: {second.host}" in result.stdout
    assert second.master_pid == second_pid and pid_alive(second_pid) and second.healthy()


def test_the_tool_restarts_nothing_while_a_host_is_unhealthy(fleet: list[Supervised], tmp_path: Path) -> None:
    first, second = fleet
    pids = [first.master_pid, second.master_pid]
    unreachable = f"127.0.0.1:{free_port()}"
    result = run_tool(tmp_path, [first.host, unreachable, second.host])
    assert result.returncode == 1
    assert f"not healthy before the roll: {unreachable}; nothing restarted" in result.stdout
    assert [first.master_pid, second.master_pid] == pids
