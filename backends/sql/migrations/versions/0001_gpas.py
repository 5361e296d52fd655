"""Domains, pseudonyms and API keys.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "domain",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "pseudonym",
        sa.Column("domain_id", sa.Integer, sa.ForeignKey("domain.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("pseudonym", sa.String(255), primary_key=True),
        sa.Column("original", sa.Text, nullable=True),
        sa.Column("number", sa.Integer, nullable=False, server_default="0"),
        sqlite_with_rowid=False,
    )
    # Named, so that SQLite statements can insist on it (INDEXED BY).
    op.create_index("ix_pseudonym_original", "pseudonym", ["domain_id", "original", "number"], unique=True)
    op.create_table(
        "api_key",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("api_key")
    op.drop_table("pseudonym")
    op.drop_table("domain")
