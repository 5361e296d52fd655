"""Record pairs for judging the clearing's IDAT comparison against the truth.

Builds on the synthetic people of `linkage.people` and adds what the clearing must get right but the
generator does not make: mistyped birth dates (one digit of day, month or year, or two neighbouring
digits exchanged) and more day/month exchanges. Pairs come in two kinds: every pair of records of
one person, and a sample of hard pairs of different people (the same family name, the same birth
date, twins, namesakes), the ones a Bloom filter sends to a clearing.
"""

from __future__ import annotations

import random
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from itertools import combinations

from linkage.people import (DAY_MONTH_SWAPPED, Record, duplicate_pairs, namesake_pairs, population,
                            twin_pairs)

BIRTH_DATE_TYPO = "birth-date-typo"


def _mistyped(day: date, rng: random.Random) -> date:
    """The date with one digit of DDMMYYYY changed, or two neighbouring digits exchanged; valid and
    neither the date itself nor its day/month mirror."""
    digits = f"{day.day:02d}{day.month:02d}{day.year:04d}"
    for _ in range(1000):
        i = rng.randrange(8)
        if rng.random() < 0.8:
            text = digits[:i] + rng.choice([d for d in "0123456789" if d != digits[i]]) + digits[i + 1:]
        elif i < 7 and digits[i] != digits[i + 1]:
            text = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2:]
        else:
            continue
        try:
            typed = date(int(text[4:]), int(text[2:4]), int(text[:2]))
        except ValueError:
            continue
        if 1900 <= typed.year <= 2025 and typed != day and (typed.day, typed.month) != (day.month, day.day):
            return typed
    raise RuntimeError("no mistyped date found")  # pragma: no cover


def with_birth_date_errors(records: Sequence[Record], *, typo_rate: float, swap_rate: float,
                           seed: int) -> list[Record]:
    """The records with birth dates mistyped (`typo_rate`) or day and month exchanged (`swap_rate`,
    where the date allows it), each marked in `errors`."""
    rng = random.Random(f"{seed}/birth-dates")
    changed = []
    for record in records:
        day, errors = record.birth_date, set(record.errors)
        if day.day <= 12 and day.day != day.month and DAY_MONTH_SWAPPED not in errors and rng.random() < swap_rate:
            day = date(day.year, day.day, day.month)
            errors.add(DAY_MONTH_SWAPPED)
        elif rng.random() < typo_rate:
            day = _mistyped(day, rng)
            errors.add(BIRTH_DATE_TYPO)
        changed.append(replace(record, birth_date=day, errors=frozenset(errors), person=record.person))
    return changed


@dataclass(frozen=True)
class Corpus:
    records: list[Record]
    same: list[tuple[Record, Record]]       # every pair of records of one person
    different: dict[str, list[tuple[Record, Record]]]  # hard pairs of two people, by kind


def _family_key(record: Record) -> str:
    text = unicodedata.normalize("NFKD", record.family_name.casefold().replace("ß", "ss"))
    return "".join(ch for ch in text if ch.isalpha())


def _sample_pairs(groups: dict, rng: random.Random, limit: int) -> list[tuple[Record, Record]]:
    pairs = [(a, b) for group in groups.values() for a, b in combinations(group, 2) if a.person_id != b.person_id]
    rng.shuffle(pairs)
    return pairs[:limit]


def clearing_corpus(n_people: int = 4000, seed: int = 21, *, typo_rate: float = 0.03, swap_rate: float = 0.03,
                    per_kind: int = 6000) -> Corpus:
    """Records of `n_people` people (many twins and namesakes) with birth-date errors added, all
    their same-person pairs, and up to `per_kind` hard different-person pairs of each kind."""
    records = with_birth_date_errors(population(n_people, seed=seed, twin_share=0.1, namesake_share=0.1),
                                     typo_rate=typo_rate, swap_rate=swap_rate, seed=seed)
    rng = random.Random(f"{seed}/pairs")
    by_family: dict[str, list[Record]] = defaultdict(list)
    by_birth_date: dict[date, list[Record]] = defaultdict(list)
    for record in records:
        by_family[_family_key(record)].append(record)
        by_birth_date[record.birth_date].append(record)
    different = {
        "twins": twin_pairs(records),
        "namesakes": namesake_pairs(records),
        "same family name": _sample_pairs(by_family, rng, per_kind),
        "same birth date": _sample_pairs(by_birth_date, rng, per_kind),
    }
    return Corpus(records, duplicate_pairs(records), different)
