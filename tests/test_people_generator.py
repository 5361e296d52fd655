"""The synthetic population (tests/linkage/people.py) and the sites' balanced Bloom filters."""

from __future__ import annotations

import base64
import random
import statistics
import time
from collections import Counter
from datetime import date
from math import comb

import numpy as np
import pytest
from fhir.resources.R4B.patient import Patient
from hypothesis import given, settings
from hypothesis import strategies as st

from linkage.people import (
    BIRTH_DATE_TYPO, CASE_NOISE, DAY_MONTH_SWAPPED, DEFAULT_SITES, ERROR_KINDS, FAMILY_NAME_CHANGED, FAMILY_NAMES,
    HYPHEN_VARIANT, NAMESAKE, SECOND_GIVEN_MISSING, TITLE_IN_NAME, TWIN, TYPO_FAMILY, TYPO_GIVEN, UMLAUT_VARIANT,
    WHITESPACE_NOISE, BloomFilterEncoder, ErrorRates, Record, bitset_from_bytes, bitset_to_bytes,
    clearly_different, dice, duplicate_pairs, generate_people, hyphen_variant, namesake_pairs, population,
    record_kinds, restore_umlaut, spell_out_umlauts, true_match_pairs, twin_pairs, typo,
)
from test_encoder import MUSTERMANN_FILTER

QUALIFIER_URL = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier"
# Rates high enough to measure on a few thousand records.
MEASURED_RATES = ErrorRates(typo_given=0.10, typo_family=0.08, umlaut_variant=0.30, hyphen_variant=0.4,
                            family_name_changed=0.05, day_month_swapped=0.20, birth_date_typo=0.05,
                            second_given_missing=0.40, case_noise=0.15, whitespace_noise=0.10, title_in_name=0.6)


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return population(4000, seed=11, twin_share=0.05, namesake_share=0.05)


@pytest.fixture(scope="module")
def encoder() -> BloomFilterEncoder:
    return BloomFilterEncoder()


@pytest.fixture(scope="module")
def filters(records: list[Record], encoder: BloomFilterEncoder) -> dict[str, bytes]:
    return dict(zip((r.record_id for r in records), encoder.encode_many(records)))


