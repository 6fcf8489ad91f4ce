"""A real PgBouncer (Debian package `pgbouncer`) on a free loopback port, in front of the test PostgreSQL.

    with PgBouncer.start(pool_size=4) as bouncer:
        url = bouncer.url_for(database_url)   # the same database, through PgBouncer
        bouncer.logs()                        # its log, for a failure message

Transaction pooling, `auth_type = trust` with the database URL's user in its auth file, and every
database name routed to the upstream server's database of the same name. PgBouncer refuses to run as
root: as root it is started with `-u postgres` and its directory (a new one under the system's temporary
directory, which that user can reach, unlike pytest's tmp_path) is handed to that user. Missing
binary or no PostgreSQL: `unavailable()` (skip locally, fail in CI).
"""

from __future__ import annotations

import configparser
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.harness.ci import unavailable
from tests.harness.databases import admin_url_from_env
from tests.harness.server import free_port

BINARY = "/usr/sbin/pgbouncer"
RUN_AS_WHEN_ROOT = "postgres"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class PgBouncer:
    """One running PgBouncer process; `close()` (or leaving the `with`) stops it."""

    def __init__(self, directory: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.directory = directory
        self.port = port
        self.process = process

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        *,
        pool_size: int = 10,
        max_client_conn: int = 200,
        users: tuple[str, ...] = (),
        base_ini: Path | None = None,
    ) -> Iterator[PgBouncer]:
        """Start PgBouncer in front of TEST_POSTGRES_URL's server; stop it and remove its directory afterwards.

        `pool_size` is its default_pool_size: server connections per (database, user) pair. `users` are
        logins besides the admin URL's user that clients may use. `base_ini` (ops/pgbouncer/pgbouncer.ini)
        gives every other setting; the address, authentication, files and databases are always ours.
        """
        binary = shutil.which("pgbouncer") or (BINARY if Path(BINARY).exists() else None)
        if binary is None:
            unavailable("pgbouncer is not installed (Debian package `pgbouncer`)")
        upstream = make_url(admin_url_from_env())
        port = free_port()
        directory = Path(tempfile.mkdtemp(prefix="photo-api-pgbouncer-"))
        logins = {upstream.username or "postgres", *users}
        (directory / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in sorted(logins)))
        ini = configparser.ConfigParser(interpolation=None)
        ini.optionxform = str  # type: ignore[assignment,method-assign]  # keys as written
        if base_ini is not None:
            ini.read_string(base_ini.read_text())
        ini["databases"] = {"*": f"host={upstream.host or '127.0.0.1'} port={upstream.port or 5432}"}
        if not ini.has_section("pgbouncer"):
            ini.add_section("pgbouncer")
        ini["pgbouncer"].update(
            {
                "listen_addr": "127.0.0.1",
                "listen_port": str(port),
                "unix_socket_dir": "",
                "auth_type": "trust",
                "auth_file": str(directory / "userlist.txt"),
                "logfile": str(directory / "pgbouncer.log"),
                "pidfile": str(directory / "pgbouncer.pid"),
            }
        )
        if base_ini is None:
            ini["pgbouncer"].update(
                {
                    "pool_mode": "transaction",
                    "default_pool_size": str(pool_size),
                    "max_client_conn": str(max_client_conn),
                }
            )
        with open(directory / "pgbouncer.ini", "w") as f:
            ini.write(f)
        args = [binary, str(directory / "pgbouncer.ini")]
        if os.geteuid() == 0:
            owner = pwd.getpwnam(RUN_AS_WHEN_ROOT)
            for path in (directory, *directory.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            args[1:1] = ["-u", RUN_AS_WHEN_ROOT]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        bouncer = cls(directory, port, process)
        try:
            bouncer._wait_listening()
            yield bouncer
        finally:
            bouncer.close()

    def url_for(self, database_url: str) -> str:
        """`database_url` (a database on the upstream server) reached through this PgBouncer."""
        return make_url(database_url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def logs(self) -> str:
        """PgBouncer's log so far (and what it wrote to stderr)."""
        paths = (self.directory / "stderr.log", self.directory / "pgbouncer.log")
        return "".join(path.read_text(errors="replace") for path in paths if path.exists())

    def close(self) -> None:
        """Stop PgBouncer (SIGINT: its safe shutdown; killed if it lingers). Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.process.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not listen within {START_TIMEOUT_S:g}s:\n{self.logs()}")
            time.sleep(0.05)
