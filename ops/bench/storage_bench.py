"""Object storage resilience benchmarks: an open breaker, the rest of the API during an outage,
and upload throughput to Swift.

    .venv/bin/python -m ops.bench.storage_bench              # all three, from the repository root, ~4 min
    .venv/bin/python -m ops.bench.storage_bench upload       # or one of: open, list, upload

Everything is started here and removed again: a Swift on loopback (`ops/swift-saio.sh start <tmpdir>`,
stopped at the end), a fault proxy in front of it (tests/harness/faultproxy.py, in this process), a
PostgreSQL database (BENCH_POSTGRES_URL / TEST_POSTGRES_URL, default the local server; dropped at the end)
and `photo-api serve` (production settings, 2 gevent workers, STORAGE_BACKEND=swift with every storage
call through the proxy). Load comes from wrk when it is installed, else from Python threads.

- open: p50/p99 of `GET /photos/{id}/image` while both workers' storage breakers are open, one request at
  a time and under load, against the storage timeout (what the same request costs while the breaker is
  still closed). Target: p99 under 20 ms.
- list: `GET /photos` requests/s with Swift blackholed against healthy, while image requests arrive at a
  fixed rate in the background; blackholed once with the breakers open (the outage's steady state) and
  once with a breaker that never opens (every storage call waits its whole deadline). Target: >= 90 %.
- upload: MB/s of a multipart upload through the API to Swift against a direct PUT of the same file to
  Swift (both through the proxy; a direct PUT past the proxy shows what the proxy itself costs).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory

import requests

from ops.bench.common import (
    MIB,
    TIMEOUT_S,
    cpu_seconds,
    file_chunks,
    machine,
    run_wrk,
    running_server,
    server_env,
    temporary_database,
    upload_stream,
)
from tests.harness.env import swift_settings
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.server import ServeProcess, free_ports
from tests.harness.users import Users
from tests.images import large_jpeg_chunks, png
from tests.swift.api_server import WorkerClient, pin_workers, serves, storage_circuit, through

ROOT = Path(__file__).resolve().parents[2]
SAIO_SCRIPT = ROOT / "ops" / "swift-saio.sh"
SWIFT_START_TIMEOUT_S = 900  # the first start on a machine installs python3-swift with apt
SWIFT_STOP_TIMEOUT_S = 60
TEMP_URL_KEY = "storage-bench-tempurl-key-Jm5Qw8Zt2Kx7Vn4Rb1Lp"  # production refuses a guessable one

# The storage timeout an open breaker is compared with (STORAGE_DOWNLOAD_TIMEOUT: read timeout and deadline).
STORAGE_TIMEOUT_S = 2
FAILURE_THRESHOLD = 5  # the default
# Long enough for all of (a), or one blackholed run of (b), after the breakers opened; the wait before
# the next healthy run of (b) is what is left of it.
RECOVERY_S = 30
# The most BREAKER_FAILURE_THRESHOLD allows: in the "hung" runs the breaker never opens, and a healthy
# run in between resets its count.
NEVER_OPENS = 1000
UPLOAD_LIMIT = 128 * MIB
LISTED_PHOTOS = 20
IMAGE_BYTES = 20_000
SEQUENTIAL_REQUESTS = 500  # per worker, one at a time
WORKERS = 2
POLL_S = 0.1


# -------------------------------------------------------------------------------------------- Swift


@dataclass(frozen=True)
class Swift:
    """A running Swift: tempauth credentials, the account URL and its TempURL key."""

    auth_url: str
    user: str
    key: str
    storage_url: str
    temp_url_key: str

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the Swift proxy server."""
        host, port = self.storage_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        return host, int(port)

    def token(self) -> str:
        """A tempauth token."""
        r = requests.get(self.auth_url, headers={"X-Auth-User": self.user, "X-Auth-Key": self.key}, timeout=TIMEOUT_S)
        r.raise_for_status()
        return r.headers["X-Auth-Token"]


