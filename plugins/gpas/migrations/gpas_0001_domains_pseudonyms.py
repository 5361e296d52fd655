"""gPAS: domains and pseudonyms.

Revision ID: gpas_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "gpas_0001"
down_revision = None
branch_labels = ("gpas",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpas_domain",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    # The primary key makes pseudonyms unique per domain; the unique index on (domain, original,
    # number) makes number 0 the one pseudonym of an original. Anonymised rows keep the pseudonym.
    op.create_table(
        "gpas_pseudonym",
        sa.Column("domain_id", sa.Integer, sa.ForeignKey("gpas_domain.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("pseudonym", sa.String(255), primary_key=True),
        sa.Column("original", sa.Text, nullable=True),
        sa.Column("number", sa.Integer, nullable=False, server_default="0"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_gpas_pseudonym_original", "gpas_pseudonym", ["domain_id", "original", "number"],
                    unique=True)


def downgrade() -> None:
    op.drop_index("ix_gpas_pseudonym_original", table_name="gpas_pseudonym")
    op.drop_table("gpas_pseudonym")
    op.drop_table("gpas_domain")
