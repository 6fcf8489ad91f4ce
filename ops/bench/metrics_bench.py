"""What metrics cost: the time of one scrape of METRICS_PORT with 2 and 4 workers, and requests/s of an
authenticated `GET /photos` with metrics on versus off (METRICS_ENABLED=false).

    .venv/bin/python ops/bench/metrics_bench.py              # from the repository root, ~2 minutes

Real `photo-api serve` processes (production settings, gevent workers) on loopback, PostgreSQL from
BENCH_POSTGRES_URL / TEST_POSTGRES_URL (default: the local server; a temporary database is created and
dropped). The load generator runs on the same machine: compare the two columns, not the absolute numbers.
Prints the figures; ops/bench/RESULTS.md keeps the ones recorded.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ops.bench.common import temporary_database  # noqa: E402
from tests.harness.env import TEST_SECRET, production_env  # noqa: E402
from tests.harness.server import ServeProcess, Servers, free_port  # noqa: E402
from tests.harness.users import Users  # noqa: E402

# Series a busy instance has: every route family used once, so the scrape is not of an idle instance.
WARMUP_REQUESTS = 300
PHOTOS_LISTED = 20
TIMEOUT_S = 10


def login(server: ServeProcess) -> dict[str, str]:
    """A fresh user's Authorization header."""
    headers: dict[str, str] = Users.at(server.url(), timeout=TIMEOUT_S).create()["headers"]
    return headers


def seed_photos(server: ServeProcess, headers: dict[str, str]) -> None:
    from tests.images import png

    for i in range(PHOTOS_LISTED):
        files = {"file": (f"p{i}.png", png(8 + i, 8), "image/png")}  # distinct bytes: no duplicates
        requests.post(server.url("/photos"), headers=headers, files=files, timeout=TIMEOUT_S).raise_for_status()


def load(server: ServeProcess, headers: dict[str, str], seconds: float, concurrency: int) -> float:
    """Requests/s of GET /photos from `concurrency` keep-alive connections for `seconds`."""
    counts = [0] * concurrency
    errors: list[str] = []
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT_S)
        try:
            while time.monotonic() < stop_at:
                conn.request("GET", "/photos?limit=20", headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors.append(str(response.status))
                    return
                counts[i] += 1
        finally:
            conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"GET /photos failed: {errors[:3]}")
    return sum(counts) / (time.monotonic() - started)


def scrape_cost(metrics_url: str, scrapes: int) -> tuple[float, float, int, int]:
    """Median and p90 ms of a scrape (a new connection each, as Prometheus does), samples and bytes."""
    times = []
    body = ""
    for _ in range(scrapes):
        t0 = time.perf_counter()
        r = requests.get(metrics_url, timeout=TIMEOUT_S)
        r.raise_for_status()
        body = r.text
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    samples = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    return statistics.median(times), times[int(len(times) * 0.9) - 1], samples, len(body)


# Run in a child process: prometheus_client must see PROMETHEUS_MULTIPROC_DIR before it is imported, as in
# a gunicorn worker, so that the hooks write to mmap files exactly as they do in production.
HOOK_COST_SCRIPT = """
import os, statistics, sys, time
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from photo_api import create_app
from photo_api.config import load_settings

def client(enabled):
    settings = load_settings(environ={}, database_url="sqlite:///" + sys.argv[1] + "/bench.db",
                             jwt_secret_key=sys.argv[2], local_storage_dir=sys.argv[1], metrics_enabled=enabled,
                             log_level="WARNING")
    return create_app(settings).test_client()

clients = {"on": client(True), "off": client(False)}
per_request = {"on": [], "off": []}
for _ in range(7):
    for mode, c in clients.items():
        t0 = time.perf_counter()
        for _ in range(2000):
            c.get("/health/liveness")
        per_request[mode].append((time.perf_counter() - t0) / 2000 * 1e6)
print(statistics.median(per_request["on"]), statistics.median(per_request["off"]))
"""


