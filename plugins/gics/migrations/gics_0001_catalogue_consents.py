"""gICS: the consent catalogue, signed consents, and the tables their queries use.

Revision ID: gics_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "gics_0001"
down_revision = None
branch_labels = ("gics",)
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "gics_domain",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("settings", sa.Text, nullable=False),
    )
    # Policies, modules and templates are versioned: a new version is a new row.
    for table in ("gics_policy", "gics_module", "gics_template"):
        op.create_table(
            table,
            sa.Column("domain", sa.String(255), sa.ForeignKey("gics_domain.name"), primary_key=True),
            sa.Column("name", sa.String(255), primary_key=True),
            sa.Column("version", sa.String(255), primary_key=True),
            sa.Column("settings", sa.Text, nullable=False),
        )
    # One consent per domain, template version, signer ids and moment (the fingerprint).
    op.create_table(
        "gics_consent",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("domain", sa.String(255), sa.ForeignKey("gics_domain.name"), nullable=False),
        sa.Column("template_name", sa.String(255), nullable=False),
        sa.Column("template_version", sa.String(255), nullable=False),
        sa.Column("template_type", sa.String(32), nullable=False),
        sa.Column("signed_at", sa.BigInteger, nullable=False),
        sa.Column("recorded_at", sa.BigInteger, nullable=False),
        sa.Column("signer_ids", sa.Text, nullable=False),
        sa.Column("modules", sa.Text, nullable=False),
        sa.Column("policies", sa.Text, nullable=False),
    )
    # Pages of a domain's (a template version's) consents in the order they were recorded.
    op.create_index("ix_gics_consent_domain", "gics_consent", ["domain", "seq"])
    op.create_index("ix_gics_consent_template", "gics_consent",
                    ["domain", "template_name", "template_version", "seq"])
    op.create_table(
        "gics_consent_resources",
        sa.Column("seq", sa.BigInteger, sa.ForeignKey("gics_consent.seq"), primary_key=True, autoincrement=False),
        sa.Column("resources", sa.Text, nullable=False),
    )
    # A person's consents by any of its signer ids; the values of one type in order.
    op.create_table(
        "gics_signer_id",
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("id_type", sa.String(255), primary_key=True),
        sa.Column("id_value", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.ForeignKey("gics_consent.seq"), primary_key=True, autoincrement=False),
        sqlite_with_rowid=False,
    )
    # Signed policies for the Consent search, clustered in the order pages list them (a policy's
    # position in its consent's list), and by policy name within a domain.
    op.create_table(
        "gics_signed_policy",
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.ForeignKey("gics_consent.seq"), primary_key=True, autoincrement=False),
        sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("policy_name", sa.String(255), nullable=False),
        sa.Column("policy_version", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("starts_at", sa.BigInteger, nullable=False),
        sa.Column("ends_at", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_gics_signed_policy_name", "gics_signed_policy", ["domain", "policy_name", "seq"])


def downgrade() -> None:
    op.drop_index("ix_gics_signed_policy_name", table_name="gics_signed_policy")
    op.drop_table("gics_signed_policy")
    op.drop_table("gics_signer_id")
    op.drop_table("gics_consent_resources")
    op.drop_index("ix_gics_consent_template", table_name="gics_consent")
    op.drop_index("ix_gics_consent_domain", table_name="gics_consent")
    op.drop_table("gics_consent")
    for table in ("gics_template", "gics_module", "gics_policy"):
        op.drop_table(table)
    op.drop_table("gics_domain")
