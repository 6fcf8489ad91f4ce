"""A full database is a capacity problem, not an outage: requests wait for a pooled connection.

The instance connects as a role with `CONNECTION LIMIT 3` (PostgreSQL refuses its fourth session with
SQLSTATE 53300, as a full server refuses any beyond max_connections) and has a pool of 10: under a
concurrent load its pool can never grow past 3, and every overflow connect is refused. Every request
must still answer 200 (it waits for one of the 3 pooled connections), /health stays 200, and the
refusals are counted. The same instance must then still treat an unreachable database (the port
closed, through the harness's FaultProxy) as an outage: the connect gate trips and requests get a fast
503 with Retry-After.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy.engine import make_url

from tests.e2e.conftest import StartServer
from tests.harness.databases import limited_role
from tests.harness.env import production_env
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.server import free_port
from tests.harness.users import Users

pytestmark = pytest.mark.slow

CONNECTION_LIMIT = 3
POOL_SIZE = 10
CLIENTS = 16
REQUESTS_PER_CLIENT = 25
HTTP_TIMEOUT_S = 30
HEALTH_CHECK_TIMEOUT_S = 0.5
DB_CONNECT_TIMEOUT_S = 1.0
# As in test_db_outage: the pooled connection's ping, then one connect attempt at most.
API_BOUND_S = HEALTH_CHECK_TIMEOUT_S + DB_CONNECT_TIMEOUT_S + 0.3
REFUSALS = re.compile(r'^photo_api_db_connect_refusals_total\{reason="too_many_connections"\} (\S+)$', re.M)


def _refusals(metrics_url: str) -> float:
    found = REFUSALS.search(requests.get(metrics_url, timeout=HTTP_TIMEOUT_S).text)
    assert found, "photo_api_db_connect_refusals_total{reason=too_many_connections} not exported"
    return float(found.group(1))


def test_full_database_makes_requests_wait_not_fail(pg_database_url: str, serve: StartServer, tmp_path: Path) -> None:
    with limited_role(pg_database_url, CONNECTION_LIMIT) as role_url:
        url = make_url(role_url)
        with FaultProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
            metrics_port = free_port()
            env = production_env(
                url.set(port=proxy.port).render_as_string(hide_password=False),
                tmp_path / "storage",
                cheap_hashing=True,
                metrics_port=metrics_port,
                metrics_dir=tmp_path / "metrics",
                overrides={
                    "DB_POOL_SIZE": str(POOL_SIZE),
                    "DB_MAX_OVERFLOW": "5",
                    "DB_POOL_TIMEOUT": "10",
                    "HEALTH_CHECK_TIMEOUT": str(HEALTH_CHECK_TIMEOUT_S),
                    "HEALTH_CHECK_CACHE_SECONDS": "0",
                    "LB_HEALTH_CHECK_TIMEOUT": "1",
                    "DB_CONNECT_TIMEOUT": str(DB_CONNECT_TIMEOUT_S),
                },
            )
            server = serve(env, workers=1)
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            user = Users.at(server.url(), timeout=HTTP_TIMEOUT_S).create()
            headers = user["headers"]

            def client(n: int) -> list[int]:
                statuses = []
                with requests.Session() as http:
                    for i in range(REQUESTS_PER_CLIENT):
                        path = "/auth/me" if (n + i) % 2 else "/photos?limit=50"
                        statuses.append(http.get(server.url(path), headers=headers, timeout=HTTP_TIMEOUT_S).status_code)
                        if i % 5 == 0:
                            statuses.append(http.get(server.url("/health"), timeout=HTTP_TIMEOUT_S).status_code)
                return statuses

            started = time.monotonic()
            with ThreadPoolExecutor(CLIENTS) as pool:
                statuses = [s for batch in pool.map(client, range(CLIENTS)) for s in batch]
            elapsed = time.monotonic() - started
            refused = _refusals(metrics_url)
            print(
                f"\n{len(statuses)} requests in {elapsed:.1f} s, statuses {sorted(set(statuses))}, refusals {refused:g}"
            )
            assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
            # The load did need more than the role may hold: the server refused, and nobody saw it.
            assert refused >= 1

            # An unreachable database is still an outage: the gate trips and the 503s are fast.
            proxy.set(Fault.refuse())
            answers = []
            for _ in range(10):
                t0 = time.perf_counter()
                r = requests.get(server.url("/auth/me"), headers=headers, timeout=HTTP_TIMEOUT_S)
                answers.append((r.status_code, time.perf_counter() - t0, r.headers.get("Retry-After")))
            print(f"unreachable: {[(s, round(t * 1000)) for s, t, _ in answers]} ms")
            assert {s for s, _, _ in answers} == {503}
            assert all(retry_after and int(retry_after) > 0 for _, _, retry_after in answers)
            assert max(t for _, t, _ in answers) < API_BOUND_S
            # After the first, the gate answers without any I/O.
            assert max(t for _, t, _ in answers[1:]) < 0.2
            assert requests.get(server.url("/health"), timeout=HTTP_TIMEOUT_S).status_code == 503
            proxy.pass_through()
