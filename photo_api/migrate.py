"""Alembic migrations run programmatically (`photo-api db upgrade` / `db current`, readiness, tests), and
what this version of the code expects of the database schema.

Every migration declares `schema_epoch`. An *expand* migration (a new table, a new nullable column, an
index: code of the previous release keeps working) keeps its parent's epoch; a *contract* migration (a
drop, a rename, NOT NULL on an existing column: the previous release breaks) increments it. `db upgrade`
records the epoch of the revision it leaves the database at in the one-row table `photo_api_schema`.

An instance serves when the database is at its head revision; or *ahead* of it (a revision this version
does not know, written by a newer release) at the same epoch, so that during a rolling deploy of an expand
release the instances not yet replaced stay in rotation after `db upgrade` has run; or *behind* it by
contract migrations only, which the code of the release that ships them no longer needs, so that the
release rolls out first and its contract `db upgrade` runs once no older instance is left. See
docs/deploy.md.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, exc, pool, text

from .db import driver_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA_TABLE = "photo_api_schema"
EPOCH_ATTRIBUTE = "schema_epoch"
# PostgreSQL's SQLSTATE for "undefined_table": the database answers but has not been migrated (that far).
UNDEFINED_TABLE = "42P01"

# What `SchemaState.status` can be; only the first two let an instance serve.
UP_TO_DATE = "up_to_date"
AHEAD = "ahead"  # a newer release's revision, same epoch: compatible
CONTRACT_PENDING = "contract_pending"  # behind by contract migrations only: this code no longer needs what they drop
BEHIND = "behind"  # an older revision of this version's history: `db upgrade` has not run yet
INCOMPATIBLE = "incompatible"  # a newer release's revision after a contract migration, or of another history
NOT_MIGRATED = "not_migrated"  # no migration has ever run
SERVING_STATES = frozenset({UP_TO_DATE, AHEAD, CONTRACT_PENDING})


class MigrationError(Exception):
    """Migrations cannot run or cannot be trusted; the message says why and what to do."""


def alembic_config(database_url: str) -> Config:
    """An Alembic Config for `database_url` using the migrations shipped inside the package."""
    cfg = Config(stdout=io.StringIO())
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # `%` would be read as ini interpolation by configparser.
    cfg.set_main_option("sqlalchemy.url", driver_url(database_url).replace("%", "%%"))
    return cfg


@cache
def expectation() -> SchemaExpectation:
    """What this version expects, read once from the packaged migrations."""
    return SchemaExpectation.from_scripts(ScriptDirectory.from_config(alembic_config("sqlite://")))


def head() -> str:
    """The newest revision shipped with this version; MigrationError when the package holds none."""
    return expectation().head


def current(database_url: str) -> str | None:
    """The revision the database is at (None when no migration has run)."""
    return _with_connection(database_url, lambda conn: MigrationContext.configure(conn).get_current_revision())


def state(database_url: str) -> SchemaState:
    """How the database's schema relates to this version (see `SchemaExpectation.judge`)."""
    return _with_connection(database_url, lambda conn: expectation().judge(*read_schema(conn)))


def upgrade(database_url: str, revision: str = "head") -> str | None:
    """Apply migrations up to `revision` and return the revision the database is then at.

    Refuses (MigrationError) when the package holds no migration, or when the database is at a revision
    this version does not know: applying "head" there would at best do nothing, at worst run old DDL
    against a newer schema.
    """
    expected = expectation()
    found = current(database_url)
    if found is not None and found not in expected.epochs:
        raise MigrationError(
            f"the database is at revision {found}, which this version does not know (its newest is "
            f"{expected.head}): a newer release has migrated it. Run `db upgrade` from that release."
        )
    command.upgrade(alembic_config(database_url), revision)
    return current(database_url)


