"""API keys created in storage (`ttp-gateway keys create`): the core's own store.

The core contributes it through the same `ttp_stores` hook as every plugin (`core.builtin`).
Only the SHA-256 digest of a key's secret is stored, with the key's name and its scopes (the
endpoints, operations and per-kind values it may use, as in `[[auth.api_keys]]`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import orjson
from sqlalchemy import JSON, Column, DateTime, MetaData, String, Table, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from ttp_gateway.backends.base import StoreDefinition, StoreKey
from ttp_gateway.backends.mongo import MongoIndex, MongoSession, MongoStore
from ttp_gateway.backends.sql import SqlBuilder, SqlSession, SqlStore, prepared


@dataclass(frozen=True)
class StoredApiKey:
    """An API key in storage: its name, the digest of its secret, and its scopes."""

    name: str
    key_sha256: str
    scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def as_settings(self) -> dict[str, Any]:
        """The key in the shape of an `[[auth.api_keys]]` table."""
        return {"name": self.name, "key_sha256": self.key_sha256,
                **{kind: list(values) for kind, values in self.scopes.items()}}


class KeyStore:
    """The API keys in storage."""

    def get_api_keys(self) -> list[StoredApiKey]:
        """All stored keys, by name."""
        raise NotImplementedError

    def add_api_key(self, key: StoredApiKey) -> bool:
        """Store a new key; False if its name or digest is taken."""
        raise NotImplementedError


KEYS: StoreKey[KeyStore] = StoreKey("core")

# --- SQL -------------------------------------------------------------------------------------

metadata = MetaData()
api_key = Table(
    "core_api_key", metadata,
    Column("name", String(255), primary_key=True),
    Column("key_sha256", String(64), nullable=False, unique=True),
    Column("scopes", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


class _SqlStatements:
    def __init__(self, build: SqlBuilder) -> None:
        insert = (sqlite.insert if build.name == "sqlite" else postgresql.insert)(api_key)
        self.get = build.compile(select(api_key.c.name, api_key.c.key_sha256, api_key.c.scopes)
                                 .order_by(api_key.c.name))
        self.add = build.compile(insert.values(name=bindparam("name"), key_sha256=bindparam("key_sha256"),
                                               scopes=bindparam("scopes"))
                                 .on_conflict_do_nothing().returning(api_key.c.name))


class SqlKeyStore(KeyStore):
    def __init__(self, session: SqlSession) -> None:
        self._session = session
        self._sql = prepared(_SqlStatements, session.dialect)

    def get_api_keys(self) -> list[StoredApiKey]:
        return [_key(name, digest, _json(scopes)) for name, digest, scopes in self._session.run(self._sql.get)]

    def add_api_key(self, key: StoredApiKey) -> bool:
        scopes = orjson.dumps({kind: list(values) for kind, values in key.scopes.items()}).decode()
        return bool(self._session.run(self._sql.add, name=key.name, key_sha256=key.key_sha256, scopes=scopes))


# --- MongoDB ---------------------------------------------------------------------------------

class MongoKeyStore(KeyStore):
    def __init__(self, session: MongoSession) -> None:
        self._keys = session.collection("core_api_keys")

    def get_api_keys(self) -> list[StoredApiKey]:
        documents = self._keys.find({}, {"_id": 0, "name": 1, "key_sha256": 1, "scopes": 1},
                                    sort=[("name", 1)])
        return [_key(d["name"], d["key_sha256"], d["scopes"]) for d in documents]

    def add_api_key(self, key: StoredApiKey) -> bool:
        # Read first: a duplicate key inside a transaction would abort it.
        if self._keys.find_one({"$or": [{"name": key.name}, {"key_sha256": key.key_sha256}]}, {"_id": 1}):
            return False
        self._keys.insert_one({"name": key.name, "key_sha256": key.key_sha256,
                               "scopes": {kind: list(values) for kind, values in key.scopes.items()}})
        return True


def _key(name: str, digest: str, scopes: Mapping[str, Any]) -> StoredApiKey:
    return StoredApiKey(name=name, key_sha256=digest, scopes={k: tuple(v) for k, v in scopes.items()})


def _json(value: Any) -> Any:
    """A JSON column's value: PostgreSQL's driver decodes it already, SQLite's does not."""
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


STORE = StoreDefinition(
    key=KEYS,
    sql=SqlStore(metadata=metadata, migrations=Path(__file__).parent / "migrations", open=SqlKeyStore),
    mongo=MongoStore(indexes={"core_api_keys": [
        MongoIndex("api_key_name", [("name", 1)], unique=True),
        MongoIndex("api_key_digest", [("key_sha256", 1)], unique=True),
    ]}, open=MongoKeyStore),
)
