"""The SQL schema as SQLAlchemy Core tables.

Migrations (`migrations/versions`) create and change the real schema; these definitions are what
the code queries with, and a test checks that the two agree.
"""

from __future__ import annotations

from sqlalchemy import (JSON, Column, DateTime, ForeignKey, Index, Integer, MetaData, String, Table,
                        Text, func)

metadata = MetaData()

domain = Table(
    "domain", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("description", Text, nullable=False, server_default=""),
    Column("settings", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# One row per pseudonym. The primary key makes pseudonyms unique per domain; the unique index on
# (domain, original, number) makes number 0 the one pseudonym of an original and numbers further
# pseudonyms of multi-psn domains unique. Anonymised rows keep the pseudonym, original NULL.
pseudonym = Table(
    "pseudonym", metadata,
    Column("domain_id", Integer, ForeignKey("domain.id", ondelete="CASCADE"), primary_key=True),
    Column("pseudonym", String(255), primary_key=True),
    Column("original", Text, nullable=True),
    Column("number", Integer, nullable=False, server_default="0"),
    sqlite_with_rowid=False,
)
Index("ix_pseudonym_original", pseudonym.c.domain_id, pseudonym.c.original, pseudonym.c.number, unique=True)

api_key = Table(
    "api_key", metadata,
    Column("name", String(255), primary_key=True),
    Column("key_sha256", String(64), nullable=False, unique=True),
    Column("scopes", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
