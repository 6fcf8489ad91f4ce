"""A rolling restart of a 2-instance fleet under steady load, behind a real HAProxy and the shipped nginx.

Two `photo-api serve` instances share one PostgreSQL database and one storage directory (standing in
for object storage). HAProxy (config derived from ops/haproxy/photo-api.cfg) probes /health like a
cloud load balancer; nginx (derived from ops/nginx/photo-api.conf) has no active checks and relies on
retrying idempotent requests. A bounded load generator sends GETs through both and uploads through
HAProxy for the whole run, while each instance in turn gets SIGTERM, exits and is started again.

Pass: not one failed client request, and every acknowledged upload can be downloaded afterwards.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.e2e.lb import Haproxy, Nginx, validate_shipped_configs
from tests.harness.env import lifecycle_env
from tests.harness.server import ServeProcess, Servers, free_port
from tests.harness.users import Users
from tests.images import png

pytestmark = pytest.mark.slow

DRAIN_S = 2.5
GRACEFUL_S = 5
CHECK_INTERVAL_S = 0.5
UNHEALTHY_THRESHOLD = 2
CHECK_TIMEOUT_S = 1.0
LIFECYCLE = lifecycle_env(
    DRAIN_S,
    GRACEFUL_S,
    check_interval_s=CHECK_INTERVAL_S,
    unhealthy_threshold=UNHEALTHY_THRESHOLD,
    check_timeout_s=CHECK_TIMEOUT_S,
)
INSTANCES = 2  # each restart leaves the other one alone serving: what a rolling restart must survive
WORKERS = 1  # the drain of several workers is shown in test_lifecycle_drain.py
LOAD_THREADS = 3  # per load balancer
LOAD_PAUSE_S = 0.02
UPLOAD_EVERY = 4  # every 4th request of an HAProxy thread is an upload
MAX_REQUESTS_PER_THREAD = 5000  # bound on the load, whatever happens to the test
HTTP_TIMEOUT_S = 30
STOP_BOUND_S = DRAIN_S + GRACEFUL_S + 3
UP_BOUND_S = 10.0


@dataclass
class Outcome:
    lb: str
    kind: str
    status: int | None
    error: str = ""


@dataclass
class Load:
    """Client threads sending a steady mix through one load balancer until told to stop."""

    lb: str
    base_url: str
    token: str
    uploads: bool
    outcomes: list[Outcome] = field(default_factory=list)
    acknowledged: list[tuple[int, bytes]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for n in range(LOAD_THREADS):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(HTTP_TIMEOUT_S)

    def _run(self, n: int) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        with requests.Session() as http:  # keep-alive to the load balancer, as a browser or app does
            for i in range(MAX_REQUESTS_PER_THREAD):
                if self.stop.is_set():
                    return
                if self.uploads and i % UPLOAD_EVERY == 0:
                    self._upload(http, auth, f"{n}-{i}")
                elif i % 2:
                    self._get(http, "me", "/auth/me", auth)
                else:
                    self._get(http, "liveness", "/health/liveness", {})
                time.sleep(LOAD_PAUSE_S)

    def _get(self, http: requests.Session, kind: str, path: str, headers: dict[str, str]) -> None:
        try:
            r = http.get(self.base_url + path, headers=headers, timeout=HTTP_TIMEOUT_S)
            self.outcomes.append(Outcome(self.lb, kind, r.status_code, "" if r.ok else r.text[:200]))
        except requests.RequestException as exc:
            self.outcomes.append(Outcome(self.lb, kind, None, repr(exc)[:200]))

    def _upload(self, http: requests.Session, auth: dict[str, str], tag: str) -> None:
        image = png(8, 8, text=tag.encode())
        try:
            r = http.post(
                self.base_url + "/photos",
                headers=auth,
                files={"file": (f"{tag}.png", image, "image/png")},
                data={"title": tag},
                timeout=HTTP_TIMEOUT_S,
            )
        except requests.RequestException as exc:
            self.outcomes.append(Outcome(self.lb, "upload", None, repr(exc)[:200]))
            return
        self.outcomes.append(Outcome(self.lb, "upload", r.status_code, "" if r.ok else r.text[:200]))
        if r.status_code == 201:
            self.acknowledged.append((r.json()["id"], image))


def test_shipped_load_balancer_configs_are_valid(tmp_path: Path) -> None:
    validate_shipped_configs(tmp_path)


def test_rolling_restart_loses_no_request(production_env: dict[str, str], tmp_path: Path) -> None:
    env = {**production_env, **LIFECYCLE}
    ports = [free_port() for _ in range(INSTANCES)]
    metrics_ports = [free_port() for _ in range(INSTANCES)]  # one host, several instances
    servers = Servers(tmp_path)
    haproxy = nginx = None
    loads: list[Load] = []

    def start_instance(slot: int, generation: int) -> ServeProcess:
        return servers.start(
            {**env, "METRICS_PORT": str(metrics_ports[slot])},
            name=f"app{slot + 1}-{generation}",
            workers=WORKERS,
            port=ports[slot],
        )

    try:
        instances = [start_instance(slot, 0) for slot in range(INSTANCES)]
        backends = [("127.0.0.1", port) for port in ports]
        haproxy = Haproxy(
            tmp_path,
            backends,
            check_interval=CHECK_INTERVAL_S,
            unhealthy_threshold=UNHEALTHY_THRESHOLD,
            check_timeout=CHECK_TIMEOUT_S,
        ).start()
        nginx = Nginx(tmp_path, backends).start()
        for name in haproxy.names:
            haproxy.wait_state(name, "UP", UP_BOUND_S)
        token = Users.at(haproxy.url(), timeout=HTTP_TIMEOUT_S).create()["token"]
        _check_edges(haproxy.url(), nginx.url())

        loads = [
            Load("haproxy", haproxy.url().rstrip("/"), token, uploads=True).start(),
            Load("nginx", nginx.url().rstrip("/"), token, uploads=False).start(),
        ]
        time.sleep(1.0)
        timings = []
        for slot in range(INSTANCES):
            name = haproxy.names[slot]
            t0 = time.monotonic()
            instances[slot].signal(signal.SIGTERM)
            marked_down = haproxy.wait_state(name, "DOWN", DRAIN_S)  # before the listeners close
            code = instances[slot].wait(STOP_BOUND_S)
            stopped = time.monotonic() - t0
            assert code == 0, instances[slot].log_tail()
            instances[slot] = start_instance(slot, 1)
            haproxy.wait_state(name, "UP", UP_BOUND_S)
            timings.append((name, round(marked_down, 2), round(stopped, 2), round(time.monotonic() - t0, 2)))
        time.sleep(1.0)
    finally:
        for load in loads:
            load.finish()

    try:
        outcomes = [o for load in loads for o in load.outcomes]
        counts = Counter((o.lb, o.kind, o.status) for o in outcomes)
        print(f"\nrolling restart (name, marked DOWN after, exited after, UP again after) s: {timings}")
        print(f"requests by (lb, kind, status): {dict(sorted(counts.items(), key=str))}")
        failed = [o for o in outcomes if o.status is None or not 200 <= o.status < 300]
        assert not failed, failed[:10]
        assert {(o.lb, o.kind) for o in outcomes} == {
            ("haproxy", "me"),
            ("haproxy", "liveness"),
            ("haproxy", "upload"),
            ("nginx", "me"),
            ("nginx", "liveness"),
        }

        # Every acknowledged upload is there, byte for byte, whichever instance serves the download.
        acknowledged = [item for load in loads for item in load.acknowledged]
        assert acknowledged
        auth = {"Authorization": f"Bearer {token}"}
        with requests.Session() as http:
            for photo_id, image in acknowledged:
                r = http.get(haproxy.url(f"/photos/{photo_id}/image"), headers=auth, timeout=HTTP_TIMEOUT_S)
                assert (r.status_code, r.content) == (200, image), photo_id
        print(f"{len(acknowledged)} acknowledged uploads downloaded intact")
    finally:
        for proc in (haproxy, nginx):
            if proc is not None:
                proc.close()
        servers.close()


def _check_edges(haproxy_url: str, nginx_url: str) -> None:
    """Request IDs pass through (or are generated by the LB), and metrics are not reachable."""
    for base in (haproxy_url, nginx_url):
        r = requests.get(base + "health/liveness", headers={"X-Request-ID": "rolling-check-1"}, timeout=HTTP_TIMEOUT_S)
        assert r.headers["X-Request-ID"] == "rolling-check-1"
        r = requests.get(base + "health/liveness", timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 200 and r.headers["X-Request-ID"]
        assert requests.get(base + "metrics", timeout=HTTP_TIMEOUT_S).status_code == 404
