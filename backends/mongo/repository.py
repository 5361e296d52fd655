"""The repository on MongoDB (pymongo), and on mongomock for tests and demos.

Collections, with field names kept short but readable:

- `domains`    `{name, settings, description, created_at}`, unique on `name`;
- `pseudonyms` `{domain, pseudonym, original, number}`, unique on (domain, pseudonym) and on
  (domain, original, number) for documents whose original is a string: anonymised documents
  have no `original` field, and a plain unique index would count a missing field as a value;
- `api_keys`   `{name, key_sha256, scopes, created_at}`, unique on `name` and on `key_sha256`;
- `studies`    `{name, settings, sequence, lease}`, unique on `name`: `sequence` is the last change
  number handed out, `lease` `{owner, expires}` is present while a unit of work holds the
  study's lock (see `lock_study`);
- `persons`    `{_id, study}` with integer ids;
- `bloom_filters` `{_id, study, version, person, site, bloom_filter, sequence}` with integer ids,
  the filter as BSON binary, null once withdrawn;
- `person_keys` `{study, key, person}`, unique on (study, key);
- `clearing_cases` `{_id, study, site, version, bloom_filter, candidates, status, person,
  created, expires}`, `tasks` `{_id, study, site, kind, case, details, status, created,
  expires}` and `idat` `{_id (the task), case, site, data}`, keyed by the callers' ids;
- `counters`   `{_id, value}`: the last person id (`persons`) and Bloom filter id
  (`bloom_filters`) handed out, advanced with `$inc`, so ids are integers as in SQL;
- `meta`       `{_id: "schema", version}`, so that later migrations can tell what they find.

Times are BSON dates, which are UTC milliseconds: stored truncated to the millisecond as SQL
stores them, and returned as timezone-aware UTC datetimes.

Every batch method costs a fixed number of round trips: `$in` queries, `insert_many(ordered=
False)`, `delete_many`, `update_many` (a batch whose own rows share unique keys takes one more
insert per such chain, see `insert_pseudonyms`). Uniqueness is the unique indexes' job, as in
the SQL schema: a document that conflicts fails with a duplicate-key error and is reported as
not stored, so a writer racing another one reads back what the other one stored. One query
carries a whole batch, so a batch must stay within MongoDB's 16 MB command size.

Transactions. MongoDB's multi-document transactions need a replica set, which a single server
and mongomock lack, so they are not used. A unit of work is instead *compensating*: it
remembers the documents that its inserts stored (pseudonyms, domains and studies created, API
keys, persons, Bloom filters, person keys, clearing cases, tasks, identifying data) and deletes
them again when the `with` block ends with an exception, so a failed request leaves no
half-written batch behind. What this does not give:

- isolation: other requests see each write as soon as it is made, and may read back (and hand
  out) a pseudonym that a failing request stored and then withdraws. Likewise a process that
  loaded the study's Bloom filter changes in between keeps a filter that is deleted again (its
  owner is then unknown: `get_bloom_filter_owners` no longer names it);
- rollback of changes to existing documents: replaced domain and study settings, deleted and
  anonymised originals, Bloom filters withdrawn by `replace_bloom_filters`, closed cases, task
  statuses (`set_task_status`, `expire_tasks`) and deleted identifying data stay as they are.
  Callers issue such changes as the last statements of a request, so nothing after them fails;
- rollback of counters: change numbers and person and filter ids that a failed unit took stay
  taken, leaving gaps. Deliberately: a reader may have seen those numbers, and handing them out
  again would hide the next writer's changes from it;
- rollback when the store itself becomes unreachable before the compensation runs; that failure
  is logged (without patient data) and the documents remain.

Identifying data are deleted with `delete_many` and copied nowhere else in the store. MongoDB
itself may keep traces beyond that: in the storage engine's free pages until reused, in the
oplog of a replica set until it rolls over, and in backups; size and protect those accordingly.

`mongomock://host/db` gives an in-memory store. Repositories on the same host share it, as they
would share a server, and its calls are serialised, because mongomock's unique indexes are not
safe under concurrent threads (see `_SerialisedMockDatabase`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import pymongo
from bson import ObjectId
from bson.int64 import Int64
from pymongo import ASCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from ..base import (BloomFilterRow, ClearingCase, DomainRecord, PseudonymRow, Repository, StorageError,
                    StoredApiKey, StudyRecord, Task, Transaction, UnknownDomain)

Document = dict[str, Any]

SCHEMA_VERSION = 2  # 2: studies, persons, Bloom filters, clearing cases, tasks, identifying data
DEFAULT_DATABASE = "ttp_gateway"
SERVER_SELECTION_TIMEOUT_MS = 3000
DUPLICATE_KEY = 11000
SCOPES = ("endpoints", "operations", "domains", "studies")

# The partial filter of the (domain, original, number) index. Queries by original repeat it, so
# that the query planner can prove the partial index covers them and use it.
HAS_ORIGINAL: Document = {"$type": "string"}

# The study lock (`lock_study`): how long a lease lasts unless renewed, how long a writer waits
# for a lease that another one holds, and the pauses between its attempts.
LEASE_DURATION = timedelta(seconds=30)
LOCK_WAIT_SECONDS = 60.0
LOCK_RETRY_SECONDS = (0.005, 0.05)  # first and longest pause; each failed attempt doubles it

# Documents of the collection `counters`: the last id handed out of each.
COUNTERS = ("persons", "bloom_filters")

# Linkage collections in the order compensation deletes from them: dependants first.
LINKAGE_COLLECTIONS = ("idat", "tasks", "clearing_cases", "person_keys", "bloom_filters", "persons")

# collection -> (index name, keys, options): the SQL schema's unique keys, and an index for every
# query the methods make (mirroring the SQL indexes; sort keys appended where a query sorts).
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
    "studies": [("study_name", [("name", ASCENDING)], {"unique": True})],
    "bloom_filters": [
        ("bloom_filter_changes", [("study", ASCENDING), ("version", ASCENDING), ("sequence", ASCENDING)], {}),
        ("bloom_filter_person", [("person", ASCENDING), ("site", ASCENDING), ("version", ASCENDING)], {}),
    ],
    "person_keys": [("person_key", [("study", ASCENDING), ("key", ASCENDING)], {"unique": True})],
    "clearing_cases": [
        ("clearing_case_due", [("study", ASCENDING), ("status", ASCENDING), ("expires", ASCENDING)], {}),
        ("clearing_case_site", [("study", ASCENDING), ("site", ASCENDING), ("status", ASCENDING)], {}),
    ],
    "tasks": [
        ("task_open", [("study", ASCENDING), ("status", ASCENDING), ("created", ASCENDING),
                       ("_id", ASCENDING)], {}),
        ("task_site", [("study", ASCENDING), ("site", ASCENDING), ("status", ASCENDING),
                       ("created", ASCENDING), ("_id", ASCENDING)], {}),
        ("task_due", [("study", ASCENDING), ("status", ASCENDING), ("expires", ASCENDING)], {}),
        ("task_case", [("case", ASCENDING)], {}),
    ],
    "idat": [("idat_case", [("case", ASCENDING)], {})],
}

log = logging.getLogger(__name__)


class MongoRepository(Repository):
    # The study lock's timing (see `MongoTransaction.lock_study`); tests shorten them.
    lease_duration: timedelta = LEASE_DURATION
    lock_wait_seconds: float = LOCK_WAIT_SECONDS

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._client, self.database = _connect(url)
        except (PyMongoError, ValueError) as exc:  # pymongo's URL parser raises both
            # The URL may carry credentials: name the problem, not the URL.
            raise StorageError(f"invalid MongoDB URL ({type(exc).__name__})") from None
        self.domains: Collection[Document] = self.database["domains"]
        self.pseudonyms: Collection[Document] = self.database["pseudonyms"]
        self.api_keys: Collection[Document] = self.database["api_keys"]
        self.studies: Collection[Document] = self.database["studies"]
        self.persons: Collection[Document] = self.database["persons"]
        self.bloom_filters: Collection[Document] = self.database["bloom_filters"]
        self.person_keys: Collection[Document] = self.database["person_keys"]
        self.clearing_cases: Collection[Document] = self.database["clearing_cases"]
        self.tasks: Collection[Document] = self.database["tasks"]
        self.idat: Collection[Document] = self.database["idat"]
        self.counters: Collection[Document] = self.database["counters"]
        self.meta: Collection[Document] = self.database["meta"]
        self._known_domains: set[str] = set()
        self._known_domains_lock = threading.Lock()

    def collection(self, name: str) -> Collection[Document]:
        """A collection by name, as the attribute of that name (which tests may patch)."""
        return getattr(self, name)

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
                    self.database[collection].create_index(keys, name=name, **options)
            # 64-bit from the start, so that $inc never meets a 32-bit value.
            for counter in COUNTERS:
                self.counters.update_one({"_id": counter}, {"$setOnInsert": {"value": Int64(0)}}, upsert=True)
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
            unit.release_leases()
            if isinstance(exc, PyMongoError):
                raise _storage_error(exc) from None
            raise
        lost = unit.release_leases()
        if lost:
            # Another unit of work may have taken the study meanwhile: this one's writes were not
            # exclusive, so it fails like a commit that could not be made.
            unit.compensate()
            raise StorageError(f"the lock of study {lost[0]!r} expired before the unit of work ended")

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
        self._created_studies: list[ObjectId] = []
        # Linkage documents by collection. Those keyed by the callers' ids (cases, tasks,
        # identifying data) are forgotten again when another document holds the id (`_insert`).
        self._inserted: dict[str, list[Any]] = {name: [] for name in LINKAGE_COLLECTIONS}
        # The owner token of this unit's study leases; the studies whose lease it took; and those
        # to release at its end, which include any whose taking failed, since the lease may have
        # been taken with only the reply lost (releasing a lease one does not own does nothing).
        self._lease_owner = uuid.uuid4().hex
        self._leases: set[str] = set()
        self._to_release: list[str] = []

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


    # --- linkage: studies and persons -------------------------------------------------------
    def get_studies(self) -> list[StudyRecord]:
        documents = self._repo.studies.find({}, {"_id": 0, "name": 1, "settings": 1},
                                            sort=[("name", ASCENDING)])
        return [StudyRecord(name=d["name"], settings=d["settings"]) for d in documents]

    def put_study(self, study: StudyRecord) -> bool:
        created_id = ObjectId()  # remembered before the write, as in put_domain
        self._created_studies.append(created_id)
        result = self._repo.studies.update_one(
            {"name": study.name},
            {"$set": {"settings": dict(study.settings)},
             "$setOnInsert": {"_id": created_id, "sequence": Int64(0)}},
            upsert=True)
        if result.upserted_id is None:
            self._created_studies.pop()
            return False
        return True

    def lock_study(self, study: str) -> None:
        """Take the study's lease: a `{owner, expires}` field of its document, set atomically
        where it is missing or expired, and removed by its owner when the unit of work ends
        (commit or failure). Across processes and replicas one unit of work holds it at a time.

        The lease expires `lease_duration` (30 s) after it was taken or last renewed; every
        change number this unit takes renews it, and succeeds only while the unit still owns it.
        A holder that stalls longer (a pause, a lost connection) may find the lease taken by
        another: its next change number, or else its end, then fails with StorageError and its
        inserts are compensated, but the two may have overlapped meanwhile. Expiry is judged by
        the writers' clocks, which must agree to well within the lease duration. A lease whose
        release fails (the store unreachable) blocks the study until it expires.

        Waiting is polling: a writer retries with pauses of 5 to 50 ms, which is not fair to
        the longest waiter, and gives up with StorageError after `lock_wait_seconds` (60 s).
        Taking a lease this unit holds already does nothing."""
        repo = self._repo
        if study in self._leases:
            return
        if study not in self._to_release:
            self._to_release.append(study)
        deadline = time.monotonic() + repo.lock_wait_seconds
        pause, longest = LOCK_RETRY_SECONDS
        known = False
        while True:
            now = _now()
            taken = repo.studies.find_one_and_update(
                {"name": study, "$or": [{"lease": None}, {"lease.expires": {"$lte": now}}]},
                {"$set": {"lease": {"owner": self._lease_owner, "expires": now + repo.lease_duration}}},
                projection={"_id": 1})
            if taken is not None:
                self._leases.add(study)
                return
            if not known:
                if repo.studies.find_one({"name": study}, {"_id": 1}) is None:
                    raise StorageError(f"study {study!r} is not in the store")
                known = True
            if time.monotonic() >= deadline:
                raise StorageError(f"study {study!r} stayed locked by another request "
                                   f"for {repo.lock_wait_seconds:g} s")
            time.sleep(pause * random.uniform(0.5, 1.0))  # jitter: waiters do not retry in step
            pause = min(pause * 2, longest)

    def create_persons(self, study: str, count: int) -> list[int]:
        if count <= 0:
            return []
        if study not in self._leases:
            self._require_study(study)  # SQL's foreign key; a lease holder knows the study exists
        persons = self._next_ids("persons", count)
        self._insert("persons", [{"_id": person, "study": study} for person in persons])
        return persons

    def add_bloom_filters(self, study: str, filters: Sequence[tuple[int, str, str, bytes]]) -> None:
        if not filters:
            return
        first = self._next_sequence(study, len(filters))
        ids = self._next_ids("bloom_filters", len(filters))
        # Inserted in order of their numbers (insert_many is ordered), so that a reader never
        # sees a number before the lower ones of the same writer.
        self._insert("bloom_filters", [
            _bloom_filter_document(bf_id, study, version, person, site, bloom_filter, first + offset)
            for offset, (bf_id, (person, site, version, bloom_filter)) in enumerate(zip(ids, filters))])

    def replace_bloom_filters(self, study: str, person: int, site: str, version: str,
                              bloom_filter: bytes) -> None:
        current = [d["_id"] for d in self._repo.bloom_filters.find(
            {"person": person, "site": site, "version": version, "study": study,
             "bloom_filter": {"$ne": None}},
            {"_id": 1}, sort=[("_id", ASCENDING)])]
        first = self._next_sequence(study, len(current) + 1)
        # Withdrawn documents keep their id with a new number, so readers see them go. One
        # update each, in order of the numbers (a person has one filter per site and version).
        for offset, bf_id in enumerate(current):
            self._repo.bloom_filters.update_one({"_id": bf_id},
                                                {"$set": {"bloom_filter": None, "sequence": first + offset}})
        [bf_id] = self._next_ids("bloom_filters", 1)
        self._insert("bloom_filters", [
            _bloom_filter_document(bf_id, study, version, person, site, bloom_filter, first + len(current))])

    def get_bloom_filter_changes(self, study: str, version: str, after: int) -> list[BloomFilterRow]:
        documents = self._repo.bloom_filters.find(
            {"study": study, "version": version, "sequence": {"$gt": after}}, sort=[("sequence", ASCENDING)])
        # int(): pymongo decodes 64-bit integers as bson.Int64; callers get plain ints, as from SQL.
        return [BloomFilterRow(int(d["_id"]), int(d["person"]), d["site"], version,
                               None if d["bloom_filter"] is None else bytes(d["bloom_filter"]),
                               int(d["sequence"]))
                for d in documents]

    def get_bloom_filter_owners(self, study: str, ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        if not ids:
            return {}
        documents = self._repo.bloom_filters.find({"_id": {"$in": list(ids)}, "study": study},
                                                  {"person": 1, "site": 1})
        return {int(d["_id"]): (int(d["person"]), d["site"]) for d in documents}

    def find_persons(self, study: str, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        documents = self._repo.person_keys.find({"study": study, "key": {"$in": list(keys)}},
                                                {"_id": 0, "key": 1, "person": 1})
        return {d["key"]: int(d["person"]) for d in documents}

    def add_person_keys(self, study: str, keys: Sequence[tuple[str, int]]) -> None:
        # The first pair of a key in the batch is the one to keep, as with SQL's row-by-row ON
        # CONFLICT DO NOTHING; an unordered insert_many promises no order, so later ones go here.
        first: dict[str, int] = {}
        for key, person in keys:
            first.setdefault(key, person)
        if not first:
            return
        documents = [{"_id": ObjectId(), "study": study, "key": key, "person": person}
                     for key, person in first.items()]
        # Keys taken already keep their person: the unique index rejects the new pair.
        self._inserted["person_keys"].extend(d["_id"] for d in documents)
        self._insert_skipping_conflicts(self._repo.person_keys, documents)

    # --- linkage: clearing and tasks ----------------------------------------------------------
    def add_case(self, case: ClearingCase) -> None:
        self._insert("clearing_cases", [{
            "_id": case.id, "study": case.study, "site": case.site, "version": case.version,
            "bloom_filter": case.bloom_filter, "candidates": list(case.candidates), "status": case.status,
            "person": case.person, "created": _stored_time(case.created),
            "expires": _stored_time(case.expires)}])

    def get_case(self, case_id: str) -> ClearingCase | None:
        document = self._repo.clearing_cases.find_one({"_id": case_id})
        return None if document is None else _case(document)

    def close_case(self, case_id: str, status: str, person: int | None) -> bool:
        result = self._repo.clearing_cases.update_one({"_id": case_id, "status": "open"},
                                                      {"$set": {"status": status, "person": person}})
        return result.matched_count == 1

    def get_due_cases(self, study: str, now: datetime) -> list[ClearingCase]:
        documents = self._repo.clearing_cases.find(
            {"study": study, "status": "open", "expires": {"$lte": _stored_time(now)}},
            sort=[("expires", ASCENDING)])
        return [_case(d) for d in documents]

    def get_open_cases(self, study: str) -> list[ClearingCase]:
        documents = self._repo.clearing_cases.find({"study": study, "status": "open"},
                                                   sort=[("created", ASCENDING), ("_id", ASCENDING)])
        return [_case(d) for d in documents]

    def update_case_candidates(self, case_id: str, candidates: list[dict[str, Any]]) -> None:
        self._repo.clearing_cases.update_one({"_id": case_id}, {"$set": {"candidates": list(candidates)}})

    def add_tasks(self, tasks: Sequence[Task]) -> None:
        if tasks:
            self._insert("tasks", [{
                "_id": t.id, "study": t.study, "site": t.site, "kind": t.kind, "case": t.case,
                "details": dict(t.details), "status": t.status,
                "created": _stored_time(t.created), "expires": _stored_time(t.expires)} for t in tasks])

    def get_task(self, task_id: str) -> Task | None:
        document = self._repo.tasks.find_one({"_id": task_id})
        return None if document is None else _task(document)

    def get_open_tasks(self, study: str, site: str | None = None, case: str | None = None) -> list[Task]:
        selection: Document = {"study": study, "status": "open"}
        if site is not None:
            selection["site"] = site
        if case is not None:
            selection["case"] = case
        documents = self._repo.tasks.find(selection, sort=[("created", ASCENDING), ("_id", ASCENDING)])
        return [_task(d) for d in documents]

    def set_task_status(self, task_ids: Sequence[str], status: str) -> None:
        if task_ids:
            self._repo.tasks.update_many({"_id": {"$in": list(task_ids)}}, {"$set": {"status": status}})

    def expire_tasks(self, study: str, now: datetime) -> int:
        result = self._repo.tasks.update_many(
            {"study": study, "status": "open", "expires": {"$lte": _stored_time(now)}},
            {"$set": {"status": "expired"}})
        return result.modified_count

    def put_idat(self, case_id: str, task_id: str, site: str, idat: Mapping[str, Any]) -> None:
        self._insert("idat", [{"_id": task_id, "case": case_id, "site": site, "data": dict(idat)}])

    def get_idat(self, case_id: str) -> dict[str, Mapping[str, Any]]:
        return {d["_id"]: d["data"] for d in self._repo.idat.find({"case": case_id}, {"data": 1})}

    def delete_idat(self, case_id: str) -> None:
        self._repo.idat.delete_many({"case": case_id})

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
            for name in LINKAGE_COLLECTIONS:
                if self._inserted[name]:
                    repo.collection(name).delete_many({"_id": {"$in": self._inserted[name]}})
            if self._created_studies:
                repo.studies.delete_many({"_id": {"$in": self._created_studies}})
        except PyMongoError as exc:
            log.error("could not undo the writes of a failed transaction (%s): up to %d pseudonyms, "
                      "%d API keys, %d domains, %d studies and %d linkage documents remain",
                      type(exc).__name__, len(self._stored_pseudonyms), len(self._stored_api_keys),
                      len(self._created_domains), len(self._created_studies),
                      sum(len(ids) for ids in self._inserted.values()))
        self._stored_pseudonyms.clear()
        self._stored_api_keys.clear()
        self._created_domains.clear()
        self._created_studies.clear()
        for ids in self._inserted.values():
            ids.clear()

    def release_leases(self) -> list[str]:
        """Give up the study leases this unit holds; return the studies whose lease it had lost."""
        lost: list[str] = []
        for study in self._to_release:
            try:
                released = self._repo.studies.update_one({"name": study, "lease.owner": self._lease_owner},
                                                         {"$unset": {"lease": ""}})
            except PyMongoError as exc:
                log.error("could not release the lock of a study (%s); it expires by itself",
                          type(exc).__name__)
                continue
            if released.matched_count == 0 and study in self._leases:
                lost.append(study)
        self._leases.clear()
        self._to_release.clear()
        return lost

    def _next_sequence(self, study: str, count: int) -> int:
        """The first of `count` new change numbers of the study. Under the study's lease only
        while this unit still owns it, which the same update renews."""
        selection: Document = {"name": study}
        update: Document = {"$inc": {"sequence": count}}
        held = study in self._leases
        if held:
            selection["lease.owner"] = self._lease_owner
            update["$set"] = {"lease.expires": _now() + self._repo.lease_duration}
        document = self._repo.studies.find_one_and_update(selection, update,
                                                          projection={"_id": 0, "sequence": 1},
                                                          return_document=ReturnDocument.AFTER)
        if document is None:
            if held:
                raise StorageError(f"the lock of study {study!r} expired before the unit of work ended")
            raise StorageError(f"study {study!r} is not in the store")
        return int(document["sequence"]) - count + 1

    def _next_ids(self, counter: str, count: int) -> list[int]:
        """`count` consecutive new ids from a counter document."""
        document = self._repo.counters.find_one_and_update({"_id": counter}, {"$inc": {"value": count}},
                                                           upsert=True, return_document=ReturnDocument.AFTER)
        last = int(document["value"])
        return list(range(last - count + 1, last + 1))

    def _require_study(self, study: str) -> None:
        if self._repo.studies.find_one({"name": study}, {"_id": 1}) is None:
            raise StorageError(f"study {study!r} is not in the store")

    def _insert(self, name: str, documents: list[Document]) -> None:
        """Insert new documents with the _ids given, in order, remembering them for compensation."""
        remembered = self._inserted[name]
        start = len(remembered)
        remembered.extend(d["_id"] for d in documents)
        try:
            self._repo.collection(name).insert_many(documents)
        except BulkWriteError as exc:
            # An ordered insert stops at the first error: that document and those after it are not
            # this unit's. One whose _id is taken belongs to another, which compensation must spare.
            # (A write concern error alone leaves every document stored, and remembered.)
            errors = exc.details.get("writeErrors")
            if errors:
                del remembered[start + errors[0]["index"]:]
            raise

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


def _bloom_filter_document(bf_id: int, study: str, version: str, person: int, site: str,
                           bloom_filter: bytes, sequence: int) -> Document:
    return {"_id": bf_id, "study": study, "version": version, "person": person, "site": site,
            "bloom_filter": bytes(bloom_filter), "sequence": sequence}  # bytes: stored as BSON binary


def _case(document: Document) -> ClearingCase:
    return ClearingCase(id=document["_id"], study=document["study"], site=document["site"],
                        version=document["version"], bloom_filter=document["bloom_filter"],
                        candidates=document["candidates"], status=document["status"],
                        person=document["person"], created=_read_time(document["created"]),
                        expires=_read_time(document["expires"]))


def _task(document: Document) -> Task:
    return Task(id=document["_id"], study=document["study"], site=document["site"], kind=document["kind"],
                case=document["case"], details=document["details"], status=document["status"],
                created=_read_time(document["created"]), expires=_read_time(document["expires"]))


def _stored_time(moment: datetime) -> datetime:
    """The moment as stored: whole UTC milliseconds, computed as the SQL backend does, so that
    both compare and return the same values."""
    return datetime.fromtimestamp(int(moment.timestamp() * 1000) / 1000, tz=timezone.utc)


def _read_time(value: datetime) -> datetime:
    # pymongo returns naive UTC datetimes, unless the client was made timezone-aware.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


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

    def list_collection_names(self) -> list[str]:
        with self._lock:
            return self._database.list_collection_names()


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
