"""One gateway per backend per test module, shared by all the module's bad requests."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from conftest import BACKENDS, MONGODB_URL, fresh_postgres_database

from .harness import GatewayUnderTest, hostile_config


@pytest.fixture(scope="module", params=BACKENDS)
def module_storage_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty store of its own for one module, per backend (a PostgreSQL database of its own)."""
    kind = request.param
    name = f"ttp_hostile_{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'gateway.db'}"
    elif kind == "postgresql":
        with fresh_postgres_database(name) as url:
            yield url
    elif kind == "mongomock":
        yield f"mongomock://localhost/{name}"
    else:
        yield MONGODB_URL.rstrip("/") + "/" + name
        import pymongo

        pymongo.MongoClient(MONGODB_URL).drop_database(name)


@pytest.fixture(scope="module")
def gateway(module_storage_url: str) -> Iterator[GatewayUnderTest]:
    under_test = GatewayUnderTest(hostile_config(module_storage_url))
    try:
        yield under_test
    finally:
        under_test.close()
