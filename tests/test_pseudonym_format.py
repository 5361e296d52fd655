"""Alphabets and pseudonym formats: settings, generation, validation."""

from __future__ import annotations

import string
from collections import Counter
from itertools import cycle, islice

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttp_gateway.plugins.gpas.alphabets import NAMED_ALPHABETS, resolve_alphabet
from ttp_gateway.plugins.gpas.checkdigits import SCHEMES
from ttp_gateway.plugins.gpas.pseudonyms import (
    CHARACTER_NOT_IN_ALPHABET,
    CHECK_DIGIT_MISMATCH,
    MISPLACED_DELIMITER,
    NOT_A_STRING,
    WRONG_LENGTH,
    WRONG_PREFIX,
    WRONG_SUFFIX,
    PseudonymFormat,
    uniform_indices,
)

# The first run imports numpy paths and builds caches; no per-example deadline.
PROPERTY_SETTINGS = settings(deadline=None)

# --- alphabets --------------------------------------------------------------------------------

def test_named_alphabets_match_gpas():
    assert NAMED_ALPHABETS["Numbers"] == string.digits
    assert NAMED_ALPHABETS["NumbersWithoutZero"] == string.digits[1:]
    assert NAMED_ALPHABETS["NumbersX"] == string.digits + "X"
    assert NAMED_ALPHABETS["Hex"] == string.digits + "ABCDEF"
    letters = [ch for ch in string.ascii_uppercase if ch not in "BIOS"]
    assert NAMED_ALPHABETS["Symbol32"] == "".join(letters) + string.digits
    assert NAMED_ALPHABETS["Symbol31"] == NAMED_ALPHABETS["Symbol32"].replace("V", "")
    assert len(NAMED_ALPHABETS["Symbol32"]) == 32 and len(NAMED_ALPHABETS["Symbol31"]) == 31


@pytest.mark.parametrize(("spec", "symbols"), [
    ("Symbol32", NAMED_ALPHABETS["Symbol32"]),
    ("org.emau.icmvc.ganimed.ttp.psn.alphabets.Hex", "0123456789ABCDEF"),
    ("XYZ", "XYZ"),
    ("A, B ,C", "ABC"),  # gPAS's custom form
    ("äöü€", "äöü€"),
])
def test_resolve_alphabet(spec, symbols):
    assert resolve_alphabet(spec) == symbols


