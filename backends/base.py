"""Storage: units of work, typed errors, and the hook through which plugins bring their stores.

A *store* is what one plugin keeps, behind a protocol in the plugin's own domain language and in
batches (the gPAS plugin's `PseudonymStore.get_pseudonyms(domain, originals)`, the core's
`KeyStore.get_api_keys()`), with one implementation per backend. A plugin contributes it as a
`StoreDefinition` through the `ttp_stores` hook: its SQL tables with their own Alembic branch
(`backends.sql.SqlStore`) and its MongoDB collections with their indexes (`backends.mongo.MongoStore`),
each with a factory that opens the store inside a unit of work. The core's API keys, gPAS and the
dispatcher use exactly this hook; a third-party plugin stands on equal terms with them.

A *unit of work* is one transaction over all stores: `unit[KEY]` opens the store named by KEY
inside it, typed by the key. A write unit is committed as a whole or not at all. A read unit sees
committed data only. Uniqueness is carried by the stores' unique keys, whose conflicts methods
settle (insert what does not conflict, say what was stored), so that writers racing in other
processes or replicas read back what the other one stored.

Errors carry one meaning on every backend, which the core maps to one HTTP status:

    NotFound     something the unit of work names is not in the store        404
    Conflict     a write that breaks a unique key the caller did not settle   409
    Busy         the store could not serialise this unit now; run it again     (retried, then 503)
    Unavailable  the store cannot be reached or used                           503

Messages never carry patient data: they name stores, tables and keys, never values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class StorageError(Exception):
    """A failure of the store; the message never carries patient data."""


class Unavailable(StorageError):
    """The store cannot be reached or used."""


class Busy(Unavailable):
    """Contention: the store could not serialise this unit of work (a deadlock, a write conflict,
    a lock that stayed taken). Running the unit again may succeed."""


class Conflict(StorageError):
    """A write broke a unique key that the caller did not settle itself."""


class NotFound(StorageError):
    """Something the unit of work names (a domain, a study) is not in the store."""


@dataclass(frozen=True)
class StoreKey(Generic[T]):
    """Names a plugin's store; `unit[key]` gives that store, typed `T`."""

    name: str

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or not self.name.islower():
            raise ValueError(f"store name {self.name!r} must be a lower-case identifier")


@dataclass(frozen=True)
class StoreDefinition(Generic[T]):
    """A plugin's store: its key and its implementation per backend.

    `sql` is a `backends.sql.SqlStore`, `mongo` a `backends.mongo.MongoStore`; a store without an
    implementation for the configured backend stops the start-up with a clear message."""

    key: StoreKey[T]
    sql: Any = None
    mongo: Any = None


class StoreRegistry:
    """Collects the stores of all plugins (handed to the `ttp_stores` hook)."""

    def __init__(self) -> None:
        self._definitions: dict[str, StoreDefinition[Any]] = {}

    def add(self, definition: StoreDefinition[Any]) -> None:
        name = definition.key.name
        if name in self._definitions:
            raise ValueError(f"two plugins contribute a store named {name!r}")
        self._definitions[name] = definition

    def __iter__(self) -> Iterator[StoreDefinition[Any]]:
        return iter(self._definitions.values())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, StoreKey) and key.name in self._definitions

    def __len__(self) -> int:
        return len(self._definitions)


class UnitOfWork(ABC):
    """One transaction over every store. Obtained from a `Repository`, never built directly."""

    write: bool = False

    @abstractmethod
    def __getitem__(self, key: StoreKey[T]) -> T:
        """The store named by `key`, opened inside this unit (once; later calls return it again)."""

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this unit is committed (never if it is rolled back): for caches
        that may only learn what the store has for good."""
        raise NotImplementedError("only write units are committed")


class WriteUnit(UnitOfWork):
    """A unit that writes: committed or rolled back by its owner, exactly once.

    `savepoint()` scopes a part of the unit whose writes are undone alone if the part fails
    (one entry of a batch, one request of a group commit). Stores without savepoints
    (`Repository.savepoints` False) raise `Busy` from a failed part instead, after rolling the
    whole unit back: the owner then runs the unit again without that part."""

    write = True

    @abstractmethod
    def savepoint(self) -> AbstractContextManager[None]:
        """A nested scope of the unit, rolled back alone when its block raises."""

    @abstractmethod
    def commit(self) -> None:
        """Make every write of the unit durable; raises Busy or Unavailable if that fails."""

    @abstractmethod
    def rollback(self) -> None:
        """Undo every write of the unit; never raises."""

    async def commit_async(self) -> None:
        """`commit` for a unit used on the event loop (see `Repository.begin_async`)."""
        self.commit()


class Repository(ABC):
    """A store chosen by URL (`backends.open_repository`), holding the stores of all plugins."""

    url: str
    # False for embedded stores whose reads take microseconds and never wait for a lock; the
    # core then runs small read-only operations without a thread hop.
    reads_block: bool = True
    # Whether write units offer real savepoints (see WriteUnit).
    savepoints: bool = True
    # Whether `begin_async` offers write units that an event loop may use without blocking:
    # statements that take microseconds, commits awaited (an embedded store with group commit).
    inline_writes: bool = False

    @abstractmethod
    def migrate(self) -> None:
        """Create or upgrade every store's schema; safe to call from every process at once."""

    @abstractmethod
    def read(self) -> AbstractContextManager[UnitOfWork]:
        """A read-only unit. It sees committed data only, never waits for writers, and each of
        its reads is consistent in itself (not necessarily with the one before)."""

    @abstractmethod
    def begin(self) -> WriteUnit:
        """A write unit; its owner commits or rolls it back."""

    async def begin_async(self) -> WriteUnit:
        """A write unit for the event loop (only where `inline_writes`)."""
        raise NotImplementedError("this store's write units block; begin them on a worker thread")

    def write(self, work: Callable[[UnitOfWork], T], attempts: int = 8) -> T:
        """Run `work` in a write unit and commit it; run it again when the store was `Busy`.
        `work` must have no effect outside the unit, since it may run more than once."""
        for attempt in range(attempts):
            unit = self.begin()
            try:
                result = work(unit)
                unit.commit()
                return result
            except Busy:
                unit.rollback()
                if attempt == attempts - 1:
                    raise
                backoff(attempt)
            except BaseException:
                unit.rollback()
                raise
        raise AssertionError("unreachable")

    def checkpoint(self) -> None:
        """Fold a write-ahead log into the database file where the store keeps one beside it
        (SQLite), so that what was deleted leaves the log too. Nothing elsewhere."""

    @abstractmethod
    def ping(self) -> None:
        """Raise Unavailable when the store cannot serve requests."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


def backoff_seconds(attempt: int) -> float:
    """How long to wait before running a unit of work again: a few milliseconds, growing, with
    jitter, so that writers that collided do not collide again in step."""
    import random

    return random.uniform(0.5, 1.0) * min(0.2, 0.002 * 2.0 ** attempt)


def backoff(attempt: int) -> None:
    import time

    time.sleep(backoff_seconds(attempt))
