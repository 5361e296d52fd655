"""The repository on SQL: SQLite (the embedded default) and PostgreSQL (psycopg 3).

SQLAlchemy provides the engine, its pool, the table definitions every statement is built from,
and the Alembic migrations, one branch per store. Units of work run compiled statements on the
driver connection (`statements.py`).

SQLite allows one writer at a time per database file. Each process keeps one connection for its
write units, which queue for it in the order they asked, and begins with BEGIN IMMEDIATE so that a
unit takes the file's write lock before it reads what it will change; other processes wait for
that lock (busy timeout). Read units use a connection per thread, without a transaction: in WAL
mode every statement reads one committed state, and readers never wait for the writer.

PostgreSQL units take a pooled connection each, in READ COMMITTED; the stores' unique keys and
explicit row locks (`FOR UPDATE`) carry correctness across processes and replicas. Deadlocks and
serialisation failures surface as `Busy`, so the unit is run again.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, Sequence, TypeVar

import sqlalchemy as sa
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.sql.elements import ReleaseSavepointClause, RollbackToSavepointClause, SavepointClause

from ..base import (Busy, Conflict, NotFound, Repository, StorageError, StoreDefinition, StoreKey,
                    Unavailable, UnitOfWork, WriteUnit)
from .grouping import GroupCommitter
from .statements import Compiled

T = TypeVar("T")
log = logging.getLogger("ttp_gateway.storage")

ENVIRONMENT = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x7474_7067  # PostgreSQL advisory lock key held while migrating

# Connection settings and transaction control, which SQLAlchemy Core has no constructs for.
_SQLITE_SETTINGS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",      # a commit that a client saw survives a power loss
    "PRAGMA busy_timeout = 30000",    # other processes' writers wait for the lock, up to 30 s
    "PRAGMA foreign_keys = ON",
    "PRAGMA secure_delete = ON",      # deleted rows are overwritten in the file
)
_BEGIN_WRITE = "BEGIN IMMEDIATE"
_CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)"


@dataclass(frozen=True)
class SqlStore(Generic[T]):
    """A plugin's store on SQL: its tables, their Alembic branch, and the factory of the store.

    Table names start with the store's name and an underscore (`gpas_pseudonym`), so plugins
    cannot collide. `migrations` is a folder of Alembic revision files; the first revision of
    the branch carries `branch_labels = ("<store name>",)` and `down_revision = None`."""

    metadata: MetaData
    migrations: Path
    open: Callable[["SqlSession"], T]


class SqlSession:
    """What a SQL store works with inside one unit of work: its connection and a few services."""

    __slots__ = ("dialect", "write", "_connection", "_unit", "_state")

    def __init__(self, dialect: Dialect, connection: Any, unit: UnitOfWork, state: dict[str, Any]) -> None:
        self.dialect = dialect
        self.write = unit.write
        self._connection = connection
        self._unit = unit
        self._state = state

    @property
    def state(self) -> dict[str, Any]:
        """A dict this store shares across all units of the repository (for caches that
        `after_commit` fills)."""
        return self._state

    def run(self, statement: Compiled, **params: Any) -> list[tuple[Any, ...]]:
        """Execute a compiled statement; its rows (an empty list for statements without rows)."""
        cursor = self._connection.cursor()
        try:
            cursor.execute(statement.sql, statement.parameters(params))
            return cursor.fetchall() if cursor.description else []
        except Exception as error:  # noqa: BLE001 - translated to the storage errors
            raise _translate(error) from None
        finally:
            cursor.close()

    def run_many(self, statement: Compiled, rows: Iterable[Mapping[str, Any]]) -> None:
        """Execute a statement once per parameter set, in one driver call."""
        batch = [statement.parameters(row) for row in rows]
        if not batch:
            return
        cursor = self._connection.cursor()
        try:
            cursor.executemany(statement.sql, batch)
        except Exception as error:  # noqa: BLE001
            raise _translate(error) from None
        finally:
            cursor.close()

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._unit.after_commit(callback)


class _SqlUnit(WriteUnit):
    def __init__(self, repository: "SqlRepository", connection: Any, write: bool,
                 release: Callable[[], None]) -> None:
        self._repository = repository
        self._connection = connection
        self.write = write
        self._release = release
        self._stores: dict[str, Any] = {}
        self._committed: list[Callable[[], None]] = []
        self._savepoints = itertools.count(1)
        self._ended = False

    def __getitem__(self, key: StoreKey[T]) -> T:
        store = self._stores.get(key.name)
        if store is None:
            if self._ended:
                raise StorageError(f"the unit of work has ended; store {key.name!r} cannot be opened")
            store = self._stores[key.name] = self.open_store(key, self)
        return store

    def open_store(self, key: StoreKey[T], owner: WriteUnit) -> T:
        """The store of `key` on this unit's connection, its `after_commit` going to `owner`
        (this unit, or a member of a group that shares it)."""
        definition = self._repository.store_of(key)
        session = SqlSession(self._repository.dialect, self._connection, owner, self._repository.state_of(key))
        return definition.open(session)

    def after_commit(self, callback: Callable[[], None]) -> None:
        if not self.write:
            raise StorageError("read units are not committed")
        self._committed.append(callback)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        name = f"ttp_{next(self._savepoints)}"
        statements = self._repository.savepoint_statements(name)
        self._control(statements[0])
        try:
            yield
        except BaseException:
            self._control(statements[1])
            self._control(statements[2])
            raise
        self._control(statements[2])

    def commit(self) -> None:
        if self._ended:
            raise StorageError("the unit of work has ended")
        try:
            self._connection.commit()
        except Exception as error:  # noqa: BLE001
            self.rollback()
            raise _translate(error) from None
        self._end()
        for callback in self._committed:
            callback()

    def rollback(self) -> None:
        if self._ended:
            return
        try:
            self._connection.rollback()
        except Exception:  # noqa: BLE001 - a broken connection is dropped, not reused
            self._repository.discard(self._connection)
        self._end()

    def _end(self) -> None:
        self._ended = True
        self._stores.clear()
        self._release()

    def _control(self, sql: str) -> None:
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql)
        except Exception as error:  # noqa: BLE001
            raise _translate(error) from None
        finally:
            cursor.close()


class SqlRepository(Repository):
    def __init__(self, url: str, stores: Iterable[StoreDefinition[Any]], group_commit: bool | None = None) -> None:
        self.url = url
        self._stores: dict[str, SqlStore[Any]] = {}
        for definition in stores:
            if definition.sql is None:
                raise Unavailable(f"store {definition.key.name!r} has no SQL implementation")
            for table in definition.sql.metadata.tables:
                if not table.startswith(definition.key.name + "_"):
                    raise ValueError(f"table {table!r} of store {definition.key.name!r} must be named "
                                     f"{definition.key.name}_...")
            self._stores[definition.key.name] = definition.sql
        self._states: dict[str, dict[str, Any]] = {name: {} for name in self._stores}
        self.engine = _create_engine(url)
        self.dialect: Dialect = self.engine.dialect
        self.sqlite = self.dialect.name == "sqlite"
        # A local SQLite file answers reads in microseconds and never blocks them (WAL).
        self.reads_block = not self.sqlite
        self._savepoint_sql: dict[str, tuple[str, str, str]] = {}
        self._local = threading.local()
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()
        self._writer: Any = None
        self._writer_lock = threading.Lock()
        self._committer: GroupCommitter | None = None
        self._lanes: list[GroupCommitter] = []
        # A small write on the embedded store may run on the event loop, its commit on a thread.
        if group_commit is None:  # the default: grouped where commits queue behind one writer
            group_commit = self.sqlite
        self.inline_writes = bool(group_commit and self.sqlite)
        if group_commit:
            database = self.engine.url.database if self.sqlite else None
            lock_file = f"{database}-writers.lock" if database and database != ":memory:" else None
            # SQLite has one writer: one group at a time. A server runs transactions side by side
            # and takes a commit's flush for several of them: groups run in a few lanes at once,
            # each on its own connection, so that one group's statements and commit do not wait
            # for another's round trips.
            self._lanes = [GroupCommitter(self, self._begin_alone, lock_file)
                           for _ in range(1 if self.sqlite else GROUP_LANES)]
            self._committer = self._lanes[0]

    # --- stores ------------------------------------------------------------------------------
    def store_of(self, key: StoreKey[T]) -> SqlStore[T]:
        try:
            return self._stores[key.name]
        except KeyError:
            raise StorageError(f"no store {key.name!r} is registered; is its plugin loaded?") from None

    def state_of(self, key: StoreKey[Any]) -> dict[str, Any]:
        return self._states[key.name]

    def savepoint_statements(self, name: str) -> tuple[str, str, str]:
        found = self._savepoint_sql.get(name)
        if found is None:
            found = self._savepoint_sql[name] = tuple(  # type: ignore[assignment]
                clause.compile(dialect=self.dialect).string
                for clause in (SavepointClause(name),  # type: ignore[no-untyped-call]
                               RollbackToSavepointClause(name),  # type: ignore[no-untyped-call]
                               ReleaseSavepointClause(name)))  # type: ignore[no-untyped-call]
        return found  # type: ignore[return-value]

    # --- schema ------------------------------------------------------------------------------
    def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config as AlembicConfig

        # Workers and replicas start together: one migrates, the others wait for its lock
        # (SQLite: the write lock of BEGIN IMMEDIATE) and then find the schema current. Each
        # store keeps its own version table, so a store whose plugin is disabled or removed
        # keeps its tables and version and stands in no other store's way.
        try:
            with self.engine.connect().execution_options(ttp_migrating=True) as conn, conn.begin():
                if self.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
                for name, store in self._stores.items():
                    alembic = AlembicConfig()
                    alembic.set_main_option("script_location", str(ENVIRONMENT))
                    alembic.set_main_option("path_separator", "os")
                    alembic.set_main_option("version_locations", str(store.migrations))
                    alembic.attributes["connection"] = conn
                    alembic.attributes["version_table"] = f"{name}_alembic_version"
                    command.upgrade(alembic, "heads")
        except sa.exc.OperationalError as error:
            raise Unavailable(f"storage unavailable ({type(error.orig).__name__})") from None

    # --- units of work -----------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[UnitOfWork]:
        if self.sqlite:
            unit = _SqlUnit(self, self._thread_connection(), False, _nothing)
            try:
                yield unit
            finally:
                unit._end()
            return
        connection = self._pooled()
        driver = connection.driver_connection
        driver.autocommit = True  # each read its own statement: no BEGIN/COMMIT round trips
        unit = _SqlUnit(self, connection, False, _nothing)
        try:
            yield unit
        finally:
            unit._end()
            try:
                driver.autocommit = False
            except Exception:  # noqa: BLE001 - a connection that cannot is broken: drop it
                self.discard(connection)
            connection.close()

    def begin(self) -> WriteUnit:
        if self._committer is None:
            return self._begin_alone()
        if len(self._lanes) == 1:
            return self._committer.begin()
        return min(self._lanes, key=GroupCommitter.load).begin()  # the lane with the shortest queue

    async def begin_async(self) -> WriteUnit:
        assert self._committer is not None
        return await self._committer.begin_async()

    def _begin_alone(self) -> "_SqlUnit":
        """A transaction of its own: for one unit, or for a group of them."""
        if self.sqlite:
            self._writer_lock.acquire()
            try:
                connection = self._writer_connection()
                _execute_control(connection, _BEGIN_WRITE)
            except BaseException:
                self._writer_lock.release()
                raise
            return _SqlUnit(self, connection, True, self._writer_lock.release)
        connection = self._pooled()
        return _SqlUnit(self, connection, True, connection.close)

    def discard(self, connection: Any) -> None:
        try:
            connection.invalidate()
        except Exception:  # noqa: BLE001 - a raw sqlite3 connection: just close it
            try:
                connection.close()
            except Exception:  # noqa: BLE001
                pass
        if connection is self._writer:
            self._writer = None
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None

    def _pooled(self) -> Any:
        try:
            return self.engine.raw_connection()
        except sa.exc.OperationalError as error:
            raise Unavailable(f"storage unavailable ({type(error.orig).__name__})") from None
        except sa.exc.TimeoutError:
            raise Busy("every connection to the store stayed in use") from None

    def _detached(self) -> Any:
        connection = self._pooled()
        connection.detach()  # this repository's own, outside the pool
        with self._opened_lock:
            self._opened.append(connection)
        return connection

    def _thread_connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._detached()
        return connection

    def _writer_connection(self) -> Any:
        if self._writer is None:
            self._writer = self._detached()
        return self._writer

    def checkpoint(self) -> None:
        if not self.sqlite:
            return
        with self._committer.exclusive() if self._committer is not None else nullcontext():
            with self._writer_lock:
                try:
                    _execute_control(self._writer_connection(), _CHECKPOINT)
                except StorageError as error:  # the data are deleted; the log is folded in later
                    log.warning("write-ahead log checkpoint failed", extra={"error": type(error).__name__})

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.select(1))
        except sa.exc.SQLAlchemyError as error:
            raise Unavailable(f"storage unavailable ({type(error).__name__})") from None

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()
        with self._opened_lock:
            for connection in self._opened:
                try:
                    connection.close()
                except Exception:  # noqa: BLE001
                    pass
            self._opened.clear()
        self._local = threading.local()
        self._writer = None
        self.engine.dispose()


def _nothing() -> None:
    return None


def _execute_control(connection: Any, sql: str) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute(sql)
    except Exception as error:  # noqa: BLE001
        raise _translate(error) from None
    finally:
        cursor.close()


def _translate(error: Exception) -> Exception:
    """The storage error for a driver error; the driver's message (which may quote values) is
    not passed on, only its type."""
    if isinstance(error, StorageError):
        return error
    kind = type(error).__name__
    if isinstance(error, sqlite3.Error):
        text = str(error).lower()
        if isinstance(error, sqlite3.IntegrityError):
            if "foreign key" in text:
                return NotFound("a row this unit refers to is not in the store")
            return Conflict(f"a unique key was violated ({kind})")
        if isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return Busy("the database is locked by another writer")
        return Unavailable(f"storage unavailable ({kind})")
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return Unavailable(f"storage unavailable ({kind})")
    if isinstance(error, (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
                          psycopg.errors.LockNotAvailable)):
        return Busy(f"the store could not serialise this unit ({kind})")
    if isinstance(error, psycopg.errors.ForeignKeyViolation):
        return NotFound("a row this unit refers to is not in the store")
    if isinstance(error, psycopg.errors.IntegrityError):
        return Conflict(f"a unique key was violated ({kind})")
    if isinstance(error, psycopg.OperationalError):
        return Unavailable(f"storage unavailable ({kind})")
    return StorageError(f"the store refused a statement ({kind})")


GROUP_LANES = 4  # groups in flight at once on a database server
POOL_SIZE = 20  # connections per process to a database server


def _create_engine(url: str) -> Engine:
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    # hide_parameters: SQL errors must not carry originals into logs or exception texts.
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, hide_parameters=True,
                                  connect_args={"timeout": 30, "check_same_thread": False})
        _take_over_sqlite_transactions(engine)
        return engine
    from psycopg.pq import TransactionStatus

    # A fixed set of connections: a connection opened for a burst and closed after it costs the
    # server a new backend process each time, which under steady load (more requests in flight
    # than pooled connections) made every other write open one. Requests beyond the pool wait
    # for a connection in turn.
    engine = sa.create_engine(url, hide_parameters=True, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=30,
                              pool_recycle=1800, pool_pre_ping=False, pool_reset_on_return=None)

    @event.listens_for(engine, "reset")
    def on_reset(dbapi_connection: Any, _record: Any, _state: Any) -> None:
        # A unit ends its transaction before it gives its connection back; the pool's own
        # ROLLBACK would cost every write a further round trip. Only a connection still in a
        # transaction (a unit that could not end it) is rolled back here.
        if dbapi_connection.info.transaction_status != TransactionStatus.IDLE:
            dbapi_connection.rollback()

    return engine


def _take_over_sqlite_transactions(engine: Engine) -> None:
    """Emit BEGIN ourselves (IMMEDIATE for writers): the sqlite3 module's own transaction
    handling would start read transactions late and upgrade them to writes mid-way, which fails
    under concurrent writers instead of waiting for the lock."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for setting in _SQLITE_SETTINGS:
            cursor.execute(setting)
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: sa.Connection) -> None:
        migrating = conn.get_execution_options().get("ttp_migrating", False)
        conn.exec_driver_sql(_BEGIN_WRITE if migrating else "BEGIN")


def open_sql(url: str, stores: Sequence[StoreDefinition[Any]], group_commit: bool | None = None) -> SqlRepository:
    return SqlRepository(url, stores, group_commit)
