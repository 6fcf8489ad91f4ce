"""Database pool benchmark: pool sizes and the pre-ping, by latency and by new PostgreSQL sessions.

    .venv/bin/python -m ops.bench.db_bench                     # every variant, 3 runs of 20 s each (~10 min)
    .venv/bin/python -m ops.bench.db_bench --variants 20+0 20+0-no-pre-ping --runs 3
    .venv/bin/python -m ops.bench.db_bench --round-trips     # the pre-ping alone, in-process (~1 min)

From the repository root; needs wrk. Each variant gets its own PostgreSQL database (BENCH_POSTGRES_URL or
TEST_POSTGRES_URL, default the local server) and a real `photo-api serve` (production settings, 2 gevent
workers) with the variant's settings; wrk `-t2 -c32 -d20s --latency` runs GET /photos?limit=50 (50 photos
seeded) and GET /auth/me after a warm-up. The runs are interleaved (run 1 of every variant, then run 2, ...),
each on a server started for it, so that what else loads the machine weighs on every variant alike. For each
run it prints req/s, p50, p99, the slowest request, errors (non-2xx and socket errors), the new PostgreSQL
sessions the run opened (the database's `pg_stat_database.sessions`, PostgreSQL 14+) and, sampled every 10 ms
from pg_stat_activity, the most sessions the instance held at once and the most of them running a statement at
once (what the two workers really run concurrently). ops/bench/RESULTS.md ("Database pool") keeps the recorded
figures.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url

from ops.bench.common import TIMEOUT_S, bench_postgres, machine, run_wrk, running_server, server_env, temporary_database
from ops.bench.photos_bench import seed_read_data
from tests.harness.server import ServeError
from tests.harness.users import Users

# name: (what it is, settings)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "5+10": ("pool 5 + overflow 10, pre-ping (the defaults before)", {"DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "10"}),
    "10+5": ("pool 10 + overflow 5, pre-ping", {"DB_POOL_SIZE": "10", "DB_MAX_OVERFLOW": "5"}),
    "10+0": ("pool 10 + overflow 0, pre-ping", {"DB_POOL_SIZE": "10", "DB_MAX_OVERFLOW": "0"}),
    "20+0": ("pool 20 + overflow 0, pre-ping", {"DB_POOL_SIZE": "20", "DB_MAX_OVERFLOW": "0"}),
    "20+0-no-pre-ping": (
        "pool 20 + overflow 0, no pre-ping",
        {"DB_POOL_SIZE": "20", "DB_MAX_OVERFLOW": "0", "DB_POOL_PRE_PING": "false"},
    ),
    "defaults": ("the defaults of this version", {}),
    "defaults-no-pre-ping": ("the defaults of this version without pre-ping", {"DB_POOL_PRE_PING": "false"}),
}
ROUTES = ("/photos?limit=50", "/auth/me")
SAMPLE_EVERY_S = 0.01
WARMUP_S = 3


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    new_sessions: int
    max_held: int
    max_active: int


class ActivitySampler:
    """Samples pg_stat_activity of one database: the most sessions held, and running a statement, at once."""

    def __init__(self, dbname: str) -> None:
        self.dbname = dbname
        self.max_held = self.max_active = 0
        self._stop = threading.Event()
        self._conn = bench_postgres().connect()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        query = (
            "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'photo-api'"
        )
        with self._conn.cursor() as cur:
            while not self._stop.wait(SAMPLE_EVERY_S):
                cur.execute(query, (self.dbname,))
                held, active = cur.fetchone()
                self.max_held, self.max_active = max(self.max_held, held), max(self.max_active, active)


def sessions(dbname: str) -> int:
    """Sessions ever opened on the database (pg_stat_database.sessions, PostgreSQL 14+)."""
    conn = bench_postgres().connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (dbname,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def bench(variants: list[str], runs: int, seconds: float, connections: int) -> dict[str, dict[str, list[Run]]]:
    """Each variant's database seeded once; then run after run, variant after variant, a server started
    for that run alone (warm-up, both routes, stop).

    Interleaved, so that the load of whatever else runs on the machine changes all variants alike; one
    server at a time, so that the shared PostgreSQL never holds more than one instance's pools.
    """
    results: dict[str, dict[str, list[Run]]] = {name: {route: [] for route in ROUTES} for name in variants}
    with contextlib.ExitStack() as stack:
        prepared = {}
        for name in variants:
            database_url = stack.enter_context(temporary_database())
            work = Path(stack.enter_context(TemporaryDirectory(prefix="photo-dbbench-")))
            env = server_env(database_url, work, **VARIANTS[name][1])
            with running_server(env, work, f"{name}-seed") as server:
                headers = Users.at(server.url(), timeout=TIMEOUT_S).create()["headers"]
                seed_read_data(server, headers, work)
            prepared[name] = (env, work, headers, make_url(database_url).database or "")
        for run in range(1, runs + 1):
            # Every other round in reverse order: a machine whose load drifts during a round favours neither.
            order = list(prepared.items()) if run % 2 else list(reversed(prepared.items()))
            for name, (env, work, headers, dbname) in order:
                try:
                    results_of_run = _measure(env, work, headers, dbname, name, run, seconds, connections)
                except ServeError as exc:  # the shared machine so loaded that the server did not boot in time
                    print(f"  run {run} {name:17} skipped: {str(exc).splitlines()[0]}", flush=True)
                    continue
                for route, result in results_of_run.items():
                    results[name][route].append(result)
    print("\nmedians of the runs:")
    for name in variants:
        print(f"== {name}: {VARIANTS[name][0]}")
        for route, rs in results[name].items():
            if rs:
                print(f"  {route:17} {_line(_median(rs))}  ({len(rs)} runs)")
    return results


def _measure(
    env: dict[str, str],
    work: Path,
    headers: dict[str, str],
    dbname: str,
    name: str,
    run: int,
    seconds: float,
    connections: int,
) -> dict[str, Run]:
    """One run of one variant: a server started for it, warmed up, then each route measured."""
    measured: dict[str, Run] = {}
    with running_server(env, work, f"{name}-{run}") as server:
        for route in ROUTES:
            run_wrk(server.url(route), headers, WARMUP_S, connections)
        for route in ROUTES:
            before = sessions(dbname)
            with ActivitySampler(dbname) as activity:
                wrk = run_wrk(server.url(route), headers, seconds, connections)
            time.sleep(0.6)  # the statistics collector reports sessions up to 0.5 s late
            result = Run(
                wrk.requests_per_s,
                wrk.p50_ms,
                wrk.p99_ms,
                wrk.max_ms,
                wrk.non_2xx + wrk.socket_errors,
                sessions(dbname) - before,
                activity.max_held,
                activity.max_active,
            )
            measured[route] = result
            print(f"  run {run} {name:17} {route:17} {_line(result)}", flush=True)
    return measured


def _median(rs: list[Run]) -> Run:
    return Run(*(statistics.median(getattr(r, name) for r in rs) for name in Run.__dataclass_fields__))


def _line(r: Run) -> str:
    return (
        f"{r.rps:7.0f} req/s  p50 {r.p50_ms:6.1f} ms  p99 {r.p99_ms:6.1f} ms  max {r.max_ms:7.1f} ms  "
        f"errors {r.errors:g}  new sessions {r.new_sessions:g}  held max {r.max_held:g}  active max {r.max_active:g}"
    )


def round_trips(blocks: int, block_size: int) -> None:
    """The pre-ping's own cost, with less noise than a load run: GET /auth/me in one process, one at a time.

    Two apps on one database, pre-ping on and off, called alternately in blocks (so drift weighs on both
    alike); per request: the statements and pings sent, and the median wall time of the blocks.
    """
    from flask.testing import FlaskClient

    from photo_api import create_app
    from photo_api.api.context import collaborators_of
    from photo_api.config import load_settings

    print(
        f"\n== round trips: GET /auth/me in-process, {blocks} blocks of {block_size} requests per variant, alternated"
    )
    with temporary_database() as database_url, TemporaryDirectory(prefix="photo-dbbench-") as tmp:
        clients: dict[str, tuple[FlaskClient, list[int]]] = {}
        apps = []
        headers: dict[str, str] = {}
        for name, pre_ping in (("pre-ping", True), ("no pre-ping", False)):
            app = create_app(
                load_settings(
                    environ={},
                    database_url=database_url,
                    jwt_secret_key="bench-secret-" + "x" * 40,
                    local_storage_dir=tmp,
                    log_level="WARNING",
                    metrics_enabled=False,
                    password_hash_time_cost=1,
                    password_hash_memory_kib=1024,
                    password_hash_parallelism=1,
                    db_pool_pre_ping=pre_ping,
                )
            )
            apps.append(app)
            engine = collaborators_of(app).db.engine
            counts = [0, 0]  # statements, pings
            event.listen(engine, "before_cursor_execute", lambda *_a, c=counts: c.__setitem__(0, c[0] + 1))
            dialect: Any = engine.dialect
            ping = dialect.do_ping

            def counted_ping(conn: Any, c: list[int] = counts, ping: Any = ping) -> bool:
                c[1] += 1
                return bool(ping(conn))

            dialect.do_ping = counted_ping
            client = app.test_client()
            if not headers:
                headers = Users(client).create()["headers"]
            clients[name] = (client, counts)
        times: dict[str, list[float]] = {name: [] for name in clients}
        start_counts = {name: counts.copy() for name, (_client, counts) in clients.items()}
        for _ in range(blocks):
            for name, (client, _counts) in clients.items():
                started = time.perf_counter()
                for _ in range(block_size):
                    assert client.get("/auth/me", headers=headers).status_code == 200
                times[name].append((time.perf_counter() - started) / block_size * 1000)
        total = blocks * block_size
        for name, (_client, counts) in clients.items():
            statements, pings = ((now - was) / total for now, was in zip(counts, start_counts[name], strict=True))
            print(
                f"  {name:12} {statistics.median(times[name]):6.3f} ms per request (median of the blocks; "
                f"min {min(times[name]):.3f}, max {max(times[name]):.3f}); per request {statements:.2f} "
                f"statements + {pings:.2f} pings"
            )
        for app in apps:
            collaborators_of(app).db.dispose()


def main() -> None:
    """Run the variants named on the command line (default: all)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=["5+10", "10+5", "20+0", "20+0-no-pre-ping"]
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--round-trips", action="store_true", help="only the in-process pre-ping measurement")
    parser.add_argument("--blocks", type=int, default=30, help="blocks per variant (--round-trips)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"wrk -t2 -c{args.connections} -d{args.seconds:g}s --latency; 2 gevent workers; wrk, server and PostgreSQL")
    print("share the machine's CPUs (and other jobs run on it: compare ratios within one invocation)")
    if args.round_trips:
        round_trips(args.blocks, 100)
        return
    bench(args.variants, args.runs, args.seconds, args.connections)


if __name__ == "__main__":
    main()
