"""The repository interface: what plugins may ask of storage, in the domain's language.

Every method takes and returns batches, so that one request costs a few round trips whatever
its size. Work happens inside a transaction (`Repository.transaction()`): everything a request
writes is committed together when the `with` block ends, before the response is sent, or not at
all. Uniqueness is carried by the store's own unique keys; methods that insert skip what
conflicts with them and say what they stored, so that a caller racing another writer — in
another process or on another replica — reads back what the other one stored.

A domain's pseudonyms are numbered per original: number 0 is the original's pseudonym, numbers
1, 2, ... are further pseudonyms in a multi-psn domain. The store keeps unique keys on
(domain, pseudonym) and on (domain, original, number); anonymising removes the original and
keeps the pseudonym.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, NamedTuple, Sequence


class StorageError(Exception):
    """A store that cannot be reached or used; the message never carries patient data."""


class UnknownDomain(StorageError):
    """A domain that is not in the store."""


@dataclass(frozen=True)
class DomainRecord:
    """A pseudonymisation domain as stored; `settings` holds its rules for the plugin."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class StoredApiKey:
    """An API key created in storage (by the admin CLI): only the digest of its secret."""

    name: str
    key_sha256: str
    endpoints: tuple[str, ...] = ("*",)
    operations: tuple[str, ...] = ("*",)
    domains: tuple[str, ...] = ("*",)
    studies: tuple[str, ...] = ("*",)

    def as_settings(self) -> dict[str, Any]:
        return {"name": self.name, "key_sha256": self.key_sha256, "endpoints": list(self.endpoints),
                "operations": list(self.operations), "domains": list(self.domains),
                "studies": list(self.studies)}


class PseudonymRow(NamedTuple):
    """One stored pseudonym: `number` 0 is the original's pseudonym, higher ones are further
    pseudonyms of a multi-psn domain; `original` is None once anonymised. (A tuple: batches
    hold tens of thousands of them.)"""

    original: str | None
    number: int
    pseudonym: str


