"""Fixtures of the gICS tests beside the suite's own (`storage_url` runs a test per backend)."""

from __future__ import annotations

import pytest


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """An empty SQLite store, for tests of what does not depend on the backend."""
    return f"sqlite:///{tmp_path / 'gateway.db'}"
