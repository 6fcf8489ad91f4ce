"""What /health costs: its latency at 200 requests/s, and the database load that load balancers' probes cause.

    .venv/bin/python ops/bench/health_bench.py              # from the repository root, ~1 minute

A real `photo-api serve` (production settings, 2 gevent workers) on loopback, PostgreSQL from
BENCH_POSTGRES_URL / TEST_POSTGRES_URL (default: the local server; a temporary database is created and
dropped). Two phases: three probers at 1 Hz each (three load balancers), then the same plus 200 /health
requests per second. The database load is counted on PostgreSQL's side (pg_stat_activity), not by the
app: see `count_probes`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import psycopg2
import requests
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ops.bench.common import temporary_database  # noqa: E402
from tests.harness.env import production_env  # noqa: E402
from tests.harness.server import ServeProcess, free_port  # noqa: E402

PROBERS = 3
PROBE_HZ = 1.0
LOAD_THREADS = 8
TIMEOUT_S = 10
# Far below the interval between two probes of one worker (HEALTH_CHECK_CACHE_SECONDS, 1 s).
SAMPLE_INTERVAL_S = 0.01


def count_probes(database_url: str, name: str, seconds: float) -> int:
    """Database probes of the instance during the next `seconds`, as PostgreSQL sees them.

    Each probe is one transaction ending in ROLLBACK, after which its backend sits idle showing that
    statement with a new `query_start`; sampling pg_stat_activity often enough sees every one of them.
    (pg_stat_database's transaction counters are no use here: a busy backend publishes them late.)
    """
    seen: set[tuple[int, object]] = set()
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                cur.execute(
                    "SELECT pid, query_start FROM pg_stat_activity"
                    " WHERE datname = %s AND application_name = 'photo-api' AND query = 'ROLLBACK'",
                    (name,),
                )
                seen.update(cur.fetchall())
                time.sleep(SAMPLE_INTERVAL_S)
    finally:
        conn.close()
    return len(seen)


def probers(url: str, stop: threading.Event) -> list[threading.Thread]:
    """PROBERS load balancers probing /health at PROBE_HZ, each on a new connection, as LBs do."""

    def run() -> None:
        while not stop.wait(1 / PROBE_HZ):
            with requests.Session() as http:
                http.get(url, timeout=TIMEOUT_S)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(PROBERS)]
    for thread in threads:
        thread.start()
    return threads


def load(url: str, rate: float, seconds: float) -> list[float]:
    """Open-loop GET /health at `rate` requests/s for `seconds`; the latency of each request, in ms."""
    latencies: list[float] = []
    per_thread = rate / LOAD_THREADS

    def run(offset: float) -> None:
        with requests.Session() as http:
            start = time.monotonic() + offset
            n = 0
            while (due := start + n / per_thread) < start + seconds:
                time.sleep(max(0.0, due - time.monotonic()))
                sent = time.perf_counter()
                http.get(url, timeout=TIMEOUT_S).raise_for_status()
                latencies.append((time.perf_counter() - sent) * 1000)
                n += 1

    threads = [threading.Thread(target=run, args=(i / rate,)) for i in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="length of each phase")
    parser.add_argument("--rate", type=float, default=200, help="/health requests per second in phase 2")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with temporary_database() as url, TemporaryDirectory() as tmp:
        name = str(make_url(url).database)
        env = production_env(url, Path(tmp) / "storage", metrics_port=free_port(), log_level="WARNING")
        with ServeProcess(env, cwd=Path(tmp), log_dir=Path(tmp) / "logs", workers=args.workers) as server:
            health = server.url("/health")
            stop = threading.Event()
            threads = probers(health, stop)
            time.sleep(1)
            probes_only = count_probes(url, name, args.seconds) / args.seconds

            latencies: list[float] = []
            loader = threading.Thread(target=lambda: latencies.extend(load(health, args.rate, args.seconds)))
            loader.start()
            under_load = count_probes(url, name, args.seconds) / args.seconds
            loader.join()
            stop.set()
            for thread in threads:
                thread.join(TIMEOUT_S)

    quantiles = statistics.quantiles(latencies, n=100)
    print(f"workers={args.workers}, {PROBERS} probers at {PROBE_HZ:g} Hz, phases of {args.seconds:g} s")
    print(f"probers alone: {probes_only:.2f} DB probe queries/s ({PROBERS * PROBE_HZ:g} probes/s)")
    print(
        f"{args.rate:g} /health requests/s + probers: {len(latencies)} requests, p50 {quantiles[49]:.1f} ms, "
        f"p99 {quantiles[98]:.1f} ms, max {max(latencies):.1f} ms; {under_load:.2f} DB probe queries/s"
    )


if __name__ == "__main__":
    main()