def _edit_distance(a: str, b: str) -> int:
    """Damerau–Levenshtein (OSA), written again here so that the test checks the generator's."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def _loosely(text: str | None) -> str:
    return spell_out_umlauts(text or "").casefold()


# --- people and records ---------------------------------------------------------------------------

def test_reproducible_for_a_seed() -> None:
    first, again, other = population(300, seed=5), population(300, seed=5), population(300, seed=6)
    assert first == again
    assert [r.person for r in first] == [r.person for r in again]
    assert first != other


def test_every_person_at_one_to_k_distinct_sites(records: list[Record]) -> None:
    sites_of: dict[int, list[str]] = {}
    for r in records:
        sites_of.setdefault(r.person_id, []).append(r.site)
    assert len(sites_of) == 4000
    assert {len(sites) for sites in sites_of.values()} == {1, 2, 3}
    assert all(len(sites) == len(set(sites)) for sites in sites_of.values())
    assert {r.site for r in records} == set(DEFAULT_SITES)
    assert len({r.record_id for r in records}) == len(records)


def test_error_free_records_are_the_person() -> None:
    for record in population(500, seed=2, error_rates=ErrorRates.none()):
        person = record.person
        assert record.errors == frozenset()
        assert (record.given_names, record.family_name, record.birth_name, record.sex, record.birth_date,
                record.birth_place, record.degree) == (person.given_names, person.family_name, person.birth_name,
                                                      person.sex, person.birth_date, person.birth_place,
                                                      person.degree)


def test_error_rates_roughly_as_configured() -> None:
    sites = DEFAULT_SITES
    title_sites = set(sites[1::3])
    recs = population(6000, sites, seed=4, error_rates=MEASURED_RATES)

    def rate(error: str, applicable) -> float:
        chosen = [r for r in recs if applicable(r)]
        assert len(chosen) > 100, error
        return sum(error in r.errors for r in chosen) / len(chosen)

    def swappable(r: Record) -> bool:
        return r.person.birth_date.day <= 12 and r.person.birth_date.day != r.person.birth_date.month

    def has_umlaut(r: Record) -> bool:
        p = r.person
        return FAMILY_NAME_CHANGED not in r.errors and any(
            ch in "äöüÄÖÜß" for text in (*p.given_names, p.family_name, p.birth_name or "", p.birth_place)
            for ch in text)

    def has_parts(r: Record) -> bool:
        p = r.person
        return FAMILY_NAME_CHANGED not in r.errors and (
            any("-" in g or " " in g for g in p.given_names[:1 if SECOND_GIVEN_MISSING in r.errors else None])
            or "-" in p.family_name)

    always = lambda r: True  # noqa: E731
    expected = {
        TYPO_GIVEN: (MEASURED_RATES.typo_given, always),
        TYPO_FAMILY: (MEASURED_RATES.typo_family, always),
        FAMILY_NAME_CHANGED: (MEASURED_RATES.family_name_changed, always),
        CASE_NOISE: (MEASURED_RATES.case_noise, always),
        WHITESPACE_NOISE: (MEASURED_RATES.whitespace_noise, always),
        DAY_MONTH_SWAPPED: (MEASURED_RATES.day_month_swapped, swappable),
        BIRTH_DATE_TYPO: (MEASURED_RATES.birth_date_typo, always),
        SECOND_GIVEN_MISSING: (MEASURED_RATES.second_given_missing, lambda r: len(r.person.given_names) > 1),
        UMLAUT_VARIANT: (MEASURED_RATES.umlaut_variant, has_umlaut),
        TITLE_IN_NAME: (MEASURED_RATES.title_in_name, lambda r: bool(r.person.degree) and r.site in title_sites),
        HYPHEN_VARIANT: (MEASURED_RATES.hyphen_variant, has_parts),
    }
    for error, (configured, applicable) in expected.items():
        measured = rate(error, applicable)
        assert abs(measured - configured) < max(0.02, 0.25 * configured), (error, measured, configured)


def test_errors_do_what_they_say() -> None:
    recs = population(3000, seed=8, error_rates=MEASURED_RATES)
    for r in recs:
        p = r.person
        if DAY_MONTH_SWAPPED in r.errors and BIRTH_DATE_TYPO not in r.errors:
            assert (r.birth_date.day, r.birth_date.month) == (p.birth_date.month, p.birth_date.day)
        elif BIRTH_DATE_TYPO in r.errors and DAY_MONTH_SWAPPED not in r.errors:
            typed, true = r.birth_date.strftime("%d%m%Y"), p.birth_date.strftime("%d%m%Y")
            assert sum(a != b for a, b in zip(typed, true)) == 1 and typed[4:6] == true[4:6]
            swapped = (p.birth_date.month, p.birth_date.day, p.birth_date.year)
            assert (r.birth_date.day, r.birth_date.month, r.birth_date.year) != swapped  # another kind
        elif BIRTH_DATE_TYPO not in r.errors:
            assert r.birth_date == p.birth_date
        if FAMILY_NAME_CHANGED in r.errors:
            assert _loosely(r.birth_name) == _loosely(p.birth_name or p.family_name)
        if SECOND_GIVEN_MISSING in r.errors:
            assert len(r.given_names) == 1 < len(p.given_names)
        if TITLE_IN_NAME in r.errors:
            assert r.degree is None
            assert any(p.degree.casefold() in text.casefold() for text in (*r.given_names, r.family_name))
        if not r.errors & {TYPO_GIVEN, UMLAUT_VARIANT, CASE_NOISE, WHITESPACE_NOISE, TITLE_IN_NAME,
                           SECOND_GIVEN_MISSING, HYPHEN_VARIANT}:
            assert r.given_names == p.given_names
        if not r.errors & {TYPO_FAMILY, UMLAUT_VARIANT, CASE_NOISE, WHITESPACE_NOISE, TITLE_IN_NAME,
                           FAMILY_NAME_CHANGED, HYPHEN_VARIANT}:
            assert r.family_name == p.family_name
        if TYPO_GIVEN in r.errors and not r.errors - {TYPO_GIVEN}:
            changed = [(a, b) for a, b in zip(r.given_names, p.given_names) if a != b]
            assert len(changed) == 1 and _edit_distance(changed[0][0].lower(), changed[0][1].lower()) == 1


def test_twins_and_namesakes_present(records: list[Record]) -> None:
    people = {r.person_id: r.person for r in records}
    twins = [(p, people[p.twin_of]) for p in people.values() if p.twin_of is not None and p.twin_of in people]
    namesakes = [(p, people[p.namesake_of]) for p in people.values()
                 if p.namesake_of is not None and p.namesake_of in people]
    assert len(twins) > 50 and len(namesakes) > 50
    for a, b in twins:
        assert a.person_id != b.person_id and b.twin_of == a.person_id
        assert (a.family_name, a.birth_date, a.birth_place) == (b.family_name, b.birth_date, b.birth_place)
        assert clearly_different(a.given_names, b.given_names)
    assert any(a.sex != b.sex for a, b in twins) and any(a.sex == b.sex for a, b in twins)
    for a, b in namesakes:
        assert (a.given_names, a.family_name, a.sex) == (b.given_names, b.family_name, b.sex)
        assert a.birth_date != b.birth_date
    assert any(a.birth_date.year == b.birth_date.year for a, b in namesakes)
    assert twin_pairs(records) and namesake_pairs(records)


def test_frequency_weighted_names_make_natural_namesakes() -> None:
    people = generate_people(20000, seed=1, twin_share=0, namesake_share=0)
    families = Counter(p.family_name for p in people)
    assert families.most_common(1)[0][0] == "Müller"
    assert families["Müller"] > 5 * families[FAMILY_NAMES[-10]]
    same_names = Counter((p.given_names[0], p.family_name) for p in people)
    assert sum(count > 1 for count in same_names.values()) > 20
    assert any(" " in g or "-" in g for p in people for g in p.given_names)
    assert any(ch in "äöüß" for p in people for ch in p.family_name)


def test_true_pairs(records: list[Record]) -> None:
    pairs = true_match_pairs(records)
    by_id = {r.record_id: r for r in records}
    assert all(by_id[a].person_id == by_id[b].person_id and a < b for a, b in pairs)
    assert len(pairs) == sum(comb(n, 2) for n in Counter(r.person_id for r in records).values())
    assert len(pairs) == len(duplicate_pairs(records))
    assert all(a.person_id != b.person_id for a, b in twin_pairs(records) + namesake_pairs(records))
    assert all(a.person.twin_of == b.person_id for a, b in twin_pairs(records))


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(FAMILY_NAMES), seed=st.integers(0, 2**32))
def test_a_typo_is_one_edit(name: str, seed: int) -> None:
    typed = typo(name, random.Random(seed))
    assert typed != name
    assert _edit_distance(typed.lower(), name.lower()) == 1


def test_umlaut_spellings() -> None:
    assert spell_out_umlauts("Jürgen Groß-Köhler") == "Juergen Gross-Koehler"
    assert restore_umlaut("Schroeder") == "Schröder"
    assert restore_umlaut("Manuel") == "Manül"  # why the way back is only taken for family names
    assert restore_umlaut("Meier") == "Meier"


def test_records_as_fhir_patients() -> None:
    record = Record("x", "mainz", 1, ("Martin",), "Mustermann", None, "male", date(1965, 12, 3),
                    "Musterhausen", "Dr. med.")
    assert record.as_patient() == {
        "resourceType": "Patient",
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                       "valueAddress": {"city": "Musterhausen"}}],
        "name": [{"family": "Mustermann", "given": ["Martin"], "prefix": ["Dr. med."],
                  "_prefix": [{"extension": [{"url": QUALIFIER_URL, "valueCode": "AC"}]}]}],
        "gender": "male", "birthDate": "1965-12-03"}
    married = Record("y", "kiel", 2, ("Anna", "Lena"), "Schmidt", "Müller", "female", date(1980, 1, 2),
                     "Kiel", None)
    names = married.as_patient()["name"]
    assert names == [{"use": "official", "family": "Schmidt", "given": ["Anna", "Lena"]},
                     {"use": "maiden", "family": "Müller"}]
    for r in population(300, seed=9, error_rates=MEASURED_RATES):
        Patient.model_validate(r.as_patient())


def test_hyphen_variants() -> None:
    rng = random.Random(1)
    seen = {hyphen_variant("Hans-Peter", rng) for _ in range(50)}
    assert seen == {"Hans Peter", "Hanspeter"}
    assert hyphen_variant("Anna Lena", rng) == "Anna-Lena"
    assert hyphen_variant("Müller-Lüdenscheidt", random.Random(2)) in {"Müller Lüdenscheidt", "Müllerlüdenscheidt"}


def test_every_record_labelled_with_its_kinds(records: list[Record]) -> None:
    kinds = record_kinds(records)
    assert set(kinds) == {r.record_id for r in records}
    assert all(kinds[r.record_id] - {TWIN, NAMESAKE} == r.errors for r in records)
    assert all(r.errors <= set(ERROR_KINDS) for r in records)
    for a, b in twin_pairs(records):
        assert TWIN in kinds[a.record_id] and TWIN in kinds[b.record_id]
    for a, b in namesake_pairs(records):
        assert NAMESAKE in kinds[a.record_id] and NAMESAKE in kinds[b.record_id]
    labelled = Counter(kind for labels in kinds.values() for kind in labels)
    assert labelled[TWIN] > 100 and labelled[NAMESAKE] > 100
    assert sum(not labels for labels in kinds.values()) > len(records) / 2  # most records are clean


def test_default_error_rates_are_the_documented_ones() -> None:
    rates = ErrorRates()
    assert (rates.typo_given, rates.typo_family, rates.family_name_changed, rates.day_month_swapped,
            rates.birth_date_typo, rates.second_given_missing) == (0.02, 0.02, 0.02, 0.005, 0.005, 0.15)
    assert set(ErrorRates.__dataclass_fields__) == {kind.replace("-", "_") for kind in ERROR_KINDS}


# --- Bloom filters --------------------------------------------------------------------------------

def test_bitset_byte_order_by_hand() -> None:
    # Bits 0 and 3 -> byte 0 = 0b0000_1001; bit 15 -> byte 1 = 0b1000_0000 (Java: -128).
    bits = [False] * 16
    for i in (0, 3, 15):
        bits[i] = True
    assert bitset_to_bytes(bits) == b"\x09\x80"
    # Trailing zero bytes are dropped, as BitSet.toByteArray() does; leading ones are kept.
    only_bit_9 = [i == 9 for i in range(32)]
    assert bitset_to_bytes(only_bit_9) == b"\x00\x02"
    assert bitset_to_bytes([False] * 24) == b""
    assert bitset_from_bytes(b"\x09\x80", 24).nonzero()[0].tolist() == [0, 3, 15]
    assert bitset_from_bytes(base64.b64encode(b"\x00\x02").decode(), 32).nonzero()[0].tolist() == [9]
    with pytest.raises(ValueError):
        bitset_from_bytes(b"\x00\x00\x01", 16)


def test_records_encode_as_the_library_does() -> None:
    # The library's published example as a record of the generator gives its published filter.
    mustermann = Record("x", "s", 0, ("Herr",), "Mustermann", None, "male", date(1920, 1, 1), None, None)
    encoder = BloomFilterEncoder()
    assert encoder.field_values(mustermann) == {"firstName": "Herr", "lastName": "Mustermann",
                                                "birthDate": "19200101", "gender": "m"}
    assert encoder.encode_base64(mustermann) == MUSTERMANN_FILTER
    two = Record("y", "s", 1, ("Anna", "Lena"), "Groß", None, "female", date(2001, 2, 3), "Kiel", "Dr.")
    assert encoder.field_values(two) == {"firstName": "Anna Lena", "lastName": "Groß", "birthDate": "20010203",
                                         "gender": "f"}
    assert encoder.encoder.normalise(encoder.field_values(two))["lastName"] == "GROSS"
    assert (encoder.length, encoder.filter_bits) == (800, 1600)
    assert (BloomFilterEncoder(900).length, BloomFilterEncoder(900).filter_bits) == (900, 1800)


@pytest.mark.parametrize("length", [800, 900])
def test_exactly_half_of_the_bits_set(records: list[Record], length: int) -> None:
    encoder = BloomFilterEncoder(length)
    for encoded in encoder.encode_many(records[:300]):
        assert int(np.count_nonzero(bitset_from_bytes(encoded, 2 * length))) == length


def test_serialisation_round_trip(records: list[Record], encoder: BloomFilterEncoder) -> None:
    for record in records[:50]:
        text = encoder.encode_base64(record)
        assert bitset_from_bytes(text, 1600).tolist() == encoder.bits(record).tolist()
        assert base64.b64decode(text) == encoder.encode(record)
        assert dice(text, encoder.encode(record)) == 1.0
    assert encoder.encode_many(records[:50]) == [encoder.encode(r) for r in records[:50]]


def test_dice_of_equal_records_is_one(records: list[Record], filters: dict[str, bytes]) -> None:
    # The library's normalisation removes case and umlaut spellings: the filter stays the same,
    # except for an upper-case "É", which only its lower-case form is replaced ("RENÉ" -> "REN").
    harmless = {CASE_NOISE, UMLAUT_VARIANT}
    pairs = [(a, b) for a, b in duplicate_pairs(records) if (a.errors | b.errors) <= harmless]
    assert len(pairs) > 500 and any(a.errors or b.errors for a, b in pairs)
    differing = [(a, b) for a, b in pairs if dice(filters[a.record_id], filters[b.record_id]) != 1.0]
    assert all("é" in " ".join(a.person.given_names) for a, _ in differing)


def test_dice_separates_duplicates_twins_and_unrelated(records: list[Record], filters: dict[str, bytes]) -> None:
    def dices(pairs) -> list[float]:
        return [dice(filters[a.record_id], filters[b.record_id]) for a, b in pairs]

    one_typo = dices([(a, b) for a, b in duplicate_pairs(records) if (a.errors | b.errors) in
                      ({TYPO_GIVEN}, {TYPO_FAMILY})])
    twins = dices(twin_pairs(records))
    rng = random.Random(0)
    unrelated = dices([(a, b) for a, b in ((rng.choice(records), rng.choice(records)) for _ in range(3000))
                       if a.person_id != b.person_id])
    assert len(one_typo) > 30 and len(twins) > 30
    assert statistics.mean(one_typo) > 0.9 and statistics.quantiles(one_typo, n=20)[0] > 0.8
    # Balanced filters put unrelated records near 1/2 instead of near 0: each original bit counts
    # once set or unset. Above 1/2 because all records share some bigrams (sex, century).
    assert 0.45 < statistics.mean(unrelated) < 0.7
    assert statistics.mean(unrelated) + 0.1 < statistics.mean(twins) < statistics.mean(one_typo) - 0.05
    assert max(twins) < 1.0


def test_encoding_speed() -> None:
    recs = population(12000, seed=3)
    assert len(recs) > 18000
    started = time.perf_counter()
    encoded = BloomFilterEncoder().encode_many(recs)
    elapsed = time.perf_counter() - started
    assert len(encoded) == len(recs)
    assert elapsed < 15, f"{len(recs)} records took {elapsed:.1f} s"  # about 0.7 s when measured
