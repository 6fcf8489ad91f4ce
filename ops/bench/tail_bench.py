"""The latency tail under keep-alive load: req/s, p50, p99 and the slowest request per route, with wrk.

    .venv/bin/python -m ops.bench.tail_bench            # ~5 minutes: 4 routes, 3 runs of 20 s
    .venv/bin/python -m ops.bench.tail_bench --serve-script OTHER/.venv/bin/photo-api   # another checkout

From the repository root, with wrk installed (Debian package `wrk`). It creates its own PostgreSQL
database (BENCH_POSTGRES_URL or TEST_POSTGRES_URL, default the local server with trust auth), starts a
real `photo-api serve` at default settings (production, 2 gevent workers) on loopback, seeds one user
with 50 photos and 20 albums, and runs `wrk -t2 -c32 -d20s --latency` against each route in turn
(alternated, so that drift affects all alike). Beside wrk's figures it counts the PostgreSQL sessions
the instance opened during each run (pg_stat_database.sessions): a pool that fits the load opens none.
ops/bench/RESULTS.md ("The latency tail") keeps the recorded figures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import psycopg2
import requests

from ops.bench.common import TIMEOUT_S, WrkRun, machine, run_wrk, running_server, server_env, temporary_database
from tests.harness.users import Users
from tests.images import png

CONNECTIONS = 32
PHOTOS = 50
ALBUMS = 20
# PostgreSQL publishes another backend's statistics within a second of its last transaction.
STATS_FLUSH_S = 1.5
ROUTES = ("/health/liveness", "/auth/me", "/photos?limit=50", "/albums?limit=20")


def sessions(database_url: str) -> int:
    """Sessions ever established to the database of `database_url` (PostgreSQL 14 and later)."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        row = cur.fetchone()
    conn.close()
    return int(row[0]) if row else 0


def seed(base_url: str, headers: dict[str, str]) -> None:
    """50 small photos and 20 albums for the list routes."""
    with requests.Session() as http:
        for i in range(PHOTOS):
            files = {"file": (f"p{i}.png", png(8 + i % 16, 8 + i // 16), "image/png")}
            r = http.post(
                f"{base_url}/photos", headers=headers, files=files, data={"title": f"photo {i}"}, timeout=TIMEOUT_S
            )
            r.raise_for_status()
        for i in range(ALBUMS):
            r = http.post(f"{base_url}/albums", headers=headers, json={"name": f"album {i}"}, timeout=TIMEOUT_S)
            r.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--serve-script", help="the photo-api console script to serve with (default: this one)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(
        f"== wrk -t2 -c{args.connections} -d{args.seconds:g}s --latency, {args.runs} runs per route, defaults "
        "(production, 2 gevent workers), PostgreSQL and wrk on the same 2 CPUs"
    )
    results: dict[str, list[tuple[WrkRun, int]]] = {route: [] for route in ROUTES}
    with temporary_database() as database_url, TemporaryDirectory(prefix="photo-bench-") as tmp:
        work = Path(tmp)
        with running_server(server_env(database_url, work), work, "tail", script=args.serve_script) as server:
            headers = Users.at(server.url(), timeout=TIMEOUT_S).create()["headers"]
            seed(server.url(""), headers)
            for route in ROUTES:
                run_wrk(server.url(route), headers, 3, args.connections)  # warm-up: code paths hot
            for run in range(1, args.runs + 1):
                for route in ROUTES:
                    time.sleep(STATS_FLUSH_S)
                    before = sessions(database_url)
                    result = run_wrk(server.url(route), headers, args.seconds, args.connections)
                    time.sleep(STATS_FLUSH_S)
                    opened = sessions(database_url) - before - 1  # our own reading is a session too
                    results[route].append((result, opened))
                    print(
                        f"  run {run} {route:20} {result.requests_per_s:8.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                        f"p99 {result.p99_ms:7.2f} ms  max {result.max_ms:8.2f} ms  "
                        f"errors {result.non_2xx + result.socket_errors}  new PG sessions {opened}",
                        flush=True,
                    )
    print("  median of the runs (max: the slowest request of all runs):")
    for route, rs in results.items():
        rps, p50, p99 = (
            statistics.median(getattr(r, f) for r, _ in rs) for f in ("requests_per_s", "p50_ms", "p99_ms")
        )
        slowest = max(r.max_ms for r, _ in rs)
        errors = sum(r.non_2xx + r.socket_errors for r, _ in rs)
        opened = statistics.median(n for _, n in rs)
        print(
            f"  {route:20} {rps:8.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  max {slowest:8.2f} ms  "
            f"max/p99 {slowest / p99:5.1f}  errors {errors}  new PG sessions {opened:g}"
        )


if __name__ == "__main__":
    main()
