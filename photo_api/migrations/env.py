"""Alembic environment: the URL comes from photo-api's settings, never from an ini file."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy import create_engine, pool, text

from photo_api.migrate import record_epoch
from photo_api.models import Base

config = context.config
target_metadata = Base.metadata
# Any constant shared by every `db upgrade` of this service; only its equality matters.
MIGRATION_LOCK_ID = 7283194501


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _record_epoch(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    # Runs inside each step's transaction, after Alembic has stamped the new revision.
    assert ctx.connection is not None
    record_epoch(ctx.connection, str(next(iter(heads))) if len(heads) == 1 else None)


def run_migrations_online() -> None:
    engine = create_engine(str(config.get_main_option("sqlalchemy.url")), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite can only ALTER tables by copying them; batch mode does that for us.
            render_as_batch=True,
            # PostgreSQL: every migration of the run in ONE transaction, which also holds the advisory lock
            # below until the end, so that two `db upgrade` started at once in a deploy run one after the
            # other (a lock released after the first migration would let the second start mid-way). And it
            # needs no session state, so it also works through a transaction-pooling PgBouncer.
            transaction_per_migration=False,
            on_version_apply=_record_epoch,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})"))
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
