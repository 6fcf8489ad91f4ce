"""Photo benchmarks: upload memory, upload throughput, and read load.

    .venv/bin/python -m ops.bench.photos_bench memory         # ~1 minute
    .venv/bin/python -m ops.bench.photos_bench throughput     # ~1 minute
    .venv/bin/python -m ops.bench.photos_bench read           # ~2 minutes (uses wrk when installed)
    .venv/bin/python -m ops.bench.photos_bench all

From the repository root. Each command creates its own PostgreSQL database (BENCH_POSTGRES_URL or
TEST_POSTGRES_URL, default the local server with trust auth) and temporary directory, starts a real
`photo-api serve` (production settings, 2 gevent workers) on loopback, prints its figures and removes
everything again. ops/bench/RESULTS.md ("Photos") keeps the recorded ones.

- memory: peak RSS of the worker that takes the upload, sampled from /proc every 5 ms, while uploading
  a 1 MiB and a 100 MiB JPEG (MAX_UPLOAD_BYTES raised for the run). Streaming means no difference.
- throughput: upload MB/s through the API (a file streamed as a multipart body over loopback) against
  a durable plain copy of the same file to the same disk (temp file, fsync, rename, like LocalStorage).
- read: requests/s and p50/p99 latency of GET /photos (50 items) and GET /photos/{id}/image (1 MiB)
  at 32 concurrent connections.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import requests

from ops.bench.common import (
    MIB,
    TIMEOUT_S,
    RssSampler,
    cpu_seconds,
    file_chunks,
    fsync_copy,
    machine,
    reset_peak_rss,
    run_wrk,
    running_server,
    server_env,
    status_kib,
    temporary_database,
    upload_stream,
)
from tests.harness.server import ServeProcess
from tests.harness.users import Users
from tests.images import large_jpeg_chunks, png

SMALL_UPLOAD = 1 * MIB
LARGE_UPLOAD = 100 * MIB
# The 100 MiB file plus room; the default limit (25 MiB) would refuse it.
RAISED_UPLOAD_LIMIT = 128 * MIB
WARMUP_UPLOADS = 4
LISTED_PHOTOS = 50
IMAGE_SIZE = 1 * MIB
CONCURRENCY = 32


def write_jpeg(path: Path, min_size: int) -> int:
    """Write a valid JPEG of at least `min_size` bytes (COM-segment padding) to `path`; return its size."""
    with path.open("wb") as f:
        for chunk in large_jpeg_chunks(min_size):
            f.write(chunk)
    return path.stat().st_size


def upload_file(server: ServeProcess, headers: dict[str, str], path: Path) -> tuple[int, float]:
    """Stream `path` to POST /photos; return the new photo's id and the seconds the upload took."""
    size = path.stat().st_size
    result = upload_stream(server, headers, file_chunks(path), size, filename=path.name)
    if result.status != 201 or result.body.get("file_size") != size:
        raise RuntimeError(f"upload of {path.name} answered {result.status}: {result.body}")
    photo_id = result.body["id"]
    assert isinstance(photo_id, int)
    return photo_id, result.seconds


def delete_photo(server: ServeProcess, headers: dict[str, str], photo_id: int) -> None:
    """Delete a photo, so that uploading its file again stores it again (else: a duplicate, 200)."""
    requests.delete(server.url(f"/photos/{photo_id}"), headers=headers, timeout=TIMEOUT_S).raise_for_status()


def mib(kib: float) -> float:
    """KiB (as /proc reports them) in MiB."""
    return kib / 1024


@dataclass
class MemoryRun:
    """One upload seen from the worker that took it."""

    size: int
    before_kib: int  # the serving worker's RSS just before the upload
    peak_kib: int  # its highest RSS during the upload: VmHWM after a reset, else the highest sample
    sampled_peak_kib: int  # the highest of the 5 ms samples, as a cross-check
    kernel_peak: bool


def measure_upload_memory(server: ServeProcess, headers: dict[str, str], path: Path) -> MemoryRun:
    """Upload `path` while watching both workers; the serving worker is the one whose RSS rose most."""
    workers = server.worker_pids()
    before = {pid: status_kib(pid, "VmRSS") or 0 for pid in workers}
    kernel_peak = all([reset_peak_rss(pid) for pid in workers])  # a list: every worker is reset, no short cut
    with RssSampler(workers) as sampler:
        photo_id, _ = upload_file(server, headers, path)
    delete_photo(server, headers, photo_id)  # the same file again must be a new upload, not a duplicate
    peaks = {pid: (status_kib(pid, "VmHWM") or 0) if kernel_peak else sampler.peaks_kib.get(pid, 0) for pid in workers}
    serving = max(workers, key=lambda pid: peaks[pid] - before[pid])
    return MemoryRun(path.stat().st_size, before[serving], peaks[serving], sampler.peaks_kib[serving], kernel_peak)


