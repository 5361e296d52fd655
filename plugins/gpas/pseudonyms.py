"""A domain's pseudonym format: how pseudonyms are generated and checked.

A pseudonym is `prefix + body + check + suffix`. The body is `length` symbols drawn uniformly
from the alphabet; `check` holds the check symbols of the chosen scheme, computed over the body,
preceded by the prefix if `include_prefix` and followed by the suffix if `include_suffix` (as
gPAS does; the check symbols still come before the suffix). With a `delimiter`, it is inserted
after every `delimiter_every` symbols of body + check, never at its end; `validate` accepts the
delimiters only at exactly those places.

Generation is vectorised: random bytes in bulk from the OS CSPRNG, rejection sampling against
modulo bias, check symbols for all rows at once, and one array of code points turned into strings
in a single step. Validation is plain Python, per pseudonym.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from .alphabets import resolve_alphabet
from .checkdigits import DEFAULT_MAX_DETECTED_ERRORS, CheckDigitScheme, scheme

# gPAS keeps a pseudonym, prefix and suffix included, in a 255-character column.
MAX_PSEUDONYM_LENGTH = 255
# Rows generated per batch, to bound memory for large requests.
_BATCH_ROWS = 65_536

# The reasons `validate` gives; they never contain the pseudonym.
NOT_A_STRING = "not a string"
WRONG_PREFIX = "wrong prefix"
WRONG_SUFFIX = "wrong suffix"
WRONG_LENGTH = "wrong length"
MISPLACED_DELIMITER = "misplaced delimiter"
CHARACTER_NOT_IN_ALPHABET = "character not in alphabet"
CHECK_DIGIT_MISMATCH = "check digit mismatch"

RandomBytes = Callable[[int], bytes]


def uniform_indices(count: int, alphabet_size: int, random_bytes: RandomBytes = os.urandom) -> np.ndarray:
    """`count` independent, uniformly distributed integers in [0, alphabet_size).

    Each value comes from one random byte (two for alphabets over 256 symbols); values at or above
    the largest multiple of alphabet_size that fits are discarded, so `value % alphabet_size`
    has no modulo bias.
    """
    dtype = np.dtype(np.uint8) if alphabet_size <= 256 else np.dtype("<u2")
    span = 1 << (8 * dtype.itemsize)
    limit = span - span % alphabet_size
    result = np.empty(count, dtype=dtype)
    filled = 0
    while filled < count:
        missing = count - filled
        # Ask for what rejection is expected to need, plus a margin, so one round nearly always does.
        wanted = int(missing * span / limit * 1.02) + 32
        raw = np.frombuffer(random_bytes(wanted * dtype.itemsize), dtype=dtype)
        if limit < span:
            raw = raw[raw < limit]
        taken = raw[:missing]
        result[filled:filled + len(taken)] = taken % alphabet_size
        filled += len(taken)
    return result


@dataclass(frozen=True)
class PseudonymFormat:
    """The pseudonym rules of one domain. Invalid settings raise ValueError on construction."""

    alphabet: str = "Symbol32"
    length: int = 8
    check_digits: str = "NoCheckDigits"
    prefix: str = ""
    suffix: str = ""
    include_prefix: bool = False
    include_suffix: bool = False
    delimiter: str = ""
    delimiter_every: int = 0
    # Only for ReedSolomonLagrange: check symbols per block (gPAS's maxDetectedErrors).
    max_detected_errors: int = DEFAULT_MAX_DETECTED_ERRORS

    if TYPE_CHECKING:  # derived state, deliberately not a dataclass field (eq, repr, asdict)
        _layout: _Layout

    def __post_init__(self) -> None:
        object.__setattr__(self, "_layout", _Layout(self))

    @classmethod
    def from_settings(cls, **settings: Any) -> PseudonymFormat:
        """Like the constructor, but also takes the strings a configuration file or gPAS
        property may hold ("8", "true") and rejects unknown setting names."""
        known = {f.name: f for f in fields(cls) if f.init}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown pseudonym format settings: {', '.join(unknown)}")
        return cls(**{name: _from_text(name, known[name].type, value) for name, value in settings.items()})

    @property
    def symbols(self) -> str:
        """The alphabet's characters, in order."""
        return self._layout.symbols

    @property
    def scheme(self) -> CheckDigitScheme:
        return self._layout.scheme

    @property
    def check_length(self) -> int:
        """Number of check symbols in each pseudonym."""
        return self._layout.check_length

    @property
    def pseudonym_length(self) -> int:
        """Number of characters in each pseudonym, everything included."""
        return self._layout.total_length

    @property
    def capacity(self) -> int:
        """Number of distinct pseudonyms the format can produce."""
        return len(self._layout.symbols) ** self.length

    def generate(self, n: int) -> list[str]:
        """`n` random pseudonyms (duplicates possible: the store rejects them)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError("the number of pseudonyms must be an integer >= 0")
        result: list[str] = []
        for start in range(0, n, _BATCH_ROWS):
            result += self._layout.generate(min(_BATCH_ROWS, n - start))
        return result

    def validate(self, pseudonym: str) -> str | None:
        """None if the pseudonym fits this format, else a short reason (without the pseudonym)."""
        return self._layout.validate(pseudonym)


def _from_text(name: str, annotation: Any, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if annotation in (bool, "bool"):
        if value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"{name} must be true or false")
    if annotation in (int, "int"):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be an integer") from None
    return value


class _Layout:
    """Everything derived from the settings, checked once and laid out for fast use."""

    __slots__ = ("symbols", "scheme", "check_length", "total_length", "_length", "_prefix",
                 "_suffix", "_delimiter", "_size", "_index", "_prefix_codes", "_suffix_codes",
                 "_group_lengths", "_symbol_points", "_template", "_body_columns",
                 "_check_columns", "_string_dtype")

    def __init__(self, settings: PseudonymFormat) -> None:
        _check_types(settings)
        self._length = settings.length
        self._prefix, self._suffix, self._delimiter = settings.prefix, settings.suffix, settings.delimiter
        self.symbols = resolve_alphabet(settings.alphabet)
        self._size = len(self.symbols)
        self._index = {symbol: i for i, symbol in enumerate(self.symbols)}
        self.scheme = scheme(settings.check_digits, max_detected_errors=settings.max_detected_errors)
        if not self.scheme.supports(self._size):
            raise ValueError(
                f"check digit scheme {self.scheme.name} needs {self.scheme.alphabet_requirement}, "
                f"but alphabet {settings.alphabet!r} has {self._size} symbols"
            )
        self._prefix_codes = self._codes_of("prefix", settings.prefix) if settings.include_prefix else []
        self._suffix_codes = self._codes_of("suffix", settings.suffix) if settings.include_suffix else []
        message_length = len(self._prefix_codes) + settings.length + len(self._suffix_codes)
        self.check_length = self.scheme.check_length(message_length, self._size)
        self._lay_out_delimiters(settings.delimiter_every)
        self._lay_out_columns()

    def _codes_of(self, what: str, text: str) -> list[int]:
        # The check digits are computed over these characters, so they must be symbols.
        if any(ch not in self._index for ch in text):
            raise ValueError(f"include_{what} needs a {what} made of alphabet characters only")
        return [self._index[ch] for ch in text]

    def _lay_out_delimiters(self, every: int) -> None:
        delimiter = self._delimiter
        if delimiter and every < 1:
            raise ValueError("a delimiter needs delimiter_every >= 1")
        if every and not delimiter:
            raise ValueError("delimiter_every is set but there is no delimiter")
        if any(ch in self._index for ch in delimiter):
            raise ValueError("the delimiter must not contain alphabet characters")
        content = self._length + self.check_length
        if delimiter:
            full, rest = divmod(content, every)
            self._group_lengths = [every] * full + ([rest] if rest else [])
        else:
            self._group_lengths = [content]
        middle = content + (len(self._group_lengths) - 1) * len(delimiter)
        self.total_length = len(self._prefix) + middle + len(self._suffix)
        if self.total_length > MAX_PSEUDONYM_LENGTH:
            raise ValueError(f"pseudonyms would be {self.total_length} characters long; "
                             f"at most {MAX_PSEUDONYM_LENGTH} are possible")

    def _lay_out_columns(self) -> None:
        """A template row of code points with prefix, delimiters and suffix in place, and the
        columns where body and check symbols go."""
        template: list[int] = [ord(ch) for ch in self._prefix]
        content_columns: list[int] = []
        for group, group_length in enumerate(self._group_lengths):
            if group:
                template += [ord(ch) for ch in self._delimiter]
            content_columns += range(len(template), len(template) + group_length)
            template += [0] * group_length
        template += [ord(ch) for ch in self._suffix]
        self._template = np.asarray(template, dtype=np.uint32)
        self._body_columns = np.asarray(content_columns[:self._length], dtype=np.intp)
        self._check_columns = np.asarray(content_columns[self._length:], dtype=np.intp)
        self._symbol_points = np.asarray([ord(ch) for ch in self.symbols], dtype=np.uint32)
        # A row of uint32 code points is, byte for byte, one numpy unicode string.
        self._string_dtype = np.dtype(("U", self.total_length))

    def generate(self, n: int) -> list[str]:
        if n == 0:
            return []
        length = self._length
        body = uniform_indices(n * length, self._size).reshape(n, length)
        rows = np.empty((n, self.total_length), dtype=np.uint32)
        rows[:] = self._template
        rows[:, self._body_columns] = self._symbol_points[body]
        if self.check_length:
            check = self.scheme.compute_many(self._message(body), self._size)
            rows[:, self._check_columns] = self._symbol_points[check]
        return rows.view(self._string_dtype).reshape(n).tolist()

    def _message(self, body: np.ndarray) -> np.ndarray:
        if not self._prefix_codes and not self._suffix_codes:
            return body
        n = body.shape[0]
        prefix = np.broadcast_to(np.asarray(self._prefix_codes, dtype=body.dtype), (n, len(self._prefix_codes)))
        suffix = np.broadcast_to(np.asarray(self._suffix_codes, dtype=body.dtype), (n, len(self._suffix_codes)))
        return np.concatenate((prefix, body, suffix), axis=1)

    def validate(self, pseudonym: str) -> str | None:
        if not isinstance(pseudonym, str):
            return NOT_A_STRING
        if not pseudonym.startswith(self._prefix):
            return WRONG_PREFIX
        if not pseudonym.endswith(self._suffix):
            return WRONG_SUFFIX
        if len(pseudonym) != self.total_length:
            return WRONG_LENGTH
        content = pseudonym[len(self._prefix):self.total_length - len(self._suffix)]
        if self._delimiter:
            groups = content.split(self._delimiter)
            if [len(group) for group in groups] != self._group_lengths:
                return MISPLACED_DELIMITER
            content = "".join(groups)
        index = self._index
        try:
            codes = [index[ch] for ch in content]
        except KeyError:
            return CHARACTER_NOT_IN_ALPHABET
        if not self.check_length:
            return None
        length = self._length
        word = self._prefix_codes + codes[:length] + self._suffix_codes + codes[length:]
        return None if self.scheme.is_valid(word, self._size) else CHECK_DIGIT_MISMATCH


def _check_types(s: PseudonymFormat) -> None:
    for name in ("alphabet", "check_digits", "prefix", "suffix", "delimiter"):
        if not isinstance(getattr(s, name), str):
            raise ValueError(f"{name} must be a string")
    for name in ("prefix", "suffix", "delimiter"):
        if not getattr(s, name).isprintable():
            raise ValueError(f"{name} must consist of printable characters")
    for name in ("include_prefix", "include_suffix"):
        if not isinstance(getattr(s, name), bool):
            raise ValueError(f"{name} must be true or false")
    for name, minimum in (("length", 1), ("delimiter_every", 0), ("max_detected_errors", 1)):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}")