def _with_connection(database_url: str, fn: Callable[[Connection], Any]) -> Any:
    engine = create_engine(driver_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return fn(conn)
    finally:
        engine.dispose()


def read_schema(conn: Connection) -> tuple[str | None, int | None]:
    """(revision, recorded epoch) of the database behind `conn`; None for what is not there.

    One query when the database is at a revision (the common case); the epoch table is read only when
    the revision is one this version does not know. Errors other than a missing table propagate.
    """
    try:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except exc.DBAPIError as error:
        if not _is_missing_table(error):
            raise
        conn.rollback()
        return None, None
    if revision is None or revision in expectation().epochs:
        return revision, None
    try:
        epoch = conn.execute(text(f"SELECT epoch FROM {SCHEMA_TABLE}")).scalar()
    except exc.DBAPIError as error:
        if not _is_missing_table(error):
            raise
        conn.rollback()
        return revision, None
    return revision, None if epoch is None else int(epoch)


def _is_missing_table(error: exc.DBAPIError) -> bool:
    if error.connection_invalidated:
        return False
    code = getattr(error.orig, "pgcode", None)
    return code == UNDEFINED_TABLE or (code is None and "no such table" in str(error.orig))


@dataclass(frozen=True)
class SchemaState:
    """Where the database's schema stands for this version of the code."""

    status: str  # one of UP_TO_DATE, AHEAD, BEHIND, INCOMPATIBLE, NOT_MIGRATED
    current: str | None
    expected: str

    @property
    def serving(self) -> bool:
        """True when this version can serve on this schema."""
        return self.status in SERVING_STATES

    def describe(self) -> str:
        """One sentence for logs and the command line."""
        return {
            UP_TO_DATE: f"database at {self.current}, this version's head",
            AHEAD: f"database at {self.current}, ahead of this version's head {self.expected} by expand migrations "
            "only: compatible",
            BEHIND: f"database at {self.current}, behind this version's head {self.expected}: run `photo-api db "
            "upgrade`",
            CONTRACT_PENDING: f"database at {self.current}, behind this version's head {self.expected} by contract "
            "migrations only: compatible; run `photo-api db upgrade` once no older release serves",
            INCOMPATIBLE: f"database at {self.current}, unknown to this version (head {self.expected}) and not "
            "compatible with it (a newer release contracted the schema)",
            NOT_MIGRATED: f"database not migrated (head {self.expected}): run `photo-api db upgrade`",
        }[self.status]


@dataclass(frozen=True)
class SchemaExpectation:
    """This version's migration history: its head, and the epoch of every revision it knows."""

    head: str
    epochs: dict[str, int]
    chain: tuple[str, ...]  # every revision, oldest first

    def is_contract(self, revision: str) -> bool:
        """True when `revision` is a contract migration: it raised the epoch of its parent."""
        position = self.chain.index(revision)
        return position > 0 and self.epochs[revision] > self.epochs[self.chain[position - 1]]

    @property
    def head_epoch(self) -> int:
        """The epoch this version's code is written for."""
        return self.epochs[self.head]

    @classmethod
    def from_scripts(cls, scripts: ScriptDirectory) -> SchemaExpectation:
        """Read the revisions and their declared epochs; MigrationError when there is nothing to read."""
        heads = scripts.get_heads()
        if not heads:
            raise MigrationError(
                f"no migration found in {MIGRATIONS_DIR / 'versions'}: the installed package is incomplete "
                "(reinstall it from a wheel built with its migrations)"
            )
        if len(heads) > 1:
            raise MigrationError(f"the migrations have several heads ({', '.join(sorted(heads))}): merge them")
        epochs: dict[str, int] = {}
        newest_first = list(scripts.walk_revisions())
        for script in newest_first:
            epoch = getattr(script.module, EPOCH_ATTRIBUTE, None)
            if not isinstance(epoch, int):
                raise MigrationError(f"migration {script.revision} does not declare an integer `{EPOCH_ATTRIBUTE}`")
            epochs[script.revision] = epoch
        return cls(head=heads[0], epochs=epochs, chain=tuple(s.revision for s in reversed(newest_first)))

    def judge(self, current: str | None, recorded_epoch: int | None) -> SchemaState:
        """Compare the database's (revision, recorded epoch) with this version."""
        if current is None:
            status = NOT_MIGRATED
        elif current == self.head:
            status = UP_TO_DATE
        elif current in self.epochs:
            pending = self.chain[self.chain.index(current) + 1 :]
            status = CONTRACT_PENDING if all(self.is_contract(rev) for rev in pending) else BEHIND
        elif recorded_epoch == self.head_epoch:
            status = AHEAD
        else:
            status = INCOMPATIBLE
        return SchemaState(status=status, current=current, expected=self.head)


def record_epoch(conn: Connection, revision: str | None) -> None:
    """Write the epoch of `revision` (the database's new revision) to the schema table, if it exists yet."""
    if revision is None or not _has_schema_table(conn):
        return
    epoch = expectation().epochs[revision]
    conn.execute(text(f"DELETE FROM {SCHEMA_TABLE}"))
    conn.execute(text(f"INSERT INTO {SCHEMA_TABLE} (id, epoch) VALUES (1, :epoch)"), {"epoch": epoch})


def _has_schema_table(conn: Connection) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(conn).has_table(SCHEMA_TABLE))
