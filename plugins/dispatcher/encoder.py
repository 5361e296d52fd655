"""Record-level Bloom filters exactly as the NUM sites make them.

The sites of the network build their filters with the Mainzelliste fTTP client library
(`RandomRecordBloomFilterGenerator`, Java). This module makes the same filters bit for bit, so a
Python site, a test harness or `ttp-gateway bloomfilter encode` can take part in a study:

1. Normalisation (the library's `FieldsNormalization`): each field may have a chain of string
   transformers. One transformer applies, in this fixed order, its regex replacements (Java
   `String.replaceAll`, in the iteration order of the `HashMap` the library parses them into),
   its character filter (each UTF-16 unit kept if it matches a one-character regex), Java
   `toUpperCase()` and Java `trim()`. Fields without transformers are taken as they are: the
   published configuration normalises first and last name only, so the birth date must already
   be written as the network agrees (`19200101`) and the sex code is taken as given (`m`).
2. Positions: for each field, `java.util.Random(seed of the field)` draws `positions_per_bigram`
   times `nextInt(length)` for every bigram of the vocabulary, bigrams taken in the order of the
   library's `LinkedHashMap` (every pair of vocabulary characters, first character outer, a
   repeated character adding no new bigram). A bigram sets its (distinct) drawn positions.
3. A field value sets the positions of its bigrams, padded with one space at both ends
   ("AB" -> " A", "AB", "B "); bigrams with a character outside the vocabulary set nothing, and
   an empty value still sets the bigram of two spaces when the vocabulary has a space. The fields
   of a record are OR-ed into one filter of `length` bits; fields the record lacks set nothing.
4. Balancing: the filter is followed by its complement (2·length bits, exactly `length` set),
   then `java.util.Random(balanced seed)` draws 2·length times `nextInt(2·length)` and bit i is
   swapped with bit draw[i], for i = 0, 1, 2, ... in turn.
5. The bits go out as Java `BitSet.toByteArray()` (bit i is bit i % 8 of byte i // 8, trailing
   zero bytes dropped), base64-encoded.

So the filter a study stores has 2·length bits: the library's `length` 800 gives 1600-bit
filters, 900 gives 1800. Published test vector (seeds balanced 154866848, firstName 487484864,
lastName 311296856, birthDate 897689196, gender 298767897, length 800, the vocabulary
`PUBLISHED_VOCABULARY`, Herr / Mustermann / 19200101 / m): see tests/test_encoder.py.

Not modelled: the library's `StringFieldConcatenation` (a site joins such fields before
encoding), replacement texts with `$` or a backslash (rejected), and Turkish or Lithuanian default
locales of the JVM (whose `toUpperCase` differs).

Seeds are the network's secret: nothing here logs them or a field value, and error messages
name fields and settings, never values.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

import numpy as np

__all__ = [
    "LIBRARY_DEFAULT_LENGTH",
    "LIBRARY_DEFAULT_VOCABULARY",
    "NAME_TRANSFORMERS",
    "PUBLISHED_NORMALISATION",
    "PUBLISHED_VOCABULARY",
    "JavaRandom",
    "RecordFilterEncoder",
    "RecordFilterSpec",
    "StringTransformer",
    "java_hash_map_order",
    "java_string_hash",
    "java_trim",
    "spec_from_properties",
    "vocabulary_bigrams",
]

# The library's defaults where its configuration leaves a property out.
LIBRARY_DEFAULT_VOCABULARY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ .-0123456789"
LIBRARY_DEFAULT_LENGTH = 900
LIBRARY_DEFAULT_POSITIONS = 30
# The vocabulary of the library's README and test. As published: "a" and "m" twice, no "q" and no
# "w" in lower case, so a lower-case sex code "w" would set no bit at all.
PUBLISHED_VOCABULARY = "abcdefghijkalmnoprstuvmxyzABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789"

_MASK_48 = (1 << 48) - 1
_MULTIPLIER = 0x5DEECE66D
_INCREMENT = 0xB


class JavaRandom:
    """`java.util.Random`: the 48-bit linear congruential generator its documentation specifies."""

    def __init__(self, seed: int) -> None:
        self._state = (seed ^ _MULTIPLIER) & _MASK_48

    def next(self, bits: int) -> int:
        """`next(bits)`: the top `bits` of the new 48-bit state, as a signed 32-bit int."""
        self._state = (self._state * _MULTIPLIER + _INCREMENT) & _MASK_48
        value = self._state >> (48 - bits)
        return value - (1 << 32) if value >= 1 << 31 else value

    def next_int(self, bound: int | None = None) -> int:
        """`nextInt()` without a bound; `nextInt(bound)` uniform in [0, bound) otherwise."""
        if bound is None:
            return self.next(32)
        if bound <= 0 or bound >= 1 << 31:
            raise ValueError("bound must be a positive 32-bit int")
        r = self.next(31)
        if bound & (bound - 1) == 0:  # a power of two: the high bits are the better ones
            return (bound * r) >> 31
        # Reject the last, incomplete stretch of [0, 2^31): `u - r + bound - 1` overflows an int.
        while r - r % bound + bound - 1 >= 1 << 31:
            r = self.next(31)
        return r % bound

    def next_ints(self, bound: int, count: int) -> list[int]:
        """`count` draws of `nextInt(bound)`, the hot loop of building the position tables."""
        if bound <= 0 or bound >= 1 << 31 or bound & (bound - 1) == 0:
            return [self.next_int(bound) for _ in range(count)]
        state, limit, out = self._state, 1 << 31, []
        for _ in range(count):
            while True:
                state = (state * _MULTIPLIER + _INCREMENT) & _MASK_48
                r = state >> 17
                value = r % bound
                if r - value + bound - 1 < limit:
                    break
            out.append(value)
        self._state = state
        return out


def java_string_hash(text: str) -> int:
    """`String.hashCode()` (over UTF-16 code units), as a signed 32-bit int."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def java_hash_map_order(keys: Iterable[str]) -> list[str]:
    """The iteration order of a `new HashMap<>()` the keys were put into in this order.

    A key lands in bucket (h ^ h >>> 16) & (capacity - 1); capacity starts at 16 and doubles when
    the size passes 3/4 of it; buckets are iterated in index order, each in insertion order.
    Bins of 8 or more colliding keys (which Java turns into trees) are not modelled.
    """
    unique = list(dict.fromkeys(keys))
    capacity = 16
    while len(unique) > capacity * 3 // 4:
        capacity *= 2
    buckets: dict[int, list[str]] = {}
    for key in unique:
        h = java_string_hash(key) & 0xFFFFFFFF
        buckets.setdefault((h ^ (h >> 16)) & (capacity - 1), []).append(key)
    if any(len(bucket) >= 8 for bucket in buckets.values()):
        raise ValueError("too many replacement patterns share one hash bucket")
    return [key for index in sorted(buckets) for key in buckets[index]]


