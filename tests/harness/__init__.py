"""The test harness: what the tests (through conftest fixtures) and ops/bench use to run the real thing.

- `env`: the environment of a production instance (`production_env`, `lifecycle_env`, `swift_settings`);
- `server`: `photo-api serve` as a real process (`ServeProcess`, `Servers`, `free_port`, pid helpers), and
  `photo-api worker` (`JobWorker`);
- `redis_db`: a Redis database of a suite's own, emptied (`fresh_redis(JOBS_DB)`, `fresh_redis(THROTTLE_DB)`);
- `faultproxy`: a TCP proxy that injects faults, from latency to a refused port or a dead network path;
- `users`: register and log in, through Flask's test client or over HTTP (`Users`);
- `databases`: temporary PostgreSQL databases and SQLite files (`pg_database`, `PostgresServer`);
- `ci`: the rule for a missing prerequisite (skip on a developer machine, fail in CI).

No pytest fixtures here (they live in the conftest files) and no pytest import at module level, so that
the benchmarks can use all of it as plain code.
"""
