"""The SQL schema that every store's migrations build is the schema its tables describe."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from conftest import all_stores


@pytest.mark.parametrize("storage_url", ["sqlite", "postgresql"], indirect=True)
def test_migrations_build_the_described_schema(repository, storage_url) -> None:
    described = sa.MetaData()
    for store in all_stores():
        for table in store.sql.metadata.tables.values():
            table.to_metadata(described)
    engine = repository.engine
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), described)
    # Each store's Alembic version table is Alembic's, not the store's.
    differences = [d for d in differences if not (d[0] == "remove_table" and d[1].name.endswith("_alembic_version"))]
    assert differences == []
    tables = set(sa.inspect(engine).get_table_names())
    assert {f"{store.key.name}_alembic_version" for store in all_stores()} <= tables
