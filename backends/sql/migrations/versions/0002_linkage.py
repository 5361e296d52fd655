"""Studies, persons, Bloom filters, clearing cases, tasks and transient identifying data.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite autoincrements INTEGER keys only


def upgrade() -> None:
    op.create_table(
        "study",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("change_sequence", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "person",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("study", sa.String(255), sa.ForeignKey("study.name"), nullable=False),
    )
    op.create_table(
        "bloom_filter",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("study", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("person", sa.BigInteger, sa.ForeignKey("person.id"), nullable=False),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("bloom_filter", sa.LargeBinary, nullable=True),
        sa.Column("sequence", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_bloom_filter_changes", "bloom_filter", ["study", "version", "sequence"])
    op.create_index("ix_bloom_filter_person", "bloom_filter", ["person", "site", "version"])
    op.create_table(
        "person_key",
        sa.Column("study", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("person", sa.BigInteger, sa.ForeignKey("person.id"), nullable=False),
    )
    op.create_table(
        "clearing_case",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("study", sa.String(255), nullable=False),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("bloom_filter", sa.Text, nullable=False),
        sa.Column("candidates", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("person", sa.BigInteger, nullable=True),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("expires", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_clearing_case_open", "clearing_case", ["study", "status", "expires"])
    op.create_index("ix_clearing_case_site", "clearing_case", ["study", "site", "status"])
    op.create_table(
        "task",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("study", sa.String(255), nullable=False),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("case_id", sa.String(64), nullable=True),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("expires", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_task_site", "task", ["study", "site", "status"])
    op.create_index("ix_task_due", "task", ["study", "status", "expires"])
    op.create_index("ix_task_case", "task", ["case_id"])
    op.create_table(
        "idat",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_idat_case_id", "idat", ["case_id"])


def downgrade() -> None:
    for table in ("idat", "task", "clearing_case", "person_key", "bloom_filter", "person", "study"):
        op.drop_table(table)
