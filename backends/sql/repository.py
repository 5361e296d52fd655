"""The repository on SQL: SQLite (embedded default) and PostgreSQL (psycopg 3).

SQLAlchemy provides the engine, its connection pool and the Alembic migrations; requests then
work on the pooled driver connection directly, with statements written per dialect, because
SQLAlchemy's connection and result machinery costs more than a single-row query itself.

Batches are one statement whatever their size: SQLite receives a batch as one JSON array and
unpacks it with `json_each`, PostgreSQL as arrays with `unnest`/`ANY`. Inserts use
`ON CONFLICT DO NOTHING ... RETURNING`, so a row that a concurrent writer stored first is
skipped, not an error, and the caller reads back theirs.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from ..base import (DomainRecord, PseudonymRow, Repository, StorageError, StoredApiKey, Transaction,
                    UnknownDomain)

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x7474_7067  # PostgreSQL advisory lock key held while migrating
_SCOPES = ("endpoints", "operations", "domains", "studies")


class SqlRepository(Repository):
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self.dialect = self.engine.dialect.name
        self.sql = _SQLITE if self.dialect == "sqlite" else _POSTGRES
        # A local SQLite file answers reads in microseconds and never blocks them (WAL).
        self.reads_block = self.dialect != "sqlite"
        self._dbapi_errors = self.engine.dialect.loaded_dbapi
        self._domain_ids: dict[str, int] = {}
        self._domain_ids_lock = threading.Lock()

    def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config as AlembicConfig

        alembic = AlembicConfig()
        alembic.set_main_option("script_location", str(MIGRATIONS))
        # Workers and replicas start together: one migrates, the others wait for its lock (SQLite:
        # the write lock of BEGIN IMMEDIATE) and then find the schema current.
        with self.engine.connect().execution_options(ttp_migrating=True) as conn, conn.begin():
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            alembic.attributes["connection"] = conn
            command.upgrade(alembic, "head")

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Transaction]:
        try:
            connection = self.engine.raw_connection()
        except sa.exc.OperationalError as exc:
            raise StorageError(f"storage unavailable ({type(exc.orig).__name__})") from None
        try:
            if self.dialect == "sqlite":
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            transaction = SqlTransaction(self, connection)
            yield transaction
            connection.commit()
            if transaction.seen_domain_ids:
                with self._domain_ids_lock:  # only what a committed transaction saw is cached
                    self._domain_ids.update(transaction.seen_domain_ids)
        except self._dbapi_errors.OperationalError as exc:
            _discard(connection)
            raise StorageError(f"storage unavailable ({type(exc).__name__})") from None
        except BaseException:
            _discard(connection)
            raise
        finally:
            connection.close()  # back to the pool

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"storage unavailable ({type(exc).__name__})") from None

    def close(self) -> None:
        self.engine.dispose()

    def cached_domain_id(self, name: str) -> int | None:
        return self._domain_ids.get(name)


def _discard(connection: Any) -> None:
    """Roll back; a connection that cannot even do that is dropped from the pool."""
    try:
        connection.rollback()
    except Exception:  # noqa: BLE001 - the connection is broken; the pool must not reuse it
        connection.invalidate()


class SqlTransaction(Transaction):
    def __init__(self, repository: SqlRepository, connection: Any) -> None:
        self._repo = repository
        self._connection = connection
        self._sql = repository.sql
        self.seen_domain_ids: dict[str, int] = {}

    # --- domains --------------------------------------------------------------------------
    def get_domains(self) -> list[DomainRecord]:
        return [DomainRecord(name=name, settings=_json(settings), description=description)
                for name, settings, description in self._execute(self._sql.get_domains)]

    def put_domain(self, domain: DomainRecord) -> bool:
        settings = orjson.dumps(dict(domain.settings)).decode()
        if self._execute(self._sql.update_domain, (settings, domain.description, domain.name)):
            return False
        self._execute(self._sql.insert_domain, (domain.name, settings, domain.description))
        return True

    # --- pseudonyms -----------------------------------------------------------------------
    def get_pseudonyms(self, domain: str, originals: Sequence[str]) -> dict[str, str]:
        if not originals:
            return {}
        return dict(self._batch("get_pseudonyms", domain, self._sql.array(originals)))

    def get_pseudonym_rows(self, domain: str, originals: Sequence[str]) -> dict[str, list[PseudonymRow]]:
        result: dict[str, list[PseudonymRow]] = {}
        if originals:
            for row in self._batch("get_pseudonym_rows", domain, self._sql.array(originals)):
                result.setdefault(row[0], []).append(PseudonymRow(*row))
        return result

    def get_originals(self, domain: str, pseudonyms: Sequence[str]) -> dict[str, str | None]:
        if not pseudonyms:
            return {}
        return dict(self._batch("get_originals", domain, self._sql.array(pseudonyms)))

    def insert_pseudonyms(self, domain: str, rows: Sequence[PseudonymRow]) -> set[PseudonymRow]:
        if not rows:
            return set()
        # Plain tuples: they hash and compare equal to the PseudonymRows they stand for.
        return set(self._batch("insert_pseudonyms", domain, *self._sql.rows(rows)))

    def delete_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        if not originals:
            return set()
        return {original for (original,) in self._batch("delete_originals", domain,
                                                         self._sql.array(originals))}

    def anonymize_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        if not originals:
            return set()
        known = {original for (original,) in self._batch("get_known_originals", domain,
                                                          self._sql.array(originals))}
        if known:
            self._batch("anonymize_originals", domain, self._sql.array(sorted(known)))
        return known

    def count_pseudonyms(self, domain: str) -> int:
        return self._batch("count_pseudonyms", domain)[0][0]

    # --- API keys -------------------------------------------------------------------------
    def get_api_keys(self) -> list[StoredApiKey]:
        keys = []
        for name, key_sha256, scopes in self._execute(self._sql.get_api_keys):
            scopes = _json(scopes)
            keys.append(StoredApiKey(name=name, key_sha256=key_sha256,
                                     **{k: tuple(scopes.get(k, ["*"])) for k in _SCOPES}))
        return keys

    def add_api_key(self, key: StoredApiKey) -> bool:
        settings = key.as_settings()
        scopes = orjson.dumps({k: settings[k] for k in _SCOPES}).decode()
        return bool(self._execute(self._sql.insert_api_key, (key.name, key.key_sha256, scopes)))

    # --- helpers --------------------------------------------------------------------------
    def _batch(self, statement: str, domain: str, *params: Any) -> list[tuple]:
        return self._execute(self._sql.statements[statement], (self._domain_id(domain), *params))

    def _domain_id(self, name: str) -> int:
        domain_id = self._repo.cached_domain_id(name) or self.seen_domain_ids.get(name)
        if domain_id is None:
            rows = self._execute(self._sql.domain_id, (name,))
            if not rows:
                raise UnknownDomain(f"domain {name!r} is not in the store")
            domain_id = self.seen_domain_ids[name] = rows[0][0]
        return domain_id

    def _execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
        finally:
            cursor.close()


def _json(value: Any) -> Any:
    """A JSON column's value: PostgreSQL's driver decodes it already, SQLite's does not."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


