"""What a login flood does to the rest of an instance: /health latency and login throughput while clients log in.

    .venv/bin/python -m ops.bench.login_flood_bench                      # from the repository root, ~2 min
    .venv/bin/python -m ops.bench.login_flood_bench --clients 8 50 --seconds 20
    .venv/bin/python -m ops.bench.login_flood_bench --serve-script OTHER/.venv/bin/photo-api   # another checkout

A real `photo-api serve` (production settings and password hashing cost: argon2id t=3, m=64 MiB, p=4;
2 gevent workers) on a temporary PostgreSQL database (BENCH_POSTGRES_URL / TEST_POSTGRES_URL, default the
local server). Throttling is off (RATE_LIMIT_ENABLED=false): what is measured is the hashing, not the
limiter. For each number of clients, that many threads log in continuously (valid credentials, one
keep-alive connection each) while a load balancer's probe, in a process of its own so that the clients'
GIL does not delay it, sends GET /health on a new connection every 100 ms.

Printed per run: logins/s, 200/503/other answers, login p50/p99, /health p50/p99/max, probes slower than
HEALTH_CHECK_TIMEOUT and probes that did not answer 200; where the CPU went (the server's processes, of
which hashing is estimated from the logins and the hash rate; the client threads; everything else); and,
as the reference for login throughput, the rate at which one core of this machine hashes with the same
cost (issue target: no lower than that).
`--serve-script` runs the server from another checkout's virtualenv (e.g. the code before a change);
`--env NAME=VALUE` adds a server setting (e.g. PASSWORD_HASH_NICE=0); `--honour-retry-after` makes the
clients wait a 503's Retry-After instead of retrying at once.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import requests
from argon2 import PasswordHasher

from ops.bench.common import cpu_seconds, machine, server_env, temporary_database
from tests.harness.server import ServeProcess
from tests.harness.users import DEFAULT_PASSWORD, Users

PROBE_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 10.0
LOGIN_TIMEOUT_S = 60.0
USERS = 10
# Production's argon2 cost (the settings' defaults): what a login costs on a real instance.
HASH_COST = {"time_cost": 3, "memory_cost": 65_536, "parallelism": 4}


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`, 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def probe(url: str, seconds: float, results: multiprocessing.Queue[tuple[float, int]]) -> None:
    """A load balancer: GET `url` every PROBE_INTERVAL_S on a new connection; (ms, status) each (status 0: failed)."""
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while next_at < end:
        time.sleep(max(0.0, next_at - time.monotonic()))
        # As a load balancer does: the next probe PROBE_INTERVAL_S after this one was due, or after it
        # answered when it took longer (probes never overlap), until `seconds` have passed.
        next_at = max(next_at + PROBE_INTERVAL_S, time.monotonic())
        sent = time.perf_counter()
        try:
            status = requests.get(url, timeout=PROBE_TIMEOUT_S, headers={"Connection": "close"}).status_code
        except requests.RequestException:
            status = 0
        results.put(((time.perf_counter() - sent) * 1000, status))
    results.put((-1.0, -1))


@dataclass
class Run:
    clients: int
    seconds: float
    statuses: Counter[int]
    login_ms: list[float]
    health_ms: list[float]
    health_statuses: Counter[int]
    health_timeout_s: float
    cpu: CpuUse

    def line(self) -> str:
        ok = self.statuses[200]
        over = sum(1 for ms in self.health_ms if ms > self.health_timeout_s * 1000)
        not_ok = sum(n for status, n in self.health_statuses.items() if status != 200)
        other = sum(n for status, n in self.statuses.items() if status not in (200, 503))
        p50, p99 = percentile(self.login_ms, 50), percentile(self.login_ms, 99)
        return (
            f"{self.clients:>3} clients: {ok / self.seconds:6.1f} logins/s  200={ok} 503={self.statuses[503]}"
            f" other={other}  login p50 {p50:6.0f} ms p99 {p99:6.0f} ms"
            f" | /health p50 {percentile(self.health_ms, 50):5.1f} ms p99 {percentile(self.health_ms, 99):6.1f} ms"
            f" max {max(self.health_ms, default=0):6.1f} ms, {len(self.health_ms)} probes,"
            f" {over} over {self.health_timeout_s:g} s, {not_ok} not 200"
            f"\n      CPU-seconds of the run: {self.cpu.line(ok, self.seconds)}"
        )


def machine_busy_seconds() -> float:
    """CPU-seconds all CPUs have spent on anything but idling and waiting for I/O, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuUse:
    """Where the machine's CPU went during a run: the server's processes, the clients, everything."""

    server: float
    clients: float
    machine: float
    hash_rate: float  # hashes per CPU-second on this machine

    @classmethod
    def measure(cls, server: ServeProcess, hash_rate: float) -> Callable[[], CpuUse]:
        pids = [server.master_pid, *server.worker_pids()]
        before = (sum(cpu_seconds(pid) for pid in pids), time.process_time(), machine_busy_seconds())

        def done() -> CpuUse:
            server_s = sum(cpu_seconds(pid) for pid in pids) - before[0]
            return cls(server_s, time.process_time() - before[1], machine_busy_seconds() - before[2], hash_rate)

        return done

    def line(self, logins: int, seconds: float) -> str:
        hashing = logins / self.hash_rate if self.hash_rate else 0.0
        others = self.machine - self.server - self.clients
        return (
            f"machine {self.machine:5.1f} of {seconds * (os.cpu_count() or 1):.0f} (all CPUs);"
            f" server {self.server:5.1f} (hashing ~{hashing:4.1f}, the rest {self.server - hashing:5.1f});"
            f" clients {self.clients:5.1f}; others (PostgreSQL, probe, ...) {others:5.1f}"
        )


