"""Record linkage on Bloom filters: the in-memory indexes, the decision, and the clearing.

Every process keeps one `FilterIndex` per study and Bloom filter version and brings it up to
date from the store before it decides anything: the store numbers every stored or withdrawn
filter of a study with the study's next change number, and a process asks for the rows after
the highest number it holds. Writers hold the study's lock (`lock_study`) while they store
filters, so numbers become visible in order and the "rows after n" question never misses one.
The shared index takes in committed rows only (read units); rows a write unit sees beyond them
are compared for its decision but never enter the index, so a unit that is rolled back cannot
leave filters behind in memory.

A request is decided in two steps. Without any lock, each filter is searched in the index: the
expensive part. Then, under the study's lock, the changes since that search (usually none, at
most a few) are compared as well, and persons, filters, pseudonyms, cases and tasks are written.
Two requests for the same new person therefore meet under the lock: the second sees the first's
filter among the changes and links to its person instead of creating another.

The filters of one request are decided one after the other, each exactly as if the request's
earlier filters had been sent before it in requests of their own: an earlier filter that found
or became a person is a stored filter of that person for the later ones, at every threshold; an
earlier filter that went to a clearing is a record waiting in that clearing. A batch and the
same filters sent one by one therefore give the same persons.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Sequence

from ttp_gateway.backends.base import Repository, UnitOfWork
from ttp_gateway.core.errors import ServerError
from ttp_gateway.plugins.gpas.api import Pseudonymizer

from . import bloom
from .idat import Comparison, Idat, compare, explain
from .matcher import FilterIndex
from .sealing import IdatSeal
from .store import LINKAGE, BloomFilterRow, ClearingCase, LinkageStore, Task
from .studies import Study

log = logging.getLogger("ttp_gateway.dispatcher")
SEND_IDAT = "send_idat"
PSN_AVAILABLE = "dic_psn_available"
REPEAT_REQUEST = "repeat_request"

log = logging.getLogger("ttp_gateway.dispatcher")


@dataclass
class _SyncedIndex:
    index: FilterIndex
    sequence: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class FilterIndexes:
    """The Bloom filters of every study and version, in memory, kept in step with the store.

    `device` is where the indexes search: "cpu", or "gpu" (faiss with GPU support)."""

    # Stored filters are added this many at a time, with a log line after each when there are
    # more (a start-up load): the index's bulk path, and progress an operator can follow.
    load_step = 250_000

    def __init__(self, repository: Repository, device: str = "cpu") -> None:
        self._repository = repository
        self.device = device
        self._indexes: dict[tuple[str, str], _SyncedIndex] = {}
        self._lock = threading.Lock()

    def synced(self, study: Study, version: str) -> tuple[FilterIndex, int]:
        """The index of a study's version with every committed change; and the change number it
        is current to."""
        entry = self._entry(study, version)
        with entry.lock:
            started = time.perf_counter()
            with self._repository.read() as unit:
                changes = unit[LINKAGE].get_bloom_filter_changes(study.name, version, entry.sequence)
            if len(changes) > self.load_step:
                log.info("Bloom filters read", extra={"study": study.name, "version": version, "rows": len(changes),
                                                      "seconds": round(time.perf_counter() - started, 1)})
            self._apply(entry, changes, study.name, version)
            return entry.index, entry.sequence

    @staticmethod
    def changes_since(store: LinkageStore, study: Study, version: str, sequence: int) -> list[BloomFilterRow]:
        """The rows stored or withdrawn after `sequence`, as `store` (a write unit's) sees them."""
        return store.get_bloom_filter_changes(study.name, version, sequence)

    def loaded(self) -> dict[str, int]:
        return {f"{study}/{version}": len(entry.index) for (study, version), entry in self._indexes.items()}

    def _entry(self, study: Study, version: str) -> _SyncedIndex:
        key = (study.name, version)
        entry = self._indexes.get(key)
        if entry is None:
            with self._lock:
                entry = self._indexes.get(key)
                if entry is None:
                    index = FilterIndex(study.versions[version].length, device=self.device)
                    entry = self._indexes[key] = _SyncedIndex(index)
        return entry

    def _apply(self, entry: _SyncedIndex, changes: Sequence[BloomFilterRow], study: str, version: str) -> None:
        if not changes:
            return
        stored = [row for row in changes if row.bloom_filter is not None]
        withdrawn = [row.id for row in changes if row.bloom_filter is None]
        if withdrawn:
            entry.index.remove(withdrawn)
        started = time.perf_counter()
        for start in range(0, len(stored), self.load_step):
            part = stored[start : start + self.load_step]
            entry.index.upsert([row.id for row in part], [row.bloom_filter for row in part])
            if len(stored) > self.load_step:  # counts only: never a filter
                log.info("Bloom filters loaded", extra={
                    "study": study, "version": version, "loaded": start + len(part), "total": len(stored),
                    "seconds": round(time.perf_counter() - started, 1)})
        entry.sequence = max(entry.sequence, changes[-1].sequence)


@dataclass
class Query:
    """One Bloom filter of a request, decoded; or the reason it cannot be used."""

    given: str                    # as the site sent it, echoed in the answer
    version: str = ""
    bloom_filter: bytes = b""
    canonical: str = ""           # the canonical base64 form, for comparing requests
    error: str | None = None      # an issue-type code when the filter cannot be used
    candidates: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (filter id, score)


class _NewPerson:
    """A person this request creates; later filters of the request may link to it."""

    def __init__(self, order: int) -> None:
        self.order = order


@dataclass
class Outcome:
    """What became of a query: a site pseudonym, a pending clearing, or an error code."""

    pseudonym: str | None = None
    pending: bool = False
    error: str | None = None


@dataclass
class ProvideOutcome:
    """What a `$providePatientData` did: whether it decided its clearing, and how the records
    compared (element codes and agreement levels only, for the audit)."""

    decided: bool
    comparisons: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def idat_to_document(idat: Idat) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, date) else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(idat).items()}


