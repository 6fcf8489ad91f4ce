"""The service through a real PgBouncer in transaction pooling (ops/pgbouncer/): correct, with its timeouts.

In transaction pooling a client's consecutive transactions may run on different server connections, and
a server connection serves many clients: anything kept in the session (a SET, a prepared statement, an
advisory lock, startup `options`) would be lost or leak to another client. PgBouncer gets far fewer
server connections (3) than the instance has client connections (2 workers x 10), so that every flow
shares them. DB_PGBOUNCER=true sets the timeouts per transaction (SET LOCAL) instead of at connect.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest
import requests
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from photo_api.config import load_settings
from photo_api.db import Database
from tests.e2e.conftest import StartServer
from tests.harness.env import TEST_SECRET, production_env
from tests.harness.pgbouncer import PgBouncer
from tests.harness.users import Users, bearer
from tests.images import png

pytestmark = pytest.mark.slow

SHIPPED_INI = Path(__file__).resolve().parents[2] / "ops" / "pgbouncer" / "pgbouncer.ini"
HTTP_TIMEOUT_S = 30
SERVER_CONNECTIONS = 3
DUPLICATE_REGISTRATIONS = 12
STATEMENT_TIMEOUT_MS = 300


def test_core_flows_through_pgbouncer(pg_database_url: str, serve: StartServer, tmp_path: Path) -> None:
    with PgBouncer.start(pool_size=SERVER_CONNECTIONS) as bouncer:
        env = production_env(
            bouncer.url_for(pg_database_url),
            tmp_path / "storage",
            cheap_hashing=True,
            overrides={"DB_PGBOUNCER": "true", "DB_POOL_SIZE": "10", "DB_MAX_OVERFLOW": "0"},
        )
        server = serve(env, workers=2)
        users = Users.at(server.url(), timeout=HTTP_TIMEOUT_S)
        user = users.create()  # register + login
        auth = user["headers"]
        http = requests.Session()

        def call(method: str, path: str, status: int, **kwargs: object) -> requests.Response:
            r = http.request(method, server.url(path), timeout=HTTP_TIMEOUT_S, **kwargs)  # type: ignore[arg-type]
            assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
            return r

        photo_ids = []
        for i in range(3):
            files = {"file": (f"p{i}.png", png(16 + i, 16), "image/png")}
            photo_ids.append(call("POST", "/photos", 201, headers=auth, files=files).json()["id"])
        assert {p["id"] for p in call("GET", "/photos?limit=50", 200, headers=auth).json()} == set(photo_ids)
        album = call("POST", "/albums", 201, headers=auth, json={"name": "through pgbouncer"}).json()
        assert call(
            "POST", f"/albums/{album['id']}/photos", 200, headers=auth, json={"photo_ids": photo_ids}
        ).json() == {"added": 3}
        share = call("POST", f"/albums/{album['id']}/share", 201, headers=auth).json()
        token = share["share_url"].rsplit("/", 1)[1]
        assert call("GET", f"/share/{token}", 200).json()["photo_count"] == 3
        call("DELETE", f"/photos/{photo_ids[0]}", 204, headers=auth)
        assert call("GET", f"/share/{token}", 200).json()["photo_count"] == 2
        call("DELETE", f"/albums/{album['id']}/share/{share['id']}", 204, headers=auth)
        call("GET", f"/share/{token}", 410)

        # Concurrent registrations of one email: the unique constraint decides, exactly one 201.
        creds = users.credentials()

        def register(_: int) -> int:
            return requests.post(server.url("/auth/register"), json=creds, timeout=HTTP_TIMEOUT_S).status_code

        with ThreadPoolExecutor(DUPLICATE_REGISTRATIONS) as pool:
            statuses = list(pool.map(register, range(DUPLICATE_REGISTRATIONS)))
        assert sorted(statuses) == [201] + [409] * (DUPLICATE_REGISTRATIONS - 1), statuses
        token = users.login(creds)

        # A concurrent load from both workers over the 3 server connections: nothing fails.
        def read(i: int) -> int:
            path = "/auth/me" if i % 2 else "/photos?limit=50"
            return requests.get(
                server.url(path), headers=bearer(token) if i % 2 else auth, timeout=HTTP_TIMEOUT_S
            ).status_code

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(read, range(200))) == {200}
        assert requests.get(server.url("/health"), timeout=HTTP_TIMEOUT_S).status_code == 200
        assert "unsupported startup parameter" not in bouncer.logs()


def test_the_shipped_configuration_runs(pg_database_url: str) -> None:
    # ops/pgbouncer/pgbouncer.ini's own settings (transaction pooling, pool sizes, timeouts) accepted by
    # the real PgBouncer, and the service's statements work through it.
    with PgBouncer.start(base_ini=SHIPPED_INI) as bouncer:
        db = Database(
            load_settings(
                environ={}, database_url=bouncer.url_for(pg_database_url), jwt_secret_key=TEST_SECRET, db_pgbouncer=True
            )
        )
        try:
            with db.session() as session:
                assert session.execute(text("SELECT count(*) FROM users")).scalar() == 0
        finally:
            db.dispose()
        complaints = [
            line for line in bouncer.logs().splitlines() if any(w in line for w in ("ERROR", "WARNING", "FATAL"))
        ]
        assert not complaints  # no setting refused or ignored


def test_statement_timeout_applies_through_pgbouncer_and_does_not_leak(pg_database_url: str, tmp_path: Path) -> None:
    # One server connection: the next client necessarily gets the one our timed-out transaction used.
    with PgBouncer.start(pool_size=1) as bouncer:
        url = bouncer.url_for(pg_database_url)
        settings = load_settings(
            environ={},
            database_url=url,
            jwt_secret_key=TEST_SECRET,
            db_pgbouncer=True,
            db_statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            graceful_timeout=30,
        )
        db = Database(settings)
        try:
            with db.session() as session:
                assert session.execute(text("SHOW statement_timeout")).scalar() == f"{STATEMENT_TIMEOUT_MS}ms"
                with pytest.raises(OperationalError, match="statement timeout"):
                    session.execute(text("SELECT pg_sleep(2)"))
                session.rollback()
                # A new transaction: set again.
                assert session.execute(text("SHOW statement_timeout")).scalar() == f"{STATEMENT_TIMEOUT_MS}ms"
                session.commit()
        finally:
            db.dispose()
        parts = make_url(url)
        other = psycopg2.connect(host=parts.host, port=parts.port, user=parts.username, dbname=parts.database)
        try:
            with other.cursor() as cur:  # another client, on the same server connection
                cur.execute("SHOW statement_timeout")
                assert cur.fetchone()[0] == "0"
        finally:
            other.close()

        # Without DB_PGBOUNCER the timeouts travel as startup options, which PgBouncer refuses outright.
        direct = Database(load_settings(environ={}, database_url=url, jwt_secret_key=TEST_SECRET))
        try:
            with (
                pytest.raises(OperationalError, match="unsupported startup parameter: options"),
                direct.engine.connect(),
            ):
                pass
        finally:
            direct.dispose()
