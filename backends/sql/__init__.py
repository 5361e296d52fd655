"""SQL storage: SQLite as the embedded default, PostgreSQL for production."""

from .repository import SqlRepository

__all__ = ["SqlRepository"]
