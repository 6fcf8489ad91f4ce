"""Instructions per request, counted by valgrind's callgrind: what a route costs in CPU, whatever the machine's speed.

    .venv/bin/python -m ops.bench.instructions_bench                # from the repository root, ~1 minute
    .venv/bin/python -m ops.bench.instructions_bench --python OTHER/.venv/bin/python   # another checkout's code

Timed benchmarks on a shared machine drift by a third within an hour; an instruction count does not (the
same count within 0.1 % from one run to the next, whatever else the machine does). Needs valgrind (Debian
package `valgrind`). It seeds a temporary PostgreSQL database the way tail_bench does (one user, 50 photos,
20 albums, through a real `photo-api serve`), then calls the app in a process of its own under callgrind:
the WSGI callable with production settings, for each route 20 calls to warm up, then `--calls` counted ones
between callgrind_control's instrumentation on and off.

Counted: this process's instructions (our code, Flask, SQLAlchemy, pydantic, psycopg2 and libpq). Not
counted: PostgreSQL's side, gunicorn's HTTP parsing and gevent (the app is called directly), the kernel.
`--python` runs that process with another virtualenv's interpreter, i.e. the code installed there (the
code before a change). ops/bench/RESULTS.md ("The latency tail") keeps recorded figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

WARM_UP_CALLS = 20
CHILD_ENV = "INSTRUCTIONS_BENCH_CHILD"  # JSON: {"headers": ..., "routes": ..., "calls": ...}


def count_in_this_process() -> None:
    """The process under callgrind: build the app, call each route, switch counting on and off around the calls."""
    from werkzeug.test import EnvironBuilder

    from photo_api.app import create_app
    from photo_api.config import load_settings

    job = json.loads(os.environ[CHILD_ENV])
    app = create_app(load_settings())

    def control(*args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, capture_output=True)

    for route in job["routes"]:
        path, _, query = route.partition("?")
        environ = EnvironBuilder(
            path=path, query_string=query, headers=job["headers"], base_url="http://127.0.0.1"
        ).get_environ()

        def call(environ: dict[str, object] = environ, route: str = route) -> None:
            statuses: list[str] = []

            def start_response(status: str, headers: object, exc_info: object = None) -> None:
                statuses.append(status)

            b"".join(app({**environ, "wsgi.input": io.BytesIO(b"")}, start_response))
            if not statuses[0].startswith("200"):
                raise RuntimeError(f"{route} answered {statuses[0]}")

        for _ in range(WARM_UP_CALLS):
            call()
        control("--zero")
        control("--instr=on")
        for _ in range(job["calls"]):
            call()
        control("--instr=off")
        control("--dump=" + route)


def instructions(out_dir: Path) -> dict[str, int]:
    """Route -> instructions counted, from callgrind's dump files (one per `--dump=<route>`)."""
    counted: dict[str, int] = {}
    for path in out_dir.iterdir():
        text = path.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: dump (.+)$", text, re.MULTILINE)  # callgrind_control --dump=<route>
        totals = re.search(r"^totals: (\d+)", text, re.MULTILINE)
        if trigger and totals:
            counted[trigger[1].strip()] = int(totals[1])
    return counted


def main() -> None:
    # The parent only: the counted process runs this file as a script, outside the repository's packages, so
    # that `photo_api` is whichever code its interpreter has installed (--python).
    from ops.bench.common import TIMEOUT_S, machine, running_server, server_env, temporary_database
    from ops.bench.tail_bench import ROUTES, seed
    from tests.harness.users import Users

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="counted calls per route")
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose installed code is counted")
    args = parser.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("valgrind is not installed (Debian package valgrind)")
    print(f"machine: {machine()}")
    print(
        f"== instructions per request: {args.calls} calls per route after {WARM_UP_CALLS} to warm up, the app "
        f"called in-process under callgrind (production settings); code of {args.python}"
    )
    with temporary_database() as database_url, TemporaryDirectory(prefix="photo-bench-") as tmp:
        work = Path(tmp)
        env = server_env(database_url, work)
        with running_server(env, work, "seed") as server:
            headers = Users.at(server.url(), timeout=TIMEOUT_S).create()["headers"]
            seed(server.url(""), headers)
        out_dir = work / "callgrind"
        out_dir.mkdir()
        job = {"headers": headers, "routes": list(ROUTES), "calls": args.calls}
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out_dir}/callgrind.out.%p",
                args.python,
                str(Path(__file__).resolve()),
            ],
            env={**os.environ, **env, CHILD_ENV: json.dumps(job)},
            cwd=work,
            check=True,
            capture_output=True,
            timeout=1800,
        )
        counted = instructions(out_dir)
    for route in ROUTES:
        if route not in counted:
            raise RuntimeError(f"no count for {route}: callgrind wrote {sorted(counted)}")
        print(f"  {route:20} {counted[route] / args.calls / 1e6:8.2f} million instructions per request")


if __name__ == "__main__":
    if os.environ.get(CHILD_ENV):
        count_in_this_process()
    else:
        main()
