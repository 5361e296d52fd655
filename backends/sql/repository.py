"""The repository on SQLAlchemy 2: SQLite (embedded default) and PostgreSQL (psycopg 3).

Batch statements are written per dialect so that a batch is one statement whatever its size:
SQLite receives the batch as one JSON array and unpacks it with `json_each`, PostgreSQL as
arrays with `unnest`/`ANY`. Inserts use `ON CONFLICT DO NOTHING ... RETURNING`, so a row that a
concurrent writer stored first is skipped, not an error, and the caller reads back theirs.
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
from . import schema

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x7474_7067  # PostgreSQL advisory lock key held while migrating


class SqlRepository(Repository):
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self.dialect = self.engine.dialect.name
        self._sql = _SQLITE if self.dialect == "sqlite" else _POSTGRES
        self._domain_ids: dict[str, int] = {}
        self._domain_ids_lock = threading.Lock()

    def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config as AlembicConfig

        alembic = AlembicConfig()
        alembic.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.connect().execution_options(ttp_write=True) as conn, conn.begin():
            if self.dialect == "postgresql":
                # Workers and replicas start together; one migrates, the others wait and find it done.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            alembic.attributes["connection"] = conn
            command.upgrade(alembic, "head")

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Transaction]:
        try:
            with self.engine.connect().execution_options(ttp_write=write) as conn, conn.begin():
                yield SqlTransaction(self, conn)
        except sa.exc.OperationalError as exc:
            raise StorageError(f"storage unavailable ({type(exc.orig).__name__})") from None

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"storage unavailable ({type(exc).__name__})") from None

    def close(self) -> None:
        self.engine.dispose()

    def domain_id(self, conn: Connection, name: str) -> int:
        domain_id = self._domain_ids.get(name)
        if domain_id is None:
            domain_id = conn.execute(sa.select(schema.domain.c.id).where(schema.domain.c.name == name)).scalar()
            if domain_id is None:
                raise UnknownDomain(f"domain {name!r} is not in the store")
            with self._domain_ids_lock:
                self._domain_ids[name] = domain_id
        return domain_id


class SqlTransaction(Transaction):
    def __init__(self, repository: SqlRepository, conn: Connection) -> None:
        self._repo = repository
        self._conn = conn
        self._sql = repository._sql

    # --- domains --------------------------------------------------------------------------
    def get_domains(self) -> list[DomainRecord]:
        rows = self._conn.execute(sa.select(schema.domain.c.name, schema.domain.c.settings,
                                            schema.domain.c.description).order_by(schema.domain.c.name))
        return [DomainRecord(name=r.name, settings=r.settings, description=r.description) for r in rows]

    def put_domain(self, domain: DomainRecord) -> bool:
        table = schema.domain
        updated = self._conn.execute(
            table.update().where(table.c.name == domain.name)
            .values(settings=dict(domain.settings), description=domain.description)).rowcount
        if updated:
            return False
        self._conn.execute(table.insert().values(name=domain.name, settings=dict(domain.settings),
                                                 description=domain.description))
        return True

    # --- pseudonyms -----------------------------------------------------------------------
    def get_pseudonyms(self, domain: str, originals: Sequence[str]) -> dict[str, str]:
        if not originals:
            return {}
        rows = self._run("get_pseudonyms", domain, self._sql.array(originals))
        return {original: pseudonym for original, pseudonym in rows}

    def get_pseudonym_rows(self, domain: str, originals: Sequence[str]) -> dict[str, list[PseudonymRow]]:
        result: dict[str, list[PseudonymRow]] = {}
        if originals:
            for original, number, pseudonym in self._run("get_pseudonym_rows", domain,
                                                         self._sql.array(originals)):
                result.setdefault(original, []).append(PseudonymRow(original, number, pseudonym))
        return result

    def get_originals(self, domain: str, pseudonyms: Sequence[str]) -> dict[str, str | None]:
        if not pseudonyms:
            return {}
        rows = self._run("get_originals", domain, self._sql.array(pseudonyms))
        return {pseudonym: original for pseudonym, original in rows}

    def insert_pseudonyms(self, domain: str, rows: Sequence[PseudonymRow]) -> set[str]:
        if not rows:
            return set()
        inserted = self._run("insert_pseudonyms", domain, *self._sql.rows(rows))
        return {pseudonym for (pseudonym,) in inserted}

    def delete_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        if not originals:
            return set()
        return {original for (original,) in self._run("delete_originals", domain,
                                                       self._sql.array(originals))}

    def anonymize_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        if not originals:
            return set()
        known = {original for original, _ in self._run("get_pseudonyms_any", domain,
                                                       self._sql.array(originals))}
        if known:
            self._run("anonymize_originals", domain, self._sql.array(sorted(known)))
        return known

    def count_pseudonyms(self, domain: str) -> int:
        return self._run("count_pseudonyms", domain).scalar_one()

    # --- API keys -------------------------------------------------------------------------
    def get_api_keys(self) -> list[StoredApiKey]:
        rows = self._conn.execute(sa.select(schema.api_key).order_by(schema.api_key.c.name))
        return [StoredApiKey(name=r.name, key_sha256=r.key_sha256,
                             **{k: tuple(v) for k, v in r.scopes.items()}) for r in rows]

    def add_api_key(self, key: StoredApiKey) -> bool:
        settings = key.as_settings()
        scopes = {k: settings[k] for k in ("endpoints", "operations", "domains", "studies")}
        stmt = self._sql.insert(schema.api_key).values(name=key.name, key_sha256=key.key_sha256,
                                                       scopes=scopes).on_conflict_do_nothing()
        return self._conn.execute(stmt).rowcount == 1

    # --- helpers --------------------------------------------------------------------------
    def _run(self, statement: str, domain: str, *params: Any) -> sa.CursorResult:
        domain_id = self._repo.domain_id(self._conn, domain)
        return self._conn.exec_driver_sql(self._sql.statements[statement], (domain_id, *params))


class _Dialect:
    """Batch statements and parameter packing for one SQL dialect."""

    def __init__(self, statements: dict[str, str], insert: Any) -> None:
        self.statements = statements
        self.insert = insert

    def array(self, values: Sequence[str]) -> Any:
        raise NotImplementedError

    def rows(self, rows: Sequence[PseudonymRow]) -> tuple:
        raise NotImplementedError


class _SqliteDialect(_Dialect):
    def array(self, values: Sequence[str]) -> Any:
        return orjson.dumps(values).decode()

    def rows(self, rows: Sequence[PseudonymRow]) -> tuple:
        return (orjson.dumps([(r.original, r.number, r.pseudonym) for r in rows]).decode(),)


class _PostgresDialect(_Dialect):
    def array(self, values: Sequence[str]) -> Any:
        return list(values)

    def rows(self, rows: Sequence[PseudonymRow]) -> tuple:
        return ([r.original for r in rows], [r.number for r in rows], [r.pseudonym for r in rows])


def _sqlite_statements() -> dict[str, str]:
    batch = "(SELECT value FROM json_each(?))"
    return {
        "get_pseudonyms": "SELECT original, pseudonym FROM pseudonym "
                          f"WHERE domain_id = ? AND number = 0 AND original IN {batch}",
        "get_pseudonyms_any": "SELECT DISTINCT original, 0 FROM pseudonym "
                              f"WHERE domain_id = ? AND original IN {batch}",
        "get_pseudonym_rows": "SELECT original, number, pseudonym FROM pseudonym "
                              f"WHERE domain_id = ? AND original IN {batch} ORDER BY original, number",
        "get_originals": "SELECT pseudonym, original FROM pseudonym "
                         f"WHERE domain_id = ? AND pseudonym IN {batch}",
        # WHERE true: SQLite needs it to parse ON CONFLICT after INSERT ... SELECT.
        "insert_pseudonyms": "INSERT INTO pseudonym (domain_id, original, number, pseudonym) "
                             "SELECT ?, value ->> 0, value ->> 1, value ->> 2 FROM json_each(?) WHERE true "
                             "ON CONFLICT DO NOTHING RETURNING pseudonym",
        "delete_originals": "DELETE FROM pseudonym "
                            f"WHERE domain_id = ? AND original IN {batch} RETURNING original",
        "anonymize_originals": "UPDATE pseudonym SET original = NULL "
                               f"WHERE domain_id = ? AND original IN {batch}",
        "count_pseudonyms": "SELECT count(*) FROM pseudonym WHERE domain_id = ?",
    }


def _postgres_statements() -> dict[str, str]:
    return {
        "get_pseudonyms": "SELECT original, pseudonym FROM pseudonym "
                          "WHERE domain_id = %s AND number = 0 AND original = ANY(%s)",
        "get_pseudonyms_any": "SELECT DISTINCT original, 0 FROM pseudonym "
                              "WHERE domain_id = %s AND original = ANY(%s)",
        "get_pseudonym_rows": "SELECT original, number, pseudonym FROM pseudonym "
                              "WHERE domain_id = %s AND original = ANY(%s) ORDER BY original, number",
        "get_originals": "SELECT pseudonym, original FROM pseudonym "
                         "WHERE domain_id = %s AND pseudonym = ANY(%s)",
        "insert_pseudonyms": "INSERT INTO pseudonym (domain_id, original, number, pseudonym) "
                             "SELECT %s, o, n, p FROM unnest(%s::text[], %s::int[], %s::text[]) "
                             "WITH ORDINALITY AS t(o, n, p, i) ORDER BY i "
                             "ON CONFLICT DO NOTHING RETURNING pseudonym",
        "delete_originals": "DELETE FROM pseudonym "
                            "WHERE domain_id = %s AND original = ANY(%s) RETURNING original",
        "anonymize_originals": "UPDATE pseudonym SET original = NULL "
                               "WHERE domain_id = %s AND original = ANY(%s)",
        "count_pseudonyms": "SELECT count(*) FROM pseudonym WHERE domain_id = %s",
    }


def _dialect_insert() -> tuple[Any, Any]:
    from sqlalchemy.dialects import postgresql, sqlite

    return sqlite.insert, postgresql.insert


_sqlite_insert, _postgres_insert = _dialect_insert()
_SQLITE = _SqliteDialect(_sqlite_statements(), _sqlite_insert)
_POSTGRES = _PostgresDialect(_postgres_statements(), _postgres_insert)


def _create_engine(url: str) -> Engine:
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    # hide_parameters: SQL errors must not carry originals into logs or exception texts.
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, hide_parameters=True, connect_args={"timeout": 30})
        _take_over_sqlite_transactions(engine)
        return engine
    return sa.create_engine(url, hide_parameters=True, pool_size=10, max_overflow=20, pool_pre_ping=True)


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
        write = conn.get_execution_options().get("ttp_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