_JAVA_TRIMMED = "".join(chr(c) for c in range(0x21))


def java_trim(text: str) -> str:
    """`String.trim()`: strips every character up to U+0020 (controls and space), nothing else."""
    return text.strip(_JAVA_TRIMMED)


@dataclass(frozen=True)
class StringTransformer:
    """One `StringFieldTransformer` of the library.

    `replacements` are (Java regex, replacement) pairs in the order the library applies them
    (see `from_properties` for the order of a parsed JSON map); replacement texts are literal.
    `allowed_chars` is a regex one character must match to be kept (Java's default classes:
    `\\s` is [ \\t\\n\\x0B\\f\\r], `\\w` and `\\d` are ASCII).
    """

    replacements: tuple[tuple[str, str], ...] = ()
    allowed_chars: str = ""
    upper_case: bool = False
    trim: bool = False

    def __post_init__(self) -> None:
        for pattern, replacement in self.replacements:
            if "$" in replacement or "\\" in replacement:
                raise ValueError("replacement texts with '$' or '\\' are not supported")
            try:
                re.compile(pattern)
            except re.error:
                raise ValueError("a replacement pattern is not a valid regular expression") from None
        if self.allowed_chars:
            try:
                re.compile(self.allowed_chars, re.ASCII)
            except re.error:
                raise ValueError("allowedChars is not a valid regular expression") from None

    @classmethod
    def from_properties(cls, properties: Mapping[str, str]) -> StringTransformer:
        """From the library's transformer properties: `replacement` (a JSON object),
        `allowedChars`, `upperCase`, `trim`."""
        replacements: tuple[tuple[str, str], ...] = ()
        text = str(properties.get("replacement", "")).strip()
        if text:
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("a transformer's replacement is not a JSON object") from None
            if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
                raise ValueError("a transformer's replacement is not a JSON object of texts")
            replacements = tuple((key, parsed[key]) for key in java_hash_map_order(parsed))
        return cls(replacements=replacements, allowed_chars=str(properties.get("allowedChars", "")).strip(),
                   upper_case=_java_boolean(properties.get("upperCase", "")),
                   trim=_java_boolean(properties.get("trim", "")))

    def apply(self, value: str) -> str:
        for pattern, replacement in self.replacements:
            value = _compiled(pattern, 0).sub(lambda _: replacement, value)
        if self.allowed_chars:
            allowed = _compiled(self.allowed_chars, re.ASCII)
            # Java tests UTF-16 units: a character beyond the BMP (two units) never matches a
            # one-character class of BMP characters, so testing whole code points is the same.
            value = "".join(ch for ch in value if allowed.fullmatch(ch))
        if self.upper_case:
            value = value.upper()  # full case mapping like Java's (ß -> SS); Java's root locale
        if self.trim:
            value = java_trim(value)
        return value


