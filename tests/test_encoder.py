"""Bloom filters exactly as the Mainzelliste fTTP client library makes them (plugins/dispatcher/encoder.py).

Expected values of Java's own classes (`java.util.Random`, `HashMap`, `String.hashCode`,
`toUpperCase`, `trim`, `Pattern`) were printed by OpenJDK 17 for these inputs.
"""

from __future__ import annotations

import base64
import tomllib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttp_gateway.plugins.dispatcher import bloom
from ttp_gateway.plugins.dispatcher.encoder import (
    NAME_TRANSFORMERS, PUBLISHED_VOCABULARY, JavaRandom, RecordFilterEncoder, RecordFilterSpec,
    StringTransformer, java_hash_map_order, java_string_hash, java_trim, spec_from_properties,
    vocabulary_bigrams,
)

# The library's published test vector (README and RandomRecordBloomFilterGeneratorTest).
SEEDS = {"firstName": 487484864, "lastName": 311296856, "birthDate": 897689196, "gender": 298767897}
BALANCED_SEED = 154866848
MUSTERMANN = {"firstName": "Herr", "lastName": "Mustermann", "birthDate": "19200101", "gender": "m"}
MUSTERMANN_FILTER = (
    "aFRAty//BwRtDednRgb/Lwx9n6wFvdPhniK3dmEr03b4kcSZ+Jw68m++9h8FO43f+HHsEpk7Zc3YiF7Q9O8Upom5zJKjzUElY"
    "lFubVjAAgJMQWCMME6Yp+wkPXjm2bBHckHVs6ZzJASI/vAub/fVVps2dfmhYrA0MGXjd/iFDIZ4bF0xscaz7bzTo+uJTwQg0"
    "08EVBWnbxr/57bHC309SCdbbWSxZhi3l+neQ7g3RoGxXQVGrRzEQdmsNlw3yUxINQ65LIAcbUA=")
# The same configuration in the library's property names, as a site's TOML file holds it.
PUBLISHED_PROPERTIES_TOML = r'''
length = 800
nGramLength = 2
randomPositionNumber = 30
vocabulary = "abcdefghijkalmnoprstuvmxyzABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789"
balanced.seed = 154866848
field.firstName.seed = 487484864
field.lastName.seed = 311296856
field.birthDate.seed = 897689196
field.gender.seed = 298767897
field.firstName.transformer.0.type = "StringFieldTransformer"
field.firstName.transformer.0.replacement = '{"Dr\\.|Dipl\\.":"","é":"e","ä":"ae","Ä":"AE","ö":"oe","Ö":"OE","ü":"ue","Ü":"UE"}'
field.firstName.transformer.0.upperCase = "true"
field.firstName.transformer.0.trim = "true"
field.firstName.transformer.1.type = "StringFieldTransformer"
field.firstName.transformer.1.allowedChars = '[A-Z\s]'
field.lastName.transformer.0.type = "StringFieldTransformer"
field.lastName.transformer.0.replacement = '{"Dr\\.|Dipl\\.":"","é":"e","ä":"ae","Ä":"AE","ö":"oe","Ö":"OE","ü":"ue","Ü":"UE"}'
field.lastName.transformer.0.upperCase = "true"
field.lastName.transformer.0.trim = "true"
field.lastName.transformer.1.type = "StringFieldTransformer"
field.lastName.transformer.1.allowedChars = '[A-Z\s]'
'''


def published(length: int = 800) -> RecordFilterEncoder:
    return RecordFilterEncoder(RecordFilterSpec(SEEDS, BALANCED_SEED, length, PUBLISHED_VOCABULARY))


# --- the published vector -------------------------------------------------------------------------

def test_published_vector_bit_for_bit() -> None:
    encoder = published()
    assert encoder.encode_base64(MUSTERMANN) == MUSTERMANN_FILTER
    assert encoder.encode(MUSTERMANN) == base64.b64decode(MUSTERMANN_FILTER)
    assert encoder.normalise(MUSTERMANN) == {"firstName": "HERR", "lastName": "MUSTERMANN",
                                             "birthDate": "19200101", "gender": "m"}


