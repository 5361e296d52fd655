"""The example plugin's own store: the last count per domain, on SQL and on MongoDB."""

from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from ttp_gateway.backends.base import StoreDefinition, StoreKey
from ttp_gateway.backends.mongo import MongoIndex, MongoStore
from ttp_gateway.backends.sql import SqlStore, prepared


class CountStore:
    """The last count of each domain."""

    def remember(self, domain: str, count: int) -> int | None:
        """Keep `count` as the domain's last count; the count kept before, if any."""
        raise NotImplementedError


COUNTS = StoreKey("example")

metadata = MetaData()
last_count = Table(
    "example_last_count", metadata,
    Column("domain", String(255), primary_key=True),
    Column("count", Integer, nullable=False),
)


class _Statements:
    def __init__(self, build):
        insert = sqlite.insert if build.name == "sqlite" else postgresql.insert
        upsert = insert(last_count).values(domain=bindparam("domain"), count=bindparam("count"))
        self.get = build.compile(select(last_count.c.count).where(last_count.c.domain == bindparam("domain")))
        self.put = build.compile(upsert.on_conflict_do_update(index_elements=[last_count.c.domain],
                                                              set_={"count": upsert.excluded["count"]}))


class SqlCountStore(CountStore):
    def __init__(self, session):
        self._session = session
        self._sql = prepared(_Statements, session.dialect)

    def remember(self, domain, count):
        rows = self._session.run(self._sql.get, domain=domain)
        self._session.run(self._sql.put, domain=domain, count=count)
        return rows[0][0] if rows else None


class MongoCountStore(CountStore):
    def __init__(self, session):
        self._counts = session.collection("example_last_counts")

    def remember(self, domain, count):
        before = self._counts.find_one_and_update({"domain": domain}, {"$set": {"count": count}}, upsert=True)
        return before["count"] if before else None


def definition():
    return StoreDefinition(
        key=COUNTS,
        sql=SqlStore(metadata=metadata, migrations=Path(__file__).parent / "migrations", open=SqlCountStore),
        mongo=MongoStore(indexes={"example_last_counts": [MongoIndex("count_domain", [("domain", 1)], unique=True)]},
                         open=MongoCountStore),
    )
