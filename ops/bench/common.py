"""What the benchmarks share: a throw-away PostgreSQL database, a real `photo-api serve` with production
settings, streamed multipart uploads, worker memory from /proc, and a description of the machine.

The database, the environment, the server process and users come from the test harness (tests/harness/,
plain code, no pytest); what only benchmarks need is below. Run the benchmarks from the repository root
(`python -m ops.bench.photos_bench ...`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import re
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.databases import PostgresServer, admin_url_from_env
from tests.harness.env import lifecycle_env, production_env
from tests.harness.server import ServeProcess, free_port

TIMEOUT_S = 60
MIB = 1024 * 1024
# What the client hands the socket at a time when it streams a file.
SEND_CHUNK = 1 * MIB
# Production refuses a drain shorter than what the load balancer needs to notice it (interval x threshold +
# probe timeout); there is no load balancer here, so all three are small and a graceful stop takes ~1.5 s.
FAST_DRAIN = lifecycle_env(
    1.5, check_interval_s=0.5, unhealthy_threshold=2, check_timeout_s=0.5, health_check_timeout_s=0.4
)


def bench_postgres() -> PostgresServer:
    """The PostgreSQL server of the benchmarks: BENCH_POSTGRES_URL, else the tests' (TEST_POSTGRES_URL or local)."""
    return PostgresServer(os.environ.get("BENCH_POSTGRES_URL") or admin_url_from_env())


def temporary_database(prefix: str = "photo_api_bench") -> contextlib.AbstractContextManager[str]:
    """A PostgreSQL database migrated to head, as a context giving its URL; dropped (connections and all) after."""
    return bench_postgres().temporary(prefix)


def server_env(database_url: str, work: Path, **overrides: str) -> dict[str, str]:
    """Production settings on `database_url`, storage and metrics files under `work`, plus `overrides`."""
    return production_env(
        database_url,
        work / "storage",
        secret=secrets.token_urlsafe(48),
        # An access-log line per request would be a large part of what is measured; production ships
        # them, but that cost belongs to the log pipeline, not to the code under test.
        log_level="WARNING",
        # Metrics stay on, as in production, on a port of their own so that parallel runs do not collide.
        metrics_port=free_port(),
        metrics_dir=work / "prometheus",
        lifecycle=FAST_DRAIN,
        overrides=overrides,
    )


@contextlib.contextmanager
def running_server(
    env: Mapping[str, str], work: Path, name: str, workers: int = 2, script: str | None = None
) -> Iterator[ServeProcess]:
    """A started `photo-api serve` with `workers` gevent workers; stopped with SIGTERM, and killed if need be.

    `script`: another checkout's `photo-api` console script (default: this virtualenv's).
    """
    server = ServeProcess(env, cwd=work, log_dir=work / name, workers=workers, script=script)
    server.start()
    try:
        yield server
        server.stop()
    finally:
        server.close()


def file_chunks(path: Path, chunk: int = SEND_CHUNK) -> Iterator[bytes]:
    """The bytes of `path`, `chunk` at a time (the file is never whole in the client's memory either)."""
    with path.open("rb") as f:
        yield from iter(lambda: f.read(chunk), b"")


@dataclass
class UploadResult:
    """The answer to an upload and how long it took."""

    status: int
    body: dict[str, object]
    seconds: float


def upload_stream(
    server: ServeProcess,
    headers: Mapping[str, str],
    chunks: Iterable[bytes],
    size: int,
    filename: str = "upload.jpg",
) -> UploadResult:
    """POST /photos as a browser does: one multipart body with a Content-Length, the file sent as it is read.

    `seconds` runs from the first byte sent to the whole answer received.
    """
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT_S)
    try:
        started = time.perf_counter()
        conn.putrequest("POST", "/photos")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(len(head) + size + len(tail)))
        conn.endheaders()
        conn.send(head)
        for chunk in chunks:
            conn.send(chunk)
        conn.send(tail)
        response = conn.getresponse()
        raw = response.read()
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return UploadResult(response.status, json.loads(raw) if raw else {}, seconds)


def status_kib(pid: int, field_name: str) -> int | None:
    """A `VmRSS`/`VmHWM`-style field of /proc/<pid>/status in KiB, or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of `pid` to its current RSS; False if not allowed.

    Writing 5 to /proc/<pid>/clear_refs does it (Linux >= 4.0); after that VmHWM is the exact peak since
    this call, not a sample that may miss a short spike.
    """
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class RssSampler:
    """Samples the resident set size of some processes in a thread; keeps the highest value of each."""

    pids: list[int]
    interval_s: float = 0.005
    peaks_kib: dict[int, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval_s):
                self._sample()  # one last look after the request ended
                return

    def _sample(self) -> None:
        self.samples += 1
        for pid in self.pids:
            rss = status_kib(pid, "VmRSS")
            if rss is not None and rss > self.peaks_kib.get(pid, 0):
                self.peaks_kib[pid] = rss


def fsync_copy(source: Path, directory: Path, chunk: int = SEND_CHUNK) -> float:
    """Copy `source` into `directory` durably, as LocalStorage.put stores an upload; return the seconds taken.

    Temp file, copyfileobj, fsync, rename, fsync of the directory: the same disk work as a stored upload.
    """
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    temp, final = directory / f".copy-{uuid.uuid4().hex}", directory / f"copy-{uuid.uuid4().hex}"
    started = time.perf_counter()
    with source.open("rb") as src, temp.open("wb") as dst:
        shutil.copyfileobj(src, dst, chunk)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(temp, final)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - started
    final.unlink()
    return seconds


def machine() -> str:
    """CPUs, memory, kernel, Python and PostgreSQL versions, and the load when the run started."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = status_meminfo("MemTotal")
    pg = bench_postgres().version()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_kib / MIB:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, PostgreSQL {pg}; load average at start: {load}"
    )


def status_meminfo(name: str) -> int:
    """A field of /proc/meminfo in KiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class WrkRun:
    """What wrk reports for one closed-loop run."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    max_ms: float


def _wrk_ms(output: str, percentile: str) -> float:
    m = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if not m:
        raise RuntimeError(f"no {percentile}% latency in wrk output:\n{output}")
    return float(m[1]) * _WRK_UNITS[m[2]]


def run_wrk(url: str, headers: dict[str, str], seconds: float, connections: int) -> WrkRun:
    """Closed-loop load with wrk (2 threads, `connections` keep-alive connections); its own percentiles."""
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    if not rps:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    non_2xx = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(n) for n in socket.groups()) if socket else 0
    # "Latency   4.10ms   2.31ms  43.79ms   91.23%": mean, stdev, max, share within one stdev
    latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", out, re.MULTILINE)
    max_ms = float(latency[1]) * _WRK_UNITS[latency[2]] if latency else float("nan")
    return WrkRun(float(rps[1]), _wrk_ms(out, "50"), _wrk_ms(out, "99"), non_2xx, socket_errors, max_ms)
