"""SQL storage: SQLite as the embedded default, PostgreSQL for production.

A plugin's SQL store is a `SqlStore` (its tables, its Alembic branch, a factory), working through
a `SqlSession` with statements built by a `SqlBuilder` and compiled once per dialect."""

from .repository import SqlRepository, SqlSession, SqlStore
from .statements import Compiled, SqlBuilder, prepared

__all__ = ["Compiled", "SqlBuilder", "SqlRepository", "SqlSession", "SqlStore", "prepared"]
