"""The example plugin: the last count per domain.

Revision ID: example_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "example_0001"
down_revision = None
branch_labels = ("example",)
depends_on = None


def upgrade():
    op.create_table(
        "example_last_count",
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )


def downgrade():
    op.drop_table("example_last_count")
