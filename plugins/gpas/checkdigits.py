"""Check-digit schemes for pseudonyms, compatible with gPAS's check-digit generators.

A scheme works on symbol indices (a symbol's value is its position in the alphabet) and appends
check symbols to a message. Each scheme states what it guarantees to detect:
`detects_any_substitution` (one symbol replaced by another) and `detects_swap` (two adjacent,
different symbols exchanged); the tests hold every scheme to exactly these promises.

The names are gPAS's generator class names, and the schemes under those names compute the same
check digits as gPAS does, so pseudonyms created by gPAS validate here and vice versa. gPAS's
`Damm` and `Verhoeff` are NOT the textbook algorithms (they run over the message from right to
left, and gPAS's Verhoeff neither shifts the permutation nor inverts the product): both miss some
exchanges of the last message symbol with the check symbol. The textbook algorithms, which detect
every adjacent exchange, are available as `DammStandard` and `VerhoeffStandard`.

Schemes:
- NoCheckDigits: nothing appended.
- LuhnModN: Luhn mod N (Wikipedia "Luhn mod N algorithm"); for odd N its "odd variation"
  (a doubled value is taken mod N), because digit-summing 2x in an odd base is not one-to-one.
  Not a gPAS generator.
- Damm / DammStandard: Damm's quasigroup (H. M. Damm, 2004), 10 symbols.
- Verhoeff / VerhoeffStandard: Verhoeff's dihedral-group scheme (J. Verhoeff, 1969), 10 symbols.
- Gumm: H. P. Gumm, "A new class of check-digit methods for arbitrary number systems" (IEEE
  Trans. Inf. Theory 31, 1985), as gPAS implements it: dihedral group D5, 10 symbols.
- VerhoeffGumm: gPAS's older, deprecated implementation of Gumm's method with a faulty
  permutation table; kept so that existing pseudonyms still validate.
- ReedSolomonLagrange: systematic Reed-Solomon code over GF(p), p the (prime) alphabet size,
  encoded by Lagrange interpolation as gPAS does; appends `max_detected_errors` symbols per block.

gPAS's HammingCode is not provided: it divides by binary generator polynomials in the ring Z/32,
which is not a field, so it matches no published Hamming code and gives no guarantee to test.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from operator import mul
from typing import Protocol, runtime_checkable

import numpy as np

GPAS_GENERATOR_PACKAGE = "org.emau.icmvc.ganimed.ttp.psn.generator."
# gPAS's domain configuration default for ReedSolomonLagrange's maxDetectedErrors.
DEFAULT_MAX_DETECTED_ERRORS = 2


@runtime_checkable
class CheckDigitScheme(Protocol):
    """How check symbols are computed and what they guarantee to detect."""

    name: str
    # gPAS refuses new domains with a deprecated scheme; it is kept to validate old pseudonyms.
    deprecated: bool
    # Human-readable alphabet constraint, for error messages ("exactly 10 symbols").
    alphabet_requirement: str
    detects_any_substitution: bool

    def check_length(self, message_length: int, alphabet_size: int) -> int:
        """Number of check symbols appended to a message of `message_length` symbols."""
        ...

    def supports(self, alphabet_size: int) -> bool: ...

    def compute_many(self, codes: np.ndarray, alphabet_size: int) -> np.ndarray:
        """(n, L) symbol indices -> (n, check_length) check-symbol indices, all rows at once."""
        ...

    def is_valid(self, codes: Sequence[int], alphabet_size: int) -> bool:
        """Whether message symbols followed by their check symbols are consistent."""
        ...

    def detects_swap(self, position: int, message_length: int, left: int, right: int,
                     alphabet_size: int) -> bool:
        """Whether exchanging `left` at `position` with `right` at `position + 1` of the
        message+check word is guaranteed to be detected."""
        ...


def _in_range(codes: Sequence[int], alphabet_size: int) -> bool:
    return min(codes) >= 0 and max(codes) < alphabet_size


# --- NoCheckDigits ----------------------------------------------------------------------------

class NoCheckDigits:
    name = "NoCheckDigits"
    deprecated = False
    alphabet_requirement = "any alphabet"
    detects_any_substitution = False

    def check_length(self, message_length: int, alphabet_size: int) -> int:
        return 0

    def supports(self, alphabet_size: int) -> bool:
        return alphabet_size >= 2

    def compute_many(self, codes: np.ndarray, alphabet_size: int) -> np.ndarray:
        return np.empty((codes.shape[0], 0), dtype=np.intp)

    def is_valid(self, codes: Sequence[int], alphabet_size: int) -> bool:
        return len(codes) > 0 and _in_range(codes, alphabet_size)

    def detects_swap(self, position: int, message_length: int, left: int, right: int,
                     alphabet_size: int) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<check digit scheme {self.name}>"


# --- one check symbol -------------------------------------------------------------------------

class _OneCheckSymbol:
    """Base for schemes that append a single check symbol."""

    name: str
    deprecated = False
    alphabet_requirement: str
    detects_any_substitution = True

    def check_length(self, message_length: int, alphabet_size: int) -> int:
        return 1

    def supports(self, alphabet_size: int) -> bool:
        raise NotImplementedError

    def check_symbol(self, message: Sequence[int], alphabet_size: int) -> int:
        """The check symbol for one message (plain Python, for validating single pseudonyms)."""
        raise NotImplementedError

    def is_valid(self, codes: Sequence[int], alphabet_size: int) -> bool:
        if len(codes) < 2 or not self.supports(alphabet_size) or not _in_range(codes, alphabet_size):
            return False
        return codes[-1] == self.check_symbol(codes[:-1], alphabet_size)

    def __repr__(self) -> str:
        return f"<check digit scheme {self.name}>"


class _Decimal(_OneCheckSymbol):
    alphabet_requirement = "an alphabet of exactly 10 symbols"

    def supports(self, alphabet_size: int) -> bool:
        return alphabet_size == 10


# --- Luhn mod N -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _luhn_doubled(alphabet_size: int) -> tuple[int, ...]:
    """Value that a doubled position contributes for each symbol; a permutation of the symbols."""
    n = alphabet_size
    if n % 2 == 0:
        # Sum of the two base-n digits of 2x (2x < 2n, so the high digit is 0 or 1).
        return tuple(2 * x if 2 * x < n else 2 * x - n + 1 for x in range(n))
    # Odd variation: digit-summing would map x and x + (n+1)/2 to the same value.
    return tuple(2 * x % n for x in range(n))


@lru_cache(maxsize=None)
def _luhn_doubled_array(alphabet_size: int) -> np.ndarray:
    return np.asarray(_luhn_doubled(alphabet_size), dtype=np.int64)


class LuhnModN(_OneCheckSymbol):
    """The rightmost message symbol and every second one to its left count doubled.

    Detects every substitution. Adjacent exchanges: every one for an odd alphabet size; for an
    even size N all except exchanging the symbols of value 0 and N-1 (Luhn's "09 <-> 90").
    """

    name = "LuhnModN"
    alphabet_requirement = "an alphabet of at least 2 symbols"

    def supports(self, alphabet_size: int) -> bool:
        return alphabet_size >= 2

    def check_symbol(self, message: Sequence[int], alphabet_size: int) -> int:
        doubled = _luhn_doubled(alphabet_size)
        total = sum(map(doubled.__getitem__, message[-1::-2])) + sum(message[-2::-2])
        return -total % alphabet_size

    def compute_many(self, codes: np.ndarray, alphabet_size: int) -> np.ndarray:
        doubled = _luhn_doubled_array(alphabet_size)
        total = doubled[codes[:, -1::-2]].sum(axis=1) + codes[:, -2::-2].sum(axis=1, dtype=np.int64)
        return (-total % alphabet_size).astype(np.intp)[:, None]

    def detects_swap(self, position: int, message_length: int, left: int, right: int,
                     alphabet_size: int) -> bool:
        if left == right:
            return False
        # One of two neighbours is doubled: the swap changes the sum by f(left) - f(right) with
        # f(x) = doubled(x) - x, which is x, or x + 1 for x >= N/2 (N even): only 0, N-1 collide.
        return alphabet_size % 2 == 1 or {left, right} != {0, alphabet_size - 1}


# --- Damm -------------------------------------------------------------------------------------

# Damm's weak totally anti-symmetric quasigroup of order 10 (H. M. Damm 2004; the table on
# Wikipedia's "Damm algorithm" page, also the one gPAS uses): row = interim digit, column = digit.
_DAMM_TABLE = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)
_DAMM_ARRAY = np.asarray(_DAMM_TABLE, dtype=np.intp)


class Damm(_Decimal):
    """The check digit is the interim digit after folding the message through Damm's table.

    Textbook Damm folds left to right and detects every adjacent exchange. gPAS folds right to
    left, so its check digit sits next to the symbol folded first: exchanging the last message
    symbol with the check digit goes undetected in about one case in ten (messages longer than 1).
    """

    def __init__(self, name: str, *, right_to_left: bool) -> None:
        self.name = name
        self._right_to_left = right_to_left

    def check_symbol(self, message: Sequence[int], alphabet_size: int) -> int:
        table = _DAMM_TABLE
        interim = 0
        for c in (reversed(message) if self._right_to_left else message):
            interim = table[interim][c]
        return interim

    def compute_many(self, codes: np.ndarray, alphabet_size: int) -> np.ndarray:
        columns = range(codes.shape[1])
        interim = np.zeros(codes.shape[0], dtype=np.intp)
        for column in (reversed(columns) if self._right_to_left else columns):
            interim = _DAMM_ARRAY[interim, codes[:, column]]
        return interim[:, None]

    def detects_swap(self, position: int, message_length: int, left: int, right: int,
                     alphabet_size: int) -> bool:
        if left == right:
            return False
        if not self._right_to_left or message_length == 1:
            return True
        return position < message_length - 1


# --- the dihedral group D5, shared by Verhoeff and Gumm ---------------------------------------

def _d5_product(a: int, b: int) -> int:
    """a * b in D5, numbered as Verhoeff does: 0-4 rotations r^k, 5-9 reflections s r^k."""
    if a < 5:
        return (a + b) % 5 if b < 5 else 5 + (a + b - 5) % 5
    return 5 + (a - 5 - b) % 5 if b < 5 else (a - b) % 5


def _d5_inverse(a: int) -> int:
    return (5 - a) % 5 if a < 5 else a  # reflections are their own inverses


_D5 = tuple(tuple(_d5_product(a, b) for b in range(10)) for a in range(10))
_D5_INVERSE = tuple(_d5_inverse(a) for a in range(10))
_D5_ARRAY = np.asarray(_D5, dtype=np.intp)
_D5_INVERSE_ARRAY = np.asarray(_D5_INVERSE, dtype=np.intp)


# --- Verhoeff ---------------------------------------------------------------------------------

def _verhoeff_permutations() -> tuple[tuple[int, ...], ...]:
    # Verhoeff's position permutation p and its powers p^0 .. p^7 (p has order 8).
    p = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)
    powers = [tuple(range(10))]
    for _ in range(7):
        powers.append(tuple(powers[-1][p[x]] for x in range(10)))
    return tuple(powers)


_VERHOEFF_P = _verhoeff_permutations()
_VERHOEFF_P_ARRAY = np.asarray(_VERHOEFF_P, dtype=np.intp)


class Verhoeff(_Decimal):
    """Product over the message, from the right, of p^k(symbol) in D5.

    Textbook Verhoeff gives the last message symbol p^1 and takes the inverse of the product as
    check digit, so the check digit joins the product as p^0: every adjacent exchange is detected.
    gPAS gives the last message symbol p^0 and uses the product itself: exchanging the last
    message symbol with the check digit goes undetected whenever the rest of the product is a
    reflection, i.e. about half the time.
    """

    def __init__(self, name: str, *, first_power: int, invert: bool) -> None:
        self.name = name
        self._first_power = first_power
        self._invert = invert

    def check_symbol(self, message: Sequence[int], alphabet_size: int) -> int:
        product = 0
        power = self._first_power
        for c in reversed(message):
            product = _D5[product][_VERHOEFF_P[power & 7][c]]
            power += 1
        return _D5_INVERSE[product] if self._invert else product

    def compute_many(self, codes: np.ndarray, alphabet_size: int) -> np.ndarray:
        product = np.zeros(codes.shape[0], dtype=np.intp)
        for k, column in enumerate(reversed(range(codes.shape[1]))):
            permuted = _VERHOEFF_P_ARRAY[(k + self._first_power) & 7][codes[:, column]]
            product = _D5_ARRAY[product, permuted]
        return (_D5_INVERSE_ARRAY[product] if self._invert else product)[:, None]

    def detects_swap(self, position: int, message_length: int, left: int, right: int,
                     alphabet_size: int) -> bool:
        if left == right:
            return False
        return self._invert or position < message_length - 1


# --- Gumm -------------------------------------------------------------------------------------

def _gumm_tau(i: int, x: int) -> int:
    """Gumm's position permutation of D5 for position i (period 10): rotations are kept at even
    positions and inverted at odd ones; reflection s r^j moves to s r^(j + 3i)."""
    if x < 5:
        return x if i % 2 == 0 else (5 - x) % 5
    return 5 + (x - 5 + 3 * i) % 5


_GUMM_TAU = tuple(tuple(_gumm_tau(i, x) for x in range(10)) for i in range(10))

# gPAS's original VerhoeffGumm table, meant to be Gumm's tau but wrong in places (gPAS deprecates
# it: it misses many adjacent exchanges). Data copied as fact so old pseudonyms keep validating.
_VERHOEFF_GUMM_F = (
    (1, 0, 3, 2, 4, 5, 6, 7, 8, 9),
    (0, 4, 3, 2, 1, 8, 9, 5, 6, 7),
    (0, 1, 2, 3, 4, 6, 7, 8, 9, 5),
    (0, 4, 3, 2, 1, 9, 5, 6, 7, 8),
    (0, 1, 2, 3, 4, 7, 8, 9, 5, 6),
    (0, 4, 3, 2, 1, 5, 6, 7, 8, 9),
    (1, 0, 3, 2, 4, 8, 9, 5, 6, 7),
    (4, 0, 2, 3, 1, 6, 7, 8, 9, 5),
    (1, 0, 3, 2, 4, 9, 5, 6, 7, 8),
    (4, 0, 2, 3, 1, 7, 8, 9, 5, 6),
)


class Gumm(_Decimal):
    """Product in D5 of tau_i(symbol), i counted from the right with the check digit at i = 0,
    each new factor multiplied on the left; the check digit makes the product the identity.

    With Gumm's tau every substitution and every adjacent exchange is detected. With gPAS's
    faulty VerhoeffGumm table only substitutions are (its rows are still permutations).
    """

    def __init__(self, name: str, permutations: tuple[tuple[int, ...], ...], *,
                 detects_all_swaps: bool, deprecated: bool) -> None:
        self.name = name
        self.deprecated = deprecated
        self._tau = permutations
        self._tau_array = np.asarray(permutations, dtype=np.intp)
        self._detects_all_swaps = detects_all_swaps

    def check_symbol(self, message: Sequence[int], alphabet_size: int) -> int:
        product = 0
        i = 1
        for c in reversed(message):
            product = _D5[self._tau[i % 10][c]][product]
            i += 1
        return _D5_INVERSE[product]

    def compute_many(self, codes: np.ndarray, alphabet_size: int) -> np.ndarray:
        product = np.zeros(codes.shape[0], dtype=np.intp)
        for i, column in enumerate(reversed(range(codes.shape[1])), start=1):
            product = _D5_ARRAY[self._tau_array[i % 10][codes[:, column]], product]
        return _D5_INVERSE_ARRAY[product][:, None]

    def detects_swap(self, position: int, message_length: int, left: int, right: int,
                     alphabet_size: int) -> bool:
        return self._detects_all_swaps and left != right


# --- Reed-Solomon (Lagrange) ------------------------------------------------------------------

def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    factor = 2
    while factor * factor <= n:
        if n % factor == 0:
            return False
        factor += 1
    return True


@lru_cache(maxsize=256)
def _lagrange_weights(prime: int, block_length: int, check_count: int) -> tuple[tuple[int, ...], ...]:
    """weights[j][i] = L_i(block_length + j) mod prime, L_i the Lagrange basis polynomial for the
    points 0 .. block_length-1: check symbol j is sum_i value_i * weights[j][i]."""
    points = range(block_length)
    weights = []
    for x in range(block_length, block_length + check_count):
        row = []
        for i in points:
            value = 1
            for other in points:
                if other != i:
                    value = value * (x - other) * pow(i - other, -1, prime) % prime
            row.append(value)
        weights.append(tuple(row))
    return tuple(weights)


@lru_cache(maxsize=256)
def _lagrange_weights_array(prime: int, block_length: int, check_count: int) -> np.ndarray:
    return np.asarray(_lagrange_weights(prime, block_length, check_count), dtype=np.int64).T


class ReedSolomonLagrange:
    """The message, in blocks of p - k symbols (p the prime alphabet size, k =
    max_detected_errors), is read as the values at 0, 1, ... of the lowest-degree polynomial over
    GF(p) through them; its values at the next k points are the block's check symbols. All check
    symbols follow the message, block by block.

    Each block with its check symbols is a Reed-Solomon codeword of minimum distance k + 1, so up
    to k changed symbols per block are detected: every substitution, and every adjacent exchange
    when k >= 2 (with k = 1 only exchanges that straddle two blocks).
    """

    name = "ReedSolomonLagrange"
    deprecated = False
    detects_any_substitution = True

    def __init__(self, max_detected_errors: int = DEFAULT_MAX_DETECTED_ERRORS) -> None:
        if isinstance(max_detected_errors, bool) or not isinstance(max_detected_errors, int) \
                or max_detected_errors < 1:
            raise ValueError("max_detected_errors must be an integer >= 1")
        self.max_detected_errors = max_detected_errors
        self.alphabet_requirement = (
            f"an alphabet whose size is a prime greater than {max_detected_errors + 1}"
        )

    def __repr__(self) -> str:
        return f"<check digit scheme {self.name}, max_detected_errors={self.max_detected_errors}>"

    def supports(self, alphabet_size: int) -> bool:
        return alphabet_size >= 3 and alphabet_size > self.max_detected_errors + 1 and _is_prime(alphabet_size)

    def _blocks(self, message_length: int, alphabet_size: int) -> list[tuple[int, int]]:
        size = alphabet_size - self.max_detected_errors
        return [(start, min(start + size, message_length)) for start in range(0, message_length, size)]

    def check_length(self, message_length: int, alphabet_size: int) -> int:
        return len(self._blocks(message_length, alphabet_size)) * self.max_detected_errors

    def _message_length(self, word_length: int, alphabet_size: int) -> int | None:
        """Inverse of word_length = m + check_length(m); None when no message length fits."""
        full_blocks, rest = divmod(word_length, alphabet_size)
        block_size = alphabet_size - self.max_detected_errors
        if rest == 0:
            return full_blocks * block_size if full_blocks else None
        if rest <= self.max_detected_errors:
            return None
        return full_blocks * block_size + rest - self.max_detected_errors

    def check_symbols(self, message: Sequence[int], alphabet_size: int) -> list[int]:
        k = self.max_detected_errors
        result: list[int] = []
        for start, end in self._blocks(len(message), alphabet_size):
            block = message[start:end]
            for weights in _lagrange_weights(alphabet_size, end - start, k):
                result.append(sum(map(mul, block, weights)) % alphabet_size)
        return result

    def compute_many(self, codes: np.ndarray, alphabet_size: int) -> np.ndarray:
        parts = []
        for start, end in self._blocks(codes.shape[1], alphabet_size):
            weights = _lagrange_weights_array(alphabet_size, end - start, self.max_detected_errors)
            parts.append(codes[:, start:end].astype(np.int64) @ weights % alphabet_size)
        return np.concatenate(parts, axis=1).astype(np.intp)

    def is_valid(self, codes: Sequence[int], alphabet_size: int) -> bool:
        if not codes or not self.supports(alphabet_size) or not _in_range(codes, alphabet_size):
            return False
        message_length = self._message_length(len(codes), alphabet_size)
        if message_length is None:
            return False
        codes = list(codes)
        return codes[message_length:] == self.check_symbols(codes[:message_length], alphabet_size)

    def _block_of(self, position: int, message_length: int, alphabet_size: int) -> int:
        if position < message_length:
            return position // (alphabet_size - self.max_detected_errors)
        return (position - message_length) // self.max_detected_errors

    def detects_swap(self, position: int, message_length: int, left: int, right: int,
                     alphabet_size: int) -> bool:
        if left == right:
            return False
        if self.max_detected_errors >= 2:
            return True
        return (self._block_of(position, message_length, alphabet_size)
                != self._block_of(position + 1, message_length, alphabet_size))


# --- registry ---------------------------------------------------------------------------------

SCHEMES: dict[str, CheckDigitScheme] = {
    s.name: s
    for s in (
        NoCheckDigits(),
        LuhnModN(),
        Damm("Damm", right_to_left=True),
        Damm("DammStandard", right_to_left=False),
        Verhoeff("Verhoeff", first_power=0, invert=False),
        Verhoeff("VerhoeffStandard", first_power=1, invert=True),
        Gumm("Gumm", _GUMM_TAU, detects_all_swaps=True, deprecated=False),
        Gumm("VerhoeffGumm", _VERHOEFF_GUMM_F, detects_all_swaps=False, deprecated=True),
        ReedSolomonLagrange(),
    )
}

_UNSUPPORTED = {
    "HammingCode": "gPAS's HammingCode is not supported (it matches no published Hamming code)",
}


def scheme(name: str, *, max_detected_errors: int | None = None) -> CheckDigitScheme:
    """The scheme registered under a gPAS name or gPAS class name.

    `max_detected_errors` configures ReedSolomonLagrange (gPAS default 2); other schemes ignore it,
    as gPAS does. Raises ValueError for unknown or unsupported names.
    """
    if not isinstance(name, str):
        raise ValueError(f"check digit scheme must be a string, not {type(name).__name__}")
    short_name = name.removeprefix(GPAS_GENERATOR_PACKAGE)
    if short_name in _UNSUPPORTED:
        raise ValueError(_UNSUPPORTED[short_name])
    if short_name not in SCHEMES:
        raise ValueError(f"unknown check digit scheme {name!r}; known: {', '.join(SCHEMES)}")
    if (short_name == ReedSolomonLagrange.name and max_detected_errors is not None
            and max_detected_errors != DEFAULT_MAX_DETECTED_ERRORS):
        return ReedSolomonLagrange(max_detected_errors)
    return SCHEMES[short_name]
