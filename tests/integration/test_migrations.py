"""Schema migrations (Alembic, run in-process by `Database.migrate`) and database outages."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Integer, MetaData, Table, inspect, text

from inferd.core.errors import Unavailable
from inferd.core.records import Role, Visibility
from inferd.core.traffic import Revision
from inferd.registry import db as db_module
from inferd.registry.db import Database, alembic_config, sqlite_url
from inferd.registry.store import RegistryStore
from inferd.registry.tables import metadata

TABLES = {
    "users",
    "api_keys",
    "models",
    "model_versions",
    "deployments",
    "audit_log",
    "server_secrets",
    "jobs",
    "webhook_deliveries",
    "webhook_secrets",
    "files",
    "batch_jobs",
}
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
DOWN_URL = "postgresql+asyncpg://postgres@127.0.0.1:1/x"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "registry.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.close()


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _schema_diff(conn: Connection, target: MetaData) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, target))


async def test_head_is_the_newest_revision() -> None:
    # Update when a revision is added; the upgrade-path tests below then cover it.
    assert HEAD == "0007"


async def test_upgrade_0001_to_0002_keeps_versions_and_adds_their_runtime(db: Database) -> None:
    """A registry written by the first schema upgrades in place: rows survive, the new column
    reads as empty, and new writes use it."""
    await db.migrate(revision="0001")
    store = RegistryStore(db)
    owner = await store.create_user("alice", "h", Role.MEMBER)
    model = await store.create_model(name="m", owner_id=owner.id, visibility=Visibility.PUBLIC)
    async with db.engine.begin() as conn:  # a version row as the 0001 code wrote it
        await conn.execute(text(
            "INSERT INTO model_versions (id, model_id, version, status, reason, artifact_key, "
            "artifact_format, sha256, size_bytes, source, inputs, outputs, created_at) VALUES "
            "('v1', :m, 1, 'ready', '', 'k', 'onnx', 'ab', 10, 'upload:x', '[]', '[]', "
            ":at)"), {"m": model.id, "at": datetime(2026, 1, 1, tzinfo=UTC)})  # fmt: skip
    await db.migrate(revision="0002")
    assert await db.current_revision() == "0002"
    (old,) = await store.list_versions(model.id)
    assert old.version == 1 and old.artifact_format == "onnx" and old.runtime == ""
    updated = await store.update_version(old.id, runtime="onnx")
    assert updated.runtime == "onnx"


async def test_upgrade_0002_to_0003_keeps_deployments_with_no_traffic_split(
    db: Database,
) -> None:
    """A deployment written before revisions existed reads back as its one version taking all
    the traffic; a split written afterwards is stored and read back."""
    await db.migrate(revision="0002")
    store = RegistryStore(db)
    owner = await store.create_user("alice", "h", Role.MEMBER)
    model = await store.create_model(name="m", owner_id=owner.id, visibility=Visibility.PUBLIC)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    async with db.engine.begin() as conn:  # rows as the 0002 code wrote them
        for v in (1, 2):
            await conn.execute(text(
                "INSERT INTO model_versions (id, model_id, version, status, reason, "
                "artifact_key, artifact_format, sha256, size_bytes, source, inputs, outputs, "
                "created_at, runtime) VALUES (:id, :m, :v, 'ready', '', 'k', 'onnx', 'ab', 10, "
                "'upload:x', '[]', '[]', :at, 'onnx')"),
                {"id": f"v{v}", "m": model.id, "v": v, "at": at})  # fmt: skip
        await conn.execute(
            text(
                "INSERT INTO deployments (id, model_id, version, config, status, reason, "
                "generation, observed_generation, created_at, updated_at) VALUES "
                "('d1', :m, 1, '{}', 'ready', '', 1, 1, :at, :at)"
            ),
            {"m": model.id, "at": at},
        )
    await db.migrate()
    assert await db.current_revision() == "0007"
    dep = await store.get_deployment("d1")
    assert dep.traffic == () and dep.revisions() == (Revision(1, 100),)
    split = (Revision(1, 90), Revision(2, 10))
    dep = await store.update_deployment("d1", traffic=split)
    assert (await store.get_deployment("d1")).traffic == split and dep.generation == 2


async def test_migrate_creates_the_schema_from_empty(db: Database) -> None:
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_tables) == set()
    assert await db.current_revision() is None

    await db.migrate()

    async with db.engine.connect() as conn:
        assert await conn.run_sync(_tables) == TABLES | {"alembic_version"}
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert [tuple(v) for v in versions] == [(HEAD,)]
    assert await db.current_revision() == HEAD


async def test_migrated_schema_matches_the_tables(db: Database) -> None:
    await db.migrate()
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_schema_diff, metadata) == []
        # The comparison sees real differences (so the empty diff above means something).
        extra = MetaData()
        for table in metadata.tables.values():
            table.to_metadata(extra)
        Table("not_migrated", extra, Column("id", Integer, primary_key=True))
        diff = await conn.run_sync(_schema_diff, extra)
    assert [d[0] for d in diff if isinstance(d, tuple)] == ["add_table"]


async def test_migrate_twice_is_a_no_op(db: Database) -> None:
    await db.migrate()
    store = RegistryStore(db)
    user = await store.create_user("alice", None, Role.ADMIN)

    await db.migrate()

    assert await db.current_revision() == HEAD
    assert await store.get_user(user.id) == user
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT count(*) FROM alembic_version"))).scalar_one()
    assert rows == 1


async def test_migrate_to_a_given_revision(db: Database) -> None:
    await db.migrate(revision="0001")
    assert await db.current_revision() == "0001"
    await db.migrate()
    assert await db.current_revision() == HEAD


async def test_data_survives_a_restart(database_url: str) -> None:
    first = Database(database_url)
    await first.migrate()
    store = RegistryStore(first)
    owner = await store.create_user("alice", "h", Role.MEMBER)
    model = await store.create_model(name="m", owner_id=owner.id, visibility=Visibility.PUBLIC)
    version = await store.create_version(model.id, source="upload:x", created_by=owner.id)
    await store.get_or_create_secret("jwt", "k1")
    await first.close()

    second = Database(database_url)
    try:
        await second.migrate()  # what every start does
        again = RegistryStore(second)
        assert await again.get_user(owner.id) == owner
        assert await again.get_model(model.id) == model
        assert await again.list_versions(model.id) == [version]
        assert await again.get_or_create_secret("jwt", "k2") == "k1"
    finally:
        await second.close()


async def test_sqlite_connection_settings(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "r.db"))
    try:
        await db.migrate()
        async with db.engine.connect() as conn:
            journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
            foreign_keys = (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one()
            busy = (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one()
        assert (journal, foreign_keys) == ("wal", 1)
        assert busy >= 1000
    finally:
        await db.close()


def test_sqlite_url_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_url(Path("r.db")) == f"sqlite+aiosqlite:///{tmp_path.resolve()}/r.db"


# ---- the database is down ------------------------------------------------------------------------


def _assert_safe(error: Unavailable) -> None:
    assert error.message == "database unavailable"
    for leak in ("127.0.0.1", ":1", "SELECT", "postgres", "/", "sqlite"):
        assert leak not in str(error)
    assert error.__cause__ is None and error.__suppress_context__


async def test_ping_when_postgres_is_down(caplog: pytest.LogCaptureFixture) -> None:
    db = Database(DOWN_URL)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="inferd.registry.db"),
            pytest.raises(Unavailable) as e,
        ):
            await db.ping()
        _assert_safe(e.value)
        # The details are for the operator's log, not the client.
        assert any(r.levelno == logging.WARNING for r in caplog.records)
        with pytest.raises(Unavailable) as e:
            await RegistryStore(db).get_user("0" * 32)
        _assert_safe(e.value)
        with pytest.raises(Unavailable) as e:
            await db.migrate()
        _assert_safe(e.value)
    finally:
        await db.close()


async def test_ping_when_the_sqlite_file_cannot_be_opened(tmp_path: Path) -> None:
    threads = set(threading.enumerate())
    db = Database(sqlite_url(tmp_path / "missing-dir" / "r.db"))
    try:
        with pytest.raises(Unavailable) as e:
            await db.ping()
        _assert_safe(e.value)
        assert str(tmp_path) not in e.value.message
    finally:
        await db.close()
        # aiosqlite (0.22) ends a failed connection's worker thread after the caller has seen
        # the error, and that thread's last call goes to this test's event loop: wait for it
        # here, while the loop is still open (else it fails in whichever test runs next)
        for thread in set(threading.enumerate()) - threads:
            await asyncio.to_thread(thread.join, 10)


async def test_ping_when_up(db: Database) -> None:
    await db.ping()  # no schema needed


async def test_sqlite_table_rebuild_keeps_child_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Future revisions alter tables in batch mode, which on SQLite copies the table, drops the
    # old one and renames the copy. With foreign keys enforced, that DROP would cascade-delete
    # every version of every model.
    db = Database(sqlite_url(tmp_path / "r.db"))
    try:
        await db.migrate()
        store = RegistryStore(db)
        owner = await store.create_user("alice", None, Role.ADMIN)
        model = await store.create_model(name="m", owner_id=owner.id, visibility=Visibility.PUBLIC)
        version = await store.create_version(model.id, source="", created_by=None)

        def rebuild_models(connection: Connection, revision: str) -> None:
            ops = Operations(MigrationContext.configure(connection))
            with ops.batch_alter_table("models", recreate="always"):
                pass

        monkeypatch.setattr(db_module, "_upgrade", rebuild_models)
        await db.migrate()

        assert await store.list_versions(model.id) == [version]
        # Every pooled connection (the migration's included) enforces foreign keys again.
        async with AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(db.engine.connect()) for _ in range(5)]
            pragmas = [(await c.execute(text("PRAGMA foreign_keys"))).scalar_one() for c in conns]
        assert pragmas == [1] * 5
        await store.delete_model(model.id)  # and the cascade still works afterwards
        assert await store.list_versions(model.id) == []
    finally:
        await db.close()


async def test_nodes_starting_together_migrate_once(database_url: str) -> None:
    nodes = [Database(database_url) for _ in range(3)]
    try:
        # Bounded: without the database-side lock this deadlocks rather than erroring.
        await asyncio.wait_for(asyncio.gather(*(n.migrate() for n in nodes)), timeout=60)
        assert [await n.current_revision() for n in nodes] == [HEAD] * 3
        async with nodes[0].engine.connect() as conn:
            assert await conn.run_sync(_tables) == TABLES | {"alembic_version"}
    finally:
        for n in nodes:
            await n.close()


async def test_nodes_creating_a_new_sqlite_file_together(tmp_path: Path) -> None:
    # The first connections to a new file race to switch it to WAL; SQLite answers that switch
    # with "database is locked" at once (no busy handler) while another one holds the file.
    for attempt in range(40):
        url = sqlite_url(tmp_path / f"new-{attempt}.db")
        nodes = [Database(url) for _ in range(3)]
        try:
            await asyncio.wait_for(asyncio.gather(*(n.migrate() for n in nodes)), timeout=60)
            assert [await n.current_revision() for n in nodes] == [HEAD] * 3
            async with nodes[0].engine.connect() as conn:
                mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
            assert mode == "wal"
        finally:
            for n in nodes:
                await n.close()


async def test_sqlite_locked_is_unavailable_and_logs_no_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "r.db"
    db = Database(sqlite_url(path))
    await db.migrate()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
        with (
            caplog.at_level(logging.WARNING, logger="inferd.registry.db"),
            pytest.raises(Unavailable) as e,
        ):
            await RegistryStore(db).get_or_create_secret("jwt", "hunter2-signing-key")
        _assert_safe(e.value)
        assert "locked" in caplog.text  # the operator learns why
    finally:
        holder.close()
        await db.close()


async def test_failed_statement_logs_no_bound_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "r.db"
    db = Database(sqlite_url(path))
    await db.migrate()
    # Make the INSERT itself fail (as a full disk would), after BEGIN succeeded.
    with sqlite3.connect(path) as raw:
        raw.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON server_secrets "
            "BEGIN INSERT INTO no_such_table VALUES (1); END"
        )
    try:
        with (
            caplog.at_level(logging.WARNING, logger="inferd.registry.db"),
            pytest.raises(Unavailable) as e,
        ):
            await RegistryStore(db).get_or_create_secret("jwt", "hunter2-signing-key")
        _assert_safe(e.value)
        assert "no_such_table" in caplog.text and "server_secrets" in caplog.text
        assert "hunter2" not in caplog.text
    finally:
        await db.close()