@dataclass(frozen=True)
class StudyRecord:
    """A linkage study as stored; `settings` holds its sites, thresholds and so on for the plugin."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)


class BloomFilterRow(NamedTuple):
    """One stored Bloom filter of a person, as sent by a site in one version.

    `sequence` orders changes within a study: every insert and replacement takes the study's
    next number, so that a reader holding everything up to n needs only the rows after n.
    `bloom_filter` is None for a filter that was withdrawn."""

    id: int
    person: int
    site: str
    version: str
    bloom_filter: bytes | None
    sequence: int


@dataclass
class ClearingCase:
    """Bloom filters whose linkage is decided by comparing identifying data.

    `candidates` lists who takes part: the requesting sites' records (`{"requester": true,
    "task", "site", "version", "bloomfilter", "canonical"}`; `site`, `version` and
    `bloom_filter` of the case name the first of them) and the stored persons they may be
    (`{"person", "site", "pseudonym", "score", "task"}`). `status` is open, decided or
    aborted; `person` the decision for the first requester."""

    id: str
    study: str
    site: str
    version: str
    bloom_filter: str  # as the site sent it (base64), to be named again in tasks
    candidates: list[dict[str, Any]]
    created: datetime
    expires: datetime
    status: str = "open"
    person: int | None = None


@dataclass
class Task:
    """Work for a site, delivered by `$requestTasks` until done or expired.

    `kind` is send_idat, dic_psn_available or repeat_request; `details` holds what the task
    names (bloom filter, pseudonym, requested elements)."""

    id: str
    study: str
    site: str
    kind: str
    created: datetime
    expires: datetime
    details: dict[str, Any] = field(default_factory=dict)
    case: str | None = None
    status: str = "open"


class Transaction(ABC):
    """One unit of work. Obtained from `Repository.transaction()`, never built directly."""

    # --- domains --------------------------------------------------------------------------
    @abstractmethod
    def get_domains(self) -> list[DomainRecord]:
        """All domains, by name."""

    @abstractmethod
    def put_domain(self, domain: DomainRecord) -> bool:
        """Create the domain or replace its settings; True if it was created."""

    # --- pseudonyms -----------------------------------------------------------------------
    @abstractmethod
    def get_pseudonyms(self, domain: str, originals: Sequence[str]) -> dict[str, str]:
        """The pseudonym (number 0) of each original that has one."""

    @abstractmethod
    def get_pseudonym_rows(self, domain: str, originals: Sequence[str]) -> dict[str, list[PseudonymRow]]:
        """Every pseudonym of each original that has any, ordered by number."""

    @abstractmethod
    def get_originals(self, domain: str, pseudonyms: Sequence[str]) -> dict[str, str | None]:
        """The original of each known pseudonym; None where it was anonymised."""

    @abstractmethod
    def insert_pseudonyms(self, domain: str, rows: Sequence[PseudonymRow]) -> set[PseudonymRow]:
        """Store the rows that conflict with no stored one and no earlier row of the batch;
        return the rows stored. Rows are taken in the order given; callers sort them so that
        concurrent writers meet in the same order."""

    @abstractmethod
    def delete_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        """Delete every pseudonym of these originals; return the originals that had any."""

    @abstractmethod
    def anonymize_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        """Remove these originals from their pseudonyms for good; return those that had any."""

    @abstractmethod
    def count_pseudonyms(self, domain: str) -> int:
        """How many pseudonyms the domain holds."""

    # --- API keys -------------------------------------------------------------------------
    @abstractmethod
    def get_api_keys(self) -> list[StoredApiKey]:
        """All API keys created in storage."""

    @abstractmethod
    def add_api_key(self, key: StoredApiKey) -> bool:
        """Store a new key; False if its name is taken."""

    # --- linkage: studies and persons -------------------------------------------------------
    @abstractmethod
    def get_studies(self) -> list[StudyRecord]:
        """All studies, by name."""

    @abstractmethod
    def put_study(self, study: StudyRecord) -> bool:
        """Create the study or replace its settings; True if it was created."""

    @abstractmethod
    def lock_study(self, study: str) -> None:
        """Take the study's write lock until the transaction ends. Whoever creates persons or
        stores Bloom filters of a study holds it, so that two requests for one new person
        cannot both create it, in any process or replica."""

    @abstractmethod
    def create_persons(self, study: str, count: int) -> list[int]:
        """`count` new persons of the study; their ids."""

    @abstractmethod
    def add_bloom_filters(self, study: str, filters: Sequence[tuple[int, str, str, bytes]]) -> None:
        """Store (person, site, version, bloom filter) rows. Needs the study lock."""

    @abstractmethod
    def replace_bloom_filters(self, study: str, person: int, site: str, version: str,
                              bloom_filter: bytes) -> None:
        """Withdraw the person's filters of this site and version and store this one instead.
        Needs the study lock."""

    @abstractmethod
    def get_bloom_filter_changes(self, study: str, version: str, after: int) -> list[BloomFilterRow]:
        """Rows of the study and version with a sequence number above `after`, by sequence."""

    @abstractmethod
    def get_bloom_filter_owners(self, study: str, ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        """The (person, site) of each stored Bloom filter id, withdrawn ones included."""

    @abstractmethod
    def find_persons(self, study: str, keys: Sequence[str]) -> dict[str, int]:
        """The person each known identifying key (e.g. a hashed KVID) belongs to."""

    @abstractmethod
    def add_person_keys(self, study: str, keys: Sequence[tuple[str, int]]) -> None:
        """Record (key, person) pairs; a key that belongs to someone already keeps its person."""

    # --- linkage: clearing and tasks --------------------------------------------------------
    @abstractmethod
    def add_case(self, case: ClearingCase) -> None:
        """Store a new clearing case."""

    @abstractmethod
    def get_case(self, case_id: str) -> ClearingCase | None:
        """A clearing case by id."""

    @abstractmethod
    def close_case(self, case_id: str, status: str, person: int | None) -> bool:
        """Move an open case to `status` (decided or aborted); False if it was not open, so
        that of two processes closing one case only one acts on it."""

    @abstractmethod
    def get_due_cases(self, study: str, now: datetime) -> list[ClearingCase]:
        """Open cases of the study that expired before `now`."""

    @abstractmethod
    def get_open_cases(self, study: str) -> list[ClearingCase]:
        """The study's open cases, oldest first."""

    @abstractmethod
    def update_case_candidates(self, case_id: str, candidates: list[dict[str, Any]]) -> None:
        """Replace an open case's candidates (a clearing can take in further requests)."""

    @abstractmethod
    def add_tasks(self, tasks: Sequence[Task]) -> None:
        """Store new tasks."""

    @abstractmethod
    def get_task(self, task_id: str) -> Task | None:
        """A task by id."""

    @abstractmethod
    def get_open_tasks(self, study: str, site: str | None = None, case: str | None = None) -> list[Task]:
        """Open tasks of the study, of one site or one case, oldest first."""

    @abstractmethod
    def set_task_status(self, task_ids: Sequence[str], status: str) -> None:
        """Mark tasks done or expired."""

    @abstractmethod
    def expire_tasks(self, study: str, now: datetime) -> int:
        """Mark the study's open tasks that expired before `now` as expired; how many."""

    @abstractmethod
    def put_idat(self, case_id: str, task_id: str, site: str, idat: Mapping[str, Any]) -> None:
        """Keep a site's identifying data for a case until it is decided."""

    @abstractmethod
    def get_idat(self, case_id: str) -> dict[str, Mapping[str, Any]]:
        """The identifying data of a case, by task id."""

    @abstractmethod
    def delete_idat(self, case_id: str) -> None:
        """Delete a case's identifying data irrevocably."""


class Repository(ABC):
    """A store chosen by URL (`backends.open_repository`)."""

    url: str
    # False for embedded stores whose reads take microseconds and never wait for a lock; the
    # core then runs small read-only operations without a thread hop.
    reads_block: bool = True

    @abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema (tables, indexes); safe to call from every process."""

    @abstractmethod
    def transaction(self, write: bool = False) -> AbstractContextManager[Transaction]:
        """A unit of work, committed when the block ends without an exception.

        `write=True` announces writes, so that stores which serialise writers (SQLite) take
        the write lock at the start rather than failing half-way. A read-only unit
        (`write=False`) sees committed data; each of its statements is consistent in itself,
        not necessarily with the one before (stores may skip the transaction for reads)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StorageError when the store cannot serve requests."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
