"""The stores of a repository in one object, for tests that exercise the store contracts.

`transaction(repository, write=True)` gives a unit of work whose methods are those of every
store in it (gPAS, dispatcher, API keys), committed when the block ends without an exception."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from ttp_gateway.backends.base import Repository, UnitOfWork
from ttp_gateway.core.keystore import KEYS
from ttp_gateway.plugins.dispatcher.store import LINKAGE
from ttp_gateway.plugins.gpas.store import PSEUDONYMS

STORES = (PSEUDONYMS, LINKAGE, KEYS)


class Stores:
    """Every store of one unit, by method name."""

    def __init__(self, unit: UnitOfWork) -> None:
        self.unit = unit

    def __getattr__(self, name: str) -> Any:
        for key in STORES:
            store = self.unit[key]
            if hasattr(store, name):
                return getattr(store, name)
        raise AttributeError(name)


@contextmanager
def transaction(repository: Repository, write: bool = False) -> Iterator[Stores]:
    if not write:
        with repository.read() as unit:
            yield Stores(unit)
        return
    unit = repository.begin()
    try:
        yield Stores(unit)
    except BaseException:
        unit.rollback()
        raise
    unit.commit()
