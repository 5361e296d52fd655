"""The gPAS store on SQL (SQLite, PostgreSQL): tables and statements built from them.

Every batch is one statement (`SqlBuilder.in_batch`, `rows`); inserts are `INSERT ... ON CONFLICT
DO NOTHING RETURNING`, so a row that a concurrent writer stored first is skipped, not an error,
and the caller reads back theirs. Domain ids are looked up once per process; an id is cached only
after the unit that saw it committed, so a domain created by a unit that rolled back is never
remembered.
"""

from __future__ import annotations

from typing import Any, Sequence

import orjson
from sqlalchemy import (JSON, Column, DateTime, ForeignKey, Index, Integer, MetaData, String, Table, Text,
                        bindparam, delete, func, select, update)
from sqlalchemy.dialects import postgresql, sqlite

from ttp_gateway.backends.base import NotFound
from ttp_gateway.backends.sql import SqlBuilder, SqlSession, prepared

from .store import DomainRecord, PseudonymRow, PseudonymStore

metadata = MetaData()

domain = Table(
    "gpas_domain", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("description", Text, nullable=False, server_default=""),
    Column("settings", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

pseudonym = Table(
    "gpas_pseudonym", metadata,
    Column("domain_id", Integer, ForeignKey("gpas_domain.id", ondelete="CASCADE"), primary_key=True),
    Column("pseudonym", String(255), primary_key=True),
    Column("original", Text, nullable=True),
    Column("number", Integer, nullable=False, server_default="0"),
    sqlite_with_rowid=False,
)
Index("ix_gpas_pseudonym_original", pseudonym.c.domain_id, pseudonym.c.original, pseudonym.c.number,
      unique=True)


class _Statements:
    def __init__(self, build: SqlBuilder) -> None:
        p, d = pseudonym.c, domain.c
        insert = sqlite.insert if build.name == "sqlite" else postgresql.insert
        of_domain = p.domain_id == bindparam("domain")
        by_original = build.in_batch(p.original, "originals")
        self.domain_id = build.compile(select(d.id).where(d.name == bindparam("name")))
        self.get_domains = build.compile(select(d.name, d.settings, d.description).order_by(d.name))
        self.insert_domain = build.compile(
            insert(domain).values(name=bindparam("name"), settings=bindparam("settings"),
                                  description=bindparam("description"))
            .on_conflict_do_nothing().returning(d.id))
        self.update_domain = build.compile(
            update(domain).where(d.name == bindparam("name"))
            .values(settings=bindparam("settings"), description=bindparam("description")))
        # One original: the most frequent request of all, cheaper than unpacking a batch.
        self.get_pseudonym = build.compile(
            select(p.original, p.pseudonym).where(of_domain, p.original == bindparam("original"), p.number == 0))
        self.get_pseudonyms = build.compile(
            select(p.original, p.pseudonym).where(of_domain, by_original, p.number == 0))
        self.get_pseudonym_rows = build.compile(
            select(p.original, p.number, p.pseudonym).where(of_domain, by_original)
            .order_by(p.original, p.number))
        self.get_original = build.compile(
            select(p.pseudonym, p.original).where(of_domain, p.pseudonym == bindparam("pseudonym")))
        self.get_originals = build.compile(
            select(p.pseudonym, p.original).where(of_domain, build.in_batch(p.pseudonym, "pseudonyms")))
        rows = build.rows("rows", original=Text(), number=Integer(), pseudonym=String())
        self.insert_pseudonyms = build.compile(
            insert(pseudonym).from_select(
                ["domain_id", "original", "number", "pseudonym"],
                select(bindparam("domain", type_=Integer), rows.c.original, rows.c.number, rows.c.pseudonym)
                .order_by(rows.c.i))
            .on_conflict_do_nothing().returning(p.original, p.number, p.pseudonym))
        self.known_originals = build.compile(select(p.original).distinct().where(of_domain, by_original))
        self.delete_originals = build.compile(
            delete(pseudonym).where(of_domain, by_original).returning(p.original))
        self.anonymize_originals = build.compile(
            update(pseudonym).where(of_domain, by_original).values(original=None))
        self.count = build.compile(select(func.count()).select_from(pseudonym).where(of_domain))


class SqlPseudonymStore(PseudonymStore):
    def __init__(self, session: SqlSession) -> None:
        self._session = session
        self._sql = prepared(_Statements, session.dialect)
        self._run = session.run
        # name -> id of the domains this process knows for good (see the module docstring)
        self._ids: dict[str, int] = session.state.setdefault("domain_ids", {})
        self._seen: dict[str, int] = {}
        self._single_lookups = session.dialect.name == "sqlite"

    # --- domains ------------------------------------------------------------------------------
    def get_domains(self) -> list[DomainRecord]:
        return [DomainRecord(name=name, settings=_json(settings), description=description)
                for name, settings, description in self._run(self._sql.get_domains)]

    def put_domain(self, record: DomainRecord) -> bool:
        settings = orjson.dumps(dict(record.settings)).decode()
        # Insert first: of processes starting together, one inserts and the others update.
        if self._run(self._sql.insert_domain, name=record.name, settings=settings,
                     description=record.description):
            return True
        self._run(self._sql.update_domain, name=record.name, settings=settings, description=record.description)
        return False

    # --- pseudonyms ---------------------------------------------------------------------------
    def get_pseudonyms(self, domain_name: str, originals: Sequence[str]) -> dict[str, str]:
        if not originals:
            return {}
        domain_id = self._domain_id(domain_name)
        if len(originals) == 1 and self._single_lookups:
            return dict(self._run(self._sql.get_pseudonym, domain=domain_id, original=originals[0]))
        return dict(self._run(self._sql.get_pseudonyms, domain=domain_id, originals=originals))

    def get_pseudonym_rows(self, domain_name: str, originals: Sequence[str]) -> dict[str, list[PseudonymRow]]:
        result: dict[str, list[PseudonymRow]] = {}
        if originals:
            for row in self._run(self._sql.get_pseudonym_rows, domain=self._domain_id(domain_name),
                                 originals=originals):
                result.setdefault(row[0], []).append(PseudonymRow(*row))
        return result

    def get_originals(self, domain_name: str, pseudonyms: Sequence[str]) -> dict[str, str | None]:
        if not pseudonyms:
            return {}
        domain_id = self._domain_id(domain_name)
        if len(pseudonyms) == 1 and self._single_lookups:
            return dict(self._run(self._sql.get_original, domain=domain_id, pseudonym=pseudonyms[0]))
        return dict(self._run(self._sql.get_originals, domain=domain_id, pseudonyms=pseudonyms))

    def insert_pseudonyms(self, domain_name: str, rows: Sequence[PseudonymRow]) -> set[PseudonymRow]:
        if not rows:
            return set()
        # Plain tuples: they hash and compare equal to the PseudonymRows they stand for.
        stored = self._run(self._sql.insert_pseudonyms, domain=self._domain_id(domain_name), rows=rows)
        return set(stored)  # type: ignore[arg-type]

    def delete_originals(self, domain_name: str, originals: Sequence[str]) -> set[str]:
        if not originals:
            return set()
        return {original for (original,) in self._run(self._sql.delete_originals,
                                                       domain=self._domain_id(domain_name),
                                                       originals=originals)}

    def anonymize_originals(self, domain_name: str, originals: Sequence[str]) -> set[str]:
        if not originals:
            return set()
        domain_id = self._domain_id(domain_name)
        known = {original for (original,) in self._run(self._sql.known_originals, domain=domain_id,
                                                        originals=originals)}
        if known:
            self._run(self._sql.anonymize_originals, domain=domain_id, originals=sorted(known))
        return known

    def count_pseudonyms(self, domain_name: str) -> int:
        return int(self._run(self._sql.count, domain=self._domain_id(domain_name))[0][0])

    def _domain_id(self, name: str) -> int:
        domain_id = self._ids.get(name) or self._seen.get(name)
        if domain_id is None:
            rows = self._run(self._sql.domain_id, name=name)
            if not rows:
                raise NotFound(f"domain {name!r} is not in the store")
            domain_id = self._seen[name] = rows[0][0]
            if self._session.write:
                self._session.after_commit(lambda: self._ids.setdefault(name, domain_id))
            else:
                self._ids.setdefault(name, domain_id)  # read units see committed data only
        return domain_id


def _json(value: Any) -> Any:
    """A JSON column's value: PostgreSQL's driver decodes it already, SQLite's does not."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value
