"""Bloom filters as the sites send them: base64 text in Java `BitSet.toByteArray()` order.

Bit i of a filter is bit (i % 8) of byte (i // 8), least significant bit first, and Java drops
trailing zero bytes. Two filters of the same study version may therefore differ in byte length;
they are compared as if zero-padded to the version's length, which is why `decode_filter` pads
and `encode_filter` strips. Plain fixed-length encodings (e.g. clkhash CLKs) are the same bytes
without dropped zeros, so they decode the same way.

Error messages never repeat the filter: a Bloom filter is personal data in encoded form.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

__all__ = [
    "byte_length",
    "decode_filter",
    "dice",
    "encode_filter",
    "from_positions",
    "pad_filter",
    "popcount",
    "positions",
]

# The standard alphabet only (no URL-safe "-_", no inner whitespace); padding is checked apart.
_BASE64_BODY = re.compile(r"[A-Za-z0-9+/]+")


def byte_length(length_bits: int) -> int:
    """Bytes needed for a filter of `length_bits` bits (the version's padded byte length)."""
    if isinstance(length_bits, bool) or not isinstance(length_bits, int) or length_bits <= 0:
        raise ValueError("the filter length must be a positive number of bits")
    return (length_bits + 7) // 8


def pad_filter(data: bytes, length_bits: int) -> bytes:
    """`data` zero-padded (or cut of trailing zero bytes) to the version's byte length.

    Raises ValueError if a bit at a position >= `length_bits` is set: the filter is longer
    than the version allows, so it cannot belong to it.
    """
    size = byte_length(length_bits)
    data = bytes(data)
    if len(data) > size:
        if any(data[size:]):
            raise ValueError(f"Bloom filter has bits set beyond the version's {length_bits} bits")
        data = data[:size]
    spare_bits = size * 8 - length_bits
    if spare_bits and len(data) == size and data[-1] >> (8 - spare_bits):
        raise ValueError(f"Bloom filter has bits set beyond the version's {length_bits} bits")
    return data.ljust(size, b"\0")


def decode_filter(text: str, length_bits: int) -> bytes:
    """Decode a filter sent as base64 into exactly ceil(length_bits / 8) bytes.

    Tolerates surrounding whitespace and missing padding; rejects anything else that is not
    standard base64, empty filters, and filters with bits set at positions >= length_bits.
    """
    if not isinstance(text, str):
        raise ValueError("Bloom filter must be given as base64 text")
    body = text.strip()
    padding = len(body) - len(body.rstrip("="))
    body = body[: len(body) - padding]
    if not body:
        raise ValueError("Bloom filter is empty")
    if padding > 2 or not _BASE64_BODY.fullmatch(body) or len(body) % 4 == 1:
        raise ValueError("Bloom filter is not valid base64")
    try:
        data = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error:  # pragma: no cover - the checks above already exclude these inputs
        raise ValueError("Bloom filter is not valid base64") from None
    return pad_filter(data, length_bits)


def encode_filter(data: bytes) -> str:
    """The canonical text of a filter: trailing zero bytes dropped (as Java does), padded base64.

    An all-zero filter encodes to "" (Java's empty byte array), which `decode_filter` rejects as
    empty: a record without any set bit carries nothing to match on.
    """
    return base64.b64encode(bytes(data).rstrip(b"\0")).decode("ascii")


def popcount(data: bytes) -> int:
    """Number of set bits."""
    return int.from_bytes(data, "little").bit_count()


def dice(a: bytes, b: bytes) -> float:
    """Sørensen–Dice coefficient 2|A∩B| / (|A|+|B|); 0.0 when both filters are empty.

    The plain-Python reference the vectorised index is tested against. Filters of different
    byte length are compared as if the shorter were zero-padded (little-endian ints do that).
    """
    x, y = int.from_bytes(a, "little"), int.from_bytes(b, "little")
    total = x.bit_count() + y.bit_count()
    if total == 0:
        return 0.0
    return 2 * (x & y).bit_count() / total


def from_positions(positions: Iterable[int], length_bits: int) -> bytes:
    """A filter of ceil(length_bits / 8) bytes with the given bit positions set."""
    buffer = bytearray(byte_length(length_bits))
    for position in positions:
        if not 0 <= position < length_bits:
            raise ValueError(f"bit position outside a filter of {length_bits} bits")
        buffer[position >> 3] |= 1 << (position & 7)
    return bytes(buffer)


def positions(data: bytes) -> list[int]:
    """The set bit positions of a filter, ascending."""
    bits = int.from_bytes(data, "little")
    result = []
    while bits:
        lowest = bits & -bits
        result.append(lowest.bit_length() - 1)
        bits ^= lowest
    return result