class _Dialect:
    """Statements and parameter packing for one SQL dialect."""

    def __init__(self, statements: dict[str, str], placeholder: str) -> None:
        self.statements = statements
        p = placeholder
        self.domain_id = f"SELECT id FROM domain WHERE name = {p}"
        self.get_domains = "SELECT name, settings, description FROM domain ORDER BY name"
        self.update_domain = (f"UPDATE domain SET settings = {p}, description = {p} WHERE name = {p} "
                              "RETURNING id")
        self.insert_domain = f"INSERT INTO domain (name, settings, description) VALUES ({p}, {p}, {p})"
        self.get_api_keys = "SELECT name, key_sha256, scopes FROM api_key ORDER BY name"
        self.insert_api_key = (f"INSERT INTO api_key (name, key_sha256, scopes) VALUES ({p}, {p}, {p}) "
                               "ON CONFLICT DO NOTHING RETURNING name")

    def array(self, values: Sequence[str]) -> Any:
        raise NotImplementedError

    def rows(self, rows: Sequence[PseudonymRow]) -> tuple:
        raise NotImplementedError


class _SqliteDialect(_Dialect):
    def array(self, values: Sequence[str]) -> Any:
        return orjson.dumps(values).decode()

    def rows(self, rows: Sequence[PseudonymRow]) -> tuple:
        return (orjson.dumps(rows, default=tuple).decode(),)


class _PostgresDialect(_Dialect):
    def __init__(self, statements: dict[str, str], placeholder: str) -> None:
        super().__init__(statements, placeholder)
        # JSON columns take text cast to json.
        self.update_domain = self.update_domain.replace("settings = %s", "settings = %s::json")
        self.insert_domain = self.insert_domain.replace("VALUES (%s, %s, %s)", "VALUES (%s, %s::json, %s)")
        self.insert_api_key = self.insert_api_key.replace("VALUES (%s, %s, %s)", "VALUES (%s, %s, %s::json)")

    def array(self, values: Sequence[str]) -> Any:
        return list(values)

    def rows(self, rows: Sequence[PseudonymRow]) -> tuple:
        originals, numbers, pseudonyms = zip(*rows)
        return list(originals), list(numbers), list(pseudonyms)