def test_published_vector_from_the_library_properties() -> None:
    spec = spec_from_properties(tomllib.loads(PUBLISHED_PROPERTIES_TOML))
    assert (spec.length, spec.filter_bits, spec.balanced_seed, dict(spec.seeds)) == (800, 1600, BALANCED_SEED, SEEDS)
    assert spec.normalisation["firstName"] == NAME_TRANSFORMERS
    assert RecordFilterEncoder(spec).encode_base64(MUSTERMANN) == MUSTERMANN_FILTER
    # Flat keys (as JSON may carry them) read the same.
    flat = {"length": "800", "vocabulary": PUBLISHED_VOCABULARY, "balanced.seed": str(BALANCED_SEED),
            **{f"field.{name}.seed": seed for name, seed in SEEDS.items()}}
    assert RecordFilterEncoder(spec_from_properties(flat)).encode_base64(MUSTERMANN) == MUSTERMANN_FILTER


def test_a_changed_detail_changes_the_filter() -> None:
    changed = [
        published().encode_base64({**MUSTERMANN, "firstName": "Herrn"}),
        published().encode_base64({**MUSTERMANN, "gender": "M"}),
        RecordFilterEncoder(RecordFilterSpec({**SEEDS, "gender": 1}, BALANCED_SEED, 800,
                                             PUBLISHED_VOCABULARY)).encode_base64(MUSTERMANN),
        RecordFilterEncoder(RecordFilterSpec(SEEDS, BALANCED_SEED + 1, 800,
                                             PUBLISHED_VOCABULARY)).encode_base64(MUSTERMANN),
    ]
    assert all(text != MUSTERMANN_FILTER for text in changed)


# --- java.util.Random -----------------------------------------------------------------------------

def test_java_random_matches_the_jdk() -> None:
    r = JavaRandom(42)
    assert [r.next_int(10) for _ in range(10)] == [0, 3, 8, 4, 0, 5, 5, 8, 9, 3]
    r = JavaRandom(42)
    assert [r.next_int() for _ in range(3)] == [-1170105035, 234785527, -1360544799]
    assert JavaRandom(0).next_int() == -1155484576
    r = JavaRandom(7)  # the power-of-two path
    assert [r.next_int(16) for _ in range(8)] == [11, 10, 11, 0, 5, 7, 14, 11]
    r = JavaRandom(-5)  # a negative seed, the bound of the position tables
    assert [r.next_int(800) for _ in range(8)] == [211, 321, 353, 328, 552, 185, 657, 593]
    r = JavaRandom(BALANCED_SEED)
    assert [r.next_int(1600) for _ in range(5)] == [521, 14, 1585, 56, 400]


def test_java_random_rejection_path() -> None:
    bound = (1 << 30) + 1  # almost half of all draws fall into the rejected stretch
    expected = [20678044, 747989380, 1053566254, 755731200, 259278708, 542588911, 178712961, 234738279]
    r = JavaRandom(7)
    assert [r.next_int(bound) for _ in range(8)] == expected
    assert JavaRandom(7).next_ints(bound, 8) == expected
    # Some draw was rejected: taking every draw modulo the bound gives another sequence.
    plain = JavaRandom(7)
    assert [(plain.next(31)) % bound for _ in range(8)] != expected


@given(seed=st.integers(-(1 << 63), (1 << 63) - 1), bits=st.integers(1, 30),
       bound=st.integers(1, (1 << 31) - 1))
def test_java_random_properties(seed: int, bits: int, bound: int) -> None:
    # For a power of two, nextInt takes the high bits: the same as next(bits) from that state.
    assert JavaRandom(seed).next_int(1 << bits) == JavaRandom(seed).next(bits)
    assert 0 <= JavaRandom(seed).next_int(bound) < bound
    assert JavaRandom(seed).next_ints(bound, 3) == [r.next_int(bound) for r in [JavaRandom(seed)] for _ in range(3)]


def test_java_random_rejects_bad_bounds() -> None:
    for bound in (0, -1, 1 << 31):
        with pytest.raises(ValueError):
            JavaRandom(1).next_int(bound)


# --- Java strings and maps ------------------------------------------------------------------------

