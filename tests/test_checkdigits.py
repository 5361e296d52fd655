"""Check-digit schemes: published test vectors, gPAS facts, and each scheme's promises.

A scheme promises `detects_any_substitution` and `detects_swap(...)`; the tests check that every
promise holds (exhaustively where feasible, with hypothesis elsewhere) and that the documented
exceptions are real, not just caution.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttp_gateway.plugins.gpas.checkdigits import (
    SCHEMES,
    CheckDigitScheme,
    ReedSolomonLagrange,
    scheme,
)

# The first run imports numpy paths and builds caches; no per-example deadline.
PROPERTY_SETTINGS = settings(deadline=None)
DECIMAL = ("Damm", "DammStandard", "Verhoeff", "VerhoeffStandard", "Gumm", "VerhoeffGumm")
# Alphabet sizes worth covering: the gPAS alphabets (9, 10, 11, 16, 31, 32) and a few odd ones.
SIZES = (2, 3, 5, 6, 7, 9, 10, 11, 13, 16, 31, 32, 36, 64)


def digits(text: str) -> list[int]:
    return [int(ch) for ch in text]


def check_symbols(s: CheckDigitScheme, message: Sequence[int], size: int) -> list[int]:
    """Check symbols of one message, through the vectorised path."""
    return s.compute_many(np.asarray([message], dtype=np.int64), size)[0].tolist()


def word_of(s: CheckDigitScheme, message: Sequence[int], size: int) -> list[int]:
    return list(message) + check_symbols(s, message, size)


def supported(size: int) -> list[str]:
    return [name for name, s in SCHEMES.items() if s.supports(size)]


# --- registry ---------------------------------------------------------------------------------

def test_registry_is_keyed_by_scheme_name():
    assert set(SCHEMES) == {"NoCheckDigits", "LuhnModN", "Damm", "DammStandard", "Verhoeff",
                            "VerhoeffStandard", "Gumm", "VerhoeffGumm", "ReedSolomonLagrange"}
    for name, s in SCHEMES.items():
        assert s.name == name
        assert isinstance(s, CheckDigitScheme)


def test_scheme_accepts_gpas_class_names():
    assert scheme("org.emau.icmvc.ganimed.ttp.psn.generator.Damm") is SCHEMES["Damm"]
    assert scheme("LuhnModN") is SCHEMES["LuhnModN"]


@pytest.mark.parametrize("name", ["Luhn", "damm", "", "org.emau.icmvc.ganimed.ttp.psn.generator.Nope"])
def test_unknown_scheme_names_are_refused(name):
    with pytest.raises(ValueError, match="unknown check digit scheme"):
        scheme(name)


def test_hamming_code_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="HammingCode is not supported"):
        scheme("HammingCode")


def test_reed_solomon_takes_max_detected_errors():
    assert scheme("ReedSolomonLagrange").max_detected_errors == 2  # gPAS default
    assert scheme("ReedSolomonLagrange", max_detected_errors=3).max_detected_errors == 3
    with pytest.raises(ValueError):
        scheme("ReedSolomonLagrange", max_detected_errors=0)


def test_only_gpas_deprecated_scheme_is_marked_deprecated():
    assert [name for name, s in SCHEMES.items() if s.deprecated] == ["VerhoeffGumm"]


@pytest.mark.parametrize(("name", "sizes"), [
    ("NoCheckDigits", set(range(2, 70))),
    ("LuhnModN", set(range(2, 70))),
    *[(name, {10}) for name in DECIMAL],
    # gPAS: a prime size, at least 3, greater than max_detected_errors + 1 (here 2 + 1).
    ("ReedSolomonLagrange", {5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67}),
])
def test_supported_alphabet_sizes(name, sizes):
    assert {n for n in range(1, 70) if SCHEMES[name].supports(n)} == sizes


# --- published test vectors -------------------------------------------------------------------

# Wikipedia, "Luhn algorithm": 7992739871 gets check digit 3; 1789372997 gets 4 (17893729974).
@pytest.mark.parametrize(("payload", "check"), [("7992739871", 3), ("1789372997", 4)])
def test_luhn_mod_10_vectors(payload, check):
    luhn = SCHEMES["LuhnModN"]
    assert check_symbols(luhn, digits(payload), 10) == [check]
    assert luhn.is_valid(digits(payload) + [check], 10)


def test_luhn_mod_n_vector():
    # Wikipedia, "Luhn mod N algorithm": over the characters a..f (N = 6) "abcdef" gets "e".
    alphabet = "abcdef"
    codes = [alphabet.index(ch) for ch in "abcdef"]
    assert check_symbols(SCHEMES["LuhnModN"], codes, 6) == [alphabet.index("e")]


def test_luhn_mod_n_odd_variation():
    # Wikipedia's odd variation replaces a doubled value by (2x mod N). N = 9, message "17":
    # 7 doubled is 14 mod 9 = 5, plus 1 is 6, so the check value is 3.
    assert check_symbols(SCHEMES["LuhnModN"], [1, 7], 9) == [3]


# Wikipedia, "Damm algorithm": 572 gets check digit 4.
def test_damm_standard_vector():
    damm = SCHEMES["DammStandard"]
    assert check_symbols(damm, digits("572"), 10) == [4]
    assert damm.is_valid(digits("5724"), 10)
    assert not damm.is_valid(digits("5723"), 10)


# Wikipedia, "Verhoeff algorithm": 236 gets check digit 3; Rosetta Code: 12345 gets 1 and
# 123456789012 gets 0.
@pytest.mark.parametrize(("payload", "check"), [("236", 3), ("12345", 1), ("123456789012", 0)])
def test_verhoeff_standard_vectors(payload, check):
    verhoeff = SCHEMES["VerhoeffStandard"]
    assert check_symbols(verhoeff, digits(payload), 10) == [check]
    assert verhoeff.is_valid(digits(payload) + [check], 10)


# --- gPAS's variants, tied to the published algorithms ----------------------------------------

def test_gpas_damm_is_textbook_damm_over_the_reversed_message():
    # gPAS folds right to left: its check digit for 275 is textbook Damm's for 572.
    assert check_symbols(SCHEMES["Damm"], digits("275"), 10) == [4]
    rng = random.Random(7)
    for _ in range(200):
        message = [rng.randrange(10) for _ in range(rng.randrange(1, 15))]
        assert (check_symbols(SCHEMES["Damm"], message, 10)
                == check_symbols(SCHEMES["DammStandard"], message[::-1], 10))


@pytest.mark.parametrize("valid_word", ["2363", "123451", "1234567890120"])
def test_gpas_verhoeff_gives_0_for_a_textbook_verhoeff_codeword(valid_word):
    # gPAS's check digit is the plain product p^0(last) * p^1(next) * ..., which is the identity
    # (digit 0) exactly when the message is itself a valid textbook Verhoeff number.
    assert SCHEMES["VerhoeffStandard"].is_valid(digits(valid_word), 10)
    assert check_symbols(SCHEMES["Verhoeff"], digits(valid_word), 10) == [0]


def test_gpas_verhoeff_differs_from_textbook_verhoeff():
    assert check_symbols(SCHEMES["Verhoeff"], digits("236"), 10) == [0]


def test_gumm_and_verhoeff_gumm_agree_where_gpas_tables_agree():
    # gPAS's faulty VerhoeffGumm table equals Gumm's tau in rows 1-5 and differs in rows 0, 6-9;
    # with the last message digit in row 1, messages of length <= 5 get the same check digit.
    rng = random.Random(3)
    for length in range(1, 6):
        for _ in range(100):
            message = [rng.randrange(10) for _ in range(length)]
            assert (check_symbols(SCHEMES["Gumm"], message, 10)
                    == check_symbols(SCHEMES["VerhoeffGumm"], message, 10))


# --- Reed-Solomon: hand-computed vectors, gPAS facts, an independent oracle -------------------

def test_reed_solomon_vectors():
    rs = SCHEMES["ReedSolomonLagrange"]  # k = 2 check symbols per block
    # p = 5, "13": the line through (0,1), (1,3) is 1 + 2x; at x = 2, 3: 0, 2.
    assert check_symbols(rs, [1, 3], 5) == [0, 2]
    # p = 5, blocks of 3: "123" lies on 1 + x (values 4, 0 at x = 3, 4); "4" is constant (4, 4).
    assert check_symbols(rs, [1, 2, 3, 4], 5) == [4, 0, 4, 4]
    # p = 11 (NumbersX), "0X": 10x at x = 2, 3 is 20, 30 = 9, 8 mod 11.
    assert check_symbols(rs, [0, 10], 11) == [9, 8]


def test_reed_solomon_check_length_matches_gpas():
    # gPAS's ReedSolomonLagrangeTests: ceil(m / (p - k)) * k check digits for these primes,
    # k = 1..9 where p > k + 1, messages of 1..100 symbols: 2700 combinations.
    combinations = 0
    for p in (3, 5, 7, 11, 31):
        for k in range(1, 10):
            rs = ReedSolomonLagrange(k)
            if not rs.supports(p):
                continue
            for m in range(1, 101):
                expected = -(-m // (p - k)) * k
                assert rs.check_length(m, p) == expected
                assert len(check_symbols(rs, [0] * m, p)) == expected
                combinations += 1
    assert combinations == 2700


def _interpolate_and_evaluate(values: Sequence[int], points: Sequence[int], p: int) -> list[int]:
    """Independent oracle: solve the Vandermonde system mod p for the polynomial's coefficients
    by Gaussian elimination, then evaluate it."""
    m = len(values)
    rows = [[pow(x, j, p) for j in range(m)] + [v] for x, v in zip(range(m), values)]
    for col in range(m):
        pivot = next(r for r in range(col, m) if rows[r][col])
        rows[col], rows[pivot] = rows[pivot], rows[col]
        inverse = pow(rows[col][col], -1, p)
        rows[col] = [v * inverse % p for v in rows[col]]
        for r in range(m):
            if r != col and rows[r][col]:
                factor = rows[r][col]
                rows[r] = [(a - factor * b) % p for a, b in zip(rows[r], rows[col])]
    coefficients = [rows[j][m] for j in range(m)]
    return [sum(c * pow(x, j, p) for j, c in enumerate(coefficients)) % p for x in points]


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(p=st.sampled_from([3, 5, 7, 11, 13, 31]), k=st.integers(1, 4), data=st.data())
def test_reed_solomon_matches_polynomial_oracle(p, k, data):
    rs = ReedSolomonLagrange(k)
    if not rs.supports(p):
        return
    message = data.draw(st.lists(st.integers(0, p - 1), min_size=1, max_size=40))
    block_size = p - k
    expected = []
    for start in range(0, len(message), block_size):
        block = message[start:start + block_size]
        expected += _interpolate_and_evaluate(block, range(len(block), len(block) + k), p)
    assert check_symbols(rs, message, p) == expected
    assert rs.is_valid(message + expected, p)


def test_reed_solomon_refuses_impossible_word_lengths():
    rs = SCHEMES["ReedSolomonLagrange"]
    # p = 5, k = 2: valid word lengths are m + 2 * ceil(m / 3): 3, 4, 5, 8, 9, 10, 13, ...
    for length in (1, 2, 6, 7, 11, 12):
        assert not rs.is_valid([0] * length, 5)
    for length in (3, 4, 5, 8, 9, 10, 13):
        assert rs.is_valid([0] * length, 5)  # the zero polynomial is a codeword


# --- the vectorised and the per-item paths agree ----------------------------------------------

@settings(PROPERTY_SETTINGS, max_examples=200)
@given(data=st.data())
def test_compute_many_agrees_with_is_valid(data):
    size = data.draw(st.sampled_from(SIZES))
    s = SCHEMES[data.draw(st.sampled_from(supported(size)))]
    length = data.draw(st.integers(1, 30))
    rows = data.draw(st.lists(st.lists(st.integers(0, size - 1), min_size=length, max_size=length),
                              min_size=1, max_size=8))
    checks = s.compute_many(np.asarray(rows, dtype=np.uint8 if size <= 256 else np.int64), size)
    assert checks.shape == (len(rows), s.check_length(length, size))
    for row, check in zip(rows, checks.tolist()):
        assert all(0 <= c < size for c in check)
        assert s.is_valid(row + check, size)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_is_valid_refuses_out_of_range_and_empty_codes(name):
    s = SCHEMES[name]
    size = 10 if s.supports(10) else 11
    assert not s.is_valid([], size)
    assert not s.is_valid([0, size], size)
    assert not s.is_valid([-1, 0, 0], size)


# --- promises: substitutions ------------------------------------------------------------------

@pytest.mark.parametrize("name", [*DECIMAL, "LuhnModN"])
def test_every_substitution_detected_exhaustively_for_short_decimal_messages(name):
    s = SCHEMES[name]
    assert s.detects_any_substitution
    for length in range(1, 4):
        for message in itertools.product(range(10), repeat=length):
            word = word_of(s, message, 10)
            for position, other in itertools.product(range(len(word)), range(10)):
                if other != word[position]:
                    changed = word[:position] + [other] + word[position + 1:]
                    assert not s.is_valid(changed, 10), (message, position, other)


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(data=st.data())
def test_every_substitution_detected(data):
    size = data.draw(st.sampled_from(SIZES))
    s = SCHEMES[data.draw(st.sampled_from(supported(size)))]
    message = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=30))
    word = word_of(s, message, size)
    position = data.draw(st.integers(0, len(word) - 1))
    other = data.draw(st.integers(0, size - 1).filter(lambda v: v != word[position]))
    changed = word[:position] + [other] + word[position + 1:]
    if s.detects_any_substitution:
        assert not s.is_valid(changed, size)


def test_no_check_digits_detects_nothing():
    s = SCHEMES["NoCheckDigits"]
    assert not s.detects_any_substitution
    assert s.check_length(8, 32) == 0
    assert s.is_valid([1, 2, 3], 32)


# --- promises: adjacent exchanges -------------------------------------------------------------

def swapped(word: list[int], position: int) -> list[int]:
    return word[:position] + [word[position + 1], word[position]] + word[position + 2:]


@settings(PROPERTY_SETTINGS, max_examples=400)
@given(data=st.data())
def test_promised_swaps_are_detected(data):
    size = data.draw(st.sampled_from(SIZES))
    s = SCHEMES[data.draw(st.sampled_from(supported(size)))]
    message = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=30))
    word = word_of(s, message, size)
    for position in range(len(word) - 1):
        left, right = word[position], word[position + 1]
        if s.detects_swap(position, len(message), left, right, size):
            assert not s.is_valid(swapped(word, position), size), (message, position)


@pytest.mark.parametrize("name", ["DammStandard", "Damm", "VerhoeffStandard", "Verhoeff", "Gumm"])
def test_swap_detection_exhaustively_for_short_messages(name):
    s = SCHEMES[name]
    for length in range(1, 5):
        for message in itertools.product(range(10), repeat=length):
            word = word_of(s, message, 10)
            for position in range(len(word) - 1):
                if word[position] != word[position + 1] \
                        and s.detects_swap(position, length, word[position], word[position + 1], 10):
                    assert not s.is_valid(swapped(word, position), 10), (message, position)


@pytest.mark.parametrize("name", ["Gumm", "VerhoeffStandard", "Verhoeff"])
def test_group_schemes_detect_swaps_at_every_position_for_every_pair(name):
    # These schemes multiply position-permuted symbols in a group, so whether a swap is caught
    # depends only on the two symbols and the position (mod the period: 10 for Gumm, 8 for
    # Verhoeff): one context per position and pair proves the promise for all messages.
    s = SCHEMES[name]
    rng = random.Random(11)
    length = 21
    for position in range(length):
        for left, right in itertools.permutations(range(10), 2):
            message = [rng.randrange(10) for _ in range(length)]
            if position == length - 1:  # exchange of the last message digit with the check digit
                message[-1] = left
                word = word_of(s, message, 10)
                left, right = word[position], word[position + 1]
                if left == right:
                    continue
            else:
                message[position], message[position + 1] = left, right
                word = word_of(s, message, 10)
            promised = s.detects_swap(position, length, left, right, 10)
            assert promised == (name != "Verhoeff" or position < length - 1)
            if promised:
                assert not s.is_valid(swapped(word, position), 10)


def test_luhn_swap_promise_is_exactly_all_but_0_and_n_minus_1_for_even_n():
    luhn = SCHEMES["LuhnModN"]
    for size in (2, 6, 10, 16, 32):
        for left, right in itertools.permutations(range(size), 2):
            expected = {left, right} != {0, size - 1}
            assert luhn.detects_swap(0, 5, left, right, size) is expected
    for size in (3, 9, 11, 31):
        assert all(luhn.detects_swap(0, 5, a, b, size) for a, b in itertools.permutations(range(size), 2))


@pytest.mark.parametrize("size", [10, 16, 32])
def test_luhn_exception_is_real(size):
    # Luhn cannot tell "0 N-1" from "N-1 0" (Wikipedia: "09" <-> "90" in base 10).
    luhn = SCHEMES["LuhnModN"]
    word = word_of(luhn, [3, 0, size - 1], size)
    assert luhn.is_valid(swapped(word, 1), size)


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(data=st.data())
def test_luhn_detects_all_other_swaps(data):
    size = data.draw(st.sampled_from(SIZES))
    luhn = SCHEMES["LuhnModN"]
    message = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=20))
    word = word_of(luhn, message, size)
    for position in range(len(word) - 1):
        pair = {word[position], word[position + 1]}
        if len(pair) == 2 and (size % 2 or pair != {0, size - 1}):
            assert not luhn.is_valid(swapped(word, position), size)


@pytest.mark.parametrize("name", ["Damm", "Verhoeff"])
def test_gpas_exception_for_the_check_digit_swap_is_real(name):
    s = SCHEMES[name]
    assert not s.detects_swap(1, 2, 3, 4, 10)  # last message digit <-> check digit
    assert s.detects_swap(0, 2, 3, 4, 10)
    missed = [m for m in itertools.product(range(10), repeat=2)
              if (w := word_of(s, m, 10))[1] != w[2] and s.is_valid(swapped(w, 1), 10)]
    assert missed


def test_verhoeff_gumm_misses_some_swaps_and_promises_none():
    s = SCHEMES["VerhoeffGumm"]
    assert not any(s.detects_swap(p, 12, 1, 2, 10) for p in range(12))
    rng = random.Random(5)
    missed = 0
    for _ in range(500):
        word = word_of(s, [rng.randrange(10) for _ in range(12)], 10)
        missed += sum(1 for p in range(12)
                      if word[p] != word[p + 1] and s.is_valid(swapped(word, p), 10))
    assert missed > 0


def test_reed_solomon_with_one_check_symbol_promises_only_swaps_across_blocks():
    rs = ReedSolomonLagrange(1)  # p = 5: blocks of 4 message symbols, 1 check symbol each
    message_length = 6  # blocks [0..3], [4..5]; check symbols at 6 (block 0) and 7 (block 1)
    assert not rs.detects_swap(0, message_length, 1, 2, 5)  # inside block 0
    assert rs.detects_swap(3, message_length, 1, 2, 5)      # block 0 | block 1
    assert rs.detects_swap(5, message_length, 1, 2, 5)      # block 1 | check of block 0
    assert rs.detects_swap(6, message_length, 1, 2, 5)      # checks of blocks 0 and 1
    assert SCHEMES["ReedSolomonLagrange"].detects_swap(0, message_length, 1, 2, 5)
