"""The repository on MongoDB (pymongo), with multi-document transactions.

Each write unit is one MongoDB transaction in a client session (snapshot reads, majority
writes), committed as a whole or not at all; a reader never sees what an unfinished unit wrote.
MongoDB offers transactions on replica sets and sharded clusters only; a one-node replica set is
enough (`mongod --replSet rs0`, then `rs.initiate()` once). On a standalone server the service
refuses to start, since it could not keep its promise that a failed request writes nothing.

Two transactions that write the same document conflict: the later one fails with a transient
error at once instead of waiting, and is run again (`Busy`, retried by the unit's owner with a
growing, jittered pause). A store therefore takes a lock by *writing* a document (a study's
linkage lock is an increment of the study document), and settles unique keys by reading first:
a duplicate-key error inside a transaction aborts it, so a unique index is the last line of
defence (it makes the unit run again), not the way to find out what exists.

Write units have no savepoints: `Repository.savepoints` is False, and an owner that wants parts
of a unit to fail alone (the entries of a batch) runs the unit again without the failed part.

Collections are named `<store>_<name>`, like SQL tables, and each store declares its indexes.
A client for `mongomock://` URLs is not built in: mongomock has no sessions, and tests register
a stand-in (`MongoRepository.client_factories`).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, Generic, Iterable, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import parse_qs, urlsplit

import pymongo
from pymongo.errors import (BulkWriteError, ConnectionFailure, DuplicateKeyError, OperationFailure,
                            PyMongoError, ServerSelectionTimeoutError)
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from ..base import (Busy, Conflict, Repository, StorageError, StoreDefinition, StoreKey, Unavailable,
                    UnitOfWork, WriteUnit)

T = TypeVar("T")
log = logging.getLogger("ttp_gateway.storage")

DEFAULT_DATABASE = "ttp_gateway"
SERVER_SELECTION_TIMEOUT_MS = 3000
WRITE_CONFLICT = 112
DUPLICATE_KEY = frozenset({11000, 11001, 12582})
COMMIT_ATTEMPTS = 5


@dataclass(frozen=True)
class MongoIndex:
    """One index of a collection: keys as (field, 1 or -1), unique or not, optionally partial."""

    name: str
    keys: Sequence[tuple[str, int]]
    unique: bool = False
    partial: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class MongoStore(Generic[T]):
    """A plugin's store on MongoDB: its collections' indexes, and the factory of the store.

    Collection names start with the store's name and an underscore (`gpas_pseudonyms`)."""

    indexes: Mapping[str, Sequence[MongoIndex]]
    open: Callable[["MongoSession"], T]
    collections: Sequence[str] = field(default=())  # collections without indexes


class MongoSession:
    """What a MongoDB store works with inside one unit: its collections, bound to the unit's
    transaction, and a few services."""

    __slots__ = ("write", "_database", "_session", "_unit", "_state")

    def __init__(self, database: Any, session: Any, unit: "_MongoUnit", state: dict[str, Any]) -> None:
        self.write = unit.write
        self._database = database
        self._session = session
        self._unit = unit
        self._state = state

    def collection(self, name: str) -> "BoundCollection":
        return BoundCollection(self._database[name], self._session)

    @property
    def state(self) -> dict[str, Any]:
        """A dict this store shares across all units of the repository."""
        return self._state

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._unit.after_commit(callback)


class BoundCollection:
    """A collection whose every call runs in the unit's session (transaction), with pymongo's
    errors translated to the storage errors."""

    __slots__ = ("_collection", "_session")

    def __init__(self, collection: Any, session: Any) -> None:
        self._collection = collection
        self._session = session

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._collection, name)
        session = self._session

        def bound(*args: Any, **kwargs: Any) -> Any:
            try:
                result = method(*args, session=session, **kwargs)
                # Cursors are read here, inside the unit, not later by the caller.
                return list(result) if name in ("find", "aggregate") else result
            except PyMongoError as error:
                raise translate(error) from None

        return bound


class _MongoUnit(WriteUnit):
    def __init__(self, repository: "MongoRepository", session: Any, write: bool) -> None:
        self._repository = repository
        self._session = session
        self.write = write
        self._stores: dict[str, Any] = {}
        self._committed: list[Callable[[], None]] = []
        self._ended = False

    def __getitem__(self, key: StoreKey[T]) -> T:
        store = self._stores.get(key.name)
        if store is None:
            if self._ended:
                raise StorageError(f"the unit of work has ended; store {key.name!r} cannot be opened")
            definition = self._repository.store_of(key)
            session = MongoSession(self._repository.database, self._session, self,
                                   self._repository.state_of(key))
            store = self._stores[key.name] = definition.open(session)
        return store

    def after_commit(self, callback: Callable[[], None]) -> None:
        if not self.write:
            raise StorageError("read units are not committed")
        self._committed.append(callback)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        # No savepoints in MongoDB transactions: the owner runs the unit again without a failed
        # part (Repository.savepoints is False).
        yield

    def commit(self) -> None:
        if self._ended:
            raise StorageError("the unit of work has ended")
        try:
            for attempt in range(COMMIT_ATTEMPTS):
                try:
                    self._session.commit_transaction()
                    break
                except PyMongoError as error:
                    # The commit may have happened: committing again is safe and tells.
                    if error.has_error_label("UnknownTransactionCommitResult") and attempt < COMMIT_ATTEMPTS - 1:
                        continue
                    raise
        except PyMongoError as error:
            self.rollback()
            raise translate(error) from None
        self._end()
        for callback in self._committed:
            callback()

    def rollback(self) -> None:
        if self._ended:
            return
        try:
            if self._session.in_transaction:
                self._session.abort_transaction()
        except PyMongoError:
            pass  # the server drops an abandoned transaction itself
        self._end()

    def _end(self) -> None:
        self._ended = True
        self._stores.clear()
        try:
            self._session.end_session()
        except PyMongoError:
            pass