def test_java_string_hash_and_hash_map_order() -> None:
    assert java_string_hash("Mustermann") == -1834305558
    assert java_string_hash("Dr\\.|Dipl\\.") == 1644968815
    assert java_string_hash("𝔘") == 31 * 0xD835 + 0xDD18  # two UTF-16 units
    keys = ["Dr\\.|Dipl\\.", "é", "ä", "Ä", "ö", "Ö", "ü", "Ü"]
    assert java_hash_map_order(keys) == ["Dr\\.|Dipl\\.", "ä", "Ä", "ö", "Ö", "é", "ü", "Ü"]
    # Twenty keys: the map has grown to 32 buckets.
    many = [f"key{i * 7919}" for i in range(20)]
    assert " ".join(java_hash_map_order(many)) == (
        "key87109 key150461 key15838 key0 key134623 key55433 key79190 key63352 key31676 key110866 "
        "key47514 key95028 key102947 key118785 key142542 key71271 key39595 key7919 key23757 key126704")


def test_replacements_apply_in_hash_map_order() -> None:
    # Overlapping patterns: the order of the map, not of the JSON text, decides.
    transformer = StringTransformer.from_properties({"replacement": '{"ss":"s","ß":"ss"}'})
    assert [p for p, _ in transformer.replacements] == java_hash_map_order(["ss", "ß"])
    assert transformer.apply("Groß") == ("Gros" if transformer.replacements[0][0] == "ß" else "Gross")


def test_java_trim() -> None:
    assert java_trim("\u0001\t x y \u00a0 \u001f") == "x y \u00a0"  # NBSP is no Java whitespace


# Inputs and what the JDK made of them with the published name normalisation.
NORMALISED_NAMES = [
    ("  Dr. med. Hans-Peter ", "MED HANSPETER"), ("Jürgen Groß", "JUERGEN GROSS"), ("Céline", "CELINE"),
    ("Yılmaz", "YILMAZ"), ("O'Neill", "ONEILL"), ("Anna\tLena", "ANNA\tLENA"), ("ÉMILE", "MILE"),
    ("Łódź", "D"), ("Straße", "STRASSE"), ("Dipl.-Ing. Müller", "ING MUELLER"), ("dr. hans", "DR HANS"),
    ("ﬁnn", "FINN"), ("Nguyễn", "NGUYN"), ("\u00a0Anna", "ANNA"), ("Prof. Dr. Anna", "PROF  ANNA"),
    ("Anna  Lena", "ANNA  LENA"), ("Müller-Lüdenscheidt", "MUELLERLUEDENSCHEIDT"),
    ("von der Heide", "VON DER HEIDE"), ("José", "JOSE"), ("İlker", "LKER"), ("Weiß", "WEISS"),
    ("x𝔘y", "XY"),
]


@pytest.mark.parametrize(("text", "expected"), NORMALISED_NAMES)
def test_published_name_normalisation(text: str, expected: str) -> None:
    value = text
    for step in NAME_TRANSFORMERS:
        value = step.apply(value)
    assert value == expected


def test_fields_without_transformers_are_taken_as_given() -> None:
    encoder = published()
    record = {"firstName": "Anna", "lastName": "Groß", "birthDate": "1920-01-01", "gender": "f", "city": "Kiel"}
    assert encoder.normalise(record) == {"firstName": "ANNA", "lastName": "GROSS", "birthDate": "1920-01-01",
                                         "gender": "f"}
    assert encoder.outside_vocabulary(record) == ["birthDate"]


# --- the construction -----------------------------------------------------------------------------

def test_vocabulary_bigrams_in_library_order() -> None:
    bigrams = vocabulary_bigrams(PUBLISHED_VOCABULARY)
    assert len(bigrams) == 61 * 61  # "a" and "m" twice: 61 distinct characters
    assert bigrams[:3] == ["aa", "ab", "ac"] and bigrams[21:25] == ["ax", "ay", "az", "aA"]  # no second "aa", "am"
    assert bigrams[-1] == "99"
    assert vocabulary_bigrams("ABA") == ["AA", "AB", "BA", "BB"]


