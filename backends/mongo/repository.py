"""The repository on MongoDB (pymongo), and on mongomock for tests and demos.

Collections, with field names kept short but readable:

- `domains`    `{name, settings, description, created_at}`, unique on `name`;
- `pseudonyms` `{domain, pseudonym, original, number}`, unique on (domain, pseudonym) and on
  (domain, original, number) for documents whose original is a string: anonymised documents
  have no `original` field, and a plain unique index would count a missing field as a value;
- `api_keys`   `{name, key_sha256, scopes, created_at}`, unique on `name` and on `key_sha256`;
- `meta`       `{_id: "schema", version}`, so that later migrations can tell what they find.

Every batch method costs a fixed number of round trips: `$in` queries, `insert_many(ordered=
False)`, `delete_many`, `update_many` (a batch whose own rows share unique keys takes one more
insert per such chain, see `insert_pseudonyms`). Uniqueness is the unique indexes' job, as in
the SQL schema: a document that conflicts fails with a duplicate-key error and is reported as
not stored, so a writer racing another one reads back what the other one stored. One query
carries a whole batch, so a batch must stay within MongoDB's 16 MB command size.

Transactions. MongoDB's multi-document transactions need a replica set, which a single server
and mongomock lack, so they are not used. A unit of work is instead *compensating*: it
remembers the documents that its inserts stored (pseudonyms, domains created, API keys) and
deletes them again when the `with` block ends with an exception, so a failed request leaves no
half-written batch of new pseudonyms behind. What this does not give:

- isolation: other requests see each write as soon as it is made, and may read back (and hand
  out) a pseudonym that a failing request stored and then withdraws;
- rollback of changes to existing documents: replaced domain settings, deleted originals and
  anonymised originals stay as they are. Callers issue deletion and anonymisation as the last
  statement of a request, so nothing after them can fail;
- rollback when the store itself becomes unreachable before the compensation runs; that failure
  is logged (without patient data) and the documents remain.

`mongomock://host/db` gives an in-memory store. Repositories on the same host share it, as they
would share a server, and its calls are serialised, because mongomock's unique indexes are not
safe under concurrent threads (see `_SerialisedMockDatabase`).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import pymongo
from bson import ObjectId
from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from ..base import (DomainRecord, PseudonymRow, Repository, StorageError, StoredApiKey, Transaction,
                    UnknownDomain)

Document = dict[str, Any]

SCHEMA_VERSION = 1
DEFAULT_DATABASE = "ttp_gateway"
SERVER_SELECTION_TIMEOUT_MS = 3000
DUPLICATE_KEY = 11000
SCOPES = ("endpoints", "operations", "domains", "studies")

# The partial filter of the (domain, original, number) index. Queries by original repeat it, so
# that the query planner can prove the partial index covers them and use it.
HAS_ORIGINAL: Document = {"$type": "string"}

# collection -> (index name, keys, options), the counterpart of the SQL schema's unique keys.
INDEXES: dict[str, list[tuple[str, list[tuple[str, int]], Document]]] = {
    "domains": [("domain_name", [("name", ASCENDING)], {"unique": True})],
    "pseudonyms": [
        ("pseudonym_per_domain", [("domain", ASCENDING), ("pseudonym", ASCENDING)], {"unique": True}),
        ("original_number_per_domain",
         [("domain", ASCENDING), ("original", ASCENDING), ("number", ASCENDING)],
         {"unique": True, "partialFilterExpression": {"original": HAS_ORIGINAL}}),
    ],
    "api_keys": [
        ("api_key_name", [("name", ASCENDING)], {"unique": True}),
        ("api_key_digest", [("key_sha256", ASCENDING)], {"unique": True}),
    ],
}

log = logging.getLogger(__name__)


class MongoRepository(Repository):
    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._client, self._database = _connect(url)
        except (PyMongoError, ValueError) as exc:  # pymongo's URL parser raises both
            # The URL may carry credentials: name the problem, not the URL.
            raise StorageError(f"invalid MongoDB URL ({type(exc).__name__})") from None
        self.domains: Collection[Document] = self._database["domains"]
        self.pseudonyms: Collection[Document] = self._database["pseudonyms"]
        self.api_keys: Collection[Document] = self._database["api_keys"]
        self.meta: Collection[Document] = self._database["meta"]
        self._known_domains: set[str] = set()
        self._known_domains_lock = threading.Lock()

    def migrate(self) -> None:
        with _storage_errors():
            stored = self.meta.find_one({"_id": "schema"}) or {}
            if stored.get("version", 0) > SCHEMA_VERSION:
                raise StorageError(f"the store has schema version {stored['version']}, newer than "
                                   f"this gateway's {SCHEMA_VERSION}")
            # Creating an index that exists with the same options is a no-op, also while another
            # process is building it, so every worker and replica may run this at start-up.
            # One create_index per index, not create_indexes: mongomock drops the options of
            # IndexModels, partialFilterExpression among them.
            for collection, indexes in INDEXES.items():
                for name, keys, options in indexes:
                    self._database[collection].create_index(keys, name=name, **options)
            # $max: a process running older code never lowers the recorded version.
            self.meta.update_one({"_id": "schema"}, {"$max": {"version": SCHEMA_VERSION},
                                                      "$set": {"migrated_at": _now()}}, upsert=True)

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Transaction]:
        # `write` is moot: MongoDB takes no locks up front that a writer would have to announce.
        unit = MongoTransaction(self)
        try:
            yield unit
        except BaseException as exc:
            unit.compensate()
            if isinstance(exc, PyMongoError):
                raise _storage_error(exc) from None
            raise

    def ping(self) -> None:
        with _storage_errors():
            self._client.admin.command("ping")

    def close(self) -> None:
        self._client.close()

    def require_domain(self, name: str) -> None:
        """Raise UnknownDomain unless the domain exists; a domain once seen is not asked again."""
        if name in self._known_domains:
            return
        if self.domains.find_one({"name": name}, {"_id": 1}) is None:
            raise UnknownDomain(f"domain {name!r} is not in the store")
        self.remember_domain(name)

    def remember_domain(self, name: str) -> None:
        with self._known_domains_lock:
            self._known_domains.add(name)

    def forget_domain(self, name: str) -> None:
        with self._known_domains_lock:
            self._known_domains.discard(name)


class MongoTransaction(Transaction):
    def __init__(self, repository: MongoRepository) -> None:
        self._repo = repository
        # The _ids of what this unit of work stored, or may have stored if a write failed half-way,
        # to delete again if it fails; deleting an _id that was never stored does nothing.
        self._stored_pseudonyms: list[ObjectId] = []
        self._stored_api_keys: list[ObjectId] = []
        self._created_domains: dict[ObjectId, str] = {}

    # --- domains --------------------------------------------------------------------------
    def get_domains(self) -> list[DomainRecord]:
        documents = self._repo.domains.find({}, {"_id": 0, "name": 1, "settings": 1, "description": 1},
                                            sort=[("name", ASCENDING)])
        return [DomainRecord(name=d["name"], settings=d["settings"], description=d["description"])
                for d in documents]

    def put_domain(self, domain: DomainRecord) -> bool:
        # The _id of a domain this creates, remembered before the write like inserted pseudonyms.
        created_id = ObjectId()
        self._created_domains[created_id] = domain.name
        result = self._repo.domains.update_one(
            {"name": domain.name},
            {"$set": {"settings": dict(domain.settings), "description": domain.description},
             "$setOnInsert": {"_id": created_id, "created_at": _now()}},
            upsert=True)
        if result.upserted_id is None:
            del self._created_domains[created_id]
            return False
        self._repo.remember_domain(domain.name)
        return True

    # --- pseudonyms -----------------------------------------------------------------------
    def get_pseudonyms(self, domain: str, originals: Sequence[str]) -> dict[str, str]:
        if not originals:
            return {}
        self._repo.require_domain(domain)
        documents = self._repo.pseudonyms.find({**_of_originals(domain, originals), "number": 0},
                                               {"_id": 0, "original": 1, "pseudonym": 1})
        return {d["original"]: d["pseudonym"] for d in documents}

    def get_pseudonym_rows(self, domain: str, originals: Sequence[str]) -> dict[str, list[PseudonymRow]]:
        result: dict[str, list[PseudonymRow]] = {}
        if not originals:
            return result
        self._repo.require_domain(domain)
        documents = self._repo.pseudonyms.find(_of_originals(domain, originals),
                                               {"_id": 0, "original": 1, "number": 1, "pseudonym": 1})
        # Sorted here rather than by the server, which would hold a large batch in memory to sort it.
        found = sorted((d["original"], d["number"], d["pseudonym"]) for d in documents)
        for original, number, pseudonym in found:
            result.setdefault(original, []).append(PseudonymRow(original, number, pseudonym))
        return result

    def get_originals(self, domain: str, pseudonyms: Sequence[str]) -> dict[str, str | None]:
        if not pseudonyms:
            return {}
        self._repo.require_domain(domain)
        documents = self._repo.pseudonyms.find({"domain": domain, "pseudonym": {"$in": list(pseudonyms)}},
                                               {"_id": 0, "pseudonym": 1, "original": 1})
        return {d["pseudonym"]: d.get("original") for d in documents}

    def insert_pseudonyms(self, domain: str, rows: Sequence[PseudonymRow]) -> set[PseudonymRow]:
        if not rows:
            return set()
        self._repo.require_domain(domain)
        stored: set[PseudonymRow] = set()
        # The unique indexes settle conflicts with stored documents. Conflicts within the batch
        # are settled in batch order, as SQL's row-by-row ON CONFLICT DO NOTHING does: a round
        # inserts the first row of each key; rows that share a key with an earlier row wait for
        # the next round, where the indexes reject them if that earlier row was stored. Batches
        # without such duplicates, the usual case, take one round.
        pending = list(rows)
        while pending:
            first, pending = _first_of_each_key(pending)
            documents = [_pseudonym_document(domain, row) for row in first]
            self._stored_pseudonyms.extend(d["_id"] for d in documents)
            rejected = self._insert_skipping_conflicts(self._repo.pseudonyms, documents)
            stored.update(row for i, row in enumerate(first) if i not in rejected)
        return stored

    def delete_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        if not originals:
            return set()
        self._repo.require_domain(domain)
        selection = _of_originals(domain, originals)
        known = set(self._repo.pseudonyms.distinct("original", selection))
        if known:
            self._repo.pseudonyms.delete_many(selection)
        return known

    def anonymize_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        if not originals:
            return set()
        self._repo.require_domain(domain)
        selection = _of_originals(domain, originals)
        known = set(self._repo.pseudonyms.distinct("original", selection))
        if known:
            # Without the field the document leaves the partial unique index, so the original
            # may later be given a new pseudonym, as with SQL's NULL.
            self._repo.pseudonyms.update_many(selection, {"$unset": {"original": ""}})
        return known

    def count_pseudonyms(self, domain: str) -> int:
        self._repo.require_domain(domain)
        return self._repo.pseudonyms.count_documents({"domain": domain})

    # --- API keys -------------------------------------------------------------------------
    def get_api_keys(self) -> list[StoredApiKey]:
        documents = self._repo.api_keys.find({}, {"_id": 0, "name": 1, "key_sha256": 1, "scopes": 1},
                                             sort=[("name", ASCENDING)])
        return [StoredApiKey(name=d["name"], key_sha256=d["key_sha256"],
                             **{scope: tuple(d["scopes"][scope]) for scope in SCOPES})
                for d in documents]

    def add_api_key(self, key: StoredApiKey) -> bool:
        settings = key.as_settings()
        key_id = ObjectId()
        document = {"_id": key_id, "name": key.name, "key_sha256": key.key_sha256,
                    "scopes": {scope: settings[scope] for scope in SCOPES}, "created_at": _now()}
        self._stored_api_keys.append(key_id)
        try:
            self._repo.api_keys.insert_one(document)
        except DuplicateKeyError:
            self._stored_api_keys.pop()
            return False  # name or digest taken, like SQL's ON CONFLICT DO NOTHING
        return True

    # --- unit of work ---------------------------------------------------------------------
    def compensate(self) -> None:
        """Delete what this unit of work stored; called when its block ends with an exception."""
        repo = self._repo
        try:
            if self._stored_pseudonyms:
                repo.pseudonyms.delete_many({"_id": {"$in": self._stored_pseudonyms}})
            if self._stored_api_keys:
                repo.api_keys.delete_many({"_id": {"$in": self._stored_api_keys}})
            if self._created_domains:
                repo.domains.delete_many({"_id": {"$in": list(self._created_domains)}})
                for name in self._created_domains.values():
                    repo.forget_domain(name)
        except PyMongoError as exc:
            log.error("could not undo the writes of a failed transaction (%s): up to %d pseudonyms, "
                      "%d API keys and %d domains remain", type(exc).__name__,
                      len(self._stored_pseudonyms), len(self._stored_api_keys), len(self._created_domains))
        self._stored_pseudonyms.clear()
        self._stored_api_keys.clear()
        self._created_domains.clear()

    def _insert_skipping_conflicts(self, collection: Collection[Document],
                                   documents: list[Document]) -> set[int]:
        """Insert the documents; return the positions of those that a unique index rejected."""
        try:
            collection.insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            failures = sorted({str(e.get("code")) for e in errors if e.get("code") != DUPLICATE_KEY})
            if exc.details.get("writeConcernErrors"):
                failures.append("write concern")
            if failures:
                # Only codes: the errors' messages and operations carry the documents' values.
                raise StorageError(f"storage write failed ({', '.join(failures)})") from None
            return {e["index"] for e in errors}
        return set()


# --- documents and queries ------------------------------------------------------------------
def _pseudonym_document(domain: str, row: PseudonymRow) -> Document:
    # An explicit _id identifies the document for compensation even if the write's reply is lost.
    document: Document = {"_id": ObjectId(), "domain": domain, "pseudonym": row.pseudonym,
                          "number": row.number}
    if row.original is not None:
        document["original"] = row.original
    return document


def _of_originals(domain: str, originals: Sequence[str]) -> Document:
    return {"domain": domain, "original": {"$in": list(originals), **HAS_ORIGINAL}}


def _first_of_each_key(rows: list[PseudonymRow]) -> tuple[list[PseudonymRow], list[PseudonymRow]]:
    """Split rows into those sharing no unique key with an earlier row, and the others."""
    seen: set[tuple[Any, ...]] = set()
    first: list[PseudonymRow] = []
    later: list[PseudonymRow] = []
    for row in rows:
        keys: set[tuple[Any, ...]] = {("pseudonym", row.pseudonym)}
        if row.original is not None:
            keys.add(("original", row.original, row.number))
        (later if keys & seen else first).append(row)
        seen |= keys
    return first, later


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- connections and errors -----------------------------------------------------------------
_mock_servers: dict[str, tuple[Any, threading.RLock]] = {}
_mock_servers_lock = threading.Lock()


def _connect(url: str) -> tuple[Any, Database[Document]]:
    """The client and the database named in the URL."""
    if url.startswith("mongomock://"):
        return _connect_mock(url)
    options: dict[str, Any] = {}
    if "serverselectiontimeoutms=" not in url.lower():  # an option in the URL takes precedence
        options["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
    client: pymongo.MongoClient[Document] = pymongo.MongoClient(url, **options)
    return client, client.get_default_database(default=DEFAULT_DATABASE)


def _connect_mock(url: str) -> tuple[Any, Any]:
    import mongomock

    # mongomock keeps data per client object, while repositories on one real server share it:
    # one client per mocked server (the URL's host) makes mongomock behave like a server.
    parts = urlsplit(url)
    with _mock_servers_lock:
        if parts.netloc not in _mock_servers:
            _mock_servers[parts.netloc] = (mongomock.MongoClient(), threading.RLock())
        client, lock = _mock_servers[parts.netloc]
    return client, _SerialisedMockDatabase(client[parts.path.strip("/") or DEFAULT_DATABASE], lock)


class _SerialisedMockDatabase:
    """mongomock only: collections whose calls run one at a time per mocked server.

    mongomock stores a document before it checks the unique indexes and removes it again if
    they object, so concurrent threads see such transient documents, and two threads inserting
    the same key can both fail. A MongoDB server checks its indexes atomically. Serialising the
    calls (with `find`'s results read inside them) restores that.
    """

    def __init__(self, database: Any, lock: threading.RLock) -> None:
        self._database = database
        self._lock = lock

    def __getitem__(self, name: str) -> _SerialisedMockCollection:
        return _SerialisedMockCollection(self._database[name], self._lock)


class _SerialisedMockCollection:
    def __init__(self, collection: Any, lock: threading.RLock) -> None:
        self._collection = collection
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._collection, name)

        def serialised(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                result = method(*args, **kwargs)
                return list(result) if name == "find" else result

        return serialised


def _storage_error(exc: PyMongoError) -> StorageError:
    # Only the type: pymongo's messages may quote documents (e.g. the duplicate key's values).
    if isinstance(exc, ConnectionFailure):  # also timeouts choosing a server
        return StorageError(f"storage unavailable ({type(exc).__name__})")
    return StorageError(f"storage failed ({type(exc).__name__})")


@contextmanager
def _storage_errors() -> Iterator[None]:
    try:
        yield
    except PyMongoError as exc:
        raise _storage_error(exc) from None
