"""The Redis of the tests: one database number per suite on the local server, emptied before use.

    url = fresh_redis(JOBS_DB)         # the job-queue tests (RQ)
    url = fresh_redis(THROTTLE_DB)     # the login-throttling tests (Flask-Limiter)
    url = redis_url(THROTTLE_DB, proxy_host, proxy_port)   # the same database through a fault proxy

Only the database asked for is ever flushed: other suites (and other people's runs) use the others.
Under pytest-xdist each worker process has databases of its own (gw0: 11 and 12, gw1: 13 and 14, ...).
"""

from __future__ import annotations

import os

from tests.harness.ci import unavailable

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379
# pytest-xdist names its worker processes gw0, gw1, ...: each gets its own pair of database numbers.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
JOBS_DB = 11 + 2 * _WORKER
THROTTLE_DB = 12 + 2 * _WORKER
CONNECT_TIMEOUT_S = 2.0


def redis_address() -> tuple[str, int]:
    """(host, port) of the Redis server the tests use (TEST_REDIS_HOST / TEST_REDIS_PORT, else local)."""
    return os.environ.get("TEST_REDIS_HOST", DEFAULT_HOST), int(os.environ.get("TEST_REDIS_PORT", DEFAULT_PORT))


def redis_url(db: int, host: str | None = None, port: int | None = None) -> str:
    """The URL of database `db` on (host, port), default the test server (e.g. a fault proxy's address)."""
    default_host, default_port = redis_address()
    return f"redis://{host or default_host}:{port or default_port}/{db}"


def fresh_redis(db: int) -> str:
    """Empty database `db` and return its URL; skip (fail in CI) when Redis does not answer."""
    from redis import Redis
    from redis.exceptions import RedisError

    url = redis_url(db)
    client = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S)
    try:
        client.flushdb()
    except RedisError as exc:
        unavailable(f"Redis unreachable at {url}: {exc}")
    finally:
        client.close()
    return url