def bench_memory(runs: int) -> None:
    """(a) Peak RSS of the serving worker during 1 MiB and 100 MiB uploads, alternated `runs` times."""
    print("\n== memory: worker RSS while uploading 1 MiB vs 100 MiB (2 gevent workers, PostgreSQL)")
    with temporary_database() as database_url, TemporaryDirectory(prefix="photo-bench-") as tmp:
        work = Path(tmp)
        small, large = work / "small.jpg", work / "large.jpg"
        write_jpeg(small, SMALL_UPLOAD)
        write_jpeg(large, LARGE_UPLOAD)
        env = server_env(database_url, work, MAX_UPLOAD_BYTES=str(RAISED_UPLOAD_LIMIT))
        with running_server(env, work, "memory") as server:
            headers = Users.at(server.url(), timeout=TIMEOUT_S).create()["headers"]
            # Imports, pools and buffers of both workers settle on small uploads first (each on a new
            # connection, so both workers take some).
            for _ in range(WARMUP_UPLOADS):
                delete_photo(server, headers, upload_file(server, headers, small)[0])
            results: dict[int, list[MemoryRun]] = {small.stat().st_size: [], large.stat().st_size: []}
            for _ in range(runs):  # alternated, so that any drift affects both sizes alike
                for path in (small, large):
                    run = measure_upload_memory(server, headers, path)
                    results[run.size].append(run)
                    print(
                        f"  {run.size / MIB:5.1f} MiB upload: serving worker {mib(run.before_kib):5.1f} MiB before, "
                        f"peak {mib(run.peak_kib):5.1f} MiB (+{mib(run.peak_kib - run.before_kib):4.1f}); "
                        f"highest 5 ms sample {mib(run.sampled_peak_kib):5.1f} MiB"
                    )
        kernel = all(r.kernel_peak for rs in results.values() for r in rs)
        peaks = {size: max(r.peak_kib for r in rs) for size, rs in results.items()}
        growths = {size: max(r.peak_kib - r.before_kib for r in rs) for size, rs in results.items()}
    (small_size, small_peak), (large_size, large_peak) = sorted(peaks.items())
    print(f"  peak RSS ({'VmHWM after a reset' if kernel else 'sampled every 5 ms'}):")
    for size, peak in ((small_size, small_peak), (large_size, large_peak)):
        print(f"    {size / MIB:5.1f} MiB uploads: {mib(peak):6.1f} MiB (at most +{mib(growths[size]):.1f} during one)")
    print(
        f"    difference: {mib(large_peak - small_peak):+.1f} MiB of peak RSS for "
        f"{(large_size - small_size) / MIB:.0f} MiB more file"
    )


def bench_throughput(runs: int, size_mib: int) -> None:
    """(b) MB/s of an upload through the API against a durable plain copy of the same file, `runs` pairs."""
    print(f"\n== throughput: {size_mib} MiB upload through the API vs a plain durable copy to the same disk")
    with temporary_database() as database_url, TemporaryDirectory(prefix="photo-bench-") as tmp:
        work = Path(tmp)
        source = work / "source.jpg"
        size = write_jpeg(source, size_mib * MIB)
        env = server_env(database_url, work, MAX_UPLOAD_BYTES=str(size + MIB))
        copies = work / "storage" / "plain-copies"  # the same file system as the uploads
        api_mbps: list[float] = []
        copy_mbps: list[float] = []
        worker_cpu: list[float] = []
        with running_server(env, work, "throughput") as server, requests.Session() as http:
            headers = Users.at(server.url(), timeout=TIMEOUT_S).create()["headers"]
            http.headers.update(headers)
            photo_id, _ = upload_file(server, headers, source)  # warm-up: both paths, page cache holds the file
            http.delete(server.url(f"/photos/{photo_id}"), timeout=TIMEOUT_S).raise_for_status()
            fsync_copy(source, copies)
            for run in range(1, runs + 1):
                copy_s = fsync_copy(source, copies)
                cpu_before = {pid: cpu_seconds(pid) for pid in server.worker_pids()}
                photo_id, api_s = upload_file(server, headers, source)
                # The worker that took the upload is the one that used CPU meanwhile.
                worker_cpu.append(max(cpu_seconds(pid) - used for pid, used in cpu_before.items()))
                http.delete(server.url(f"/photos/{photo_id}"), timeout=TIMEOUT_S).raise_for_status()
                copy_mbps.append(size / copy_s / 1e6)
                api_mbps.append(size / api_s / 1e6)
                print(
                    f"  run {run}: API {api_mbps[-1]:7.1f} MB/s, plain copy {copy_mbps[-1]:7.1f} MB/s, "
                    f"ratio {api_mbps[-1] / copy_mbps[-1]:.2f}; serving worker busy {worker_cpu[-1] / api_s:.0%} "
                    f"of the upload ({worker_cpu[-1]:.2f} CPU s)"
                )
    ratios = [a / c for a, c in zip(api_mbps, copy_mbps, strict=True)]
    print(
        f"  median: API {statistics.median(api_mbps):.1f} MB/s, plain copy {statistics.median(copy_mbps):.1f} MB/s, "
        f"ratio {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}); "
        f"worker CPU per upload {statistics.median(worker_cpu):.2f} s"
    )