def test_filter_is_the_union_of_padded_bigrams() -> None:
    spec = RecordFilterSpec({"lastName": 5, "gender": 6}, 7, 64, "ABCm ", positions_per_bigram=3)
    encoder = RecordFilterEncoder(spec)

    def drawn(seed: int) -> dict[str, set[int]]:
        random = JavaRandom(seed)
        return {bigram: {random.next_int(64) for _ in range(3)} for bigram in vocabulary_bigrams("ABCm ")}

    last, gender = drawn(5), drawn(6)
    expected = set().union(last[" A"], last["AB"], last["B "], gender[" m"], gender["m "])
    record = {"lastName": "ab", "gender": "m", "other": "ignored"}
    assert set(np.flatnonzero(encoder.unbalanced_bits(record))) == expected
    # An empty value sets the bigram of two spaces; a missing field sets nothing; characters
    # outside the vocabulary set nothing (a lower-case "w" is not in the published vocabulary).
    assert set(np.flatnonzero(encoder.unbalanced_bits({"lastName": ""}))) == last["  "]
    assert set(np.flatnonzero(encoder.unbalanced_bits({"lastName": None}))) == last["  "]
    assert not encoder.unbalanced_bits({}).any()
    assert set(np.flatnonzero(encoder.unbalanced_bits({"gender": "w"}))) == set()
    assert set(np.flatnonzero(encoder.unbalanced_bits({"lastName": "AxB"}))) == last[" A"] | last["B "]


def test_balancing_swaps_bits_in_turn() -> None:
    spec = RecordFilterSpec({"lastName": 5}, 11, 12, "AB ", positions_per_bigram=2)
    encoder = RecordFilterEncoder(spec)
    record = {"lastName": "AB"}
    base = encoder.unbalanced_bits(record)
    bits = [bool(b) for b in base] + [not b for b in base]
    random = JavaRandom(11)
    swaps = [random.next_int(24) for _ in range(24)]
    for i, j in enumerate(swaps):
        bits[i], bits[j] = bits[j], bits[i]
    assert encoder.bits(record).tolist() == bits
    assert encoder.encode(record) == bloom.from_positions([i for i, bit in enumerate(bits) if bit], 24).rstrip(b"\0")
    assert sum(bits) == 12


@pytest.mark.parametrize("length", [800, 900])
def test_filters_of_1600_and_1800_bits(length: int) -> None:
    encoder = published(length)
    records = [MUSTERMANN, {**MUSTERMANN, "firstName": "Erika", "gender": "f"},
               {"firstName": "Ölaf", "lastName": "Groß-Weiß", "birthDate": "20011231", "gender": "m"}]
    for record in records:
        data = encoder.encode(record)
        assert not data.endswith(b"\0") and len(data) <= length // 4
        padded = bloom.decode_filter(encoder.encode_base64(record), 2 * length)
        assert bloom.popcount(padded) == length
        assert bloom.positions(padded) == np.flatnonzero(encoder.bits(record)).tolist()
    assert bloom.dice(encoder.encode(records[0]), encoder.encode(records[0])) == 1.0


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="no field"):
        RecordFilterSpec({})
    with pytest.raises(ValueError, match="seed of field gender"):
        RecordFilterSpec({"gender": "12"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="seed"):
        RecordFilterSpec({"gender": 1 << 63})
    with pytest.raises(ValueError, match="length"):
        RecordFilterSpec({"gender": 1}, length=0)
    with pytest.raises(ValueError, match="BMP"):
        RecordFilterSpec({"gender": 1}, vocabulary="AB𝔘")
    with pytest.raises(ValueError, match="unknown setting 'lenght'"):
        spec_from_properties({"lenght": 800, "field": {"a": {"seed": 1}}})
    with pytest.raises(ValueError, match="StringFieldTransformer"):
        spec_from_properties({"field.a.seed": 1, "field.a.transformer.0.type": "StringFieldConcatenation"})
    with pytest.raises(ValueError, match="replacement"):
        StringTransformer.from_properties({"replacement": '{"a":"$1"}'})
    with pytest.raises(ValueError, match="JSON"):
        StringTransformer.from_properties({"replacement": "a=b"})
    with pytest.raises(ValueError, match="regular expression"):
        StringTransformer(allowed_chars="[A-Z")