def _sqlite_statements() -> dict[str, str]:
    # ?1 is the domain's id, ?2 the batch as a JSON array. The batch drives the loop (CROSS JOIN
    # keeps json_each outside, INDEXED BY the index on originals), so that every item is one
    # index lookup; left to itself SQLite's planner scans the whole domain for some of these.
    by_original = ("FROM json_each(?2) AS batch CROSS JOIN pseudonym AS p INDEXED BY ix_pseudonym_original "
                   "WHERE p.domain_id = ?1 AND p.original = batch.value")
    of_originals = f"(SELECT p.pseudonym {by_original})"
    return {
        "get_pseudonyms": f"SELECT p.original, p.pseudonym {by_original} AND p.number = 0",
        "get_known_originals": f"SELECT DISTINCT p.original {by_original}",
        "get_pseudonym_rows": f"SELECT p.original, p.number, p.pseudonym {by_original} "
                              "ORDER BY p.original, p.number",
        "get_originals": "SELECT p.pseudonym, p.original FROM json_each(?2) AS batch "
                         "CROSS JOIN pseudonym AS p WHERE p.domain_id = ?1 AND p.pseudonym = batch.value",
        # WHERE true: SQLite needs it to parse ON CONFLICT after INSERT ... SELECT.
        "insert_pseudonyms": "INSERT INTO pseudonym (domain_id, original, number, pseudonym) "
                             "SELECT ?1, value ->> 0, value ->> 1, value ->> 2 FROM json_each(?2) WHERE true "
                             "ON CONFLICT DO NOTHING RETURNING original, number, pseudonym",
        "delete_originals": f"DELETE FROM pseudonym WHERE domain_id = ?1 AND pseudonym IN {of_originals} "
                            "RETURNING original",
        "anonymize_originals": "UPDATE pseudonym SET original = NULL "
                               f"WHERE domain_id = ?1 AND pseudonym IN {of_originals}",
        "count_pseudonyms": "SELECT count(*) FROM pseudonym WHERE domain_id = ?1",
    }


def _postgres_statements() -> dict[str, str]:
    return {
        "get_pseudonyms": "SELECT original, pseudonym FROM pseudonym "
                          "WHERE domain_id = %s AND number = 0 AND original = ANY(%s)",
        "get_known_originals": "SELECT DISTINCT original FROM pseudonym "
                               "WHERE domain_id = %s AND original = ANY(%s)",
        "get_pseudonym_rows": "SELECT original, number, pseudonym FROM pseudonym "
                              "WHERE domain_id = %s AND original = ANY(%s) ORDER BY original, number",
        "get_originals": "SELECT pseudonym, original FROM pseudonym "
                         "WHERE domain_id = %s AND pseudonym = ANY(%s)",
        "insert_pseudonyms": "INSERT INTO pseudonym (domain_id, original, number, pseudonym) "
                             "SELECT %s, o, n, p FROM unnest(%s::text[], %s::int[], %s::text[]) "
                             "WITH ORDINALITY AS t(o, n, p, i) ORDER BY i "
                             "ON CONFLICT DO NOTHING RETURNING original, number, pseudonym",
        "delete_originals": "DELETE FROM pseudonym "
                            "WHERE domain_id = %s AND original = ANY(%s) RETURNING original",
        "anonymize_originals": "UPDATE pseudonym SET original = NULL "
                               "WHERE domain_id = %s AND original = ANY(%s)",
        "count_pseudonyms": "SELECT count(*) FROM pseudonym WHERE domain_id = %s",
    }


_SQLITE = _SqliteDialect(_sqlite_statements(), "?")
_POSTGRES = _PostgresDialect(_postgres_statements(), "%s")


def _create_engine(url: str) -> Engine:
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    # hide_parameters: SQL errors must not carry originals into logs or exception texts.
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, hide_parameters=True, connect_args={"timeout": 30})
        _take_over_sqlite_transactions(engine)
        return engine
    return sa.create_engine(url, hide_parameters=True, pool_size=10, max_overflow=20, pool_recycle=1800)


def _take_over_sqlite_transactions(engine: Engine) -> None:
    """Emit BEGIN ourselves (IMMEDIATE for writers): the sqlite3 module's own transaction
    handling would start read transactions late and upgrade them to writes mid-way, which fails
    under concurrent writers instead of waiting for the lock."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")  # a commit the client saw survives power loss
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        migrating = conn.get_execution_options().get("ttp_migrating", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if migrating else "BEGIN")
