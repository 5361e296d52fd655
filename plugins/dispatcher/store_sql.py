"""The dispatcher's store on SQL (SQLite, PostgreSQL): tables and statements built from them.

Times are milliseconds since the epoch (UTC), comparable the same way on every backend. The
study lock is a row lock on the study (`SELECT ... FOR UPDATE` on PostgreSQL; on SQLite the write
unit holds the database's write lock already).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

import orjson
from sqlalchemy import (JSON, BigInteger, Column, ForeignKey, Index, Integer, LargeBinary, MetaData, String,
                        Table, Text, and_, bindparam, delete, func, select, update)
from sqlalchemy.dialects import postgresql, sqlite

from ttp_gateway.backends.base import NotFound
from ttp_gateway.backends.sql import SqlBuilder, SqlSession, prepared

from .store import BloomFilterRow, ClearingCase, LinkageStore, StudyRecord, Task

metadata = MetaData()
ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER keys only

study = Table(
    "dispatcher_study", metadata,
    Column("name", String(255), primary_key=True),
    Column("settings", JSON, nullable=False),
    Column("change_sequence", BigInteger, nullable=False, server_default="0"),
)
person = Table(
    "dispatcher_person", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("study", String(255), ForeignKey("dispatcher_study.name"), nullable=False),
)
bloom_filter = Table(
    "dispatcher_bloom_filter", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("study", String(255), nullable=False),
    Column("version", String(64), nullable=False),
    Column("person", BigInteger, ForeignKey("dispatcher_person.id"), nullable=False),
    Column("site", String(255), nullable=False),
    Column("bloom_filter", LargeBinary, nullable=True),  # NULL once withdrawn
    Column("sequence", BigInteger, nullable=False),
)
Index("ix_dispatcher_bloom_filter_changes", bloom_filter.c.study, bloom_filter.c.version, bloom_filter.c.sequence)
Index("ix_dispatcher_bloom_filter_person", bloom_filter.c.person, bloom_filter.c.site, bloom_filter.c.version)
person_key = Table(
    "dispatcher_person_key", metadata,
    Column("study", String(255), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("person", BigInteger, ForeignKey("dispatcher_person.id"), nullable=False),
)
case = Table(
    "dispatcher_case", metadata,
    Column("id", String(64), primary_key=True),
    Column("study", String(255), nullable=False),
    Column("site", String(255), nullable=False),
    Column("version", String(64), nullable=False),
    Column("bloom_filter", Text, nullable=False),
    Column("candidates", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("person", BigInteger, nullable=True),
    Column("created", BigInteger, nullable=False),
    Column("expires", BigInteger, nullable=False),
)
Index("ix_dispatcher_case_open", case.c.study, case.c.status, case.c.expires)
task = Table(
    "dispatcher_task", metadata,
    Column("id", String(64), primary_key=True),
    Column("study", String(255), nullable=False),
    Column("site", String(255), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("case_id", String(64), nullable=True),
    Column("details", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("expires", BigInteger, nullable=False),
)
Index("ix_dispatcher_task_site", task.c.study, task.c.site, task.c.status)
Index("ix_dispatcher_task_due", task.c.study, task.c.status, task.c.expires)
Index("ix_dispatcher_task_case", task.c.case_id)
# Sealed identifying data of an open clearing case; deleted when the case is decided or aborted.
idat = Table(
    "dispatcher_idat", metadata,
    Column("task_id", String(64), primary_key=True),
    Column("case_id", String(64), nullable=False),
    Column("site", String(255), nullable=False),
    Column("data", LargeBinary, nullable=False),
)
Index("ix_dispatcher_idat_case", idat.c.case_id)

_CASE_COLUMNS = (case.c.id, case.c.study, case.c.site, case.c.version, case.c.bloom_filter, case.c.candidates,
                 case.c.status, case.c.person, case.c.created, case.c.expires)
_TASK_COLUMNS = (task.c.id, task.c.study, task.c.site, task.c.kind, task.c.case_id, task.c.details,
                 task.c.status, task.c.created, task.c.expires)


class _Statements:
    def __init__(self, build: SqlBuilder) -> None:
        insert = sqlite.insert if build.name == "sqlite" else postgresql.insert
        s, b, c, t = study.c, bloom_filter.c, case.c, task.c
        of_study = s.name == bindparam("study")
        self.get_studies = build.compile(select(s.name, s.settings).order_by(s.name))
        self.insert_study = build.compile(
            insert(study).values(name=bindparam("study"), settings=bindparam("settings"))
            .on_conflict_do_nothing().returning(s.name))
        self.update_study = build.compile(update(study).where(of_study).values(settings=bindparam("settings")))
        self.lock_study = build.compile(select(s.name).where(of_study).with_for_update())
        self.advance = build.compile(
            update(study).where(of_study).values(change_sequence=s.change_sequence + bindparam("count"))
            .returning(s.change_sequence))
        slots = build.rows("slots", slot=Integer())
        self.create_persons = build.compile(
            insert(person).from_select(["study"], select(bindparam("study", type_=String)).select_from(slots))
            .returning(person.c.id))
        self.insert_filter = build.compile(insert(bloom_filter).values(
            study=bindparam("study"), version=bindparam("version"), person=bindparam("person"),
            site=bindparam("site"), bloom_filter=bindparam("data"), sequence=bindparam("sequence")))
        self.person_filters = build.compile(select(b.id).where(
            b.study == bindparam("study"), b.person == bindparam("person"), b.site == bindparam("site"),
            b.version == bindparam("version"), b.bloom_filter.is_not(None)).order_by(b.id))
        self.withdraw_filter = build.compile(update(bloom_filter).where(b.id == bindparam("id"))
                                             .values(bloom_filter=None, sequence=bindparam("sequence")))
        self.changes = build.compile(
            select(b.id, b.person, b.site, b.bloom_filter, b.sequence)
            .where(b.study == bindparam("study"), b.version == bindparam("version"),
                   b.sequence > bindparam("after"))
            .order_by(b.sequence))
        self.owners = build.compile(select(b.id, b.person, b.site).where(
            b.study == bindparam("study"), build.in_batch(b.id, "ids")))
        self.find_persons = build.compile(select(person_key.c.key, person_key.c.person).where(
            person_key.c.study == bindparam("study"), build.in_batch(person_key.c.key, "keys")))
        self.add_person_key = build.compile(
            insert(person_key).values(study=bindparam("study"), key=bindparam("key"), person=bindparam("person"))
            .on_conflict_do_nothing())
        self.insert_case = build.compile(insert(case).values(
            id=bindparam("id"), study=bindparam("study"), site=bindparam("site"), version=bindparam("version"),
            bloom_filter=bindparam("bloom_filter"), candidates=bindparam("candidates"),
            status=bindparam("status"), person=bindparam("person"), created=bindparam("created"),
            expires=bindparam("expires")))
        self.get_case = build.compile(select(*_CASE_COLUMNS).where(c.id == bindparam("id")))
        self.close_case = build.compile(
            update(case).where(c.id == bindparam("id"), c.status == "open")
            .values(status=bindparam("status"), person=bindparam("person")).returning(c.id))
        open_cases = and_(c.study == bindparam("study"), c.status == "open")
        self.due_cases = build.compile(select(*_CASE_COLUMNS).where(open_cases, c.expires <= bindparam("now"))
                                       .order_by(c.expires, c.id))
        self.open_cases = build.compile(select(*_CASE_COLUMNS).where(open_cases).order_by(c.created, c.id))
        self.update_candidates = build.compile(update(case).where(c.id == bindparam("id"))
                                               .values(candidates=bindparam("candidates")))
        self.insert_task = build.compile(insert(task).values(
            id=bindparam("id"), study=bindparam("study"), site=bindparam("site"), kind=bindparam("kind"),
            case_id=bindparam("case"), details=bindparam("details"), status=bindparam("status"),
            created=bindparam("created"), expires=bindparam("expires")))
        self.get_task = build.compile(select(*_TASK_COLUMNS).where(t.id == bindparam("id")))
        open_tasks = and_(t.study == bindparam("study"), t.status == "open")
        order = (t.created, t.id)
        self.open_tasks = build.compile(select(*_TASK_COLUMNS).where(open_tasks).order_by(*order))
        self.open_tasks_of_site = build.compile(
            select(*_TASK_COLUMNS).where(open_tasks, t.site == bindparam("site")).order_by(*order))
        self.open_tasks_of_case = build.compile(
            select(*_TASK_COLUMNS).where(open_tasks, t.case_id == bindparam("case")).order_by(*order))
        self.open_tasks_of_site_and_case = build.compile(
            select(*_TASK_COLUMNS).where(open_tasks, t.site == bindparam("site"), t.case_id == bindparam("case"))
            .order_by(*order))
        self.set_task_status = build.compile(update(task).where(build.in_batch(t.id, "ids"))
                                             .values(status=bindparam("status")))
        self.complete_task = build.compile(update(task).where(t.id == bindparam("id"))
                                           .values(status="done", details=bindparam("details")))
        self.expire_tasks = build.compile(update(task).where(open_tasks, t.expires <= bindparam("now"))
                                          .values(status="expired").returning(t.id))
        self.insert_idat = build.compile(insert(idat).values(
            task_id=bindparam("task"), case_id=bindparam("case"), site=bindparam("site"), data=bindparam("data")))
        self.get_idat = build.compile(select(idat.c.task_id, idat.c.data).where(idat.c.case_id == bindparam("case")))
        self.delete_idat = build.compile(delete(idat).where(idat.c.case_id == bindparam("case")))


class SqlLinkageStore(LinkageStore):
    def __init__(self, session: SqlSession) -> None:
        self._session = session
        self._run = session.run
        self._sql = prepared(_Statements, session.dialect)

    # --- studies and persons ------------------------------------------------------------------
    def get_studies(self) -> list[StudyRecord]:
        return [StudyRecord(name, _json(settings)) for name, settings in self._run(self._sql.get_studies)]

    def put_study(self, record: StudyRecord) -> bool:
        settings = orjson.dumps(dict(record.settings)).decode()
        if self._run(self._sql.insert_study, study=record.name, settings=settings):
            return True
        self._run(self._sql.update_study, study=record.name, settings=settings)
        return False

    def lock_study(self, name: str) -> None:
        if not self._run(self._sql.lock_study, study=name):
            raise NotFound(f"study {name!r} is not in the store")

    def create_persons(self, name: str, count: int) -> list[int]:
        if count <= 0:
            return []
        return sorted(row[0] for row in self._run(self._sql.create_persons, study=name,
                                                   slots=[(0,)] * count))

    def add_bloom_filters(self, name: str, filters: Sequence[tuple[int, str, str, bytes]]) -> None:
        if not filters:
            return
        first = self._next_sequence(name, len(filters))
        self._session.run_many(self._sql.insert_filter, [
            {"study": name, "version": version, "person": person_id, "site": site, "data": data,
             "sequence": first + offset}
            for offset, (person_id, site, version, data) in enumerate(filters)])

    def replace_bloom_filters(self, name: str, person_id: int, site: str, version: str,
                              data: bytes) -> None:
        current = [row[0] for row in self._run(self._sql.person_filters, study=name, person=person_id,
                                               site=site, version=version)]
        first = self._next_sequence(name, len(current) + 1)
        # Withdrawn rows keep their id with a new change number, so readers see them go.
        self._session.run_many(self._sql.withdraw_filter, [
            {"id": bf_id, "sequence": first + offset} for offset, bf_id in enumerate(current)])
        self._run(self._sql.insert_filter, study=name, version=version, person=person_id, site=site, data=data,
                  sequence=first + len(current))

    def get_bloom_filter_changes(self, name: str, version: str, after: int) -> list[BloomFilterRow]:
        return [BloomFilterRow(bf_id, owner, site, version, None if data is None else bytes(data), sequence)
                for bf_id, owner, site, data, sequence
                in self._run(self._sql.changes, study=name, version=version, after=after)]

    def get_bloom_filter_owners(self, name: str, ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        if not ids:
            return {}
        return {bf_id: (owner, site) for bf_id, owner, site in self._run(self._sql.owners, study=name,
                                                                          ids=list(ids))}

    def find_persons(self, name: str, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        return dict(self._run(self._sql.find_persons, study=name, keys=list(keys)))  # type: ignore[arg-type]

    def add_person_keys(self, name: str, keys: Sequence[tuple[str, int]]) -> None:
        self._session.run_many(self._sql.add_person_key,
                               [{"study": name, "key": key, "person": owner} for key, owner in keys])

    # --- clearing and tasks -------------------------------------------------------------------
    def add_case(self, clearing: ClearingCase) -> None:
        self._run(self._sql.insert_case, id=clearing.id, study=clearing.study, site=clearing.site,
                  version=clearing.version, bloom_filter=clearing.bloom_filter,
                  candidates=orjson.dumps(clearing.candidates).decode(), status=clearing.status,
                  person=clearing.person, created=_millis(clearing.created), expires=_millis(clearing.expires))

    def get_case(self, case_id: str) -> ClearingCase | None:
        rows = self._run(self._sql.get_case, id=case_id)
        return _case(rows[0]) if rows else None

    def close_case(self, case_id: str, status: str, decided: int | None) -> bool:
        return bool(self._run(self._sql.close_case, id=case_id, status=status, person=decided))

    def get_due_cases(self, name: str, now: datetime) -> list[ClearingCase]:
        return [_case(row) for row in self._run(self._sql.due_cases, study=name, now=_millis(now))]

    def get_open_cases(self, name: str) -> list[ClearingCase]:
        return [_case(row) for row in self._run(self._sql.open_cases, study=name)]

    def update_case_candidates(self, case_id: str, candidates: list[dict[str, Any]]) -> None:
        self._run(self._sql.update_candidates, id=case_id, candidates=orjson.dumps(candidates).decode())

    def add_tasks(self, tasks: Sequence[Task]) -> None:
        self._session.run_many(self._sql.insert_task, [
            {"id": t.id, "study": t.study, "site": t.site, "kind": t.kind, "case": t.case,
             "details": orjson.dumps(t.details).decode(), "status": t.status,
             "created": _millis(t.created), "expires": _millis(t.expires)} for t in tasks])

    def get_task(self, task_id: str) -> Task | None:
        rows = self._run(self._sql.get_task, id=task_id)
        return _task(rows[0]) if rows else None

    def get_open_tasks(self, name: str, site: str | None = None, case: str | None = None) -> list[Task]:
        sql = self._sql
        if site is not None and case is not None:
            rows = self._run(sql.open_tasks_of_site_and_case, study=name, site=site, case=case)
        elif site is not None:
            rows = self._run(sql.open_tasks_of_site, study=name, site=site)
        elif case is not None:
            rows = self._run(sql.open_tasks_of_case, study=name, case=case)
        else:
            rows = self._run(sql.open_tasks, study=name)
        return [_task(row) for row in rows]

    def set_task_status(self, task_ids: Sequence[str], status: str) -> None:
        if task_ids:
            self._run(self._sql.set_task_status, ids=list(task_ids), status=status)

    def complete_task(self, task_id: str, details: dict[str, Any]) -> None:
        self._run(self._sql.complete_task, id=task_id, details=orjson.dumps(details).decode())

    def expire_tasks(self, name: str, now: datetime) -> int:
        return len(self._run(self._sql.expire_tasks, study=name, now=_millis(now)))

    def put_idat(self, case_id: str, task_id: str, site: str, sealed: bytes) -> None:
        self._run(self._sql.insert_idat, task=task_id, case=case_id, site=site, data=sealed)

    def get_idat(self, case_id: str) -> dict[str, bytes]:
        return {task_id: bytes(data) for task_id, data in self._run(self._sql.get_idat, case=case_id)}

    def delete_idat(self, case_id: str) -> None:
        self._run(self._sql.delete_idat, case=case_id)

    def _next_sequence(self, name: str, count: int) -> int:
        """The first of `count` new change numbers of the study (held under its lock)."""
        rows = self._run(self._sql.advance, study=name, count=count)
        if not rows:
            raise NotFound(f"study {name!r} is not in the store")
        return int(rows[0][0]) - count + 1


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _moment(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc)


def _case(row: tuple[Any, ...]) -> ClearingCase:
    case_id, name, site, version, data, candidates, status, decided, created, expires = row
    return ClearingCase(id=case_id, study=name, site=site, version=version, bloom_filter=data,
                        candidates=_json(candidates), status=status, person=decided,
                        created=_moment(created), expires=_moment(expires))


def _task(row: tuple[Any, ...]) -> Task:
    task_id, name, site, kind, case_id, details, status, created, expires = row
    return Task(id=task_id, study=name, site=site, kind=kind, case=case_id, details=_json(details),
                status=status, created=_moment(created), expires=_moment(expires))


def _json(value: Any) -> Any:
    """A JSON column's value: PostgreSQL's driver decodes it already, SQLite's does not."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value
