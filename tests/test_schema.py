"""The SQL schema that the migrations build is the schema the code describes."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ttp_gateway.backends.sql.schema import metadata


@pytest.mark.parametrize("storage_url", ["sqlite", "postgresql"], indirect=True)
def test_migrations_build_the_described_schema(repository, storage_url) -> None:
    engine = repository.engine
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []
    assert "alembic_version" in sa.inspect(engine).get_table_names()
