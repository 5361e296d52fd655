"""Storage backends behind one unit-of-work interface (`backends.base`), chosen by URL."""

from __future__ import annotations

from typing import Any, Iterable

from .base import Repository, StorageError, StoreDefinition


def open_repository(url: str, stores: Iterable[StoreDefinition[Any]], *,
                    group_commit: bool | None = None) -> Repository:
    """The repository for a storage URL (sqlite:///, postgresql://, mongodb://) holding `stores`.
    With `group_commit`, the write units of a process share transactions (SQL; see
    `backends.sql.grouping`); None groups them on SQLite only. MongoDB commits each unit, its
    journal grouping the writes."""
    stores = list(stores)
    if url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
        from .sql import SqlRepository

        return SqlRepository(url, stores, group_commit)
    scheme = url.split("://", 1)[0]
    from .mongo import MongoRepository

    if scheme in ("mongodb", "mongodb+srv") or scheme in MongoRepository.client_factories:
        return MongoRepository(url, stores)
    raise StorageError("unsupported storage URL scheme; use sqlite:///, postgresql:// or mongodb://")
