"""The registry database: one async engine, its sessions, and the Alembic upgrade.

SQLite (the embedded default) and PostgreSQL (production) behind the same code. SQLite needs
help to behave like a server database under concurrency; see `_configure_sqlite`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, event, insert, make_url, text
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from inferd.core.errors import InferdError, Unavailable

log = logging.getLogger("inferd.registry.db")

P = ParamSpec("P")
R = TypeVar("R")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: Execution option asking for a write transaction. On SQLite it becomes BEGIN IMMEDIATE: the write
#: lock is taken up front, so a read-then-write transaction waits its turn (busy timeout) instead
#: of failing with SQLITE_BUSY when another writer committed after its snapshot was taken.
WRITE = "inferd_write"

#: How long a SQLite writer waits for the lock before giving up (then: Unavailable).
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: asyncpg's own default is 60 s, far too long for a health check against a dead host.
POSTGRES_CONNECT_TIMEOUT_S = 10

#: Any one key: every node migrating the same PostgreSQL database serialises on it.
_MIGRATION_LOCK_KEY = 0x1F3D_0001

UNAVAILABLE = "database unavailable"

# asyncpg is optional (the `postgres` extra); its connection-level errors are matched by class
# name so this module imports without it.
_ASYNCPG_CONNECTION_ERRORS = {
    "PostgresConnectionError",
    "ConnectionDoesNotExistError",
    "ConnectionFailureError",
    "CannotConnectNowError",
    "TooManyConnectionsError",
    "AdminShutdownError",
    "CrashShutdownError",
    "InterfaceError",
}


def sqlite_url(path: Path) -> str:
    """The aiosqlite URL for a database file (made absolute, so the working directory is moot)."""
    return f"sqlite+aiosqlite:///{Path(path).resolve()}"


def private_file(path: Path) -> None:
    """Create the SQLite file readable by the server's user only (0600), or make it so (with
    its journals): it holds the JWT signing key and password hashes. Where that fails, SQLite
    reports the problem when it connects."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        with contextlib.suppress(OSError):
            if file.stat().st_uid == os.geteuid() and file.stat().st_mode & 0o077:
                file.chmod(0o600)


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` means "cannot talk to the database" (retry later) rather than a bug or a
    constraint: those become `Unavailable`."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(
        exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError | OSError
    ):
        return True
    orig = getattr(exc, "orig", None)
    candidates = [exc] if orig is None else [exc, orig, orig.__cause__]
    for candidate in candidates:
        if candidate is None:
            continue
        if isinstance(candidate, OSError):
            return True
        if {c.__name__ for c in type(candidate).__mro__} & _ASYNCPG_CONNECTION_ERRORS:
            return True
    return False


def unavailable(exc: BaseException, doing: str) -> Unavailable:
    """The client-safe error for a connection failure; the details (which can hold SQL, hosts
    and paths) go to the log only."""
    log.warning("%s failed, database unavailable: %s: %s", doing, type(exc).__name__, exc)
    return Unavailable(UNAVAILABLE)


def guarded(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turns connection failures into `Unavailable`; everything else passes unchanged."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except InferdError:
            raise
        except Exception as e:
            if is_connection_error(e):
                raise unavailable(e, fn.__name__) from None
            raise

    return wrapper


class Database:
    """One database: an async engine, a session factory and the schema migrations.

    `url` is `sqlite+aiosqlite:///abs/path.db` or `postgresql+asyncpg://...`. Nothing connects
    until the first use; `migrate()` is meant to run on every start.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            # The scheme only: the URL itself may hold a password.
            raise ValueError(f"unsupported database: {self.dialect} (use sqlite or postgresql)")
        # hide_parameters: bound values include password hashes and the JWT signing key; they must
        # not reach logs through error messages (or echo).
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.dialect == "sqlite" and parsed.database not in (None, "", ":memory:"):
            private_file(Path(parsed.database))
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            # A pooled connection can be dead after a database restart; check before use.
            kwargs["pool_pre_ping"] = True
            if parsed.get_driver_name() == "asyncpg" and "timeout" not in parsed.query:
                kwargs["connect_args"] = {"timeout": POSTGRES_CONNECT_TIMEOUT_S}
        self._engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.dialect == "sqlite":
            _configure_sqlite(self._engine)
        # expire_on_commit=False: rows are converted to records after commit without reloading.
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        # SQLite has one writer at a time. Writers of this process take turns here, in the event
        # loop, instead of in SQLite's busy handler, which polls with sleeps growing to 100 ms
        # (measured: submission p90 100 ms at 8 concurrent writers; see bench/RESULTS.md, "Async
        # predictions"). Other processes on the same file still meet the busy handler.
        self._writer = asyncio.Lock() if self.dialect == "sqlite" else None

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return self._sessions

    @asynccontextmanager
    async def write_session(self) -> AsyncIterator[AsyncSession]:
        """A session in a write transaction, committed on exit (rolled back on error). Never
        open one inside another: on SQLite the inner one would wait for the outer forever."""
        async with contextlib.AsyncExitStack() as stack:
            if self._writer is not None:
                await stack.enter_async_context(self._writer)
            session = await stack.enter_async_context(self._sessions())
            await stack.enter_async_context(session.begin())
            # Asking for the connection with the option makes the `begin` hook see it.
            await session.connection(execution_options={WRITE: True})
            yield session

    async def listen(self, channel: str, on_notify: Callable[[], None]) -> None:
        """Calls `on_notify` on every PostgreSQL NOTIFY on `channel`, until cancelled; a lost
        connection is opened again (after a pause growing to 30 s). One pooled connection is
        held for it."""
        delay = 1.0
        while True:
            try:
                async with self._engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    driver: Any = raw.driver_connection

                    def notified(*_args: Any) -> None:
                        on_notify()

                    await driver.add_listener(channel, notified)
                    try:
                        delay = 1.0
                        on_notify()  # whatever was notified while not listening
                        while not driver.is_closed():
                            await asyncio.sleep(5)
                    finally:
                        with contextlib.suppress(Exception):
                            await driver.remove_listener(channel, notified)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("listening on %s failed (%s: %s); again in %.0f s", channel,
                            type(e).__name__, e, delay)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    @guarded
    async def ping(self) -> None:
        """SELECT 1; `Unavailable("database unavailable")` when the database cannot be reached."""
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @guarded
    async def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to `revision` (default: the newest). A no-op when already there;
        safe to run from several nodes at once (they take turns)."""
        sqlite = self.dialect == "sqlite"
        async with self._engine.connect() as conn:
            if sqlite:
                await _ensure_wal(conn)
                # A batch migration rebuilds a table (copy, drop, rename); with foreign keys
                # enforced that DROP would cascade-delete every child row. SQLite ignores this
                # pragma inside a transaction, so it is switched before BEGIN; foreign_key_check
                # below stands in for the enforcement.
                await conn.run_sync(_sqlite_pragma, "foreign_keys=OFF")
            try:
                conn = await conn.execution_options(**{WRITE: True})
                await conn.begin()
                if self.dialect == "postgresql":
                    # Held to the end of the transaction: the second node waits, then finds
                    # the schema at head and does nothing.
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                    )
                await conn.run_sync(_upgrade, revision)
                if sqlite and (await conn.exec_driver_sql("PRAGMA foreign_key_check")).first():
                    raise RuntimeError(f"migrating to {revision} would break foreign keys")
                await conn.commit()
            finally:
                if sqlite:
                    await _restore_foreign_keys(conn)

    @guarded
    async def current_revision(self) -> str | None:
        """The schema revision recorded in the database (None before the first migration)."""
        async with self._engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    async def close(self) -> None:
        await self._engine.dispose()


class GroupCommit:
    """Inserts from concurrent callers written together: while one transaction commits, the
    rows that arrive queue up and go in the next one (group commit). A commit costs the same
    for one row as for twenty, so under load each caller pays a share of one instead of waiting
    for one per caller ahead of it. A batch that breaks a constraint is written again one
    caller at a time, so only the offending caller sees the error.

    `notify`: a PostgreSQL channel notified in each transaction (delivered at its commit)."""

    def __init__(self, db: Database, notify: str | None = None) -> None:
        self._db = db
        self._notify = notify if db.dialect == "postgresql" else None
        self._pending: list[tuple[list[Any], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def add(self, rows: list[Any]) -> None:
        """Insert `rows` (new ORM objects, whose unset columns take their defaults) in a
        transaction; returns once it committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(done)  # a caller that goes away does not cancel the others'

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._write([row for rows, _ in batch for row in rows])
                except sa_exc.IntegrityError:
                    for rows, done in batch:  # one alone: only the offender fails
                        try:
                            await self._write(rows)
                        except Exception as e:
                            done.set_exception(e)
                        else:
                            done.set_result(None)
                except Exception as e:
                    for _, done in batch:
                        done.set_exception(e)
                else:
                    for _, done in batch:
                        done.set_result(None)
        finally:
            self._flusher = None

    async def _write(self, rows: list[Any]) -> None:
        # Core INSERTs (one executemany per table and set of columns), not the ORM's unit of
        # work: the rows are new and nothing reads them back, and a flush costs several times
        # as much CPU.
        groups: dict[tuple[Any, tuple[str, ...]], list[dict[str, Any]]] = {}
        for row in rows:
            values = {a.key: v for a in sa_inspect(row).mapper.column_attrs
                      if (v := getattr(row, a.key)) is not None}  # fmt: skip
            groups.setdefault((type(row).__table__, tuple(values)), []).append(values)
        async with self._db.write_session() as s:
            for (table, _), many in groups.items():
                await s.execute(insert(table), many)
            if self._notify is not None:
                await s.execute(text("SELECT pg_notify(:c, '')"), {"c": self._notify})


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config built in code (no alembic.ini); env.py uses `connection` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _sqlite_pragma(connection: Connection, pragma: str) -> Any:
    """Runs a PRAGMA on the driver connection, outside SQLAlchemy's transaction handling;
    returns the first column of its first row (None when it returns none)."""
    dbapi = connection.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        cursor.execute(f"PRAGMA {pragma}")
        row = cursor.fetchone()
        return row[0] if row else None
    finally:
        cursor.close()


