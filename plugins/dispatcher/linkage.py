"""Record linkage on Bloom filters: the in-memory indexes, the decision, and the clearing.

Every process keeps one `FilterIndex` per study and Bloom filter version and brings it up to
date from the store before it decides anything: the store numbers every stored or withdrawn
filter of a study with the study's next change number, and a process asks for the rows after
the highest number it holds. Writers hold the study's lock (`lock_study`) while they store
filters, so numbers become visible in order and the "rows after n" question never misses one.

A request is decided in two steps. Without any lock, each filter is searched in the index: the
expensive part. Then, under the study's lock, the changes since that search (usually none, at
most a few) are compared as well, and persons, filters, pseudonyms, cases and tasks are written.
Two requests for the same new person therefore meet under the lock: the second sees the first's
filter among the changes and links to its person instead of creating another.
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

from ttp_gateway.backends.base import ClearingCase, Repository, Task, Transaction
from ttp_gateway.plugins.gpas.service import Pseudonymizer

from . import bloom
from .idat import Idat, compare
from .matcher import FilterIndex
from .studies import Study

log = logging.getLogger("ttp_gateway.dispatcher")
SEND_IDAT = "send_idat"
PSN_AVAILABLE = "dic_psn_available"
REPEAT_REQUEST = "repeat_request"


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

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._indexes: dict[tuple[str, str], _SyncedIndex] = {}
        self._lock = threading.Lock()

    def synced(self, tx: Transaction, study: Study, version: str) -> tuple[FilterIndex, int]:
        """The index of a study's version with every change the store has; and the change
        number it is current to."""
        entry = self._entry(study, version)
        with entry.lock:
            started = time.perf_counter()
            changes = tx.get_bloom_filter_changes(study.name, version, entry.sequence)
            if len(changes) > self.load_step:
                log.info("Bloom filters read", extra={"study": study.name, "version": version, "rows": len(changes),
                                                      "seconds": round(time.perf_counter() - started, 1)})
            self._apply(entry, changes, study.name, version)
            return entry.index, entry.sequence

    def changes_since(self, tx: Transaction, study: Study, version: str, sequence: int) -> list:
        """The rows stored or withdrawn after `sequence`; applied to the index as well."""
        entry = self._entry(study, version)
        with entry.lock:
            changes = tx.get_bloom_filter_changes(study.name, version, min(sequence, entry.sequence))
            self._apply(entry, [row for row in changes if row.sequence > entry.sequence], study.name, version)
        return [row for row in changes if row.sequence > sequence]

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

    def _apply(self, entry: _SyncedIndex, changes: Sequence, study: str, version: str) -> None:
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
    """A person this request creates; several queries of a batch may share one."""


@dataclass
class Outcome:
    """What became of a query: a site pseudonym, a pending clearing, or an error code."""

    pseudonym: str | None = None
    pending: bool = False
    error: str | None = None


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


class Linker:
    def __init__(self, repository: Repository, pseudonymizer: Pseudonymizer,
                 indexes: FilterIndexes | None = None) -> None:
        self.repository = repository
        self.pseudonyms = pseudonymizer
        self.indexes = indexes or FilterIndexes()

    # --- $requestPsnFromBfWorkflow ------------------------------------------------------------
    def link(self, study: Study, site: str, queries: list[Query], now: datetime) -> list[Outcome]:
        """Site pseudonyms for Bloom filters of one site: known person, new person, or clearing."""
        usable = [q for q in queries if q.error is None]
        snapshot = self._search(study, usable)
        outcomes: dict[int, Outcome] = {}
        with self.repository.transaction(write=True) as tx:
            tx.lock_study(study.name)
            self._expire(tx, study, now)
            for version, of_version in _by_version(usable).items():
                self._add_changes(tx, study, version, snapshot[version], of_version)
            owners = tx.get_bloom_filter_owners(study.name, sorted({bf for q in usable for bf, _ in q.candidates}))
            person_of: dict[int, int | _NewPerson] = {}   # id(query) -> person
            keep: list[Query] = []                        # filters to store
            decided: list[Query] = []
            pending = _PendingRecords(tx.get_open_cases(study.name), study)
            # The pseudonyms the clearings may name, fetched per site at once, not per candidate.
            holder_pseudonyms = self._pseudonyms_at(tx, study, {
                (person, _holders(query, owners)[person]) for query in usable
                for person, score in _rank_persons(query, owners)[:study.candidates]
                if study.possible_match_threshold <= score < study.match_threshold})
            for query in usable:
                if pending.holds(site, query.canonical):
                    outcomes[id(query)] = Outcome(pending=True)
                    continue
                ranked = _rank_persons(query, owners)
                person, score = ranked[0] if ranked else (None, 0.0)
                # A filter earlier in this batch may be the same person (a site's duplicate records).
                for other in decided:
                    if other.version == query.version:
                        local = bloom.dice(query.bloom_filter, other.bloom_filter)
                        if local >= study.match_threshold and local > score:
                            person, score = person_of[id(other)], local
                similar_case, similar_score = pending.most_similar(query)
                if score >= study.match_threshold:
                    person_of[id(query)] = person  # type: ignore[assignment]
                elif score >= study.possible_match_threshold or similar_score >= study.possible_match_threshold:
                    # Unsure, or like a record whose clearing runs: decided by comparing IDAT, in
                    # the running clearing if it is like that one's record (they may be one
                    # person nobody knows yet).
                    holders = _holders(query, owners)
                    candidates = [(p, s, holders[p]) for p, s in ranked
                                  if s >= study.possible_match_threshold][:study.candidates]
                    missing = {(p, h) for p, _, h in candidates if (p, h) not in holder_pseudonyms}
                    if missing:
                        holder_pseudonyms.update(self._pseudonyms_at(tx, study, missing))
                    case = similar_case if similar_score >= study.possible_match_threshold else None
                    case = self._clear(tx, study, site, query,
                                       [(p, sc, h, holder_pseudonyms[(p, h)]) for p, sc, h in candidates],
                                       now, case)
                    pending.add(case)
                    outcomes[id(query)] = Outcome(pending=True)
                    continue
                else:
                    person_of[id(query)] = _NewPerson()
                decided.append(query)
                if score < 1.0:  # an identical filter of the person is stored already
                    keep.append(query)
            persons = self._resolve(tx, study, person_of)
            tx.add_bloom_filters(study.name, [(persons[id(q)], site, q.version, q.bloom_filter) for q in keep])
            pseudonyms = self._site_pseudonyms(tx, study, site, {persons[id(q)] for q in decided})
            for query in decided:
                outcomes[id(query)] = Outcome(pseudonym=pseudonyms[persons[id(query)]])
            self._close_tasks_for(tx, study, site, answered=[q.canonical for q in decided],
                                  repeated=[q.canonical for q in usable])
        return [outcomes.get(id(q), Outcome(error=q.error)) for q in queries]

    def _search(self, study: Study, queries: list[Query]) -> dict[str, int]:
        """Candidates for every query from the index, outside any lock; per version the change
        number the index was current to."""
        snapshot = {}
        for version, of_version in _by_version(queries).items():
            with self.repository.transaction() as tx:
                index, sequence = self.indexes.synced(tx, study, version)
            snapshot[version] = sequence
            found = index.search_many([q.bloom_filter for q in of_version], study.possible_match_threshold,
                                      limit=study.candidates * 4)
            for query, candidates in zip(of_version, found):
                query.candidates = candidates
        return snapshot

    def _add_changes(self, tx: Transaction, study: Study, version: str, sequence: int,
                     queries: list[Query]) -> None:
        """Compare the queries with the filters stored since their search (under the lock)."""
        changes = self.indexes.changes_since(tx, study, version, sequence)
        if not changes:
            return
        withdrawn = {row.id for row in changes}
        stored = [row for row in changes if row.bloom_filter is not None]
        for query in queries:
            kept = [(bf, score) for bf, score in query.candidates if bf not in withdrawn]
            for row in stored:
                score = bloom.dice(query.bloom_filter, row.bloom_filter)
                if score >= study.possible_match_threshold:
                    kept.append((row.id, score))
            query.candidates = sorted(kept, key=lambda c: -c[1])

    @staticmethod
    def _resolve(tx: Transaction, study: Study, person_of: dict[int, Any]) -> dict[int, int]:
        """Person ids for every decided query, creating the new persons."""
        new = list(dict.fromkeys(p for p in person_of.values() if isinstance(p, _NewPerson)))
        created = dict(zip(new, tx.create_persons(study.name, len(new))))
        return {query: created.get(person, person) if isinstance(person, _NewPerson) else person
                for query, person in person_of.items()}

    def _site_pseudonyms(self, tx: Transaction, study: Study, site: str, persons: set[int]) -> dict[int, str]:
        domain = self.pseudonyms.domain(site)
        keys = {study.person_key(p): p for p in persons}
        found = self.pseudonyms.get_or_create(tx, domain, sorted(keys))
        return {keys[key]: pseudonym for key, pseudonym in found.items()}

    def _pseudonyms_at(self, tx: Transaction, study: Study,
                       pairs: set[tuple[int, str]]) -> dict[tuple[int, str], str]:
        """The pseudonym of each (person, site), one batch per site."""
        by_site: dict[str, set[int]] = {}
        for person, site in pairs:
            by_site.setdefault(site, set()).add(person)
        return {(person, site): pseudonym for site, persons in by_site.items()
                for person, pseudonym in self._site_pseudonyms(tx, study, site, persons).items()}

    # --- clearing -----------------------------------------------------------------------------
    def _clear(self, tx: Transaction, study: Study, site: str, query: Query,
               candidates: list[tuple[int, float, str, str]], now: datetime,
               case: ClearingCase | None = None, requester_task: str | None = None) -> ClearingCase:
        """Put a record into clearing: a new case, or one running for a similar record. The
        record's site gets a `send_idat` task naming its filter; each site holding a candidate
        person's best filter gets one naming that person's pseudonym there. Candidates are
        (person, score, holding site, pseudonym there)."""
        elements = list(study.idat_elements)
        if case is None:
            case = ClearingCase(id=str(uuid.uuid4()), study=study.name, site=site, version=query.version,
                                bloom_filter=query.canonical, candidates=[], created=now,
                                expires=now + study.task_ttl)
            is_new = True
        else:
            is_new = False
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
            tx.add_case(case)
        else:
            tx.update_case_candidates(case.id, case.candidates)
        tx.add_tasks(tasks)
        return case

    def open_clearing(self, tx: Transaction, study: Study, site: str, query: Query,
                      candidates: list[tuple[int, float, str]], now: datetime,
                      requester_task: str | None = None) -> ClearingCase:
        """A new case for one record and its (person, score, holding site) candidates."""
        pseudonyms = self._pseudonyms_at(tx, study, {(p, h) for p, _, h in candidates})
        return self._clear(tx, study, site, query, [(p, sc, h, pseudonyms[(p, h)]) for p, sc, h in candidates],
                           now, requester_task=requester_task)

    def provide(self, tx: Transaction, study: Study, task: Task, idat: Idat, now: datetime) -> ClearingCase | None:
        """Keep a site's IDAT for its task; decide the case once every site has answered.
        Returns the case when it was decided by this call."""
        tx.put_idat(task.case, task.id, task.site, idat_to_document(idat))
        tx.set_task_status([task.id], "done")
        if tx.get_open_tasks(study.name, case=task.case):
            return None
        case = tx.get_case(task.case)
        if case is None or case.status != "open":
            return None
        documents = {task_id: idat_from_document(d) for task_id, d in tx.get_idat(case.id).items()}
        requesters = [c for c in case.candidates if c.get("requester")]
        candidates = [c for c in case.candidates if "person" in c and c["task"] in documents]
        person_of = self._decide(tx, study, requesters, candidates, documents)
        tx.delete_idat(case.id)  # decided: the identifying data go, irrevocably
        if not tx.close_case(case.id, "decided", person_of[requesters[0]["task"]]):
            return None
        filters = []
        for requester in requesters:
            length = study.versions[requester["version"]].length
            filters.append((person_of[requester["task"]], requester["site"], requester["version"],
                            bloom.decode_filter(requester["canonical"], length)))
        tx.add_bloom_filters(study.name, filters)
        pseudonyms = self._pseudonyms_at(tx, study, {(person_of[r["task"]], r["site"]) for r in requesters})
        done = []
        for requester in requesters:
            pseudonym = pseudonyms[(person_of[requester["task"]], requester["site"])]
            done.append(Task(id=str(uuid.uuid4()), study=study.name, site=requester["site"], kind=PSN_AVAILABLE,
                             created=now, expires=now + study.task_ttl, case=case.id,
                             details={"bloomfilter": requester["bloomfilter"], "pseudonym": pseudonym}))
        tx.add_tasks(done)
        case.status, case.person = "decided", person_of[requesters[0]["task"]]
        return case

    def _decide(self, tx: Transaction, study: Study, requesters: list[dict], candidates: list[dict],
                documents: dict[str, Idat]) -> dict[str, int]:
        """The person of every requesting record (by task id). Records whose IDAT agree are one
        person; a group that agrees with a candidate is that person; a group that agrees with
        none is a stored person with a matching filter (another clearing may have stored it
        meanwhile), or a new one."""
        group = {r["task"]: r["task"] for r in requesters}

        def root(task: str) -> str:
            while group[task] != task:
                group[task] = group[group[task]]
                task = group[task]
            return task

        for first, second in itertools.combinations(requesters, 2):
            if compare(documents[first["task"]], documents[second["task"]]).is_match:
                group[root(first["task"])] = root(second["task"])
        best: dict[str, tuple[float, int]] = {}  # group -> (score, candidate person)
        for requester in requesters:
            for candidate in candidates:
                comparison = compare(documents[requester["task"]], documents[candidate["task"]])
                key = root(requester["task"])
                if comparison.is_match and (key not in best or comparison.score > best[key][0]):
                    best[key] = (comparison.score, candidate["person"])
        person_of_group: dict[str, int] = {key: person for key, (_, person) in best.items()}
        for requester in requesters:
            key = root(requester["task"])
            if key not in person_of_group:
                length = study.versions[requester["version"]].length
                data = bloom.decode_filter(requester["canonical"], length)
                person_of_group[key] = (self._stored_match(tx, study, requester["version"], data)
                                        or tx.create_persons(study.name, 1)[0])
        return {r["task"]: person_of_group[root(r["task"])] for r in requesters}

    def _stored_match(self, tx: Transaction, study: Study, version: str, data: bytes) -> int | None:
        """The person of the best stored filter at or above the match threshold, if any."""
        index, _ = self.indexes.synced(tx, study, version)
        found = index.search(data, study.match_threshold, limit=1)
        if not found:
            return None
        owner = tx.get_bloom_filter_owners(study.name, [found[0][0]]).get(found[0][0])
        return owner[0] if owner else None

    def expire(self, study: Study, now: datetime) -> None:
        """Abort the clearings that expired, if any (a write only then). Expired tasks need no
        hurry: readers skip them, and every writer of the study marks them as it passes."""
        with self.repository.transaction() as tx:
            due = tx.get_due_cases(study.name, now)
        if due:
            with self.repository.transaction(write=True) as tx:
                tx.lock_study(study.name)
                self._expire(tx, study, now)

    def _expire(self, tx: Transaction, study: Study, now: datetime) -> None:
        for case in tx.get_due_cases(study.name, now):
            if not tx.close_case(case.id, "aborted", None):
                continue
            tx.delete_idat(case.id)
            tx.set_task_status([t.id for t in tx.get_open_tasks(study.name, case=case.id)], "expired")
            tx.add_tasks([Task(id=str(uuid.uuid4()), study=study.name, site=r["site"], kind=REPEAT_REQUEST,
                               created=now, expires=now + study.task_ttl, case=case.id,
                               details={"bloomfilter": r["bloomfilter"]})
                          for r in case.candidates if r.get("requester")])
        tx.expire_tasks(study.name, now)

    @staticmethod
    def _close_tasks_for(tx: Transaction, study: Study, site: str, answered: list[str],
                         repeated: list[str]) -> None:
        """A `repeat_request` is done once the filter is sent again; a `dic_psn_available`
        once the site got the pseudonym in an answer."""
        if not repeated:
            return
        wanted = {PSN_AVAILABLE: set(answered), REPEAT_REQUEST: set(repeated)}
        done = [t.id for t in tx.get_open_tasks(study.name, site=site)
                if t.kind in wanted and _canonical(t.details.get("bloomfilter", "")) in wanted[t.kind]]
        if done:
            tx.set_task_status(done, "done")


class _PendingRecords:
    """The records waiting in the study's open clearings, to compare new requests with."""

    def __init__(self, cases: list[ClearingCase], study: Study) -> None:
        self._study = study
        self._records: list[tuple[ClearingCase, dict, bytes]] = []
        for case in cases:
            self.add(case)

    def add(self, case: ClearingCase) -> None:
        known = {id(r) for c, r, _ in self._records if c is case}
        for requester in case.candidates:
            if requester.get("requester") and id(requester) not in known and requester["version"] in self._study.versions:
                data = bloom.decode_filter(requester["canonical"], self._study.versions[requester["version"]].length)
                self._records.append((case, requester, data))

    def holds(self, site: str, canonical: str) -> bool:
        """Whether this very request of the site waits in a clearing."""
        return any(r["site"] == site and r["canonical"] == canonical for _, r, _ in self._records)

    def most_similar(self, query: Query) -> tuple[ClearingCase | None, float]:
        best: tuple[ClearingCase | None, float] = (None, 0.0)
        for case, requester, data in self._records:
            if requester["version"] == query.version:
                score = bloom.dice(query.bloom_filter, data)
                if score > best[1]:
                    best = (case, score)
        return best


def _holders(query: Query, owners: dict[int, tuple[int, str]]) -> dict[int, str]:
    """For each candidate person, the site holding its filter most like the query."""
    holders: dict[int, str] = {}
    for bf, _ in query.candidates:  # best first
        person, holder = owners.get(bf, (None, ""))
        if person is not None:
            holders.setdefault(person, holder)
    return holders


def _rank_persons(query: Query, owners: dict[int, tuple[int, str]]) -> list[tuple[int, float]]:
    """Candidate persons of a query with their best score, best first."""
    best: dict[int, float] = {}
    for bf, score in query.candidates:
        if bf in owners:
            person = owners[bf][0]
            best[person] = max(best.get(person, 0.0), score)
    return sorted(best.items(), key=lambda item: (-item[1], item[0]))


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