def hook_cost(tmp: Path) -> tuple[float, float]:
    """Microseconds per request through the Flask app in one process, metrics on and off (no network)."""
    import subprocess

    directory = tmp / "hook-cost"
    directory.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", HOOK_COST_SCRIPT, str(directory), TEST_SECRET],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each load run")
    parser.add_argument("--rounds", type=int, default=5, help="load runs per mode (the median is reported)")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive client connections")
    parser.add_argument("--scrapes", type=int, default=100, help="scrapes timed per worker count")
    parser.add_argument("--load-workers", type=int, default=2, help="gunicorn workers for the requests/s runs")
    args = parser.parse_args()

    with (
        temporary_database() as database_url,
        TemporaryDirectory() as tmp_name,
        Servers(Path(tmp_name)) as instances,
    ):
        tmp = Path(tmp_name)
        # The access log line per request would dominate the figures.
        base = production_env(database_url, tmp / "storage", log_level="WARNING")
        print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.machine()}")
        print(
            f"load: GET /photos?limit=20 ({PHOTOS_LISTED} photos), {args.concurrency} keep-alive connections, "
            f"{args.seconds:g} s x {args.rounds} rounds per mode, {args.load_workers} workers\n"
        )

        print("scrape of METRICS_PORT (new connection each)")
        print(f"  {'workers':>7}  {'median ms':>9}  {'p90 ms':>7}  {'samples':>7}  {'bytes':>7}")
        for workers in (2, 4):
            port = free_port()
            server = instances.start({**base, "METRICS_PORT": str(port)}, workers=workers, name=f"scrape-{workers}")
            try:
                headers = login(server)
                seed_photos(server, headers)
                for i in range(WARMUP_REQUESTS):
                    requests.get(server.url("/photos" if i % 3 else "/health"), headers=headers, timeout=TIMEOUT_S)
                metrics_url = f"http://127.0.0.1:{port}/metrics"
                scrape_cost(metrics_url, 5)  # warm-up: imports and caches of the master's thread
                median, p90, samples, size = scrape_cost(metrics_url, args.scrapes)
                print(f"  {workers:>7}  {median:>9.2f}  {p90:>7.2f}  {samples:>7}  {size:>7}")
            finally:
                server.stop()

        print("\nrequests/s of GET /photos")
        results: dict[str, list[float]] = {"on": [], "off": []}
        servers = {
            "on": instances.start(
                {**base, "METRICS_PORT": str(free_port())}, workers=args.load_workers, name="load-on"
            ),
            "off": instances.start({**base, "METRICS_ENABLED": "false"}, workers=args.load_workers, name="load-off"),
        }
        try:
            tokens = {mode: login(server) for mode, server in servers.items()}
            for mode, server in servers.items():
                load(server, tokens[mode], 2.0, args.concurrency)  # warm-up: pools filled, code paths hot
            for _ in range(args.rounds):
                for mode, server in servers.items():  # alternated, so drift affects both alike
                    results[mode].append(load(server, tokens[mode], args.seconds, args.concurrency))
        finally:
            for server in servers.values():
                server.stop()
        on, off = statistics.median(results["on"]), statistics.median(results["off"])
        for mode in ("on", "off"):
            runs = ", ".join(f"{r:.0f}" for r in results[mode])
            print(f"  metrics {mode:>3}: {statistics.median(results[mode]):7.0f} req/s  (runs: {runs})")
        print(f"  metrics on vs off: {(on - off) / off * 100:+.1f}% requests/s")

        hooks_on, hooks_off = hook_cost(tmp)
        print("\nper request through the app in one process (Flask test client, GET /health/liveness, mmap files)")
        print(f"  metrics on: {hooks_on:.1f} us, off: {hooks_off:.1f} us, cost: {hooks_on - hooks_off:+.1f} us")


if __name__ == "__main__":
    main()
