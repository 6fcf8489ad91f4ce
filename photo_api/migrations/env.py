"""Alembic environment: the URL comes from photo-api's settings, never from an ini file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from photo_api.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(str(config.get_main_option("sqlalchemy.url")), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # render_as_batch: SQLite can only ALTER tables by copying them; batch mode does that for us.
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True, transaction_per_migration=True
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Several instances may run `db upgrade` at once in a deploy: one at a time.
                context.execute("SELECT pg_advisory_xact_lock(7283194501)")
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