@dataclass
class LoadResult:
    """One load run: throughput and latency percentiles as the load generator measured them."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers and socket errors


def wrk_load(url: str, headers: dict[str, str], seconds: float, connections: int) -> LoadResult:
    """Closed-loop load with wrk; errors are non-2xx answers and socket errors together."""
    run = run_wrk(url, headers, seconds, connections)
    return LoadResult(run.requests_per_s, run.p50_ms, run.p99_ms, run.non_2xx + run.socket_errors)


def python_load(url: str, headers: dict[str, str], seconds: float, connections: int) -> LoadResult:
    """The same load from Python threads (when wrk is missing): one keep-alive connection per thread."""
    host_port, path = url.removeprefix("http://").split("/", 1)
    host, port = host_port.split(":")
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
        mine: list[float] = []
        try:
            while time.monotonic() < stop_at:
                sent = time.perf_counter()
                conn.request("GET", "/" + path, headers=headers)
                response = conn.getresponse()
                response.read()
                mine.append((time.perf_counter() - sent) * 1000)
                if response.status != 200:
                    with lock:
                        errors[0] += 1
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    return LoadResult(
        len(latencies) / elapsed,
        latencies[len(latencies) // 2],
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        errors[0],
    )


def seed_read_data(server: ServeProcess, headers: dict[str, str], work: Path) -> int:
    """One 1 MiB JPEG, then 50 small PNGs (so the first page of 50 is the PNGs); return the JPEG's id."""
    image = work / "image.jpg"
    write_jpeg(image, IMAGE_SIZE)
    image_id, _ = upload_file(server, headers, image)
    with requests.Session() as http:
        for i in range(LISTED_PHOTOS):
            files = {"file": (f"p{i}.png", png(8 + i % 16, 8 + i // 16), "image/png")}
            data = {"title": f"photo {i}", "description": "seeded for the read benchmark"}
            r = http.post(server.url("/photos"), headers=headers, files=files, data=data, timeout=TIMEOUT_S)
            r.raise_for_status()
    return image_id


def bench_read(runs: int, seconds: float, connections: int, generator: str) -> None:
    """(c) Requests/s, p50 and p99 of the photo list and of a 1 MiB image at `connections` clients."""
    load: Callable[[str, dict[str, str], float, int], LoadResult]
    if generator == "wrk" or (generator == "auto" and shutil.which("wrk")):
        load, generator = wrk_load, "wrk -t2"
    else:
        load, generator = python_load, "Python threads" + (" (wrk not installed)" if generator == "auto" else "")
    print(
        f"\n== read: {connections} concurrent connections, {seconds:g} s per run, {runs} runs per route, "
        f"2 gevent workers, PostgreSQL; load generator: {generator}, on the same 2 CPUs"
    )
    with temporary_database() as database_url, TemporaryDirectory(prefix="photo-bench-") as tmp:
        work = Path(tmp)
        with running_server(server_env(database_url, work), work, "read") as server:
            headers = Users.at(server.url(), timeout=TIMEOUT_S).create()["headers"]
            image_id = seed_read_data(server, headers, work)
            listed = requests.get(server.url("/photos?limit=50"), headers=headers, timeout=TIMEOUT_S).json()
            assert len(listed) == LISTED_PHOTOS, len(listed)
            targets = {
                "GET /photos?limit=50": server.url("/photos?limit=50"),
                "GET /photos/{id}/image (1 MiB)": server.url(f"/photos/{image_id}/image"),
            }
            for url in targets.values():
                load(url, headers, 3, connections)  # warm-up: DB pools filled, code paths hot
            results: dict[str, list[LoadResult]] = {name: [] for name in targets}
            for run in range(1, runs + 1):
                for name, url in targets.items():  # alternated, so that drift affects both alike
                    result = load(url, headers, seconds, connections)
                    results[name].append(result)
                    print(
                        f"  run {run} {name:32} {result.requests_per_s:8.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                        f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
                    )
    for name, rs in results.items():
        rps, p50, p99 = (statistics.median(getattr(r, f) for r in rs) for f in ("requests_per_s", "p50_ms", "p99_ms"))
        errors = sum(r.errors for r in rs)
        print(f"  median {name:29} {rps:8.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}")


def main() -> None:
    """Run the benchmark named on the command line (or all three)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", choices=["memory", "throughput", "read", "all"])
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (memory, read)")
    parser.add_argument("--copy-runs", type=int, default=5, help="upload/copy pairs (throughput)")
    parser.add_argument("--size-mib", type=int, default=100, help="file size for the throughput run")
    parser.add_argument("--seconds", type=float, default=12, help="length of one read-load run")
    parser.add_argument("--connections", type=int, default=CONCURRENCY, help="concurrent clients (read)")
    parser.add_argument(
        "--generator", choices=["auto", "wrk", "python"], default="auto", help="read load (auto: wrk if installed)"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.benchmark in ("memory", "all"):
        bench_memory(args.runs)
    if args.benchmark in ("throughput", "all"):
        bench_throughput(args.copy_runs, args.size_mib)
    if args.benchmark in ("read", "all"):
        bench_read(args.runs, args.seconds, args.connections, args.generator)


if __name__ == "__main__":
    main()