@contextlib.contextmanager
def running_swift(directory: Path) -> Iterator[Swift]:
    """`ops/swift-saio.sh start` on free loopback ports in `directory`; stopped afterwards."""
    proxy, obj, container, account, memcached = free_ports(5)
    env = {
        **os.environ,
        "SWIFT_SAIO_PROXY_PORT": str(proxy),
        "SWIFT_SAIO_OBJECT_PORT": str(obj),
        "SWIFT_SAIO_CONTAINER_PORT": str(container),
        "SWIFT_SAIO_ACCOUNT_PORT": str(account),
        "SWIFT_SAIO_MEMCACHED_PORT": str(memcached),
        "SWIFT_SAIO_TEMPURL_KEY": TEMP_URL_KEY,
    }
    try:
        result = subprocess.run(
            [str(SAIO_SCRIPT), "start", str(directory)],
            env=env,
            capture_output=True,
            text=True,
            timeout=SWIFT_START_TIMEOUT_S,
        )
        if result.returncode != 0:
            tail = "\n".join(result.stderr.splitlines()[-15:])
            raise SystemExit(f"{SAIO_SCRIPT.name} start exited {result.returncode}:\n{tail}")
        values = dict(
            line.removeprefix("export ").split("=", 1)
            for line in result.stdout.splitlines()
            if line.startswith("export ") and "=" in line
        )
        yield Swift(
            auth_url=values["SWIFT_AUTH_URL"],
            user=values["SWIFT_USER"],
            key=values["SWIFT_KEY"],
            storage_url=values["SWIFT_STORAGE_URL"],
            temp_url_key=values["SWIFT_TEMPURL_KEY"],
        )
    finally:
        subprocess.run(
            [str(SAIO_SCRIPT), "stop", str(directory)], env=env, capture_output=True, timeout=SWIFT_STOP_TIMEOUT_S
        )


