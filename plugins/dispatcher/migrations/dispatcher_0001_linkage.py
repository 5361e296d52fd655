"""Dispatcher: studies, persons, Bloom filters, identifier keys, clearing cases, tasks and sealed
identifying data.

Revision ID: dispatcher_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "dispatcher_0001"
down_revision = None
branch_labels = ("dispatcher",)
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite autoincrements INTEGER keys only


def upgrade() -> None:
    op.create_table(
        "dispatcher_study",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("change_sequence", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "dispatcher_person",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("study", sa.String(255), sa.ForeignKey("dispatcher_study.name"), nullable=False),
    )
    op.create_table(
        "dispatcher_bloom_filter",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("study", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("person", sa.BigInteger, sa.ForeignKey("dispatcher_person.id"), nullable=False),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("bloom_filter", sa.LargeBinary, nullable=True),
        sa.Column("sequence", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_dispatcher_bloom_filter_changes", "dispatcher_bloom_filter", ["study", "version", "sequence"])
    op.create_index("ix_dispatcher_bloom_filter_person", "dispatcher_bloom_filter", ["person", "site", "version"])
    op.create_table(
        "dispatcher_person_key",
        sa.Column("study", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("person", sa.BigInteger, sa.ForeignKey("dispatcher_person.id"), nullable=False),
    )
    op.create_table(
        "dispatcher_case",
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
    op.create_index("ix_dispatcher_case_open", "dispatcher_case", ["study", "status", "expires"])
    op.create_table(
        "dispatcher_task",
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
    op.create_index("ix_dispatcher_task_site", "dispatcher_task", ["study", "site", "status"])
    op.create_index("ix_dispatcher_task_due", "dispatcher_task", ["study", "status", "expires"])
    op.create_index("ix_dispatcher_task_case", "dispatcher_task", ["case_id"])
    op.create_table(
        "dispatcher_idat",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_dispatcher_idat_case", "dispatcher_idat", ["case_id"])


def downgrade() -> None:
    for table in ("dispatcher_idat", "dispatcher_task", "dispatcher_case", "dispatcher_person_key",
                  "dispatcher_bloom_filter", "dispatcher_person", "dispatcher_study"):
        op.drop_table(table)