@lru_cache(maxsize=256)
def _compiled(pattern: str, flags: int) -> re.Pattern:
    return re.compile(pattern, flags)


def _java_boolean(value: object) -> bool:
    """`Boolean.parseBoolean`: true only for "true", ignoring case."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


# The normalisation of the library's README and test: titles "Dr." and "Dipl." removed, é and the
# umlauts spelled out, upper case, trimmed; then only A-Z and whitespace kept (hyphens, dots and
# apostrophes go, spaces inside a name stay).
NAME_TRANSFORMERS: tuple[StringTransformer, ...] = (
    StringTransformer.from_properties({
        "replacement": '{"Dr\\\\.|Dipl\\\\.":"","é":"e","ä":"ae","Ä":"AE","ö":"oe","Ö":"OE","ü":"ue","Ü":"UE"}',
        "upperCase": "true", "trim": "true"}),
    StringTransformer(allowed_chars=r"[A-Z\s]"),
)
PUBLISHED_NORMALISATION: Mapping[str, tuple[StringTransformer, ...]] = MappingProxyType(
    {"firstName": NAME_TRANSFORMERS, "lastName": NAME_TRANSFORMERS})


@dataclass(frozen=True)
class RecordFilterSpec:
    """What a network agrees on to make comparable filters (the library's properties).

    `seeds` maps each field to its seed (`field.<name>.seed`); only these fields are encoded.
    `length` is the library's `length`: the filter sent has twice as many bits.
    """

    seeds: Mapping[str, int]
    balanced_seed: int = 0
    length: int = LIBRARY_DEFAULT_LENGTH
    vocabulary: str = LIBRARY_DEFAULT_VOCABULARY
    positions_per_bigram: int = LIBRARY_DEFAULT_POSITIONS
    normalisation: Mapping[str, Sequence[StringTransformer]] = field(default_factory=lambda: PUBLISHED_NORMALISATION)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("no field has a seed")
        for name, seed in self.seeds.items():
            if not isinstance(name, str) or not re.fullmatch(r"\w+", name, re.ASCII):
                raise ValueError("field names are letters, digits and underscores")
            _check_long(seed, f"the seed of field {name}")
        _check_long(self.balanced_seed, "the balanced seed")
        for value, what in ((self.length, "length"), (self.positions_per_bigram, "positions per bigram")):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{what} must be a positive integer")
        if 2 * self.length >= 1 << 31:
            raise ValueError("length is too large")
        if not self.vocabulary or any(ord(ch) > 0xFFFF for ch in self.vocabulary):
            raise ValueError("the vocabulary must be non-empty and of BMP characters (Java chars)")
        object.__setattr__(self, "seeds", MappingProxyType(dict(self.seeds)))
        object.__setattr__(self, "normalisation", MappingProxyType(
            {name: tuple(steps) for name, steps in self.normalisation.items()}))

    @property
    def filter_bits(self) -> int:
        """Bits of the filter sent: the filter and its complement."""
        return 2 * self.length

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.seeds)


def _check_long(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not -(1 << 63) <= value < 1 << 63:
        raise ValueError(f"{what} must be an integer (a Java long)")


def spec_from_properties(properties: Mapping[str, object], **overrides: object) -> RecordFilterSpec:
    """A spec from the library's property names, as flat keys ("field.firstName.seed") or
    nested tables ({"field": {"firstName": {"seed": ...}}}), as TOML or JSON give them.

    Recognised: `balanced.seed`, `field.<name>.seed`, `field.<name>.transformer.<n>.<property>`
    (StringFieldTransformer only), `length`, `vocabulary`, `randomPositionNumber`, and
    `nGramLength` (read and ignored: the library makes bigrams whatever it says). Without any
    transformer the published normalisation applies. `overrides` (spec field names) win.
    """
    flat = _flatten(properties)
    seeds: dict[str, int] = {}
    transformers: dict[str, dict[str, dict[str, object]]] = {}
    settings: dict[str, object] = {}
    for key, value in flat.items():
        parts = key.split(".")
        if parts[0] == "field" and len(parts) == 3 and parts[2] == "seed":
            seeds[parts[1]] = _as_long(value, f"the seed of field {parts[1]}")
        elif parts[0] == "field" and len(parts) == 5 and parts[2] == "transformer":
            transformers.setdefault(parts[1], {}).setdefault(parts[3], {})[parts[4]] = value
        elif key == "balanced.seed":
            settings["balanced_seed"] = _as_long(value, "the balanced seed")
        elif key == "length":
            settings["length"] = _as_long(value, "length")
        elif key == "randomPositionNumber":
            settings["positions_per_bigram"] = _as_long(value, "randomPositionNumber")
        elif key == "vocabulary":
            if not isinstance(value, str):
                raise ValueError("vocabulary must be text")
            settings["vocabulary"] = value
        elif key != "nGramLength":
            raise ValueError(f"unknown setting {key!r}")
    if transformers:
        normalisation = {}
        for name, steps in transformers.items():
            chain = []
            # The library keeps them in a HashMap keyed by the step's name: its order decides.
            for step in java_hash_map_order(steps):
                kind = str(steps[step].get("type", "")).strip()
                if kind != "StringFieldTransformer":
                    raise ValueError(f"field {name}: only StringFieldTransformer is supported")
                chain.append(StringTransformer.from_properties(
                    {k: str(v) if not isinstance(v, bool) else str(v).lower() for k, v in steps[step].items()}))
            normalisation[name] = tuple(chain)
        settings["normalisation"] = normalisation
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return RecordFilterSpec(seeds=seeds, **settings)  # type: ignore[arg-type]


def _flatten(properties: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in properties.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _as_long(value: object, what: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        value = int(value)
    _check_long(value, what)
    return value  # type: ignore[return-value]


# --- the position tables --------------------------------------------------------------------------

def vocabulary_bigrams(vocabulary: str) -> list[str]:
    """The vocabulary's bigrams in the library's order: first character outer, repeats once."""
    return list(dict.fromkeys(first + second for first in vocabulary for second in vocabulary))


@lru_cache(maxsize=64)
def _bigram_positions(seed: int, vocabulary: str, length: int, count: int) -> Mapping[str, np.ndarray]:
    random = JavaRandom(seed)
    table = {}
    for bigram in vocabulary_bigrams(vocabulary):
        table[bigram] = np.unique(np.array(random.next_ints(length, count), dtype=np.int64))
    return MappingProxyType(table)


@lru_cache(maxsize=64)
def _balancing_permutation(seed: int, length: int) -> np.ndarray:
    """Balanced bit k is doubled bit permutation[k]: the library's swaps applied to indexes."""
    size = 2 * length
    swaps = JavaRandom(seed).next_ints(size, size)
    order = list(range(size))
    for i, j in enumerate(swaps):
        order[i], order[j] = order[j], order[i]
    permutation = np.array(order, dtype=np.int64)
    permutation.setflags(write=False)
    return permutation


class RecordFilterEncoder:
    """Encodes records (field name -> value, as the site has them) with one spec."""

    def __init__(self, spec: RecordFilterSpec) -> None:
        self.spec = spec
        self.permutation = _balancing_permutation(spec.balanced_seed, spec.length)
        self._empty = np.empty(0, dtype=np.int64)
        self._value_positions: dict[tuple[str, str], np.ndarray] = {}

    def normalise(self, record: Mapping[str, str | None]) -> dict[str, str]:
        """The values the generator sees: the spec's fields the record has, transformed."""
        values = {}
        for name in self.spec.fields:
            if name in record:
                value = record[name] or ""  # the library takes a missing (null) value as ""
                for step in self.spec.normalisation.get(name, ()):
                    value = step.apply(value)
                values[name] = value
        return values

    def positions(self, name: str, value: str) -> np.ndarray:
        """The positions (of `length`) a normalised value of a field sets."""
        key = (name, value)
        found = self._value_positions.get(key)
        if found is None:
            table = _bigram_positions(self.spec.seeds[name], self.spec.vocabulary, self.spec.length,
                                      self.spec.positions_per_bigram)
            padded = f" {value} "
            parts = [table.get(padded[i:i + 2], self._empty) for i in range(len(padded) - 1)]
            found = np.concatenate(parts) if parts else self._empty
            if len(self._value_positions) < 200_000:  # names repeat; the cache stays bounded
                self._value_positions[key] = found
        return found

    def unbalanced_bits(self, record: Mapping[str, str | None]) -> np.ndarray:
        """The library's `generate`: the OR of the fields' bits, `length` booleans."""
        bits = np.zeros(self.spec.length, dtype=bool)
        for name, value in self.normalise(record).items():
            bits[self.positions(name, value)] = True
        return bits

    def bits(self, record: Mapping[str, str | None]) -> np.ndarray:
        """The balanced filter: 2·length booleans, exactly `length` of them set."""
        bits = self.unbalanced_bits(record)
        return np.concatenate([bits, ~bits])[self.permutation]

    def encode(self, record: Mapping[str, str | None]) -> bytes:
        """The balanced filter as Java `BitSet.toByteArray()` bytes."""
        return np.packbits(self.bits(record), bitorder="little").tobytes().rstrip(b"\0")

    def encode_base64(self, record: Mapping[str, str | None]) -> str:
        """The balanced filter as the sites send it."""
        return base64.b64encode(self.encode(record)).decode("ascii")

    def outside_vocabulary(self, record: Mapping[str, str | None]) -> list[str]:
        """The fields whose normalised value has a character outside the vocabulary (such
        characters set no bits: usually a date or code written differently from the network)."""
        vocabulary = set(self.spec.vocabulary)
        return [name for name, value in self.normalise(record).items() if set(value) - vocabulary]
