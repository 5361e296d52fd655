"""What the dispatcher keeps: studies, persons and their Bloom filters, identifier keys, and the
clearing (cases, tasks, sealed identifying data), behind one protocol per backend.

Persons are numbered per store; a person's site and project pseudonyms live in the gPAS domains
(under the original `<study>:<person>`), not here. Every stored or withdrawn Bloom filter takes
the study's next change number, so that a process holding all changes up to n asks only for the
rows after n; writers hold the study's lock (`lock_study`) while they take numbers, so numbers
become visible in order.

Identifying data (IDAT) reach the store sealed (`idat.seal`: AES-GCM under the dispatcher's key),
so database files, logs of the store and backups hold ciphertext only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from ttp_gateway.backends.base import StoreDefinition, StoreKey


@dataclass(frozen=True)
class StudyRecord:
    """A linkage study as stored; `settings` holds its sites, thresholds and so on."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)


class BloomFilterRow(NamedTuple):
    """One stored Bloom filter of a person, as sent by a site in one version; `bloom_filter` is
    None for a filter that was withdrawn. `sequence` is its change number within the study."""

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


class LinkageStore(ABC):
    """The dispatcher's data. Methods naming a study that is not in the store raise
    `backends.base.NotFound`."""

    # --- studies and persons ------------------------------------------------------------------
    @abstractmethod
    def get_studies(self) -> list[StudyRecord]:
        """All studies, by name."""

    @abstractmethod
    def put_study(self, study: StudyRecord) -> bool:
        """Create the study or replace its settings; True if it was created."""

    @abstractmethod
    def lock_study(self, study: str) -> None:
        """Take the study's write lock until the unit of work ends. Whoever creates persons or
        stores Bloom filters of a study holds it, so that two requests for one new person
        cannot both create it, in any process or replica."""

    @abstractmethod
    def create_persons(self, study: str, count: int) -> list[int]:
        """`count` new persons of the study; their ids, ascending."""

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
        """Rows of the study and version with a change number above `after`, in that order."""

    @abstractmethod
    def get_bloom_filter_owners(self, study: str, ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        """The (person, site) of each stored Bloom filter id, withdrawn ones included."""

    @abstractmethod
    def find_persons(self, study: str, keys: Sequence[str]) -> dict[str, int]:
        """The person each known identifying key (e.g. a hashed KVID) belongs to."""

    @abstractmethod
    def add_person_keys(self, study: str, keys: Sequence[tuple[str, int]]) -> None:
        """Record (key, person) pairs; a key that belongs to someone already keeps its person."""

    # --- clearing and tasks -------------------------------------------------------------------
    @abstractmethod
    def add_case(self, case: ClearingCase) -> None:
        """Store a new clearing case."""

    @abstractmethod
    def get_case(self, case_id: str) -> ClearingCase | None:
        """A clearing case by id."""

    @abstractmethod
    def close_case(self, case_id: str, status: str, person: int | None) -> bool:
        """Move an open case to `status` (decided or aborted); False if it was not open."""

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
    def complete_task(self, task_id: str, details: dict[str, Any]) -> None:
        """Mark a task done, with its details replaced (e.g. by what answered it)."""

    @abstractmethod
    def expire_tasks(self, study: str, now: datetime) -> int:
        """Mark the study's open tasks that expired before `now` as expired; how many."""

    @abstractmethod
    def put_idat(self, case_id: str, task_id: str, site: str, sealed: bytes) -> None:
        """Keep a site's sealed identifying data for a case until it is decided."""

    @abstractmethod
    def get_idat(self, case_id: str) -> dict[str, bytes]:
        """The sealed identifying data of a case, by task id."""

    @abstractmethod
    def delete_idat(self, case_id: str) -> None:
        """Delete a case's identifying data irrevocably."""


LINKAGE: StoreKey[LinkageStore] = StoreKey("dispatcher")


def definition() -> StoreDefinition[LinkageStore]:
    from ttp_gateway.backends.mongo import MongoStore
    from ttp_gateway.backends.sql import SqlStore

    from . import store_mongo, store_sql

    return StoreDefinition(
        key=LINKAGE,
        sql=SqlStore(metadata=store_sql.metadata, migrations=Path(__file__).parent / "migrations",
                     open=store_sql.SqlLinkageStore),
        mongo=MongoStore(indexes=store_mongo.INDEXES, open=store_mongo.MongoLinkageStore),
    )
