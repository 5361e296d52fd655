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
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from ..base import (BloomFilterRow, ClearingCase, DomainRecord, PseudonymRow, Repository, StorageError,
                    StoredApiKey, StudyRecord, Task, Transaction, UnknownDomain)

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
        # SQLite: one connection per thread, kept for the thread's life; the pool's check-out and
        # check-in cost more than a single-row read.
        self._own_connections = threading.local()
        self._opened: list[Any] = []

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
        sqlite = self.dialect == "sqlite"
        try:
            connection = self._thread_connection() if sqlite else self.engine.raw_connection()
        except sa.exc.OperationalError as exc:
            raise StorageError(f"storage unavailable ({type(exc.orig).__name__})") from None
        try:
            if sqlite and write:
                connection.execute("BEGIN IMMEDIATE")
            # SQLite reads run without BEGIN: in WAL mode every statement reads one committed
            # state, which is all a read of ours needs, and the round of BEGIN/COMMIT would cost
            # a single-row lookup a quarter of its time.
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
            if not sqlite:
                connection.close()  # back to the pool

    def _thread_connection(self) -> Any:
        connection = getattr(self._own_connections, "connection", None)
        if connection is None:
            connection = self.engine.raw_connection()
            connection.detach()  # this thread's own, outside the pool
            self._own_connections.connection = connection
            self._opened.append(connection)
        return connection

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"storage unavailable ({type(exc).__name__})") from None

    def close(self) -> None:
        for connection in self._opened:
            connection.close()
        self._opened.clear()
        self._own_connections = threading.local()
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
        # Insert first: of processes starting together, one inserts and the others update.
        if self._execute(self._sql.insert_domain, (domain.name, settings, domain.description)):
            return True
        self._execute(self._sql.update_domain, (settings, domain.description, domain.name))
        return False

    # --- pseudonyms -----------------------------------------------------------------------
    def get_pseudonyms(self, domain: str, originals: Sequence[str]) -> dict[str, str]:
        if not originals:
            return {}
        if len(originals) == 1 and self._sql.single_lookups:  # the most frequent request of all
            return dict(self._batch("get_pseudonym", domain, originals[0]))
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
        if len(pseudonyms) == 1 and self._sql.single_lookups:
            return dict(self._batch("get_original", domain, pseudonyms[0]))
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

    # --- linkage: studies and persons -------------------------------------------------------
    def get_studies(self) -> list[StudyRecord]:
        return [StudyRecord(name=name, settings=_json(settings))
                for name, settings in self._execute(self._sql.get_studies)]

    def put_study(self, study: StudyRecord) -> bool:
        settings = orjson.dumps(dict(study.settings)).decode()
        if self._execute(self._sql.insert_study, (study.name, settings)):
            return True
        self._execute(self._sql.update_study, (settings, study.name))
        return False

    def lock_study(self, study: str) -> None:
        if not self._execute(self._sql.lock_study, (study,)):
            raise StorageError(f"study {study!r} is not in the store")

    def create_persons(self, study: str, count: int) -> list[int]:
        if count <= 0:
            return []
        return sorted(row[0] for row in self._execute(self._sql.create_persons, (study, count)))

    def add_bloom_filters(self, study: str, filters: Sequence[tuple[int, str, str, bytes]]) -> None:
        if not filters:
            return
        first = self._next_sequence(study, len(filters))
        rows = [(study, version, person, site, bloom_filter, first + offset)
                for offset, (person, site, version, bloom_filter) in enumerate(filters)]
        self._execute_many(self._sql.insert_bloom_filter, rows)

    def replace_bloom_filters(self, study: str, person: int, site: str, version: str,
                              bloom_filter: bytes) -> None:
        current = [row[0] for row in self._execute(self._sql.person_bloom_filters,
                                                   (study, person, site, version))]
        first = self._next_sequence(study, len(current) + 1)
        # Withdrawn rows keep their id with a new sequence number, so readers see them go.
        self._execute_many(self._sql.withdraw_bloom_filter,
                           [(first + offset, bf_id) for offset, bf_id in enumerate(current)])
        self._execute_many(self._sql.insert_bloom_filter,
                           [(study, version, person, site, bloom_filter, first + len(current))])

    def get_bloom_filter_changes(self, study: str, version: str, after: int) -> list[BloomFilterRow]:
        return [BloomFilterRow(bf_id, person, site, version, None if data is None else bytes(data), sequence)
                for bf_id, person, site, data, sequence
                in self._execute(self._sql.bloom_filter_changes, (study, version, after))]

    def get_bloom_filter_owners(self, study: str, ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        if not ids:
            return {}
        rows = self._execute(self._sql.bloom_filter_owners, (study, self._sql.array(list(ids))))
        return {bf_id: (person, site) for bf_id, person, site in rows}

    def find_persons(self, study: str, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        return dict(self._execute(self._sql.find_persons, (study, self._sql.array(keys))))

    def add_person_keys(self, study: str, keys: Sequence[tuple[str, int]]) -> None:
        if keys:
            self._execute_many(self._sql.insert_person_key, [(study, key, person) for key, person in keys])

    # --- linkage: clearing and tasks ----------------------------------------------------------
    def add_case(self, case: ClearingCase) -> None:
        self._execute(self._sql.insert_case, (
            case.id, case.study, case.site, case.version, case.bloom_filter,
            orjson.dumps(case.candidates).decode(), case.status, case.person,
            _millis(case.created), _millis(case.expires)))

    def get_case(self, case_id: str) -> ClearingCase | None:
        rows = self._execute(self._sql.select_case + " WHERE id = " + self._sql.p, (case_id,))
        return _case(rows[0]) if rows else None

    def close_case(self, case_id: str, status: str, person: int | None) -> bool:
        return bool(self._execute(self._sql.close_case, (status, person, case_id)))

    def get_due_cases(self, study: str, now: datetime) -> list[ClearingCase]:
        p = self._sql.p
        rows = self._execute(self._sql.select_case + f" WHERE study = {p} AND status = 'open' AND expires <= {p}",
                             (study, _millis(now)))
        return [_case(row) for row in rows]

    def get_open_cases(self, study: str) -> list[ClearingCase]:
        rows = self._execute(self._sql.select_case + f" WHERE study = {self._sql.p} AND status = 'open' "
                             "ORDER BY created, id", (study,))
        return [_case(row) for row in rows]

    def update_case_candidates(self, case_id: str, candidates: list[dict[str, Any]]) -> None:
        self._execute(self._sql.update_case_candidates, (orjson.dumps(candidates).decode(), case_id))

    def add_tasks(self, tasks: Sequence[Task]) -> None:
        self._execute_many(self._sql.insert_task, [
            (t.id, t.study, t.site, t.kind, t.case, orjson.dumps(t.details).decode(), t.status,
             _millis(t.created), _millis(t.expires)) for t in tasks])

    def get_task(self, task_id: str) -> Task | None:
        rows = self._execute(self._sql.select_task + " WHERE id = " + self._sql.p, (task_id,))
        return _task(rows[0]) if rows else None

    def get_open_tasks(self, study: str, site: str | None = None, case: str | None = None) -> list[Task]:
        p = self._sql.p
        where, params = [f"study = {p}", "status = 'open'"], [study]
        if site is not None:
            where.append(f"site = {p}")
            params.append(site)
        if case is not None:
            where.append(f"case_id = {p}")
            params.append(case)
        rows = self._execute(self._sql.select_task + " WHERE " + " AND ".join(where) + " ORDER BY created, id",
                             tuple(params))
        return [_task(row) for row in rows]

    def set_task_status(self, task_ids: Sequence[str], status: str) -> None:
        self._execute_many(self._sql.set_task_status, [(status, task_id) for task_id in task_ids])

    def expire_tasks(self, study: str, now: datetime) -> int:
        return len(self._execute(self._sql.expire_tasks, (study, _millis(now))))

    def put_idat(self, case_id: str, task_id: str, site: str, idat: Mapping[str, Any]) -> None:
        self._execute(self._sql.insert_idat, (task_id, case_id, site, orjson.dumps(idat).decode()))

    def get_idat(self, case_id: str) -> dict[str, Mapping[str, Any]]:
        return {task_id: orjson.loads(data)
                for task_id, data in self._execute(self._sql.select_idat, (case_id,))}

    def delete_idat(self, case_id: str) -> None:
        self._execute(self._sql.delete_idat, (case_id,))

    # --- helpers --------------------------------------------------------------------------
    def _next_sequence(self, study: str, count: int) -> int:
        """The first of `count` new change numbers of the study (held under its lock)."""
        rows = self._execute(self._sql.advance_sequence, (count, study))
        if not rows:
            raise StorageError(f"study {study!r} is not in the store")
        return rows[0][0] - count + 1

    def _execute_many(self, sql: str, rows: Sequence[tuple]) -> None:
        if not rows:
            return
        cursor = self._connection.cursor()
        try:
            cursor.executemany(sql, rows)
        finally:
            cursor.close()

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


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _moment(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc)


def _case(row: tuple) -> ClearingCase:
    case_id, study, site, version, bloom_filter, candidates, status, person, created, expires = row
    return ClearingCase(id=case_id, study=study, site=site, version=version, bloom_filter=bloom_filter,
                        candidates=_json(candidates), status=status, person=person,
                        created=_moment(created), expires=_moment(expires))


def _task(row: tuple) -> Task:
    task_id, study, site, kind, case_id, details, status, created, expires = row
    return Task(id=task_id, study=study, site=site, kind=kind, case=case_id, details=_json(details),
                status=status, created=_moment(created), expires=_moment(expires))


def _json(value: Any) -> Any:
    """A JSON column's value: PostgreSQL's driver decodes it already, SQLite's does not."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


class _Dialect:
    """Statements and parameter packing for one SQL dialect."""

    single_lookups = False

    def __init__(self, statements: dict[str, str], placeholder: str) -> None:
        self.statements = statements
        p = placeholder
        self.domain_id = f"SELECT id FROM domain WHERE name = {p}"
        self.get_domains = "SELECT name, settings, description FROM domain ORDER BY name"
        self.update_domain = (f"UPDATE domain SET settings = {p}, description = {p} WHERE name = {p} "
                              "RETURNING id")
        self.insert_domain = (f"INSERT INTO domain (name, settings, description) VALUES ({p}, {p}, {p}) "
                              "ON CONFLICT DO NOTHING RETURNING id")
        self.get_api_keys = "SELECT name, key_sha256, scopes FROM api_key ORDER BY name"
        self.insert_api_key = (f"INSERT INTO api_key (name, key_sha256, scopes) VALUES ({p}, {p}, {p}) "
                               "ON CONFLICT DO NOTHING RETURNING name")
        self.p = p
        self.get_studies = "SELECT name, settings FROM study ORDER BY name"
        self.update_study = f"UPDATE study SET settings = {p} WHERE name = {p} RETURNING name"
        self.insert_study = f"INSERT INTO study (name, settings) VALUES ({p}, {p}) ON CONFLICT DO NOTHING RETURNING name"
        self.lock_study = f"SELECT name FROM study WHERE name = {p}"
        self.advance_sequence = (f"UPDATE study SET change_sequence = change_sequence + {p} WHERE name = {p} "
                                 "RETURNING change_sequence")
        self.insert_bloom_filter = ("INSERT INTO bloom_filter (study, version, person, site, bloom_filter, sequence) "
                                    f"VALUES ({p}, {p}, {p}, {p}, {p}, {p})")
        self.person_bloom_filters = (f"SELECT id FROM bloom_filter WHERE study = {p} AND person = {p} AND site = {p} "
                                     f"AND version = {p} AND bloom_filter IS NOT NULL")
        self.withdraw_bloom_filter = f"UPDATE bloom_filter SET bloom_filter = NULL, sequence = {p} WHERE id = {p}"
        self.bloom_filter_changes = ("SELECT id, person, site, bloom_filter, sequence FROM bloom_filter "
                                     f"WHERE study = {p} AND version = {p} AND sequence > {p} ORDER BY sequence")
        self.insert_person_key = (f"INSERT INTO person_key (study, key, person) VALUES ({p}, {p}, {p}) "
                                  "ON CONFLICT DO NOTHING")
        self.insert_case = ("INSERT INTO clearing_case (id, study, site, version, bloom_filter, candidates, status, "
                            f"person, created, expires) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})")
        self.select_case = ("SELECT id, study, site, version, bloom_filter, candidates, status, person, created, "
                            "expires FROM clearing_case")
        self.close_case = (f"UPDATE clearing_case SET status = {p}, person = {p} WHERE id = {p} AND status = 'open' "
                           "RETURNING id")
        self.update_case_candidates = f"UPDATE clearing_case SET candidates = {p} WHERE id = {p}"
        self.insert_task = ("INSERT INTO task (id, study, site, kind, case_id, details, status, created, expires) "
                            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})")
        self.select_task = "SELECT id, study, site, kind, case_id, details, status, created, expires FROM task"
        self.set_task_status = f"UPDATE task SET status = {p} WHERE id = {p}"
        self.expire_tasks = (f"UPDATE task SET status = 'expired' WHERE study = {p} AND status = 'open' "
                             f"AND expires <= {p} RETURNING id")
        self.insert_idat = f"INSERT INTO idat (task_id, case_id, site, data) VALUES ({p}, {p}, {p}, {p})"
        self.select_idat = f"SELECT task_id, data FROM idat WHERE case_id = {p}"
        self.delete_idat = f"DELETE FROM idat WHERE case_id = {p}"

    def array(self, values: Sequence[str]) -> Any:
        raise NotImplementedError

    def rows(self, rows: Sequence[PseudonymRow]) -> tuple:
        raise NotImplementedError


class _SqliteDialect(_Dialect):
    # Unpacking a one-item JSON batch costs more than the lookup itself.
    single_lookups = True

    def __init__(self, statements: dict[str, str], placeholder: str) -> None:
        super().__init__(statements, placeholder)
        self.create_persons = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) "
                               "INSERT INTO person (study) SELECT ?1 FROM n WHERE true RETURNING id")
        self.find_persons = ("SELECT k.key, k.person FROM json_each(?2) AS batch CROSS JOIN person_key AS k "
                             "WHERE k.study = ?1 AND k.key = batch.value")
        self.bloom_filter_owners = ("SELECT b.id, b.person, b.site FROM json_each(?2) AS batch "
                                    "CROSS JOIN bloom_filter AS b WHERE b.id = batch.value AND b.study = ?1")

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
        self.update_study = self.update_study.replace("settings = %s", "settings = %s::json")
        self.insert_study = self.insert_study.replace("VALUES (%s, %s)", "VALUES (%s, %s::json)")
        self.insert_case = self.insert_case.replace("%s, %s, %s, %s, %s, %s, %s", "%s, %s, %s, %s, %s, %s::json, %s", 1)
        self.insert_task = self.insert_task.replace("VALUES (%s, %s, %s, %s, %s, %s,", "VALUES (%s, %s, %s, %s, %s, %s::json,")
        self.update_case_candidates = self.update_case_candidates.replace("candidates = %s", "candidates = %s::json")
        # A row lock on the study: writers of one study queue here, in any process or replica.
        self.lock_study = "SELECT name FROM study WHERE name = %s FOR UPDATE"
        self.create_persons = "INSERT INTO person (study) SELECT %s FROM generate_series(1, %s) RETURNING id"
        self.find_persons = "SELECT key, person FROM person_key WHERE study = %s AND key = ANY(%s)"
        self.bloom_filter_owners = "SELECT id, person, site FROM bloom_filter WHERE study = %s AND id = ANY(%s)"

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
        "get_pseudonym": "SELECT original, pseudonym FROM pseudonym WHERE domain_id = ?1 AND original = ?2 "
                         "AND number = 0",
        "get_original": "SELECT pseudonym, original FROM pseudonym WHERE domain_id = ?1 AND pseudonym = ?2",
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
        cursor.execute("PRAGMA secure_delete = ON")  # deleted identifying data is overwritten in the file
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        migrating = conn.get_execution_options().get("ttp_migrating", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if migrating else "BEGIN")