@pytest.mark.parametrize(("spec", "message"), [
    ("", "must not be empty"),
    ("A", "fewer than 2"),
    ("ABCA", "occurs more than once"),
    ("Symbol33", "occurs more than once"),
    ("symbol32", "did you mean 'Symbol32'"),
    ("AB C", "whitespace"),
    ("A,BC", "single characters"),
    ("AB\x00", "printable"),
    ("org.emau.icmvc.ganimed.ttp.psn.alphabets.Emoji", "unknown gPAS alphabet class"),
])
def test_resolve_alphabet_refuses(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_alphabet(spec)


# --- invalid settings -------------------------------------------------------------------------

@pytest.mark.parametrize(("settings_", "message"), [
    ({"alphabet": "Symbol99"}, "occurs more than once"),
    ({"alphabet": "ABCB"}, "occurs more than once"),
    ({"check_digits": "Luhn"}, "unknown check digit scheme"),
    ({"check_digits": "HammingCode"}, "not supported"),
    ({"alphabet": "Hex", "check_digits": "Damm"}, "exactly 10 symbols"),
    ({"alphabet": "Symbol32", "check_digits": "Verhoeff"}, "exactly 10 symbols"),
    ({"alphabet": "Symbol32", "check_digits": "ReedSolomonLagrange"}, "prime"),
    ({"alphabet": "Symbol31", "check_digits": "ReedSolomonLagrange", "max_detected_errors": 30}, "prime"),
    ({"prefix": "ab_", "include_prefix": True}, "include_prefix needs a prefix made of alphabet"),
    ({"suffix": "-X", "include_suffix": True}, "include_suffix needs a suffix made of alphabet"),
    ({"length": 0}, "length must be an integer >= 1"),
    ({"length": -3}, "length must be an integer >= 1"),
    ({"length": True}, "length must be an integer"),
    ({"length": "8"}, "length must be an integer"),
    ({"length": 300}, "at most 255"),
    ({"prefix": "x" * 250}, "at most 255"),
    ({"delimiter": "-"}, "delimiter_every >= 1"),
    ({"delimiter_every": 4}, "no delimiter"),
    ({"delimiter": "A", "delimiter_every": 4}, "must not contain alphabet characters"),
    ({"delimiter_every": -1}, "delimiter_every must be an integer >= 0"),
    ({"include_prefix": "yes"}, "include_prefix must be true or false"),
    ({"prefix": "a\nb"}, "printable"),
    ({"prefix": 5}, "prefix must be a string"),
    ({"max_detected_errors": 0}, "max_detected_errors"),
])
def test_invalid_settings_raise_value_error(settings_, message):
    with pytest.raises(ValueError, match=message):
        PseudonymFormat(**settings_)


def test_from_settings_reads_text_and_refuses_unknown_names():
    fmt = PseudonymFormat.from_settings(alphabet="Numbers", length="6", check_digits="Damm",
                                        include_prefix="TRUE", prefix="12")
    assert fmt == PseudonymFormat(alphabet="Numbers", length=6, check_digits="Damm",
                                  include_prefix=True, prefix="12")
    with pytest.raises(ValueError, match="unknown pseudonym format settings: colour"):
        PseudonymFormat.from_settings(colour="red")
    with pytest.raises(ValueError, match="include_suffix must be true or false"):
        PseudonymFormat.from_settings(include_suffix="maybe")


def test_defaults_and_derived_properties():
    fmt = PseudonymFormat()
    assert (fmt.alphabet, fmt.length, fmt.check_digits) == ("Symbol32", 8, "NoCheckDigits")
    assert fmt.symbols == NAMED_ALPHABETS["Symbol32"]
    assert fmt.capacity == 32 ** 8
    assert fmt.check_length == 0 and fmt.pseudonym_length == 8
    fmt = PseudonymFormat(alphabet="Numbers", length=5, check_digits="Verhoeff", prefix="P-",
                          delimiter=" ", delimiter_every=3)
    assert fmt.capacity == 10 ** 5  # check digits and fixed parts add no variety
    assert fmt.check_length == 1 and fmt.pseudonym_length == 2 + 6 + 1
    assert fmt.scheme is SCHEMES["Verhoeff"]


def test_formats_are_values():
    assert PseudonymFormat(length=9) == PseudonymFormat(length=9)
    assert hash(PseudonymFormat(length=9)) == hash(PseudonymFormat(length=9))
    assert PseudonymFormat(length=9) != PseudonymFormat(length=10)
    with pytest.raises(AttributeError):
        PseudonymFormat().length = 3  # type: ignore[misc]


# --- generation -------------------------------------------------------------------------------

def test_generate_returns_the_requested_count():
    fmt = PseudonymFormat(check_digits="LuhnModN")
    assert fmt.generate(0) == []
    assert len(fmt.generate(1)) == 1
    assert len(fmt.generate(70_000)) == 70_000  # more than one batch
    for bad in (-1, 2.0, True, "3"):
        with pytest.raises(ValueError):
            fmt.generate(bad)  # type: ignore[arg-type]


def test_generate_respects_prefix_suffix_and_delimiter():
    fmt = PseudonymFormat(alphabet="Hex", length=7, check_digits="LuhnModN", prefix="ab_",
                          suffix="_Z", delimiter="--", delimiter_every=3)
    for pseudonym in fmt.generate(200):
        assert pseudonym.startswith("ab_") and pseudonym.endswith("_Z")
        groups = pseudonym[3:-2].split("--")
        assert [len(g) for g in groups] == [3, 3, 2]  # 7 + 1 check symbol, no trailing delimiter
        assert all(ch in fmt.symbols for ch in "".join(groups))
        assert fmt.validate(pseudonym) is None


def test_delimiter_is_not_appended_at_the_end():
    fmt = PseudonymFormat(alphabet="Numbers", length=5, check_digits="Damm", delimiter="-",
                          delimiter_every=3)
    (pseudonym,) = fmt.generate(1)
    assert len(pseudonym) == 7 and pseudonym[3] == "-" and not pseudonym.endswith("-")


@pytest.mark.parametrize("alphabet", ["Symbol32", "Numbers", "NumbersX"])
def test_every_symbol_appears_at_every_position(alphabet):
    fmt = PseudonymFormat(alphabet=alphabet, length=8, check_digits="LuhnModN")
    draws = 20_000
    columns = list(zip(*fmt.generate(draws)))
    expected = draws / len(fmt.symbols)
    for column in columns:  # the 8 body positions and the check symbol
        counts = Counter(column)
        assert set(counts) == set(fmt.symbols)
        # Standard deviation is below sqrt(expected); 30 % is beyond 7 of them at these sizes.
        assert all(0.7 * expected < counts[s] < 1.3 * expected for s in fmt.symbols), counts


def test_generated_pseudonyms_are_not_repeated_in_practice():
    pseudonyms = PseudonymFormat().generate(20_000)  # 32^8 ≈ 1.1e12 possibilities
    assert len(set(pseudonyms)) >= 19_999


class CyclingBytes:
    """A stand-in for os.urandom that repeats a fixed byte pattern."""

    def __init__(self, pattern: bytes) -> None:
        self._source = cycle(pattern)
        self.requested = 0

    def __call__(self, n: int) -> bytes:
        self.requested += n
        return bytes(islice(self._source, n))


def test_sampling_has_no_modulo_bias():
    # Every byte value once: bytes 250..255 would favour digits 0..5 if not rejected.
    values = uniform_indices(250, 10, CyclingBytes(bytes(range(256))))
    assert Counter(values.tolist()) == {digit: 25 for digit in range(10)}


def test_sampling_rejects_bytes_above_the_last_full_cycle():
    source = CyclingBytes(bytes([250, 251, 252, 253, 254, 255] * 100 + [7]))
    assert set(uniform_indices(1000, 10, source).tolist()) == {7}
    assert source.requested > 1000  # asked again after the rejections


def test_sampling_two_bytes_per_symbol_for_large_alphabets():
    # 300 symbols: 16-bit draws, rejected from 65400 (= 218 * 300) on.
    all_values = np.arange(65536, dtype="<u2").tobytes()
    values = uniform_indices(65400, 300, CyclingBytes(all_values))
    assert Counter(values.tolist()) == {symbol: 218 for symbol in range(300)}


def test_sampling_without_rejection_for_powers_of_two():
    source = CyclingBytes(bytes(range(256)))
    assert uniform_indices(256, 32, source).tolist() == [b % 32 for b in range(256)]


def test_large_unicode_alphabet_round_trip():
    symbols = "".join(chr(0x4E00 + i) for i in range(300))
    fmt = PseudonymFormat(alphabet=symbols, length=6, check_digits="LuhnModN", prefix="ψ-")
    for pseudonym in fmt.generate(500):
        assert fmt.validate(pseudonym) is None
        assert all(ch in symbols for ch in pseudonym[2:])


# --- validation -------------------------------------------------------------------------------

REASONS = {None, NOT_A_STRING, WRONG_PREFIX, WRONG_SUFFIX, WRONG_LENGTH, MISPLACED_DELIMITER,
           CHARACTER_NOT_IN_ALPHABET, CHECK_DIGIT_MISMATCH}


def test_validate_reasons():
    fmt = PseudonymFormat(alphabet="Numbers", length=6, check_digits="DammStandard", prefix="P",
                          suffix="S", delimiter="-", delimiter_every=4)
    valid = "P0005-724S"  # 000572 + Damm check digit 4, grouped 4 + 3
    assert fmt.validate(valid) is None
    cases = {
        "X0005-724S": WRONG_PREFIX,
        "P0005-724X": WRONG_SUFFIX,
        "P0005-7244S": WRONG_LENGTH,
        "P00057-24S": MISPLACED_DELIMITER,
        "P0005_724S": MISPLACED_DELIMITER,
        "P000A-724S": CHARACTER_NOT_IN_ALPHABET,
        "P0005-723S": CHECK_DIGIT_MISMATCH,
        "P0050-724S": CHECK_DIGIT_MISMATCH,
    }
    for pseudonym, reason in cases.items():
        assert fmt.validate(pseudonym) == reason, pseudonym
        assert pseudonym not in reason
    assert fmt.validate(None) == NOT_A_STRING  # type: ignore[arg-type]
    assert fmt.validate(b"P0005-724S") == NOT_A_STRING  # type: ignore[arg-type]


def test_validate_accepts_a_gpas_style_pseudonym():
    fmt = PseudonymFormat(alphabet="Symbol32", length=8, prefix="mrcm_")
    assert fmt.validate("mrcm_T0TYNV21") is None
    assert fmt.validate("mrcm_T0TYNV2I") == CHARACTER_NOT_IN_ALPHABET  # I is not in Symbol32


def test_check_digits_cover_prefix_and_suffix_when_included():
    # Textbook Damm: 572 gets 4 (Wikipedia); 72 alone gets 6.
    plain = PseudonymFormat(alphabet="Numbers", length=2, check_digits="DammStandard", prefix="5")
    included = PseudonymFormat(alphabet="Numbers", length=2, check_digits="DammStandard", prefix="5",
                               include_prefix=True)
    assert included.validate("5724") is None
    assert plain.validate("5724") == CHECK_DIGIT_MISMATCH
    assert plain.validate("5726") is None
    both = PseudonymFormat(alphabet="Numbers", length=1, check_digits="DammStandard", prefix="5",
                           suffix="2", include_prefix=True, include_suffix=True)
    assert both.validate("5742") is None  # check over 5,7,2 is 4, placed before the suffix


def test_validate_is_strict_about_case_and_whitespace():
    fmt = PseudonymFormat(alphabet="Hex", length=4)
    assert fmt.validate("ABCD") is None
    assert fmt.validate("abcd") == CHARACTER_NOT_IN_ALPHABET
    assert fmt.validate(" ABC") == CHARACTER_NOT_IN_ALPHABET
    assert fmt.validate("ABCD\n") == WRONG_LENGTH


# --- properties over many formats -------------------------------------------------------------

EXPLICIT_SYMBOLS = string.ascii_letters + string.digits + "äöüß€"
DELIMITERS = ["-", "_", ".", "/", " ", "::"]
MISCASED_NAMES = {name.casefold() for name in NAMED_ALPHABETS}
FIXED_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-_#ä", max_size=4)


@st.composite
def formats(draw) -> PseudonymFormat:
    alphabet = draw(st.one_of(
        st.sampled_from(sorted(NAMED_ALPHABETS)),
        st.lists(st.sampled_from(EXPLICIT_SYMBOLS), min_size=2, max_size=40, unique=True).map("".join)
        .filter(lambda text: text.casefold() not in MISCASED_NAMES),  # "hex" is refused as a typo
    ))
    symbols = resolve_alphabet(alphabet)
    scheme_name = draw(st.sampled_from(sorted(n for n, s in SCHEMES.items() if s.supports(len(symbols)))))
    max_detected_errors = 2
    if scheme_name == "ReedSolomonLagrange":
        max_detected_errors = draw(st.integers(1, min(4, len(symbols) - 2)))
    symbol_text = st.text(alphabet=symbols, max_size=4)
    include_prefix, include_suffix = draw(st.booleans()), draw(st.booleans())
    prefix = draw(symbol_text if include_prefix else FIXED_TEXT)
    suffix = draw(symbol_text if include_suffix else FIXED_TEXT)
    delimiter = draw(st.sampled_from([""] + DELIMITERS))
    every = draw(st.integers(1, 5)) if delimiter else 0
    return PseudonymFormat(alphabet=alphabet, length=draw(st.integers(1, 12)), check_digits=scheme_name,
                           prefix=prefix, suffix=suffix, include_prefix=include_prefix,
                           include_suffix=include_suffix, delimiter=delimiter, delimiter_every=every,
                           max_detected_errors=max_detected_errors)


def content_positions(fmt: PseudonymFormat) -> list[int]:
    """Indices, in the pseudonym string, of the body and check symbols."""
    positions: list[int] = []
    index = len(fmt.prefix)
    content = fmt.length + fmt.check_length
    while len(positions) < content:
        if positions and fmt.delimiter and len(positions) % fmt.delimiter_every == 0:
            index += len(fmt.delimiter)
        positions.append(index)
        index += 1
    return positions


def word_position(fmt: PseudonymFormat, content_index: int) -> int:
    """Position, in the word the check digits are computed over, of a body or check symbol."""
    prefix = len(fmt.prefix) if fmt.include_prefix else 0
    if content_index < fmt.length:
        return prefix + content_index
    suffix = len(fmt.suffix) if fmt.include_suffix else 0
    return prefix + fmt.length + suffix + content_index - fmt.length


def replaced(text: str, index: int, new: str) -> str:
    return text[:index] + new + text[index + 1:]


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(fmt=formats())
def test_generated_pseudonyms_validate(fmt):
    pseudonyms = fmt.generate(25)
    assert len(pseudonyms) == 25
    positions = content_positions(fmt)
    for pseudonym in pseudonyms:
        assert fmt.validate(pseudonym) is None
        assert len(pseudonym) == fmt.pseudonym_length
        assert pseudonym.startswith(fmt.prefix) and pseudonym.endswith(fmt.suffix)
        assert all(pseudonym[i] in fmt.symbols for i in positions)
        rest = [ch for i, ch in enumerate(pseudonym[len(fmt.prefix):len(pseudonym) - len(fmt.suffix)],
                                          start=len(fmt.prefix)) if i not in positions]
        assert "".join(rest) == fmt.delimiter * ((len(positions) - 1) // fmt.delimiter_every
                                                 if fmt.delimiter else 0)


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(fmt=formats(), data=st.data())
def test_changed_symbols_are_detected_where_promised(fmt, data):
    (pseudonym,) = fmt.generate(1)
    for index in content_positions(fmt):
        other = data.draw(st.sampled_from(fmt.symbols.replace(pseudonym[index], "")))
        reason = fmt.validate(replaced(pseudonym, index, other))
        if fmt.scheme.detects_any_substitution:
            assert reason == CHECK_DIGIT_MISMATCH
        else:
            assert reason is None


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(fmt=formats())
def test_swapped_neighbours_are_detected_where_promised(fmt):
    pseudonym = fmt.generate(1)[0]
    positions = content_positions(fmt)
    message_length = ((len(fmt.prefix) if fmt.include_prefix else 0) + fmt.length
                      + (len(fmt.suffix) if fmt.include_suffix else 0))
    for k in range(len(positions) - 1):
        i, j = positions[k], positions[k + 1]
        left, right = pseudonym[i], pseudonym[j]
        word_left, word_right = word_position(fmt, k), word_position(fmt, k + 1)
        if left == right or word_right != word_left + 1:
            continue  # with include_suffix the suffix separates body and check in the word
        promised = fmt.scheme.detects_swap(word_left, message_length, fmt.symbols.index(left),
                                           fmt.symbols.index(right), len(fmt.symbols))
        if promised:
            swapped = replaced(replaced(pseudonym, i, right), j, left)
            assert fmt.validate(swapped) == CHECK_DIGIT_MISMATCH


@settings(PROPERTY_SETTINGS, max_examples=50)
@given(fmt=formats(), junk=st.text(min_size=0, max_size=30))
def test_reasons_are_fixed_texts(fmt, junk):
    # Fixed texts cannot leak the pseudonym (or any other input) into logs or responses.
    (pseudonym,) = fmt.generate(1)
    for candidate in (junk, pseudonym + junk, junk + pseudonym, pseudonym[:-1], "x" + pseudonym[1:]):
        assert fmt.validate(candidate) in REASONS
