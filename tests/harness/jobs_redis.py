"""The Redis of the job-queue tests: a database number of their own on the local server, emptied before use.

The login-throttling tests have a Redis helper of their own; this one is named for the jobs until the two
are merged. Only database JOBS_DB is ever flushed: other suites (and other people's runs) use the others.
"""

from __future__ import annotations

import os

from tests.harness.ci import unavailable

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379
JOBS_DB = 11
CONNECT_TIMEOUT_S = 2.0


def jobs_redis_address() -> tuple[str, int]:
    """(host, port) of the Redis server the job tests use (TEST_REDIS_HOST / TEST_REDIS_PORT, else local)."""
    return os.environ.get("TEST_REDIS_HOST", DEFAULT_HOST), int(os.environ.get("TEST_REDIS_PORT", DEFAULT_PORT))


def jobs_redis_url(host: str | None = None, port: int | None = None) -> str:
    """The URL of the jobs' database on (host, port), default the test server (e.g. a fault proxy's address)."""
    default_host, default_port = jobs_redis_address()
    return f"redis://{host or default_host}:{port or default_port}/{JOBS_DB}"


def fresh_jobs_redis() -> str:
    """Empty the jobs' database and return its URL; skip (fail in CI) when Redis does not answer."""
    from redis import Redis
    from redis.exceptions import RedisError

    url = jobs_redis_url()
    client = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S)
    try:
        client.flushdb()
    except RedisError as exc:
        unavailable(f"Redis unreachable at {url}: {exc}")
    finally:
        client.close()
    return url
