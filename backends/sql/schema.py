"""The SQL schema as SQLAlchemy Core tables.

Migrations (`migrations/versions`) create and change the real schema; these definitions are what
the code queries with, and a test checks that the two agree.
"""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Column, DateTime, ForeignKey, Index, Integer, LargeBinary,
                        MetaData, String, Table, Text, func)

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

# --- linkage (the dispatcher) ------------------------------------------------------------------
# Times are milliseconds since the epoch (UTC): comparable the same way on every backend.

study = Table(
    "study", metadata,
    Column("name", String(255), primary_key=True),
    Column("settings", JSON, nullable=False),
    Column("change_sequence", BigInteger, nullable=False, server_default="0"),
)

person = Table(
    "person", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("study", String(255), ForeignKey("study.name"), nullable=False),
)

bloom_filter = Table(
    "bloom_filter", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("study", String(255), nullable=False),
    Column("version", String(64), nullable=False),
    Column("person", BigInteger, ForeignKey("person.id"), nullable=False),
    Column("site", String(255), nullable=False),
    Column("bloom_filter", LargeBinary, nullable=True),  # NULL once withdrawn
    Column("sequence", BigInteger, nullable=False),
)
Index("ix_bloom_filter_changes", bloom_filter.c.study, bloom_filter.c.version, bloom_filter.c.sequence)
Index("ix_bloom_filter_person", bloom_filter.c.person, bloom_filter.c.site, bloom_filter.c.version)

person_key = Table(
    "person_key", metadata,
    Column("study", String(255), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("person", BigInteger, ForeignKey("person.id"), nullable=False),
)

clearing_case = Table(
    "clearing_case", metadata,
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
Index("ix_clearing_case_open", clearing_case.c.study, clearing_case.c.status, clearing_case.c.expires)
Index("ix_clearing_case_site", clearing_case.c.study, clearing_case.c.site, clearing_case.c.status)

task = Table(
    "task", metadata,
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
Index("ix_task_site", task.c.study, task.c.site, task.c.status)
Index("ix_task_due", task.c.study, task.c.status, task.c.expires)
Index("ix_task_case", task.c.case_id)

# Identifying data of an open clearing case; deleted when the case is decided or aborted.
idat = Table(
    "idat", metadata,
    Column("task_id", String(64), primary_key=True),
    Column("case_id", String(64), nullable=False, index=True),
    Column("site", String(255), nullable=False),
    Column("data", Text, nullable=False),
)
