"""Linkage quality: precision, recall and F1 over record pairs after clearing, and the share of
records sent to clearing, per kind of error, for synthetic people whose sites send Bloom filters
exactly as the Mainzelliste fTTP library makes them (`tests/linkage/people.py`).

    python -m bench quality [--quick]

`sweep` replays the dispatcher's decision offline (`Replay`, modelled on
`plugins/dispatcher/linkage.py`) for a grid of thresholds, on filters of 1600 and 1800 bits, with
sites sending one record per request or batches of `BATCH`. Sites send in turns; a record whose
best candidate scores at or above the match threshold joins that person, below the
possible-match threshold it is a new person, in between (or when it is like a record waiting in a
clearing) it goes to clearing. Once everything is sent, the clearings are decided in order with
the clearing's IDAT comparison (`plugins/dispatcher/idat.compare`), as `evaluate` does through the
real service: sites send their filters over HTTP, answer `send_idat` tasks with their records'
IDAT, collect `dic_psn_available`, and every site pseudonym is mapped to one study-wide pseudonym
with `$requestPsnWorkflow`.

Quality per kind: for a kind (an error kind of `people.ERROR_KINDS`, "twin", "namesake", or
"no-error"), precision and recall count the record pairs with at least one record of that kind,
and the clearing share is the share of that kind's records sent to clearing. A record without
errors goes to clearing too when an earlier record of its person has one: the record that comes
second is the one that waits.
"""

from __future__ import annotations

import itertools
import random
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.linkage.people import (
    ERROR_KINDS, FILTER_LENGTHS, NAMESAKE, TWIN, BloomFilterEncoder, Record, population, record_kinds,
    true_match_pairs,
)
from ttp_gateway.plugins.dispatcher.idat import compare, idat_from_patient

SITES = ("dic_muenster", "dic_erlangen", "dic_greifswald", "eyematics")
ELEMENTS = ("given", "family", "birthdate", "gender", "birthplace", "maidenname")
REQUIRED = {"given", "family", "birthdate", "gender"}
BATCH = 100  # filters per request when sites send batches
MAX_CLEARING = 0.10
CANDIDATES = 3  # persons compared in one clearing, as a study's default
NO_ERROR = "no-error"
KINDS = ("all", NO_ERROR, *ERROR_KINDS, TWIN, NAMESAKE)
# What `run` chose on its corpus (3,000 people, seed 1) with the clearing's comparison of this
# version: the best worst F1 over 1600/1800 bits and single/batched sending with at most 10 % of
# the records in clearing. The tests hold other corpora to it.
RECOMMENDED = (0.94, 0.82)
MATCHES = (0.88, 0.9, 0.92, 0.94, 0.96)
POSSIBLES = (0.74, 0.76, 0.78, 0.8, 0.82, 0.84, 0.86)


