"""Fixtures shared by the suite: every behavioural test runs once per storage backend.

Backends: SQLite (a file per test), PostgreSQL (a database made for the session, emptied between
tests; TTP_TEST_POSTGRES_URL, default the local server), mongomock, and a real MongoDB when
TTP_TEST_MONGODB_URL is set. Without a reachable PostgreSQL its tests are skipped, unless
TTP_TEST_REQUIRE_POSTGRES=1 (as in CI), where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest
from hypothesis import settings

import mongomock_sessions
from ttp_gateway.backends import open_repository
from ttp_gateway.backends.base import Repository, StoreDefinition, StoreRegistry
from ttp_gateway.backends.mongo import MongoRepository
from ttp_gateway.core.plugins import load_plugins

# mongomock has no sessions: the tests give the MongoDB repository a stand-in for them.
MongoRepository.client_factories["mongomock"] = mongomock_sessions.client_for

POSTGRES_ADMIN_URL = os.environ.get("TTP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MONGODB_URL = os.environ.get("TTP_TEST_MONGODB_URL", "")
REQUIRE_POSTGRES = os.environ.get("TTP_TEST_REQUIRE_POSTGRES") == "1"

BACKENDS = ["sqlite", "postgresql", "mongomock"] + (["mongodb"] if MONGODB_URL else [])

# Shared machines stall now and then: property tests are judged by their results, not by time.
settings.register_profile("gateway", deadline=None)
settings.load_profile("gateway")


def _postgres_admin():
    import psycopg

    return psycopg.connect(POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://"),
                           autocommit=True, connect_timeout=3)


@contextmanager
def fresh_postgres_database(name: str) -> Iterator[str]:
    """A database of that name, created now and dropped afterwards; its URL. Skips (or fails,
    where PostgreSQL is required) when no server is reachable."""
    try:
        admin = _postgres_admin()
    except Exception as exc:  # noqa: BLE001 - any failure means: no server here
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required but not reachable: {type(exc).__name__}")
        pytest.skip("PostgreSQL not reachable")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with _postgres_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database for this test session; its URL."""
    with fresh_postgres_database(f"ttp_test_{os.getpid()}_{uuid.uuid4().hex[:8]}") as url:
        yield url


def _empty_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE '%alembic_version'")]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A storage URL of an empty store, once per backend."""
    kind = request.param
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
    elif kind == "postgresql":
        url = request.getfixturevalue("postgres_database")
        _empty_postgres(url)
        yield url
    elif kind == "mongomock":
        url = f"mongomock://localhost/ttp_test_{uuid.uuid4().hex[:12]}"
        yield url
        server, name = mongomock_sessions.client_for(url)
        server.drop_database(name)
    else:
        database = f"ttp_test_{uuid.uuid4().hex[:12]}"
        yield MONGODB_URL.rstrip("/") + "/" + database
        import pymongo

        pymongo.MongoClient(MONGODB_URL).drop_database(database)


def all_stores() -> list[StoreDefinition]:
    """The stores of every installed plugin (and the core's), as a gateway opens them."""
    registry = StoreRegistry()
    load_plugins().hook.ttp_stores(stores=registry)
    return list(registry)


@pytest.fixture
def repository(storage_url: str) -> Iterator[Repository]:
    repo = open_repository(storage_url, all_stores())
    repo.migrate()
    yield repo
    repo.close()


# --- a gateway on the demo configuration ---------------------------------------------------------

from pathlib import Path  # noqa: E402

from starlette.testclient import TestClient  # noqa: E402

from ttp_gateway.core.app import create_app  # noqa: E402
from ttp_gateway.core.config import Config, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "config" / "demo.toml"
DEMO_KEY = "abcdef12345"
GPAS = "/ttp-fhir/fhir/gpas"


@pytest.fixture
def demo_config(storage_url: str) -> Config:
    """The demo configuration of `make run`, on the backend under test."""
    return load_config(DEMO_CONFIG, environ={}).with_overrides(storage={"url": storage_url})


def client_for(config: Config, **headers: str) -> TestClient:
    app = create_app(config)
    return TestClient(app, headers={"apikey": DEMO_KEY, **headers})


@pytest.fixture
def client(demo_config: Config) -> Iterator[TestClient]:
    """An HTTP client of a gateway on the demo configuration, sending the demo API key."""
    with client_for(demo_config) as test_client:
        yield test_client


def parameters(*items: tuple[str, object]) -> dict:
    """A Parameters resource: a string value, a dict of value[x] (or resource), or a list of parts."""
    parameter = []
    for name, value in items:
        if isinstance(value, list):
            parameter.append({"name": name, "part": value})
        elif isinstance(value, dict):
            parameter.append({"name": name, **value})
        else:
            parameter.append({"name": name, "valueString": value})
    return {"resourceType": "Parameters", "parameter": parameter}


@pytest.fixture(autouse=True)
def _audit_through_logging():
    """Audit records go to the `ttp_gateway.audit` logger in tests, whatever an earlier test's
    `configure_logging` (the command line, a served app) set up."""
    from ttp_gateway.core.observability import audit_trail

    audit_trail._descriptor, audit_trail._owned = None, False
    yield
    audit_trail._descriptor, audit_trail._owned = None, False
