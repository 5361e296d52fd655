"""Storage backends behind one repository interface (`backends.base`), chosen by URL."""

from __future__ import annotations

from .base import Repository, StorageError


def open_repository(url: str) -> Repository:
    """The repository for a storage URL: sqlite:///, postgresql://, mongodb:// or mongomock://."""
    if url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
        from .sql import SqlRepository

        return SqlRepository(url)
    if url.startswith(("mongodb://", "mongodb+srv://", "mongomock://")):
        from .mongo import MongoRepository

        return MongoRepository(url)
    raise StorageError("unsupported storage URL scheme; use sqlite:///, postgresql://, "
                       "mongodb:// or mongomock://")