@dataclass
class Stack:
    """What every part uses: Swift, the fault proxy in front of it, a database, a work directory."""

    swift: Swift
    proxy: FaultProxy
    database_url: str
    work: Path
    container: str = field(default_factory=lambda: f"storage-bench-{uuid.uuid4().hex[:8]}")

    def env(self, **overrides: str) -> dict[str, str]:
        """Production settings with STORAGE_BACKEND=swift, auth and object calls through the proxy."""
        storage = swift_settings(
            auth_url=through(self.swift.auth_url, self.proxy.url),
            storage_url=through(self.swift.storage_url, self.proxy.url),
            user=self.swift.user,
            key=self.swift.key,
            container=self.container,
            temp_url_key=self.swift.temp_url_key,
        )
        knobs = {
            "STORAGE_DOWNLOAD_TIMEOUT": str(STORAGE_TIMEOUT_S),
            "STORAGE_AUTH_TIMEOUT": str(STORAGE_TIMEOUT_S),
            "STORAGE_BREAKER_FAILURE_THRESHOLD": str(FAILURE_THRESHOLD),
            "STORAGE_BREAKER_RECOVERY_TIMEOUT": str(RECOVERY_S),
            "MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        }
        return server_env(self.database_url, self.work, **storage, **{**knobs, **overrides})


# -------------------------------------------------------------------------------------------- load


@dataclass
class Load:
    """One closed-loop load run as the generator measured it."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def wrk(url: str, headers: dict[str, str], seconds: float, connections: int) -> Load:
    """wrk with 2 threads and `connections` keep-alive connections."""
    run = run_wrk(url, headers, seconds, connections)
    return Load(run.requests_per_s, run.p50_ms, run.p99_ms, run.non_2xx, run.socket_errors)


def python_load(url: str, headers: dict[str, str], seconds: float, connections: int) -> Load:
    """The same load from Python threads, one keep-alive connection each (when wrk is not installed)."""
    latencies: list[float] = []
    counts = Counter[str]()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        mine: list[float] = []
        with requests.Session() as http:
            while time.monotonic() < stop_at:
                sent = time.perf_counter()
                try:
                    status = http.get(url, headers=headers, timeout=TIMEOUT_S).status_code
                except requests.RequestException:
                    status = 0
                mine.append((time.perf_counter() - sent) * 1000)
                with lock:
                    counts["socket" if status == 0 else "non_2xx" if status >= 300 else "ok"] += 1
        with lock:
            latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Load(
        len(latencies) / (time.monotonic() - started),
        percentile(latencies, 50),
        percentile(latencies, 99),
        counts["non_2xx"],
        counts["socket"],
    )


def load_generator() -> tuple[Callable[[str, dict[str, str], float, int], Load], str]:
    """wrk when installed, else Python threads; and its name for the report."""
    if shutil.which("wrk"):
        return wrk, "wrk -t2"
    return python_load, "Python threads (wrk not installed)"


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Background:
    """Image requests at a fixed rate (open loop: each on its own connection, whether the last one ended or not)."""

    def __init__(self, url: str, headers: dict[str, str], rate: float) -> None:
        self.url = url
        self.headers = headers
        self.interval = 1 / rate
        self.statuses = Counter[int]()
        self.seconds: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Enough threads for every request of a run to be in flight at once (they may all hang).
        self._pool = ThreadPoolExecutor(max_workers=int(rate * (STORAGE_TIMEOUT_S + 1) * 2) + 8)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._one)
            due += self.interval
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _one(self) -> None:
        started = time.perf_counter()
        try:
            status = requests.get(self.url, headers=self.headers, timeout=TIMEOUT_S).status_code
        except requests.RequestException:
            status = 0
        with self._lock:
            self.statuses[status] += 1
            self.seconds.append(time.perf_counter() - started)

    def summary(self) -> str:
        """Statuses and median duration of the background requests."""
        statuses = ", ".join(f"{n}x {s or 'error'}" for s, n in sorted(self.statuses.items()))
        median_ms = statistics.median(self.seconds) * 1000 if self.seconds else 0.0
        return f"{statuses}; median {median_ms:.0f} ms"


# -------------------------------------------------------------------------------------------- helpers


def seed(server: ServeProcess, headers: dict[str, str]) -> str:
    """LISTED_PHOTOS small PNGs (the list) and one ~20 kB PNG (the image); return the image's path."""
    with requests.Session() as http:
        for i in range(LISTED_PHOTOS):
            files = {"file": (f"p{i}.png", png(8 + i, 8), "image/png")}
            http.post(server.url("/photos"), headers=headers, files=files, timeout=TIMEOUT_S).raise_for_status()
        files = {"file": ("image.png", png(32, 32, text=b"x" * IMAGE_BYTES), "image/png")}
        r = http.post(server.url("/photos"), headers=headers, files=files, timeout=TIMEOUT_S)
        r.raise_for_status()
    return f"/photos/{r.json()['id']}/image"


def wait_until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting until {what}")
        time.sleep(POLL_S)


def open_breakers(proxy: FaultProxy, pinned: list[list[WorkerClient]], path: str, headers: dict[str, str]) -> float:
    """Blackhole Swift and send image requests on every pinned connection until each worker's breaker is
    open; return the median duration of those requests (what a request costs before the breaker opens)."""
    proxy.set(Fault.blackhole())
    durations: list[float] = []
    hanging = [client for clients in pinned for client in clients[1:]]
    # One round is FAILURE_THRESHOLD concurrent failures per worker, which opens every breaker; more
    # rounds are only a safeguard.
    for _ in range(FAILURE_THRESHOLD):
        with ThreadPoolExecutor(len(hanging)) as pool:
            answers = list(pool.map(lambda c: c.get(path, headers), hanging))
        assert all(a.status == 503 for a in answers), [a.status for a in answers]
        durations += [a.seconds for a in answers]
        if all(storage_circuit(clients[0]) == "open" for clients in pinned):
            return statistics.median(durations)
    raise RuntimeError("the storage breakers did not open")


def close_breakers(proxy: FaultProxy, pinned: list[list[WorkerClient]], path: str, headers: dict[str, str]) -> None:
    """Let Swift answer again and wait until every worker has served the image (its breaker closed)."""
    proxy.pass_through()
    for clients in pinned:
        wait_until(partial(serves, clients[0], path, headers), "images are served again", RECOVERY_S + 10)


def mb_per_s(size: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes)."""
    return size / 1e6 / seconds


# -------------------------------------------------------------------------------------------- benchmarks


def bench_upload(stack: Stack, server: ServeProcess, headers: dict[str, str], size_mib: int, runs: int) -> None:
    """(c) An upload through the API to Swift against a direct PUT of the same file to Swift."""
    size_min = size_mib * MIB
    path = stack.work / "upload.jpg"
    with path.open("wb") as f:
        for chunk in large_jpeg_chunks(size_min):
            f.write(chunk)
    size = path.stat().st_size
    token = stack.swift.token()
    print(f"\n== (c) upload: a {size / MIB:.1f} MiB JPEG, 1 warm-up then {runs} alternated runs, MB = 10^6 bytes")

    worker_cpu: list[float] = []

    def api() -> float:
        cpu_before = sum(cpu_seconds(pid) for pid in server.worker_pids())
        result = upload_stream(server, headers, file_chunks(path), size)
        worker_cpu.append(sum(cpu_seconds(pid) for pid in server.worker_pids()) - cpu_before)
        assert result.status == 201, result.body
        r = requests.delete(server.url(f"/photos/{result.body['id']}"), headers=headers, timeout=TIMEOUT_S)
        r.raise_for_status()
        return result.seconds

    def direct(base_url: str) -> float:
        # Chunked, streamed from the file, as the app sends it; the same container, a key of its own.
        url = f"{base_url}/{stack.container}/direct-{uuid.uuid4().hex}.jpg"
        auth = {"X-Auth-Token": token}
        started = time.perf_counter()
        r = requests.put(url, data=file_chunks(path), headers={**auth, "Content-Type": "image/jpeg"}, timeout=TIMEOUT_S)
        seconds = time.perf_counter() - started
        assert r.status_code == 201, r.text
        requests.delete(url, headers=auth, timeout=TIMEOUT_S).raise_for_status()
        return seconds

    proxied_url = through(stack.swift.storage_url, stack.proxy.url)
    kinds: dict[str, Callable[[], float]] = {
        "API -> proxy -> Swift": api,
        "direct PUT -> proxy -> Swift": lambda: direct(proxied_url),
        "direct PUT -> Swift": lambda: direct(stack.swift.storage_url),
    }
    for run in kinds.values():
        run()  # warm-up: connections, token, container, page cache
    speeds: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(runs):
        for name, run in kinds.items():
            speeds[name].append(mb_per_s(size, run()))
    for name, values in speeds.items():
        runs_text = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:30} median {statistics.median(values):6.1f} MB/s   runs: {runs_text}")
    cpu = statistics.median(worker_cpu[1:])  # without the warm-up
    busy = cpu / (size / 1e6 / statistics.median(speeds["API -> proxy -> Swift"]))
    print(
        f"  workers' CPU per API upload: median {cpu:.2f} s, {busy:.0%} of the upload's time; "
        f"{mb_per_s(size, cpu):.0f} MB per CPU second (read, multipart, MD5, send on)"
    )
    ratios = [
        a / d for a, d in zip(speeds["API -> proxy -> Swift"], speeds["direct PUT -> proxy -> Swift"], strict=True)
    ]
    print(
        f"  ratio API / direct PUT (both through the proxy), per run: median {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f})"
    )
    path.unlink()


def bench_open(
    stack: Stack, server: ServeProcess, headers: dict[str, str], path: str, seconds: float, connections: int
) -> None:
    """(a) An image request while both workers' breakers are open, against the storage timeout."""
    load, generator = load_generator()
    pinned = pin_workers(server, per_worker=1 + FAILURE_THRESHOLD)
    try:
        for clients in pinned:  # warm: each worker has a token and pooled connections
            assert clients[0].get(path, headers).status == 200
        closed_s = open_breakers(stack.proxy, pinned, path, headers)
        opened = time.monotonic()
        connections_before = stack.proxy.connections
        latencies: list[float] = []
        for clients in pinned:
            for _ in range(SEQUENTIAL_REQUESTS):
                answer = clients[0].get(path, headers)
                assert answer.status == 503 and answer.headers["Retry-After"], answer
                latencies.append(answer.seconds * 1000)
        light = load(server.url(path), headers, seconds, WORKERS)
        loaded = load(server.url(path), headers, seconds, connections)
        still_open = all(storage_circuit(clients[0]) == "open" for clients in pinned)
        new_connections = stack.proxy.connections - connections_before
        held = time.monotonic() - opened
    finally:
        stack.proxy.pass_through()
        for client in (c for clients in pinned for c in clients):
            client.close()
    print(
        f"\n== (a) GET {path} with Swift blackholed, STORAGE_DOWNLOAD_TIMEOUT={STORAGE_TIMEOUT_S}s, "
        f"breaker threshold {FAILURE_THRESHOLD}"
    )
    print(f"  breaker closed (until it opens): median {closed_s * 1000:.0f} ms per request")
    print(
        f"  breaker open, one request at a time ({len(latencies)} requests, both workers): "
        f"p50 {percentile(latencies, 50):.2f} ms, p99 {percentile(latencies, 99):.2f} ms, "
        f"max {max(latencies):.2f} ms"
    )
    for n, r in ((WORKERS, light), (connections, loaded)):
        print(
            f"  breaker open, {generator} -c{n} for {seconds:g}s: {r.requests_per_s:.0f} req/s, "
            f"p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms ({r.non_2xx} non-2xx answers: all of them, 503; "
            f"{r.socket_errors} socket errors)"
        )
    print(
        f"  connections opened to storage meanwhile: {new_connections}; breakers still open at the end: "
        f"{still_open} ({held:.1f}s of {RECOVERY_S}s recovery)"
    )


def bench_list(
    stack: Stack,
    server: ServeProcess,
    headers: dict[str, str],
    image_path: str,
    *,
    mode: str,
    runs: int,
    seconds: float,
    connections: int,
    rate: float,
) -> None:
    """(b) GET /photos requests/s, healthy against blackholed, alternated, with image requests in the background.

    mode "open": the breakers open at the start of every blackholed run (and are left to recover after
    it); mode "hung": the server's breaker never opens, so every background image request waits its
    whole storage deadline, holding a greenlet and a bulkhead slot.
    """
    load, generator = load_generator()
    url = server.url(f"/photos?limit={LISTED_PHOTOS}")
    pinned = pin_workers(server, per_worker=1 + FAILURE_THRESHOLD) if mode == "open" else []
    results: dict[str, list[Load]] = {"healthy": [], "blackholed": []}
    backgrounds: dict[str, list[str]] = {"healthy": [], "blackholed": []}
    try:
        load(url, headers, 3, connections)  # warm-up
        for _ in range(runs):
            for state in ("healthy", "blackholed"):
                if state == "blackholed":
                    if mode == "open":
                        open_breakers(stack.proxy, pinned, image_path, headers)
                    else:
                        stack.proxy.set(Fault.blackhole())
                with Background(server.url(image_path), headers, rate) as background:
                    results[state].append(load(url, headers, seconds, connections))
                backgrounds[state].append(background.summary())
                if state == "blackholed":
                    if mode == "open":
                        assert all(storage_circuit(c[0]) == "open" for c in pinned), "a breaker closed mid-run"
                        close_breakers(stack.proxy, pinned, image_path, headers)
                    else:
                        stack.proxy.pass_through()
    finally:
        stack.proxy.pass_through()
        for client in (c for clients in pinned for c in clients):
            client.close()
    what = {
        "open": f"breakers open (threshold {FAILURE_THRESHOLD})",
        "hung": f"breaker never opens (threshold {NEVER_OPENS}): every image request waits its deadline",
    }[mode]
    print(
        f"\n== (b) GET /photos?limit={LISTED_PHOTOS}: {generator} -c{connections}, {seconds:g}s runs, "
        f"{rate:g} image req/s in the background; blackholed = {what}"
    )
    for state, loads in results.items():
        for i, r in enumerate(loads):
            print(
                f"  {state:10} run {i + 1}: {r.requests_per_s:6.0f} req/s, p50 {r.p50_ms:6.1f} ms, "
                f"p99 {r.p99_ms:6.1f} ms, non-2xx {r.non_2xx}, socket errors {r.socket_errors}; "
                f"background: {backgrounds[state][i]}"
            )
    healthy = statistics.median(r.requests_per_s for r in results["healthy"])
    blackholed = statistics.median(r.requests_per_s for r in results["blackholed"])
    pairs = [
        b.requests_per_s / h.requests_per_s for h, b in zip(results["healthy"], results["blackholed"], strict=True)
    ]
    print(
        f"  median: healthy {healthy:.0f} req/s, blackholed {blackholed:.0f} req/s = {blackholed / healthy:.0%}; "
        f"per alternated pair: {', '.join(f'{p:.0%}' for p in pairs)}"
    )


def main() -> None:
    """Run the chosen benchmarks and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=["all", "open", "list", "upload"])
    parser.add_argument("--runs", type=int, default=3, help="load runs per mode in (b)")
    parser.add_argument("--upload-runs", type=int, default=5, help="alternated upload runs in (c)")
    parser.add_argument("--seconds", type=float, default=8, help="duration of one load run")
    parser.add_argument("--connections", type=int, default=16, help="load generator connections")
    parser.add_argument("--rate", type=float, default=20, help="background image requests per second in (b)")
    parser.add_argument("--upload-mib", type=int, default=32, help="size of the uploaded file in (c)")
    args = parser.parse_args()
    print(f"Machine: {machine()}")
    print(
        f"photo-api serve ({WORKERS} gevent workers), Swift, PostgreSQL, the load generator and this process (the "
        "fault proxy's threads, background requests) all share these CPUs."
    )
    started = time.monotonic()
    with (
        TemporaryDirectory(prefix="storage-bench-") as tmp,
        running_swift(Path(tmp) / "swift") as swift,
        FaultProxy(swift.address) as proxy,
        temporary_database() as database_url,
    ):
        stack = Stack(swift, proxy, database_url, Path(tmp))
        with running_server(stack.env(), stack.work, "serve-breaker", workers=WORKERS) as server:
            headers = Users.at(server.url(), timeout=TIMEOUT_S).create()["headers"]
            image_path = seed(server, headers)
            if args.what in ("all", "upload"):
                bench_upload(stack, server, headers, args.upload_mib, args.upload_runs)
            if args.what in ("all", "list"):
                bench_list(
                    stack,
                    server,
                    headers,
                    image_path,
                    mode="open",
                    runs=args.runs,
                    seconds=args.seconds,
                    connections=args.connections,
                    rate=args.rate,
                )
            if args.what in ("all", "open"):
                bench_open(stack, server, headers, image_path, args.seconds, args.connections)
        if args.what in ("all", "list"):
            env = stack.env(STORAGE_BREAKER_FAILURE_THRESHOLD=str(NEVER_OPENS))
            with running_server(env, stack.work, "serve-hung", workers=WORKERS) as server:
                headers = Users.at(server.url(), timeout=TIMEOUT_S).create()["headers"]
                image_path = seed(server, headers)
                bench_list(
                    stack,
                    server,
                    headers,
                    image_path,
                    mode="hung",
                    runs=args.runs,
                    seconds=args.seconds,
                    connections=args.connections,
                    rate=args.rate,
                )
    print(f"\nDone in {time.monotonic() - started:.0f}s.")


if __name__ == "__main__":
    main()
