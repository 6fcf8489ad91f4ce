"""Renditions benchmarks: the cost of one renditions job, the encoding of renditions, and the grid a client loads.

    .venv/bin/python -m ops.bench.renditions_bench jobs       # ~2 minutes
    .venv/bin/python -m ops.bench.renditions_bench formats    # ~30 seconds
    .venv/bin/python -m ops.bench.renditions_bench grid       # ~2 minutes (a real photo-api serve)
    .venv/bin/python -m ops.bench.renditions_bench strip      # seconds
    .venv/bin/python -m ops.bench.renditions_bench all

From the repository root; run it on a quiet machine (it prints the load average). ops/bench/RESULTS.md
("Renditions") keeps the recorded figures.

- jobs: a 12-megapixel phone-like JPEG (4000 x 3000, quality 90, EXIF) turned into a 1440-pixel preview
  and a 256-pixel thumbnail, WebP. Each method runs in a fresh child process, one core (libvips
  with VIPS_CONCURRENCY=1), JOB_RUNS times after one warm-up; reported: CPU seconds per job, hence jobs
  per second per core, and the child's peak RSS above the same child that only loaded the bytes (what
  one job adds to a worker process). Methods: `pillow` (photo_api.media.render, as the worker runs it:
  JPEG draft decoding, both sizes, ThumbHash, metadata), `pillow-no-draft` (the same renditions from a
  full-size decode), `pyvips` (thumbnail_buffer: libvips' shrink-on-load), and `vipsthumbnail` (the
  libvips command-line tool, Debian's libvips-tools, one run per size: the limit of what libvips does).
- formats: WebP and JPEG at several qualities for the preview and the thumbnail of that photo: bytes,
  encode time, and PSNR against the scaled picture before encoding (how close the encoded one stays).
- grid: what a client transfers to show a grid of 50 photos: GET /photos?limit=50 plus 50 originals,
  against the same list plus 50 thumbnails, through a real `photo-api serve` (production settings, jobs
  in-process, 2 workers). Each upload carries its own JPEG comment, so none is a duplicate of another.
- strip: the public copy of that photo (its metadata removed, orientation kept): CPU per photo.

pyvips and libvips are benchmark-only dependencies: `apt-get install libvips-tools` (libvips 8.14, with
vipsthumbnail) and `.venv/bin/pip install pyvips==3.2.0`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import requests
from PIL import Image, ImageChops, ImageOps, ImageStat

from ops.bench.common import machine, reset_peak_rss, running_server, server_env, status_kib, temporary_database
from photo_api.media import JPEG, WEBP, Encoding, render
from photo_api.media.strip import strip
from tests.harness.users import Users
from tests.images import exif_block, photo_pixels

PHOTO_SIZE = (4000, 3000)  # 12 megapixels, a phone's default
PHOTO_QUALITY = 90
PREVIEW, THUMB = 1440, 256
JOB_RUNS = 8
STRIP_RUNS = 50
GRID_PHOTOS = 50
DISTINCT_PHOTOS = 5  # uploaded GRID_PHOTOS / DISTINCT_PHOTOS times each
NOISE_SIGMA = 24  # sensor-like grain, so that encoders face detail as in a real photo
METHODS = ("pillow", "pillow-no-draft", "pyvips", "vipsthumbnail")
HTTP_TIMEOUT_S = 60


def phone_jpeg(seed: int = 0) -> bytes:
    """A 12-megapixel JPEG with a photo's texture (gradients, edges, grain) and a phone's EXIF block."""
    width, height = PHOTO_SIZE
    base = photo_pixels(width, height)
    if seed:
        base = base.rotate(seed * 7, expand=False)
    grain = Image.effect_noise((width, height), NOISE_SIGMA).convert("RGB")
    picture = Image.blend(base, grain, 0.25)
    out = io.BytesIO()
    exif = exif_block(orientation=1, taken="2026:05:01 14:03:22", offset="+09:00", gps=(37.5, 127.0), make="Bench")
    picture.save(out, "JPEG", quality=PHOTO_QUALITY, exif=exif.tobytes())
    return out.getvalue()


def numbered(jpeg: bytes, n: int) -> bytes:
    """The JPEG with a comment segment naming `n` after its SOI: other bytes, the same picture, so that
    uploading it again is a new photo rather than a duplicate of the owner's first one."""
    text = f"grid photo {n}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def bench_strip() -> None:
    """The public copy of a photo (photo_api/media/strip.py): the metadata filter over the 12-megapixel JPEG."""
    data = phone_jpeg()
    times = []
    for _ in range(STRIP_RUNS + 1):
        started = time.process_time()
        public = strip(data, "image/jpeg", orientation=6)
        times.append(time.process_time() - started)
    times = sorted(times[1:])  # the first run warms up
    median, worst = times[len(times) // 2], times[-1]
    print(f"photo: {len(data):,} bytes; public copy: {len(public):,} bytes ({len(data) - len(public):,} removed)")
    print(f"CPU ms per strip over {STRIP_RUNS} runs: median {median * 1000:.2f}, max {worst * 1000:.2f}")
    print(f"throughput: {len(data) / median / 1e6:.0f} MB/s of one core; {1 / median:.0f} photos/s per core")


# -- one method's jobs, in a child process --------------------------------------------------------------


def _pillow(data: bytes) -> None:
    render(data, max_pixels=100_000_000, encoding=WEBP)


def _pillow_no_draft(data: bytes) -> None:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert image is not None
    for side in (PREVIEW, THUMB):
        image = image.copy()
        image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
        image.save(io.BytesIO(), "WEBP", quality=WEBP.quality, method=WEBP.method)


def _pyvips(data: bytes) -> None:
    import pyvips

    # Shrink-on-load, EXIF orientation applied; kept in memory (1440 pixels) because two encodes read it,
    # and libvips' JPEG loader streams: a second pass over the source would be an out-of-order read.
    preview = pyvips.Image.thumbnail_buffer(data, PREVIEW).copy_memory()
    preview.webpsave_buffer(Q=WEBP.quality, strip=True)
    preview.thumbnail_image(THUMB).webpsave_buffer(Q=WEBP.quality, strip=True)


def _vipsthumbnail(path: Path) -> None:
    out = path.parent
    for side in (PREVIEW, THUMB):
        subprocess.run(
            ["vipsthumbnail", str(path), "-s", str(side), "-o", f"{out}/%s-{side}.webp[Q={WEBP.quality},strip]"],
            check=True,
        )


def child(method: str, path: Path, runs: int) -> dict[str, float]:
    """Run `runs` jobs of `method` on the file at `path` (after one warm-up); CPU, wall, and the peak RSS the
    jobs added to the process (the kernel's VmHWM, reset after the warm-up) or, for the command-line tool,
    the peak RSS of its own processes."""
    data = path.read_bytes()
    if method.startswith("pyvips"):
        import pyvips

        pyvips.cache_set_max(0)  # no operation cache: each job decodes afresh, as for a new photo
    jobs: dict[str, Callable[[], None]] = {
        "pillow": lambda: _pillow(data),
        "pillow-no-draft": lambda: _pillow_no_draft(data),
        "pyvips": lambda: _pyvips(data),
        "vipsthumbnail": lambda: _vipsthumbnail(path),
    }
    job = jobs[method]
    job()  # warm-up: imports, codec set-up
    pid = os.getpid()
    rss_before = status_kib(pid, "VmRSS") or 0
    if not reset_peak_rss(pid):
        raise RuntimeError("cannot reset VmHWM (/proc/self/clear_refs): run as root or the owner")
    before, wall = os.times(), time.perf_counter()
    for _ in range(runs):
        job()
    after, wall = os.times(), time.perf_counter() - wall
    cpu = after.user - before.user + after.system - before.system
    cpu += after.children_user - before.children_user + after.children_system - before.children_system
    if method == "vipsthumbnail":
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    else:
        peak = (status_kib(pid, "VmHWM") or 0) - rss_before
    return {"cpu_s": cpu / runs, "wall_s": wall / runs, "peak_kib": peak}


def run_child(method: str, path: Path, runs: int) -> dict[str, float]:
    env = {**os.environ, "VIPS_CONCURRENCY": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "ops.bench.renditions_bench", "child", method, str(path), str(runs)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_jobs() -> None:
    with TemporaryDirectory(prefix="renditions-bench-") as tmp:
        path = Path(tmp) / "photo.jpg"
        path.write_bytes(phone_jpeg())
        print(f"photo: {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG q{PHOTO_QUALITY}, {path.stat().st_size / 1e6:.2f} MB")
        print("| method | CPU s per job | jobs/s per core | wall s per job | peak RSS per job |")
        print("|---|---|---|---|---|")
        for method in METHODS:
            found = run_child(method, path, JOB_RUNS)
            note = " (the tool's whole process)" if method == "vipsthumbnail" else " (added to the process)"
            print(
                f"| {method} | {found['cpu_s']:.3f} | {1 / found['cpu_s']:.1f} | {found['wall_s']:.3f} | "
                f"{found['peak_kib'] / 1024:.0f} MiB{note} |"
            )


# -- formats --------------------------------------------------------------------------------------------


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio of `b` against `a` (RGB), in dB."""
    rms = ImageStat.Stat(ImageChops.difference(a, b)).rms
    mse = sum(channel**2 for channel in rms) / len(rms)
    return math.inf if mse == 0 else 20 * math.log10(255 / math.sqrt(mse))


def bench_formats() -> None:
    source = Image.open(io.BytesIO(phone_jpeg()))
    source.draft("RGB", (PREVIEW, PREVIEW))
    source = source.convert("RGB")
    candidates = [(WEBP, q) for q in (70, 75, 80, 85)] + [(JPEG, q) for q in (75, 80, 85, 90)]
    print("| size | format | quality | bytes | encode ms | PSNR dB |")
    print("|---|---|---|---|---|---|")
    for side in (PREVIEW, THUMB):
        scaled = source.copy()
        scaled.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
        for encoding, quality in candidates:
            data, ms = encode(scaled, encoding, quality)
            decoded = Image.open(io.BytesIO(data)).convert("RGB")
            name = encoding.pillow_format.lower()
            print(f"| {side} | {name} | {quality} | {len(data):,} | {ms:.1f} | {psnr(scaled, decoded):.2f} |")


def encode(picture: Image.Image, encoding: Encoding, quality: int, repeat: int = 5) -> tuple[bytes, float]:
    options: dict[str, Any] = {"quality": quality}
    options.update({"method": encoding.method} if encoding.pillow_format == "WEBP" else {"optimize": True})
    times = []
    for _ in range(repeat):
        out = io.BytesIO()
        started = time.perf_counter()
        picture.save(out, encoding.pillow_format, **options)
        times.append(time.perf_counter() - started)
    return out.getvalue(), sorted(times)[len(times) // 2] * 1000


# -- the grid -------------------------------------------------------------------------------------------


def bench_grid() -> None:
    photos = [phone_jpeg(seed) for seed in range(DISTINCT_PHOTOS)]
    with TemporaryDirectory(prefix="renditions-grid-") as tmp, temporary_database() as url:
        work = Path(tmp)
        with running_server(server_env(url, work), work, "serve", workers=2) as server, requests.Session() as http:
            # No keep-alive: a response object still referenced keeps its socket open after the session
            # closes, and an idle keep-alive connection holds a gevent worker in its graceful stop.
            http.headers["Connection"] = "close"
            headers = Users.at(server.url(), session=http, timeout=HTTP_TIMEOUT_S).create()["headers"]
            for n in range(GRID_PHOTOS):
                r = http.post(
                    server.url("/photos"),
                    headers=headers,
                    files={"file": (f"{n}.jpg", numbered(photos[n % DISTINCT_PHOTOS], n))},
                    timeout=HTTP_TIMEOUT_S,
                )
                r.raise_for_status()
            deadline = time.monotonic() + 600
            while True:
                listing = http.get(server.url(f"/photos?limit={GRID_PHOTOS}"), headers=headers, timeout=60)
                if all(p["processing_status"] == "ready" for p in listing.json()):
                    break
                assert time.monotonic() < deadline, "photos not processed"
                time.sleep(1)
            items = listing.json()
            list_bytes = len(listing.content)

            def fetch(path: str) -> int:
                r = http.get(server.url(path), headers=headers, timeout=HTTP_TIMEOUT_S)
                r.raise_for_status()
                return len(r.content)

            originals = sum(fetch(p["url"]) for p in items)
            thumbs = sum(fetch(p["thumbnail_url"]) for p in items)
            previews = sum(fetch(p["preview_url"]) for p in items)
            thumbhashes = sum(len(p["thumbhash"]) for p in items)
    print(f"GET /photos?limit={GRID_PHOTOS}: {list_bytes / 1000:.1f} kB (ThumbHashes in it: {thumbhashes} B)")
    print("| to show 50 photos | bytes | vs originals |")
    print("|---|---|---|")
    for name, total in (("originals", originals), ("previews", previews), ("thumbnails", thumbs)):
        total += list_bytes
        print(f"| list + 50 {name} | {total / 1e6:.2f} MB | {total / (originals + list_bytes):.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["jobs", "formats", "grid", "strip", "all", "child"])
    parser.add_argument("args", nargs="*")
    args = parser.parse_args()
    if args.what == "child":
        method, path, runs = args.args
        print(json.dumps(child(method, Path(path), int(runs))))
        return
    print(machine())
    benches = (("jobs", bench_jobs), ("formats", bench_formats), ("grid", bench_grid), ("strip", bench_strip))
    for name, bench in benches:
        if args.what in (name, "all"):
            print(f"\n== {name}")
            bench()


if __name__ == "__main__":
    main()
