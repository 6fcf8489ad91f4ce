"""Migrations and readiness: the packaged history, `db upgrade` on an empty database, schema epochs, and an
instance that refuses traffic until its database is at a revision it can serve on.

Each test gets an empty database of its own (PostgreSQL and SQLite), because they move it between revisions.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from flask.testing import FlaskClient
from sqlalchemy import create_engine, inspect, text

from photo_api import create_app, migrate
from photo_api.api.context import collaborators_of
from photo_api.db import driver_url
from photo_api.models import Base
from tests.harness.databases import BACKENDS, pg_database, sqlite_url

FUTURE_REVISION = "9999_from_a_newer_release"


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no table at all) of this test alone."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "empty.db")
        return
    with pg_database("photo_api_migrations", migrated=False) as url:
        yield url


def execute(url: str, *statements: str) -> None:
    """Run statements on the database in one transaction."""
    engine = create_engine(driver_url(url))
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def scalar(url: str, query: str) -> Any:
    engine = create_engine(driver_url(url))
    with engine.connect() as conn:
        value = conn.execute(text(query)).scalar()
    engine.dispose()
    return value


def newer_release_migrated(url: str, *, epoch: int) -> None:
    """What `db upgrade` of a newer release leaves behind: a revision this version does not know, and its epoch."""
    execute(
        url,
        f"UPDATE alembic_version SET version_num = '{FUTURE_REVISION}'",
        f"UPDATE photo_api_schema SET epoch = {epoch}",
    )


# ---------------------------------------------------------------- the packaged history


def test_every_migration_declares_its_epoch_and_contracts_step_by_one() -> None:
    expected = migrate.expectation()
    scripts = migrate.ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    chain = list(reversed(list(scripts.walk_revisions())))  # oldest first
    assert [s.revision for s in chain][-1] == expected.head
    epochs = [expected.epochs[s.revision] for s in chain]
    assert epochs[0] == 1
    # An expand keeps the epoch, a contract increments it: never a jump, never backwards.
    assert all(later - earlier in (0, 1) for earlier, later in itertools.pairwise(epochs)), epochs


def test_an_empty_migration_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    config = migrate.alembic_config("sqlite://")
    config.set_main_option("script_location", str(tmp_path))
    (tmp_path / "env.py").write_text("")
    with pytest.raises(migrate.MigrationError, match="no migration found"):
        migrate.SchemaExpectation.from_scripts(migrate.ScriptDirectory.from_config(config))


MIGRATION = """
revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None
schema_epoch = {epoch}


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
"""


def history(tmp_path: Path, *epochs: int) -> migrate.SchemaExpectation:
    """A migration history whose revisions r1, r2, ... declare `epochs`, read like the packaged one."""
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text("")
    for n, epoch in enumerate(epochs, start=1):
        down = f"r{n - 1}" if n > 1 else None
        text_ = MIGRATION.format(revision=f"r{n}", down=down, epoch=epoch)
        (tmp_path / "versions" / f"r{n}.py").write_text(text_)
    config = migrate.alembic_config("sqlite://")
    config.set_main_option("script_location", str(tmp_path))
    return migrate.SchemaExpectation.from_scripts(migrate.ScriptDirectory.from_config(config))


def test_a_release_ending_in_contract_migrations_serves_before_they_run(tmp_path: Path) -> None:
    # r1 creates, r2 expands (a new column), r3 and r4 contract (drop the old one, then NOT NULL).
    expected = history(tmp_path, 1, 1, 2, 3)
    assert expected.chain == ("r1", "r2", "r3", "r4") and expected.head_epoch == 3
    assert [expected.is_contract(rev) for rev in expected.chain] == [False, False, True, True]
    # Missing only the contract steps: this release no longer needs what they drop, so it rolls out first.
    assert expected.judge("r2", None).status == migrate.CONTRACT_PENDING
    assert expected.judge("r3", None).status == migrate.CONTRACT_PENDING
    assert expected.judge("r2", None).serving
    # Missing the expand step too: the code would query a column that is not there yet.
    assert expected.judge("r1", None).status == migrate.BEHIND
    assert not expected.judge("r1", None).serving
    assert expected.judge("r4", None).status == migrate.UP_TO_DATE
    assert expected.judge("r9", 3).status == migrate.AHEAD
    assert expected.judge("r9", 4).status == migrate.INCOMPATIBLE
    assert expected.judge(None, None).status == migrate.NOT_MIGRATED


def test_a_migration_without_an_epoch_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text("")
    (tmp_path / "versions" / "r1.py").write_text(
        MIGRATION.format(revision="r1", down=None, epoch=1).replace("schema_epoch = 1\n", "")
    )
    config = migrate.alembic_config("sqlite://")
    config.set_main_option("script_location", str(tmp_path))
    with pytest.raises(migrate.MigrationError, match="r1 does not declare an integer `schema_epoch`"):
        migrate.SchemaExpectation.from_scripts(migrate.ScriptDirectory.from_config(config))


# ---------------------------------------------------------------- db upgrade


def test_upgrade_brings_an_empty_database_to_head_with_every_table(empty_url: str) -> None:
    assert migrate.state(empty_url).status == migrate.NOT_MIGRATED
    assert migrate.upgrade(empty_url) == migrate.head()
    tables = set(inspect(create_engine(driver_url(empty_url))).get_table_names())
    assert set(Base.metadata.tables) | {"alembic_version", migrate.SCHEMA_TABLE} == tables
    assert scalar(empty_url, "SELECT epoch FROM photo_api_schema") == migrate.expectation().head_epoch
    assert migrate.state(empty_url).status == migrate.UP_TO_DATE


def test_upgrade_step_by_step_records_each_epoch_and_downgrade_undoes_it(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0001")
    assert migrate.state(empty_url).status == migrate.BEHIND
    migrate.upgrade(empty_url, "0002")
    assert scalar(empty_url, "SELECT epoch FROM photo_api_schema") == migrate.expectation().epochs["0002"]
    migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == migrate.head()


def test_0004_migrates_a_database_that_already_holds_identical_photos(empty_url: str) -> None:
    """Duplicates uploaded before duplicate detection keep their rows; the oldest of each group is the one
    a new duplicate is answered with, and from then on the unique index holds."""
    migrate.upgrade(empty_url, "0003_media")
    photo = (
        "INSERT INTO photos (id, owner_id, filename, original_filename, content_type, file_size, checksum, status, "
        "created_at, updated_at) VALUES ({id}, {owner}, 'k{id}', 'a.jpg', 'image/jpeg', 3, {checksum}, '{status}', "
        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    )
    execute(
        empty_url,
        "INSERT INTO users (id, email, username, password_hash, is_active, created_at, updated_at) VALUES "
        "(1, 'a@x.test', 'a', 'h', true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), "
        "(2, 'b@x.test', 'b', 'h', true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        photo.format(id=1, owner=1, checksum="'same'", status="ready"),
        photo.format(id=2, owner=1, checksum="'same'", status="ready"),
        photo.format(id=3, owner=2, checksum="'same'", status="ready"),
        photo.format(id=4, owner=1, checksum="NULL", status="pending"),
        photo.format(id=5, owner=1, checksum="'other'", status="ready"),
    )
    migrate.upgrade(empty_url)
    engine = create_engine(driver_url(empty_url))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, content_checksum, stripped_key FROM photos ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [
            (1, "same", None),
            (2, None, None),
            (3, "same", None),
            (4, None, None),
            (5, "other", None),
        ]
        include = conn.execute(text("SELECT include_metadata FROM share_links")).all()
        assert include == []
    with pytest.raises(Exception, match=r"(?i)unique"):
        execute(empty_url, "UPDATE photos SET content_checksum = 'same' WHERE id = 2")
    engine.dispose()
    command.downgrade(migrate.alembic_config(empty_url), "0003_media")  # and 0004 can be taken back
    assert migrate.current(empty_url) == "0003_media"


def test_upgrade_refuses_a_database_migrated_by_a_newer_release(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    newer_release_migrated(empty_url, epoch=migrate.expectation().head_epoch)
    with pytest.raises(migrate.MigrationError, match=f"revision {FUTURE_REVISION}, which this version does not know"):
        migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == FUTURE_REVISION  # untouched


def test_state_tells_compatible_from_contracted_newer_schemas(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    head_epoch = migrate.expectation().head_epoch
    newer_release_migrated(empty_url, epoch=head_epoch)
    assert migrate.state(empty_url).status == migrate.AHEAD
    newer_release_migrated(empty_url, epoch=head_epoch + 1)
    assert migrate.state(empty_url).status == migrate.INCOMPATIBLE


# ---------------------------------------------------------------- readiness


@pytest.fixture
def instance(empty_url: str, make_settings: Callable[..., Any]) -> Iterator[Callable[[], FlaskClient]]:
    """An app on the empty database whose health probe is never cached (each probe reads the schema)."""
    apps = []

    def build() -> FlaskClient:
        app = create_app(make_settings(database_url=empty_url, health_check_cache_seconds=0))
        apps.append(app)
        return app.test_client()

    yield build
    for app in apps:
        collaborators_of(app).db.dispose()


def schema_check(client: FlaskClient) -> tuple[int, dict[str, Any]]:
    r = client.get("/health")
    body = r.get_json()
    assert r.get_json()["checks"]["database"]["status"] == "healthy", body  # the database itself is fine
    assert client.get("/health/liveness").status_code == 200  # liveness never depends on the schema
    readiness = client.get("/health/readiness")
    assert readiness.status_code == r.status_code
    return r.status_code, body["checks"]["schema"]


def test_not_ready_until_db_upgrade_has_run(instance: Callable[[], FlaskClient], empty_url: str) -> None:
    client = instance()
    head = migrate.head()
    status, schema = schema_check(client)
    assert (status, schema) == (503, {"status": "unhealthy", "expected": head})  # not migrated: no current

    migrate.upgrade(empty_url, "0001")  # a deploy that migrated to an older revision only
    status, schema = schema_check(client)
    assert (status, schema) == (503, {"status": "unhealthy", "current": "0001", "expected": head})
    r = client.get("/health")
    assert r.get_json()["status"] == "unhealthy"

    migrate.upgrade(empty_url)  # `photo-api db upgrade`: ready without a restart
    status, schema = schema_check(client)
    assert (status, schema) == (200, {"status": "healthy", "current": head, "expected": head})


def test_a_newer_release_s_expand_keeps_this_version_ready(instance: Callable[[], FlaskClient], empty_url: str) -> None:
    migrate.upgrade(empty_url)
    client = instance()
    head_epoch = migrate.expectation().head_epoch
    newer_release_migrated(empty_url, epoch=head_epoch)
    status, schema = schema_check(client)
    assert (status, schema) == (200, {"status": "healthy", "current": FUTURE_REVISION, "expected": migrate.head()})

    newer_release_migrated(empty_url, epoch=head_epoch + 1)  # a contract migration of the newer release
    status, schema = schema_check(client)
    assert (status, schema) == (503, {"status": "unhealthy", "current": FUTURE_REVISION, "expected": migrate.head()})


def test_the_schema_state_is_logged_once_then_on_each_change(
    instance: Callable[[], FlaskClient], empty_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = instance()
    with caplog.at_level(logging.INFO, logger="photo_api.health"):
        for _ in range(3):
            assert client.get("/health").status_code == 503
        migrate.upgrade(empty_url)
        for _ in range(3):
            assert client.get("/health").status_code == 200
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "photo_api.health"]
    assert len(lines) == 2, lines
    assert lines[0][0] == "WARNING" and "not migrated" in lines[0][1] and "db upgrade" in lines[0][1]
    assert lines[1][0] == "INFO" and "ready" in lines[1][1]


def test_an_instance_at_head_logs_nothing_about_the_schema(
    instance: Callable[[], FlaskClient], empty_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrate.upgrade(empty_url)
    client = instance()
    with caplog.at_level(logging.INFO, logger="photo_api.health"):
        assert client.get("/health").status_code == 200
    assert not [r for r in caplog.records if r.name == "photo_api.health"]