class MongoRepository(Repository):
    savepoints = False
    # URL scheme -> function(url) returning (client, database name); tests register mongomock.
    client_factories: ClassVar[dict[str, Callable[[str], tuple[Any, str]]]] = {}

    def __init__(self, url: str, stores: Iterable[StoreDefinition[Any]]) -> None:
        self.url = url
        self._stores: dict[str, MongoStore[Any]] = {}
        for definition in stores:
            if definition.mongo is None:
                raise Unavailable(f"store {definition.key.name!r} has no MongoDB implementation")
            for name in (*definition.mongo.indexes, *definition.mongo.collections):
                if not name.startswith(definition.key.name + "_"):
                    raise ValueError(f"collection {name!r} of store {definition.key.name!r} must be named "
                                     f"{definition.key.name}_...")
            self._stores[definition.key.name] = definition.mongo
        self._states: dict[str, dict[str, Any]] = {name: {} for name in self._stores}
        scheme = url.split("://", 1)[0]
        try:
            factory = self.client_factories.get(scheme)
            if factory is not None:
                self._client, name = factory(url)
            elif scheme in ("mongodb", "mongodb+srv"):
                # Keyword options override the URL's: the default timeout only where it names none.
                given = {option.lower() for option in parse_qs(urlsplit(url).query)}
                timeout: dict[str, Any] = ({} if "serverselectiontimeoutms" in given
                                           else {"serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS})
                self._client = pymongo.MongoClient(url, tz_aware=True, uuidRepresentation="standard", **timeout)
                name = urlsplit(url).path.strip("/") or DEFAULT_DATABASE
            else:
                raise StorageError(f"no MongoDB client for {scheme}:// URLs"
                                   + (" (mongomock is for tests only)" if scheme == "mongomock" else ""))
        except (PyMongoError, ValueError) as error:  # pymongo's URL parser raises both
            # The URL may carry credentials: name the problem, not the URL.
            raise StorageError(f"invalid MongoDB URL ({type(error).__name__})") from None
        self.database = self._client[name]
        self._checked = False
        self._check_lock = threading.Lock()

    def store_of(self, key: StoreKey[T]) -> MongoStore[T]:
        try:
            return self._stores[key.name]
        except KeyError:
            raise StorageError(f"no store {key.name!r} is registered; is its plugin loaded?") from None

    def state_of(self, key: StoreKey[Any]) -> dict[str, Any]:
        return self._states[key.name]

    def migrate(self) -> None:
        self.require_transactions()
        try:
            # Creating an index that exists with the same options is a no-op, also while another
            # process is building it, so every worker and replica may run this at start-up.
            for store in self._stores.values():
                for collection, indexes in store.indexes.items():
                    for index in indexes:
                        options: dict[str, Any] = {"name": index.name, "unique": index.unique}
                        if index.partial is not None:
                            options["partialFilterExpression"] = dict(index.partial)
                        self.database[collection].create_index(list(index.keys), **options)
            self.database["meta"].update_one({"_id": "schema"}, {"$set": {"migrated_at": _now()}},
                                             upsert=True)
        except PyMongoError as error:
            raise translate(error) from None

    def require_transactions(self) -> None:
        """Refuse a server without multi-document transactions (a standalone mongod)."""
        if self._checked:
            return
        with self._check_lock:
            try:
                hello = self._client.admin.command("hello")
            except PyMongoError as error:
                raise translate(error) from None
            if not hello.get("setName") and hello.get("msg") != "isdbgrid":
                raise Unavailable(
                    "this MongoDB server has no multi-document transactions (a standalone server); "
                    "run it as a replica set - a single node is enough: start mongod with "
                    "--replSet rs0 and run rs.initiate() once")
            self._checked = True

    @contextmanager
    def read(self) -> Iterator[UnitOfWork]:
        unit = _MongoUnit(self, None, False)
        try:
            yield unit
        finally:
            unit._ended = True
            unit._stores.clear()

    def begin(self) -> WriteUnit:
        try:
            session = self._client.start_session()
            session.start_transaction(read_concern=ReadConcern("snapshot"),
                                      write_concern=WriteConcern("majority"))
        except PyMongoError as error:
            raise translate(error) from None
        return _MongoUnit(self, session, True)

    def ping(self) -> None:
        try:
            self._client.admin.command("ping")
        except PyMongoError as error:
            raise translate(error) from None

    def close(self) -> None:
        self._client.close()


def translate(error: PyMongoError) -> StorageError:
    """The storage error for a pymongo error; its message (which may quote values) stays behind."""
    kind = type(error).__name__
    if error.has_error_label("TransientTransactionError") or (
            isinstance(error, OperationFailure) and error.code == WRITE_CONFLICT):
        return Busy(f"the store could not serialise this unit ({kind})")
    if isinstance(error, DuplicateKeyError) or (
            isinstance(error, BulkWriteError) and _duplicate_keys_only(error)):
        return Conflict(f"a unique key was violated ({kind})")
    if isinstance(error, (ConnectionFailure, ServerSelectionTimeoutError)):
        return Unavailable(f"storage unavailable ({kind})")
    return StorageError(f"the store refused an operation ({kind})")


def _duplicate_keys_only(error: BulkWriteError) -> bool:
    """Whether a batch failed on duplicate keys alone (`insert_many` reports them this way)."""
    errors = (error.details or {}).get("writeErrors") or []
    return bool(errors) and all(item.get("code") in DUPLICATE_KEY for item in errors)


def _now() -> datetime:
    return datetime.now(timezone.utc)