def flood(
    server: ServeProcess,
    accounts: list[dict[str, str]],
    clients: int,
    seconds: float,
    timeout_s: float,
    *,
    honour_retry_after: bool = False,
    hash_rate: float = 0.0,
) -> Run:
    """`clients` threads logging in for `seconds` while a probe process probes /health.

    `honour_retry_after`: a client answered 503 waits its Retry-After before the next attempt, as a well
    behaved client does; without it the clients retry at once (a flood).
    """
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    login_ms: list[float] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        account = accounts[n % len(accounts)]
        body = {"email": account["email"], "password": account["password"]}
        with requests.Session() as http:
            while not stop.is_set():
                sent = time.perf_counter()
                wait = 0.0
                try:
                    answer = http.post(server.url("/auth/login"), json=body, timeout=LOGIN_TIMEOUT_S)
                    status = answer.status_code
                    if honour_retry_after and status == 503:
                        wait = float(answer.headers.get("Retry-After", "1"))
                except requests.RequestException:
                    status = 0
                with lock:
                    statuses[status] += 1
                    login_ms.append((time.perf_counter() - sent) * 1000)
                stop.wait(wait)

    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[float, int]] = context.Queue()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1)  # the flood is on before the first probe
    prober = context.Process(target=probe, args=(server.url("/health"), seconds, results))
    started = time.monotonic()
    with lock:
        statuses.clear()
        login_ms.clear()
    cpu = CpuUse.measure(server, hash_rate)
    prober.start()
    health_ms: list[float] = []
    health_statuses: Counter[int] = Counter()
    while (item := results.get())[1] != -1:
        health_ms.append(item[0])
        health_statuses[item[1]] += 1
    elapsed = time.monotonic() - started
    with lock:
        counted, latencies = Counter(statuses), list(login_ms)
    used = cpu()
    stop.set()
    prober.join()
    for thread in threads:
        thread.join(LOGIN_TIMEOUT_S)
    return Run(clients, elapsed, counted, latencies, health_ms, health_statuses, timeout_s, used)


def one_core_hash_rate(seconds: float = 5.0) -> float:
    """Hashes per CPU-second at the production cost: what one core hashes when it does nothing else.

    CPU time, not wall time: argon2 runs its p=4 lanes on threads of their own (so one hash may use
    both cores), and on a shared machine the wall time measures the neighbours too.
    """
    hasher = PasswordHasher(**HASH_COST)
    done = 0
    cpu = time.process_time()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hasher.hash(DEFAULT_PASSWORD)
        done += 1
    return done / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 50])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serve-script", help="the photo-api console script to serve with (default: this one)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra server setting")
    parser.add_argument("--honour-retry-after", action="store_true", help="clients wait Retry-After after a 503")
    args = parser.parse_args()

    print(machine())
    hash_rate = one_core_hash_rate()
    print(f"one core hashes {hash_rate:.1f}/s (per CPU-second) at t=3, m=64 MiB, p=4: the throughput floor")
    extra = dict(item.split("=", 1) for item in args.env)
    with temporary_database("photo_api_login_flood") as url, TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = server_env(url, work, RATE_LIMIT_ENABLED="false", **extra)
        timeout_s = float(env["HEALTH_CHECK_TIMEOUT"])
        server = ServeProcess(env, cwd=work, log_dir=work / "serve", workers=args.workers, script=args.serve_script)
        with server:
            users = Users.at(server.url())
            accounts = [users.register() for _ in range(USERS)]
            for clients in args.clients:
                polite = args.honour_retry_after
                run = flood(
                    server, accounts, clients, args.seconds, timeout_s, honour_retry_after=polite, hash_rate=hash_rate
                )
                print(run.line(), flush=True)


if __name__ == "__main__":
    main()
