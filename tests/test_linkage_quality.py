"""Linkage quality on the filters the sites really send (Mainzelliste-exact, 1600 and 1800 bits):
synthetic sites with realistic errors in their records (typos, umlaut spellings, changed family
names, mistyped or swapped birth dates, twins, namesakes) send their Bloom filters, answer the
clearing's tasks with IDAT and collect their pseudonyms; offline (bench/quality.py's replay of
the dispatcher's decision) and through the service."""

from __future__ import annotations

from datetime import date

import pytest

from bench.quality import (
    MAX_CLEARING, RECOMMENDED, SENDING, Corpus, Replay, choose, choose_common, evaluate, pair_quality,
    quality_by_kind,
)
from linkage.people import FILTER_LENGTHS, NAMESAKE, TWIN, TYPO_FAMILY, Person, Record


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus.make(1500, seed=7)


@pytest.mark.parametrize("mode", list(SENDING))
@pytest.mark.parametrize("length", FILTER_LENGTHS)
def test_recommended_thresholds_on_another_corpus(corpus: Corpus, length: int, mode: str) -> None:
    replay = Replay(corpus, length, *RECOMMENDED, SENDING[mode]).run()
    quality = pair_quality(corpus.records, replay.person_of(), len(replay.cleared))
    assert quality.clearing_share <= MAX_CLEARING
    assert quality.precision >= 0.995  # twins and namesakes are not merged
    # 0.985 to 0.995 on the corpora measured: about half of the changed family names score below
    # the possible-match threshold that keeps the clearing within 10 %.
    assert quality.f1 >= 0.98


def test_per_kind_report_covers_every_kind(corpus: Corpus) -> None:
    replay = Replay(corpus, 800, *RECOMMENDED, 100).run()
    kinds = quality_by_kind(corpus.records, replay.person_of(), replay.cleared_ids())
    assert {"all", "no-error", TWIN, NAMESAKE, TYPO_FAMILY} <= set(kinds)
    assert kinds["all"].records == len(corpus.records)
    assert kinds[TWIN].precision == 1.0
    assert kinds["no-error"].f1 > kinds[TYPO_FAMILY].f1 - 0.05


def _record(record_id: str, person_id: int, errors: frozenset[str] = frozenset()) -> Record:
    person = Person(person_id, ("Anna",), "Muster", None, "female", date(1980, 1, 2), "Kiel")
    return Record(record_id, "s", person_id, ("Anna",), "Muster", None, "female", date(1980, 1, 2), "Kiel",
                  None, errors, person)


def test_quality_by_kind_by_hand() -> None:
    # Person 0 has records a, b (b with a typo), c; person 1 has d. Predicted: {a, b}, {c, d}.
    records = [_record("a", 0), _record("b", 0, frozenset({TYPO_FAMILY})), _record("c", 0), _record("d", 1)]
    kinds = quality_by_kind(records, {"a": 1, "b": 1, "c": 2, "d": 2}, cleared={"b", "d"})
    whole = kinds["all"]
    # True pairs ab, ac, bc; predicted ab, cd: one hit.
    assert (whole.precision, whole.recall, whole.clearing_share) == (0.5, 1 / 3, 0.5)
    typo = kinds[TYPO_FAMILY]  # pairs touching b: true ab, bc; predicted ab
    assert (typo.records, typo.precision, typo.recall, typo.clearing_share) == (1, 1.0, 0.5, 1.0)
    clean = kinds["no-error"]  # pairs touching a, c or d: true ab, ac, bc; predicted ab, cd
    assert (clean.records, clean.precision, clean.recall) == (3, 0.5, 1 / 3)


def test_choosing_thresholds() -> None:
    def row(bits, mode, match, possible, f1, clearing):
        return {"filter_bits": bits, "sending": mode, "match_threshold": match,
                "possible_match_threshold": possible, "f1": f1, "clearing_share": clearing}

    rows = [row(1600, "single", 0.9, 0.8, 0.999, 0.2), row(1800, "single", 0.9, 0.8, 0.999, 0.05),
            row(1600, "single", 0.94, 0.82, 0.995, 0.09), row(1800, "single", 0.94, 0.82, 0.99, 0.08),
            row(1600, "single", 0.92, 0.82, 0.997, 0.095), row(1800, "single", 0.92, 0.82, 0.989, 0.07)]
    assert choose(rows)["f1"] == 0.999  # 1800 bits at 0.9/0.8: 5 % in clearing
    assert choose(rows, max_clearing=0.06)["f1"] == 0.999
    assert choose_common(rows) == (0.94, 0.82)  # 0.9/0.8 clears 20 % at 1600; 0.92/0.82 is worse at 1800


@pytest.mark.parametrize("batch", [1, 100])
def test_offline_replay_decides_as_the_service(batch: int, tmp_path) -> None:
    # The sweep is only worth its figures if it decides as the service does.
    offline_corpus = Corpus.make(500, seed=8)
    replay = Replay(offline_corpus, 800, *RECOMMENDED, batch).run()
    offline = pair_quality(offline_corpus.records, replay.person_of(), len(replay.cleared))
    online = evaluate(n_people=500, seed=8, batch=batch, match_threshold=RECOMMENDED[0],
                      possible_match_threshold=RECOMMENDED[1],
                      storage_url=f"sqlite:///{tmp_path / 'quality.db'}")
    assert online == offline


@pytest.mark.parametrize("seed", [5, 6])
def test_f1_and_clearing_share_through_the_service(seed: int, tmp_path) -> None:
    quality = evaluate(n_people=800, seed=seed, length=900, match_threshold=RECOMMENDED[0],
                       possible_match_threshold=RECOMMENDED[1],
                       storage_url=f"sqlite:///{tmp_path / 'quality.db'}")
    assert quality.precision >= 0.995  # twins and namesakes are not merged
    assert quality.f1 >= 0.99
    assert quality.clearing_share <= MAX_CLEARING