def idat_from_document(document: dict[str, Any]) -> Idat:
    fields = {f.name: f for f in dataclasses.fields(Idat)}
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key == "birth_date" and value:
            values[key] = date.fromisoformat(value)
        elif isinstance(value, list):
            values[key] = tuple(value)
        elif key in fields:
            values[key] = value
    return Idat(**values)


Person = int | _NewPerson
Candidate = tuple[Person, float, str]  # (person, score, site holding its most similar filter)


class Linker:
    def __init__(self, repository: Repository, pseudonymizer: Pseudonymizer, seal: IdatSeal | None,
                 indexes: FilterIndexes | None = None) -> None:
        self.repository = repository
        self.pseudonyms = pseudonymizer
        self.seal = seal
        self.indexes = indexes or FilterIndexes(repository)

    # --- $requestPsnFromBfWorkflow ------------------------------------------------------------
    def search(self, study: Study, queries: list[Query]) -> dict[str, int]:
        """Candidates for every usable query from the index, outside any lock; per version the
        change number the index was current to."""
        snapshot = {}
        for version, of_version in _by_version([q for q in queries if q.error is None]).items():
            index, sequence = self.indexes.synced(study, version)
            snapshot[version] = sequence
            found = index.search_many([q.bloom_filter for q in of_version], study.possible_match_threshold,
                                      limit=_search_limit(study))
            for query, candidates in zip(of_version, found):
                query.candidates = candidates
        return snapshot

    def link(self, unit: UnitOfWork, study: Study, site: str, queries: list[Query], snapshot: dict[str, int],
             now: datetime) -> list[Outcome]:
        """Site pseudonyms for Bloom filters of one site: known person, new person, or clearing.
        `snapshot` is what `search` returned for these queries."""
        store = unit[LINKAGE]
        usable = [q for q in queries if q.error is None]
        store.lock_study(study.name)
        self._expire(store, study, now)
        for version, of_version in _by_version(usable).items():
            self._add_changes(store, study, version, snapshot.get(version, 0), of_version)
        owners = store.get_bloom_filter_owners(study.name, sorted({bf for q in usable for bf, _ in q.candidates}))
        pending = _PendingRecords(store.get_open_cases(study.name), study)
        outcomes: dict[int, Outcome] = {}
        person_of: dict[int, Person] = {}   # id(query) -> person
        decided: list[Query] = []           # earlier filters of this request that have a person
        keep: list[Query] = []              # filters to store
        intents: list[_Intent] = []         # clearings to open or join, in order
        new_persons = itertools.count()
        for query in usable:
            if pending.holds(site, query.canonical):
                outcomes[id(query)] = Outcome(pending=True)
                continue
            ranked = self._rank(study, site, query, owners, decided, person_of)
            person, score = (ranked[0][0], ranked[0][1]) if ranked else (None, 0.0)
            similar, similar_score = pending.most_similar(query)
            if score >= study.match_threshold:
                person_of[id(query)] = person  # type: ignore[assignment]
            elif score >= study.possible_match_threshold or similar_score >= study.possible_match_threshold:
                # Unsure, or like a record whose clearing runs: decided by comparing IDAT, in the
                # running clearing if it is like that one's record (they may be one person that
                # nobody knows yet).
                candidates = [c for c in ranked if c[1] >= study.possible_match_threshold][:study.candidates]
                joins = similar if similar_score >= study.possible_match_threshold else None
                intent = _Intent(query, candidates, joins)
                intents.append(intent)
                pending.add(intent, site, query)
                outcomes[id(query)] = Outcome(pending=True)
                continue
            else:
                person_of[id(query)] = _NewPerson(next(new_persons))
            decided.append(query)
            if score < 1.0:  # an identical filter of the person is stored already
                keep.append(query)
        persons = self._resolve(store, study, [person_of[id(q)] for q in decided]
                                + [c[0] for intent in intents for c in intent.candidates])
        store.add_bloom_filters(study.name, [(persons[person_of[id(q)]], site, q.version, q.bloom_filter)
                                             for q in keep])
        at_site = self._site_pseudonyms(unit, study, site, {persons[person_of[id(q)]] for q in decided})
        for query in decided:
            outcomes[id(query)] = Outcome(pseudonym=at_site[persons[person_of[id(query)]]])
        self._open_clearings(unit, store, study, site, intents, persons, now)
        self._close_tasks_for(store, study, site, answered=[q.canonical for q in decided],
                              repeated=[q.canonical for q in usable])
        return [outcomes.get(id(q), Outcome(error=q.error)) for q in queries]

    def _rank(self, study: Study, site: str, query: Query, owners: dict[int, tuple[int, str]],
              decided: list[Query], person_of: dict[int, Person]) -> list[Candidate]:
        """Candidate persons of a query with their best score, best first: stored filters, and the
        earlier filters of this request as if they were stored (the same search limit)."""
        found: list[tuple[float, int, Person, str]] = []  # (score, order, person, holder)
        for order, (bf, score) in enumerate(query.candidates):
            owner = owners.get(bf)
            if owner is not None:
                found.append((score, order, owner[0], owner[1]))
        for order, other in enumerate(decided, start=len(found)):
            if other.version == query.version:
                score = bloom.dice(query.bloom_filter, other.bloom_filter)
                if score >= study.possible_match_threshold:
                    found.append((score, order, person_of[id(other)], site))
        found.sort(key=lambda f: (-f[0], f[1]))
        best: dict[Any, Candidate] = {}
        for score, _, person, holder in found[:_search_limit(study)]:
            if person not in best:
                best[person] = (person, score, holder)
        return sorted(best.values(), key=lambda c: (-c[1],) + _person_order(c[0]))

    def _add_changes(self, store: LinkageStore, study: Study, version: str, sequence: int,
                     queries: list[Query]) -> None:
        """Compare the queries with the filters stored since their search (under the lock)."""
        changes = self.indexes.changes_since(store, study, version, sequence)
        if not changes:
            return
        withdrawn = {row.id for row in changes}
        stored = [row for row in changes if row.bloom_filter is not None]
        for query in queries:
            kept = [(bf, score) for bf, score in query.candidates if bf not in withdrawn]
            for row in stored:
                score = bloom.dice(query.bloom_filter, row.bloom_filter)  # type: ignore[arg-type]
                if score >= study.possible_match_threshold:
                    kept.append((row.id, score))
            query.candidates = sorted(kept, key=lambda c: (-c[1], c[0]))[:_search_limit(study)]

    @staticmethod
    def _resolve(store: LinkageStore, study: Study, persons: list[Person]) -> dict[Person, int]:
        """Person ids for the persons a request names, creating its new persons in order."""
        new = sorted({p for p in persons if isinstance(p, _NewPerson)}, key=lambda p: p.order)
        created: dict[Person, int] = dict(zip(new, store.create_persons(study.name, len(new))))
        return {p: created[p] if isinstance(p, _NewPerson) else p for p in persons}

    def _site_pseudonyms(self, unit: UnitOfWork, study: Study, site: str, persons: set[int]) -> dict[int, str]:
        if not persons:
            return {}
        domain = self.pseudonyms.domain(site)
        keys = {study.person_key(p): p for p in persons}
        found = self.pseudonyms.get_or_create(unit, domain, sorted(keys))
        return {keys[key]: pseudonym for key, pseudonym in found.items()}

    def _pseudonyms_at(self, unit: UnitOfWork, study: Study,
                       pairs: set[tuple[int, str]]) -> dict[tuple[int, str], str]:
        """The pseudonym of each (person, site), one batch per site."""
        by_site: dict[str, set[int]] = {}
        for person, site in pairs:
            by_site.setdefault(site, set()).add(person)
        return {(person, site): pseudonym for site, persons in by_site.items()
                for person, pseudonym in self._site_pseudonyms(unit, study, site, persons).items()}

    # --- clearing -----------------------------------------------------------------------------
    def _open_clearings(self, unit: UnitOfWork, store: LinkageStore, study: Study, site: str,
                        intents: list["_Intent"], persons: dict[Person, int], now: datetime) -> None:
        if not intents:
            return
        holders = self._pseudonyms_at(unit, study, {(persons[p], holder) for intent in intents
                                                    for p, _, holder in intent.candidates})
        for intent in intents:
            joins = intent.joins.case if isinstance(intent.joins, _Intent) else intent.joins
            intent.case = self._clear(store, study, site, intent.query, [
                (persons[p], score, holder, holders[(persons[p], holder)]) for p, score, holder in intent.candidates],
                now, joins)

    def _clear(self, store: LinkageStore, study: Study, site: str, query: Query,
               candidates: list[tuple[int, float, str, str]], now: datetime,
               case: ClearingCase | None = None, requester_task: str | None = None) -> ClearingCase:
        """Put a record into clearing: a new case, or one running for a similar record. The
        record's site gets a `send_idat` task naming its filter; each site holding a candidate
        person's best filter gets one naming that person's pseudonym there. Candidates are
        (person, score, holding site, pseudonym there)."""
        elements = list(study.idat_elements)
        is_new = case is None
        if case is None:
            case = ClearingCase(id=str(uuid.uuid4()), study=study.name, site=site, version=query.version,
                                bloom_filter=query.canonical, candidates=[], created=now,
                                expires=now + study.task_ttl)
        requester = Task(id=requester_task or str(uuid.uuid4()), study=study.name, site=site, kind=SEND_IDAT,
                         created=now, expires=case.expires, case=case.id,
                         details={"bloomfilter": query.given, "elements": elements})
        tasks = [requester]
        case.candidates.append({"requester": True, "task": requester.id, "site": site, "version": query.version,
                                "bloomfilter": query.given, "canonical": query.canonical})
        known = {c["person"] for c in case.candidates if "person" in c}
        for person, score, holder, pseudonym in candidates[:study.candidates]:
            if person in known:
                continue
            task = Task(id=str(uuid.uuid4()), study=study.name, site=holder, kind=SEND_IDAT, created=now,
                        expires=case.expires, case=case.id, details={"pseudonym": pseudonym, "elements": elements})
            tasks.append(task)
            case.candidates.append({"person": person, "score": round(score, 6), "site": holder,
                                    "pseudonym": pseudonym, "task": task.id})
        if is_new:
            store.add_case(case)
        else:
            store.update_case_candidates(case.id, case.candidates)
        store.add_tasks(tasks)
        return case

    def open_clearing(self, unit: UnitOfWork, study: Study, site: str, query: Query,
                      candidates: list[tuple[int, float, str]], now: datetime,
                      requester_task: str | None = None) -> ClearingCase:
        """A new case for one record and its (person, score, holding site) candidates."""
        pseudonyms = self._pseudonyms_at(unit, study, {(p, h) for p, _, h in candidates})
        return self._clear(unit[LINKAGE], study, site, query,
                           [(p, sc, h, pseudonyms[(p, h)]) for p, sc, h in candidates],
                           now, requester_task=requester_task)

    def provide(self, unit: UnitOfWork, study: Study, task: Task, idat: Idat, digest: str,
                now: datetime) -> ProvideOutcome:
        """Keep a site's IDAT (sealed) for its task; decide the case once every site has
        answered, then delete the case's IDAT."""
        if self.seal is None:
            raise ServerError("the dispatcher cannot keep identifying data: [dispatcher] idat_key is not configured")
        store = unit[LINKAGE]
        assert task.case is not None
        store.put_idat(task.case, task.id, task.site, self.seal.seal(task.case, task.id, idat_to_document(idat)))
        store.complete_task(task.id, {**task.details, "idat": digest})
        if store.get_open_tasks(study.name, case=task.case):
            return ProvideOutcome(decided=False)
        case = store.get_case(task.case)
        if case is None or case.status != "open":
            return ProvideOutcome(decided=False)
        seal = self.seal
        documents = {task_id: idat_from_document(seal.open(case.id, task_id, sealed))
                     for task_id, sealed in store.get_idat(case.id).items()}
        requesters = [c for c in case.candidates if c.get("requester")]
        candidates = [c for c in case.candidates if "person" in c and c["task"] in documents]
        person_of, comparisons = self._decide(unit, store, study, requesters, candidates, documents)
        store.delete_idat(case.id)  # decided: the identifying data go, irrevocably
        # The deleted ciphertext leaves the write-ahead log too, once the unit is committed.
        unit.after_commit(self.repository.checkpoint)
        if not store.close_case(case.id, "decided", person_of[requesters[0]["task"]]):
            return ProvideOutcome(decided=False)
        filters = []
        for requester in requesters:
            length = study.versions[requester["version"]].length
            filters.append((person_of[requester["task"]], requester["site"], requester["version"],
                            bloom.decode_filter(requester["canonical"], length)))
        store.add_bloom_filters(study.name, filters)
        pseudonyms = self._pseudonyms_at(unit, study, {(person_of[r["task"]], r["site"]) for r in requesters})
        done = []
        for requester in requesters:
            pseudonym = pseudonyms[(person_of[requester["task"]], requester["site"])]
            done.append(Task(id=str(uuid.uuid4()), study=study.name, site=requester["site"], kind=PSN_AVAILABLE,
                             created=now, expires=now + study.task_ttl, case=case.id,
                             details={"bloomfilter": requester["bloomfilter"], "pseudonym": pseudonym}))
        store.add_tasks(done)
        # A retry of this answer (after a lost response) is told that it decided the clearing.
        store.complete_task(task.id, {**task.details, "idat": digest, "decided": True})
        return ProvideOutcome(decided=True, comparisons=comparisons)

    def _decide(self, unit: UnitOfWork, store: LinkageStore, study: Study, requesters: list[dict],
                candidates: list[dict], documents: dict[str, Idat]) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """The person of every requesting record (by task id), and what the comparisons saw.
        Records whose IDAT agree are one person; a group that agrees with a candidate is that
        person; a group that agrees with none is a stored person with a matching filter (another
        clearing may have stored it meanwhile), or a new one."""
        group = {r["task"]: r["task"] for r in requesters}
        seen: list[dict[str, Any]] = []

        def root(task: str) -> str:
            while group[task] != task:
                group[task] = group[group[task]]
                task = group[task]
            return task

        for first, second in itertools.combinations(requesters, 2):
            comparison = compare(documents[first["task"]], documents[second["task"]])
            seen.append(_explained(comparison, "requester", "requester"))
            if comparison.is_match:
                group[root(first["task"])] = root(second["task"])
        best: dict[str, tuple[float, int]] = {}  # group -> (score, candidate person)
        for requester in requesters:
            for candidate in candidates:
                comparison = compare(documents[requester["task"]], documents[candidate["task"]])
                seen.append(_explained(comparison, "requester", "candidate"))
                key = root(requester["task"])
                if comparison.is_match and (key not in best or comparison.score > best[key][0]):
                    best[key] = (comparison.score, candidate["person"])
        person_of_group: dict[str, int] = {key: person for key, (_, person) in best.items()}
        for requester in requesters:
            key = root(requester["task"])
            if key not in person_of_group:
                length = study.versions[requester["version"]].length
                data = bloom.decode_filter(requester["canonical"], length)
                person_of_group[key] = (self._stored_match(store, study, requester["version"], data)
                                        or store.create_persons(study.name, 1)[0])
        return {r["task"]: person_of_group[root(r["task"])] for r in requesters}, seen

    def _stored_match(self, store: LinkageStore, study: Study, version: str, data: bytes) -> int | None:
        """The person of the best stored filter at or above the match threshold, if any."""
        index, sequence = self.indexes.synced(study, version)
        found = list(index.search(data, study.match_threshold, limit=1))
        changes = self.indexes.changes_since(store, study, version, sequence)
        withdrawn = {row.id for row in changes}
        found = [(bf, score) for bf, score in found if bf not in withdrawn]
        for row in changes:
            if row.bloom_filter is not None:
                score = bloom.dice(data, row.bloom_filter)
                if score >= study.match_threshold:
                    found.append((row.id, score))
        if not found:
            return None
        bf = min(found, key=lambda f: (-f[1], f[0]))[0]
        owner = store.get_bloom_filter_owners(study.name, [bf]).get(bf)
        return owner[0] if owner else None

    def expire(self, study: Study, now: datetime) -> None:
        """Abort the clearings that expired, if any (a write only then). Expired tasks need no
        hurry: readers skip them, and every writer of the study marks them as it passes."""
        with self.repository.read() as unit:
            due = unit[LINKAGE].get_due_cases(study.name, now)
        if due:
            def abort(unit: UnitOfWork) -> None:
                store = unit[LINKAGE]
                store.lock_study(study.name)
                self._expire(store, study, now)

            self.repository.write(abort)

    def _expire(self, store: LinkageStore, study: Study, now: datetime) -> None:
        for case in store.get_due_cases(study.name, now):
            if not store.close_case(case.id, "aborted", None):
                continue
            store.delete_idat(case.id)
            store.set_task_status([t.id for t in store.get_open_tasks(study.name, case=case.id)], "expired")
            store.add_tasks([Task(id=str(uuid.uuid4()), study=study.name, site=r["site"], kind=REPEAT_REQUEST,
                                  created=now, expires=now + study.task_ttl, case=case.id,
                                  details={"bloomfilter": r["bloomfilter"]})
                             for r in case.candidates if r.get("requester")])
        store.expire_tasks(study.name, now)

    @staticmethod
    def _close_tasks_for(store: LinkageStore, study: Study, site: str, answered: list[str],
                         repeated: list[str]) -> None:
        """A `repeat_request` is done once the filter is sent again; a `dic_psn_available`
        once the site got the pseudonym in an answer."""
        if not repeated:
            return
        wanted = {PSN_AVAILABLE: set(answered), REPEAT_REQUEST: set(repeated)}
        done = [t.id for t in store.get_open_tasks(study.name, site=site)
                if t.kind in wanted and _canonical(t.details.get("bloomfilter", "")) in wanted[t.kind]]
        if done:
            store.set_task_status(done, "done")