@dataclass
class Quality:
    records: int
    precision: float
    recall: float
    f1: float
    clearing_share: float

    def row(self) -> dict:
        return {"records": self.records, "precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "f1": round(self.f1, 4), "clearing_share": round(self.clearing_share, 4)}


def arrival_order(records: list[Record], seed: int) -> list[Record]:
    ordered = list(records)
    random.Random(seed).shuffle(ordered)
    return ordered


def _quality(records: int, predicted: set, truth: set, cleared: int) -> Quality:
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 1.0
    recall = hits / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Quality(records, precision, recall, f1, cleared / records if records else 0.0)


def _predicted_pairs(records: Sequence[Record], person_of: Mapping[str, object]) -> set[tuple[str, str]]:
    by_person: dict[object, list[str]] = defaultdict(list)
    for record in records:
        by_person[person_of[record.record_id]].append(record.record_id)
    return {tuple(sorted(pair)) for group in by_person.values() for pair in itertools.combinations(group, 2)}


def pair_quality(records: list[Record], person_of: dict[str, object], cleared: int) -> Quality:
    return _quality(len(records), _predicted_pairs(records, person_of), true_match_pairs(records), cleared)


def quality_by_kind(records: list[Record], person_of: Mapping[str, object], cleared: set[str]) -> dict[str, Quality]:
    """Quality over the pairs touching records of each kind (see the module text)."""
    predicted, truth = _predicted_pairs(records, person_of), true_match_pairs(records)
    kinds = record_kinds(records)
    members: dict[str, set[str]] = {"all": {r.record_id for r in records}}
    for record_id, labels in kinds.items():
        for kind in labels or {NO_ERROR}:
            members.setdefault(kind, set()).add(record_id)
    result = {}
    for kind in KINDS:
        ids = members.get(kind, set())
        if not ids:
            continue
        touching = (lambda pair: pair[0] in ids or pair[1] in ids)
        result[kind] = _quality(len(ids), set(filter(touching, predicted)), set(filter(touching, truth)),
                                len(ids & cleared))
    return result


# --- the offline replay ---------------------------------------------------------------------------

class DiceMatrix:
    """Sørensen–Dice of every pair of filters, from the common bits kept as 16-bit counts: scores
    come out in float64 as the service computes them (a float32 matrix would put a score of
    exactly a threshold on the wrong side of it)."""

    def __init__(self, filters: list[bytes], filter_bits: int) -> None:
        width = (filter_bits + 63) // 64 * 8
        packed = np.frombuffer(b"".join(f.ljust(width, b"\0") for f in filters),
                               dtype=np.uint64).reshape(len(filters), -1)
        self.totals = np.bitwise_count(packed).sum(axis=1).astype(np.float64)
        self.common = np.empty((len(filters), len(filters)), dtype=np.uint16)
        for start in range(0, len(filters), 64):  # blocks keep the temporary below 100 MB
            block = packed[start:start + 64]
            self.common[start:start + 64] = np.bitwise_count(block[:, None, :] & packed[None, :, :]).sum(axis=2)

    def scores(self, i: int, others: np.ndarray | list[int]) -> np.ndarray:
        """Dice of filter i with each of `others`."""
        others = np.asarray(others, dtype=np.int64)
        totals = self.totals[i] + self.totals[others]
        return np.divide(2.0 * self.common[i, others], totals, out=np.zeros(len(others)), where=totals > 0)


@dataclass
class Corpus:
    """Records in arrival order, their IDAT as the clearing sees them, and Dice matrices."""

    records: list[Record]
    idats: list
    filters: dict[int, list[bytes]] = field(default_factory=dict)   # by library length
    scores: dict[int, DiceMatrix] = field(default_factory=dict)
    same_person: dict[tuple[int, int], tuple[bool, float]] = field(default_factory=dict)

    @classmethod
    def make(cls, n_people: int, seed: int) -> Corpus:
        records = arrival_order(population(n_people, SITES, seed), seed)
        idats = [idat_from_patient(r.as_patient(), ELEMENTS, optional=set(ELEMENTS) - REQUIRED) for r in records]
        return cls(records, idats)

    def matrix(self, length: int) -> DiceMatrix:
        if length not in self.scores:
            encoder = BloomFilterEncoder(length)
            self.filters[length] = encoder.encode_many(self.records)
            self.scores[length] = DiceMatrix(self.filters[length], encoder.filter_bits)
        return self.scores[length]

    def compare(self, a: int, b: int) -> tuple[bool, float]:
        """The clearing's verdict on two records (cached: it does not depend on thresholds)."""
        key = (a, b)
        if key not in self.same_person:
            comparison = compare(self.idats[a], self.idats[b])
            self.same_person[key] = (comparison.is_match, comparison.score)
        return self.same_person[key]


@dataclass
class _Case:
    requesters: list[int] = field(default_factory=list)
    candidates: list[tuple[int, int]] = field(default_factory=list)  # (person, record the holder sends)


class Replay:
    """The dispatcher's decision for every record of a corpus, as `Linker.link` and
    `Linker.provide` make it, with the sites' round of `evaluate`: each site sends `batch`
    records in turn; clearings are decided once everything is sent.

    Simplifications: a candidate person's IDAT come from its best-scoring stored record (the
    site holding it sends that record's IDAT), and clearings do not expire.
    """

    def __init__(self, corpus: Corpus, length: int, match: float, possible: float, batch: int,
                 candidates: int = CANDIDATES) -> None:
        self.corpus, self.match, self.possible, self.batch, self.candidates = corpus, match, possible, batch, candidates
        self.scores = corpus.matrix(length)
        self.filters = corpus.filters[length]
        n = len(corpus.records)
        self.person = np.full(n, -1, dtype=np.int64)
        self.stored = np.zeros(n, dtype=bool)
        self.persons = 0
        self.cases: list[_Case] = []
        self.pending: list[int] = []                 # records waiting in a clearing
        self.pending_filters: dict[tuple[str, bytes], int] = {}  # (site, filter) -> that record
        self.case_of: dict[int, _Case] = {}
        self.waiting_for: dict[int, int] = {}        # a repeated request -> the pending record
        self.cleared: set[int] = set()

    def new_person(self) -> int:
        self.persons += 1
        return self.persons - 1

    def run(self) -> Replay:
        records = self.corpus.records
        queue: dict[str, list[int]] = defaultdict(list)
        for i, record in enumerate(records):
            queue[record.site].append(i)
        while any(queue.values()):
            for site in SITES:
                chunk, queue[site] = queue[site][:self.batch], queue[site][self.batch:]
                if chunk:
                    self.request(chunk)
        for case in self.cases:
            self.decide(case)
        for repeated, pending in self.waiting_for.items():
            self.person[repeated] = self.person[pending]
        return self

    def ranked(self, i: int, snapshot: np.ndarray) -> list[tuple[int, float, int]]:
        """Candidate persons of record i among the stored filters: (person, best score, its
        record), best first, from the index's `candidates * 4` best filters at or above the
        possible-match threshold."""
        row = self.scores.scores(i, snapshot)
        found = np.flatnonzero(row >= self.possible)
        if len(found) > self.candidates * 4:
            found = found[np.argpartition(-row[found], self.candidates * 4)[:self.candidates * 4]]
        best: dict[int, tuple[float, int]] = {}
        for k in found[np.argsort(-row[found], kind="stable")]:
            person = int(self.person[snapshot[k]])
            if person not in best:
                best[person] = (float(row[k]), int(snapshot[k]))
        return sorted(((p, s, r) for p, (s, r) in best.items()), key=lambda c: (-c[1], c[0]))

    def request(self, chunk: list[int]) -> None:
        """One request: the service decides each record of a batch as if the batch's earlier
        records had been sent before it in requests of their own (`Linker.link`)."""
        for i in chunk:
            self._request_one(i)

    def _request_one(self, i: int) -> None:
        snapshot = np.flatnonzero(self.stored)
        records = self.corpus.records
        earlier = self.pending_filters.get((records[i].site, self.filters[i]))
        if earlier is not None:  # the same filter sent again while its clearing runs
            self.waiting_for[i] = earlier
            self.cleared.add(i)
            return
        ranked = self.ranked(i, snapshot)
        person, score = (ranked[0][0], ranked[0][1]) if ranked else (-1, 0.0)
        similar_case, similar = None, 0.0
        if self.pending:
            near = self.scores.scores(i, self.pending)
            k = int(np.argmax(near))
            similar_case, similar = self.case_of[self.pending[k]], float(near[k])
        if score >= self.match:
            self.person[i] = person
        elif score >= self.possible or similar >= self.possible:
            case = similar_case if similar >= self.possible else None
            if case is None:
                case = _Case()
                self.cases.append(case)
            known = {p for p, _ in case.candidates}
            case.requesters.append(i)
            chosen = [(p, r) for p, s, r in ranked if s >= self.possible][:self.candidates]
            case.candidates += [(p, r) for p, r in chosen if p not in known]
            self.pending.append(i)
            self.pending_filters.setdefault((records[i].site, self.filters[i]), i)
            self.case_of[i] = case
            self.cleared.add(i)
            return
        else:
            self.person[i] = self.new_person()
        self.stored[i] = True

    def decide(self, case: _Case) -> None:
        """`Linker._decide`: requesters whose IDAT agree are one group; a group takes the
        candidate it agrees with best, else a stored filter at or above the match threshold,
        else a new person."""
        group = {r: r for r in case.requesters}

        def root(r: int) -> int:
            while group[r] != r:
                r = group[r]
            return r

        for a, b in itertools.combinations(case.requesters, 2):
            if self.corpus.compare(a, b)[0]:
                group[root(a)] = root(b)
        best: dict[int, tuple[float, int]] = {}
        for r in case.requesters:
            for person, holder in case.candidates:
                is_match, score = self.corpus.compare(r, holder)
                key = root(r)
                if is_match and (key not in best or score > best[key][0]):
                    best[key] = (score, person)
        person_of_group = {key: person for key, (_, person) in best.items()}
        for r in case.requesters:
            key = root(r)
            if key not in person_of_group:
                stored = np.flatnonzero(self.stored)
                row = self.scores.scores(r, stored)
                k = int(np.argmax(row)) if len(row) else -1
                person_of_group[key] = (int(self.person[stored[k]]) if k >= 0 and row[k] >= self.match
                                        else self.new_person())
        for r in case.requesters:
            self.person[r] = person_of_group[root(r)]
        self.stored[case.requesters] = True
        for r in case.requesters:
            self.pending.remove(r)
            key = (self.corpus.records[r].site, self.filters[r])
            if self.pending_filters.get(key) == r:
                del self.pending_filters[key]

    def person_of(self) -> dict[str, int]:
        return {record.record_id: int(self.person[i]) for i, record in enumerate(self.corpus.records)}

    def cleared_ids(self) -> set[str]:
        return {self.corpus.records[i].record_id for i in self.cleared}


SENDING = {"single": 1, "batched": BATCH}


def sweep(n_people: int = 3000, seed: int = 1, lengths: Sequence[int] = FILTER_LENGTHS,
          sending: Mapping[str, int] = SENDING, matches: Sequence[float] = MATCHES,
          possibles: Sequence[float] = POSSIBLES, corpus: Corpus | None = None,
          progress: Callable[[str], None] | None = None) -> list[dict]:
    """Overall quality for every (length, sending, match, possible match) of the grid."""
    corpus = corpus or Corpus.make(n_people, seed)
    rows = []
    for length in lengths:
        for mode, batch in sending.items():
            for match, possible in itertools.product(matches, possibles):
                if possible > match:
                    continue
                replay = Replay(corpus, length, match, possible, batch).run()
                quality = pair_quality(corpus.records, replay.person_of(), len(replay.cleared))
                rows.append({"filter_bits": 2 * length, "sending": mode, "match_threshold": match,
                             "possible_match_threshold": possible, **quality.row()})
            if progress:
                progress(f"{2 * length} bits, {mode}: {sum(p <= m for m in matches for p in possibles)} "
                         "threshold pairs replayed")
    return rows


def choose(rows: list[dict], max_clearing: float = MAX_CLEARING) -> dict:
    """The best F1 with at most `max_clearing` of the records in clearing (ties: less clearing)."""
    allowed = [r for r in rows if r["clearing_share"] <= max_clearing]
    return max(allowed, key=lambda r: (r["f1"], -r["clearing_share"]))


def choose_common(rows: list[dict], max_clearing: float = MAX_CLEARING) -> tuple[float, float]:
    """One (match, possible match) pair for every filter length and way of sending: within
    `max_clearing` everywhere, the best worst F1 (ties: the better mean F1, then less clearing)."""
    by_pair: dict[tuple[float, float], list[dict]] = defaultdict(list)
    for row in rows:
        by_pair[(row["match_threshold"], row["possible_match_threshold"])].append(row)
    settings = {(r["filter_bits"], r["sending"]) for r in rows}
    allowed = {pair: group for pair, group in by_pair.items()
               if len(group) == len(settings) and all(r["clearing_share"] <= max_clearing for r in group)}
    return max(allowed, key=lambda pair: (min(r["f1"] for r in allowed[pair]),
                                          sum(r["f1"] for r in allowed[pair]),
                                          -max(r["clearing_share"] for r in allowed[pair])))


def by_kind(corpus: Corpus, length: int, mode: str, match: float, possible: float) -> list[dict]:
    replay = Replay(corpus, length, match, possible, SENDING[mode]).run()
    qualities = quality_by_kind(corpus.records, replay.person_of(), replay.cleared_ids())
    return [{"filter_bits": 2 * length, "sending": mode, "match_threshold": match,
             "possible_match_threshold": possible, "kind": kind, **quality.row()}
            for kind, quality in qualities.items()]


# --- the service ----------------------------------------------------------------------------------

def evaluate(n_people: int = 1500, seed: int = 2, storage_url: str | None = None, batch: int = BATCH,
             match_threshold: float | None = None, possible_match_threshold: float | None = None,
             length: int = 800) -> Quality:
    """Run the sites' workflow against the real service (in process, over the ASGI interface)."""
    from starlette.testclient import TestClient

    from ttp_gateway.core.app import create_app

    records = arrival_order(population(n_people, SITES, seed), seed)
    encoder = BloomFilterEncoder(length)
    text = {r.record_id: encoder.encode_base64(r) for r in records}
    with tempfile.TemporaryDirectory() as folder:
        config = service_config(storage_url or f"sqlite:///{Path(folder) / 'quality.db'}", encoder.filter_bits,
                                match_threshold, possible_match_threshold)
        with TestClient(create_app(config), headers={"apikey": "abcdef12345"}) as client:
            person_of, cleared = send(client, records, text, in_turns(records, batch))
    return pair_quality(records, person_of, cleared)


def service_config(storage_url: str, filter_bits: int, match_threshold: float | None = None,
                   possible_match_threshold: float | None = None) -> Any:
    """The demo configuration with its study `mii` set up for the corpus' filters."""
    from ttp_gateway.core.config import load_config

    config = load_config(Path(__file__).parent.parent / "config" / "demo.toml", environ={})
    study = next(s for s in config.section("dispatcher")["studies"] if s["name"] == "mii")
    study = {**study, "idat_elements": list(ELEMENTS), "default_version": "1",
             "versions": [{"name": "1", "length": filter_bits}]}
    if match_threshold is not None:
        study.update(match_threshold=match_threshold, possible_match_threshold=possible_match_threshold)
    return config.with_overrides(storage={"url": storage_url},
                                 dispatcher={"clearings": [], "persons": [], "studies": [study]},
                                 logging={"level": "WARNING"})


def in_turns(records: list[Record], batch: int) -> list[tuple[str, list[Record]]]:
    """The requests of sites that send in turns, `batch` records each."""
    requests = []
    queue: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        queue[record.site].append(record)
    while any(queue.values()):
        for site in SITES:
            chunk, queue[site] = queue[site][:batch], queue[site][batch:]
            if chunk:
                requests.append((site, chunk))
    return requests


def _post(client, operation: str, parameters: list[dict]) -> dict:
    response = client.post(f"/ttp-fhir/fhir/dispatcher/${operation}",
                           json={"resourceType": "Parameters", "parameter": parameters})
    response.raise_for_status()
    return response.json()


def send(client, records: list[Record], text: dict[str, str],
         requests: list[tuple[str, list[Record]]]) -> tuple[dict[str, object], int]:
    """Send `requests` ((site, records) each) as `$requestPsnFromBfWorkflow`, answer the clearing's
    tasks, and map every site pseudonym to one study-wide one: the person of each record, and
    how many records went to a clearing."""
    pseudonym_of: dict[str, str] = {}
    waiting: dict[tuple[str, str], list[Record]] = defaultdict(list)  # (site, filter) -> records
    cleared = 0
    for site, chunk in requests:
        answer = _post(client, "requestPsnFromBfWorkflow", [
            {"name": "study", "valueString": "mii"}, {"name": "target", "valueString": site},
            *[{"name": "bloomfilter", "valueBase64Binary": text[r.record_id]} for r in chunk]])
        for record, parameter in zip(chunk, answer["parameter"]):
            parts = {p["name"]: p for p in parameter["part"]}
            if parameter["name"] == "pseudonym-bf":
                pseudonym_of[record.record_id] = parts["pseudonym"]["valueIdentifier"]["value"]
            else:
                cleared += 1
                waiting[(site, text[record.record_id])].append(record)
    # The clearing: every site answers its send_idat tasks with its records' IDAT.
    while True:
        answered = 0
        for site in SITES:
            by_pseudonym = {pseudonym_of[r.record_id]: r for r in records
                            if r.site == site and r.record_id in pseudonym_of}
            tasks = _post(client, "requestTasks", [{"name": "study", "valueString": "mii"},
                                                   {"name": "target", "valueString": site}])
            for task in tasks.get("parameter", []):
                if task["name"] != "send_idat":
                    continue
                parts = {p["name"]: p for p in task["part"]}
                if "pseudonym" in parts:
                    record = by_pseudonym[parts["pseudonym"]["valueIdentifier"]["value"]]
                else:
                    record = waiting[(site, parts["bloomfilter"]["valueBase64Binary"])][0]
                _post(client, "providePatientData", [
                    {"name": "taskId", "valueId": parts["taskId"]["valueId"]},
                    {"name": "target", "valueString": site}, {"name": "patient", "resource": record.as_patient()}])
                answered += 1
        if not answered:
            break
    for site in SITES:
        tasks = _post(client, "requestTasks", [{"name": "study", "valueString": "mii"},
                                               {"name": "target", "valueString": site}])
        for task in tasks.get("parameter", []):
            if task["name"] == "dic_psn_available":
                parts = {p["name"]: p for p in task["part"]}
                for record in waiting.pop((site, parts["bloomfilter"]["valueBase64Binary"]), []):
                    pseudonym_of[record.record_id] = parts["pseudonym"]["valueIdentifier"]["value"]
    missing = [r.record_id for r in records if r.record_id not in pseudonym_of]
    if missing:
        raise RuntimeError(f"{len(missing)} records got no pseudonym")
    # One study-wide pseudonym per person: map every site pseudonym into one domain.
    person_of: dict[str, object] = {}
    for site in SITES:
        own = [r for r in records if r.site == site]
        mapped = _post(client, "requestPsnWorkflow", [
            {"name": "study", "valueString": "mii"}, {"name": "source", "valueString": site},
            {"name": "target", "valueString": "eyematics"},
            *[{"name": "original", "valueString": pseudonym_of[r.record_id]} for r in own]])
        for record, parameter in zip(own, mapped["parameter"]):
            person_of[record.record_id] = parameter["part"][2]["valueIdentifier"]["value"]
    return person_of, cleared


def run(n_people: int = 3000, quick: bool = False) -> list[dict]:
    corpus = Corpus.make(600 if quick else n_people, seed=1)
    rows = sweep(corpus=corpus, progress=lambda line: print(f"  {line}", flush=True))
    match, possible = choose_common(rows)
    results = []
    for row in rows:
        if (row["match_threshold"], row["possible_match_threshold"]) == (match, possible):
            best = choose([r for r in rows if (r["filter_bits"], r["sending"]) == (row["filter_bits"], row["sending"])])
            print(f"  {row['filter_bits']} bits, {row['sending']}: F1 {row['f1']}, clearing {row['clearing_share']} "
                  f"at {match}/{possible}; best alone F1 {best['f1']}, clearing {best['clearing_share']} at "
                  f"{best['match_threshold']}/{best['possible_match_threshold']}", flush=True)
            results.append({"benchmark": f"offline, thresholds {match}/{possible} (best worst F1 with at most "
                                         f"{MAX_CLEARING:.0%} in clearing)", **row})
    for length in FILTER_LENGTHS:
        for mode in SENDING:
            for row in by_kind(corpus, length, mode, match, possible):
                results.append({"benchmark": f"offline per kind, {row['filter_bits']} bits, {mode}",
                                **{k: v for k, v in row.items() if k not in ("filter_bits", "sending",
                                                                             "match_threshold",
                                                                             "possible_match_threshold")}})
    for seed in (3, 4):
        try:
            quality = evaluate(n_people=300 if quick else n_people // 2, seed=seed,
                               match_threshold=match, possible_match_threshold=possible)
        except Exception as error:  # the service run must not hide the offline figures
            print(f"  service run {seed} failed: {type(error).__name__}", flush=True)
            continue
        results.append({"benchmark": f"through the service, 1600 bits, batched, thresholds {match}/{possible}, "
                                     f"population {seed}", **quality.row()})
    return results