async def _restore_foreign_keys(conn: AsyncConnection) -> None:
    # The connection goes back to the pool: it must enforce foreign keys again, or not be reused.
    try:
        if conn.in_transaction():
            await conn.rollback()
        await conn.run_sync(_sqlite_pragma, "foreign_keys=ON")
    except Exception as e:
        # Not raised: it would hide the migration's own error. A new connection gets the pragma.
        log.warning("could not re-enable foreign keys: %s: %s", type(e).__name__, e)
        await conn.invalidate()


async def _ensure_wal(conn: AsyncConnection) -> None:
    """Switches the database file to WAL (persistent: done once per file, then only read).

    The switch needs an exclusive lock, and SQLite answers it with SQLITE_BUSY at once (the busy
    handler does not apply) while another connection holds the file, as when several nodes open
    a new file together; so it is retried here, up to the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        mode = await conn.run_sync(_sqlite_pragma, "journal_mode")
        if str(mode).lower() == "wal":
            return
        try:
            await conn.run_sync(_sqlite_pragma, "journal_mode=WAL")
            return
        except Exception as e:  # the driver's OperationalError, not wrapped by SQLAlchemy here
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Enforced foreign keys (off by default in SQLite: the cascades depend on them), a busy
    timeout, and transactions that really begin. WAL (readers never block the writer) is a
    property of the file, switched on once by `migrate()` (see `_ensure_wal`).

    The sqlite3 driver's legacy mode starts no transaction for SELECT or DDL; we switch it off and
    emit BEGIN ourselves (SQLAlchemy's documented recipe), with IMMEDIATE for write transactions.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