@dataclass(eq=False)
class _Intent:
    """A filter of this request that goes to a clearing: its candidates, and the clearing it
    joins (a running case, or the clearing of an earlier filter of this request)."""

    query: Query
    candidates: list[Candidate]
    joins: "ClearingCase | _Intent | None"
    case: ClearingCase | None = None


class _PendingRecords:
    """The records waiting in clearings, to compare new requests with: those of the study's
    open cases, and those this request sends to a clearing."""

    def __init__(self, cases: list[ClearingCase], study: Study) -> None:
        self._study = study
        self._records: list[tuple[ClearingCase | _Intent, str, str, str, bytes]] = []  # case, site, version, canonical, data
        for case in cases:
            for requester in case.candidates:
                if requester.get("requester") and requester["version"] in study.versions:
                    data = bloom.decode_filter(requester["canonical"], study.versions[requester["version"]].length)
                    self._records.append((case, requester["site"], requester["version"], requester["canonical"], data))

    def add(self, intent: _Intent, site: str, query: Query) -> None:
        # A record joining a clearing belongs to that clearing's group.
        group: ClearingCase | _Intent = intent
        while isinstance(group, _Intent) and group.joins is not None:
            group = group.joins
        self._records.append((group, site, query.version, query.canonical, query.bloom_filter))
        if group is not intent:
            intent.joins = group

    def holds(self, site: str, canonical: str) -> bool:
        """Whether this very request of the site waits in a clearing."""
        return any(s == site and c == canonical for _, s, _, c, _ in self._records)

    def most_similar(self, query: Query) -> tuple[ClearingCase | _Intent | None, float]:
        best: tuple[ClearingCase | _Intent | None, float] = (None, 0.0)
        for group, _, version, _, data in self._records:
            if version == query.version:
                score = bloom.dice(query.bloom_filter, data)
                if score > best[1]:
                    best = (group, score)
        return best


def _explained(comparison: Comparison, first: str, second: str) -> dict[str, Any]:
    """A comparison for the audit: roles, verdict, weight and each field's agreement level."""
    return {"records": f"{first}/{second}", "decision": comparison.decision.value,
            "weight": round(comparison.weight, 1), "undecided": comparison.undecided,
            "fields": explain(comparison)}


def _person_order(person: Person) -> tuple[int, int]:
    return (1, person.order) if isinstance(person, _NewPerson) else (0, person)


def _search_limit(study: Study) -> int:
    return study.candidates * 4


def _canonical(text: str) -> str:
    """A filter's canonical spelling (trailing zero bytes dropped, padded base64)."""
    text = text.strip()
    try:
        return bloom.encode_filter(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
    except (ValueError, binascii.Error):
        return text


def _by_version(queries: list[Query]) -> dict[str, list[Query]]:
    grouped: dict[str, list[Query]] = {}
    for query in queries:
        grouped.setdefault(query.version, []).append(query)
    return grouped
