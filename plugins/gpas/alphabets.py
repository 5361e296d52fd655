"""Pseudonym alphabets: gPAS's named alphabets and explicit character sets.

A symbol's value is its index in the alphabet string, so the order matters: check digits are
computed over these indices, and changing the order changes every check digit.
"""

from __future__ import annotations

# The alphabets gPAS ships, with its class names as keys (facts from the gPAS sources).
NAMED_ALPHABETS: dict[str, str] = {
    "Numbers": "0123456789",
    "NumbersWithoutZero": "123456789",
    "NumbersX": "0123456789X",
    "Hex": "0123456789ABCDEF",
    # A-Z without B, I, O, S (easily read as 8, 1, 0, 5), then the digits.
    "Symbol32": "ACDEFGHJKLMNPQRTUVWXYZ0123456789",
    # Symbol32 without V (easily read as U).
    "Symbol31": "ACDEFGHJKLMNPQRTUWXYZ0123456789",
}

# gPAS domain configurations name their alphabet by Java class.
GPAS_ALPHABET_PACKAGE = "org.emau.icmvc.ganimed.ttp.psn.alphabets."

MIN_ALPHABET_SIZE = 2
# Sampling draws one or two random bytes per symbol; larger alphabets are not useful anyway.
MAX_ALPHABET_SIZE = 65_536


def resolve_alphabet(spec: str) -> str:
    """Return the symbols, in order, of an alphabet given by name or by its characters.

    Accepted forms:
    - a gPAS name ("Symbol32") or gPAS class name ("org.emau.icmvc.ganimed.ttp.psn.alphabets.Hex");
    - gPAS's custom form, single characters separated by commas ("A, B, C");
    - the characters themselves ("ABCDEF").

    Raises ValueError when the spec is none of these, has fewer than 2 symbols, repeats a symbol,
    or uses whitespace or non-printable symbols.
    """
    if not isinstance(spec, str):
        raise ValueError(f"alphabet must be a string, not {type(spec).__name__}")
    if not spec:
        raise ValueError("alphabet must not be empty")
    if spec in NAMED_ALPHABETS:
        return NAMED_ALPHABETS[spec]
    if spec.startswith(GPAS_ALPHABET_PACKAGE):
        return _resolve_gpas_class_name(spec)
    _reject_miscased_name(spec)
    symbols = _split_gpas_custom_alphabet(spec) if "," in spec else spec
    _check_symbols(spec, symbols)
    return symbols


def _resolve_gpas_class_name(spec: str) -> str:
    name = spec.removeprefix(GPAS_ALPHABET_PACKAGE)
    if name not in NAMED_ALPHABETS:
        raise ValueError(f"unknown gPAS alphabet class {spec!r}; known: {_known_names()}")
    return NAMED_ALPHABETS[name]


def _reject_miscased_name(spec: str) -> None:
    # "symbol32" would otherwise pass as an 8-symbol explicit alphabet: a silent, costly typo.
    for name in NAMED_ALPHABETS:
        if spec.casefold() == name.casefold():
            raise ValueError(f"alphabet names are case-sensitive: did you mean {name!r}?")


def _split_gpas_custom_alphabet(spec: str) -> str:
    items = [item.strip() for item in spec.split(",")]
    for item in items:
        if len(item) != 1:
            raise ValueError(
                "a comma-separated alphabet must list single characters "
                f"(found an item of {len(item)} characters)"
            )
    return "".join(items)


def _check_symbols(spec: str, symbols: str) -> None:
    if len(symbols) < MIN_ALPHABET_SIZE:
        raise ValueError(
            f"alphabet {spec!r} is not a known name ({_known_names()}) "
            f"and has fewer than {MIN_ALPHABET_SIZE} characters"
        )
    if len(symbols) > MAX_ALPHABET_SIZE:
        raise ValueError(f"alphabet has {len(symbols)} characters; at most {MAX_ALPHABET_SIZE} are supported")
    seen: set[str] = set()
    for symbol in symbols:
        if symbol in seen:
            raise ValueError(
                f"alphabet {spec!r} is not a known name ({_known_names()}) "
                f"and not a valid character set: {symbol!r} occurs more than once"
            )
        if symbol.isspace() or not symbol.isprintable():
            raise ValueError(f"alphabet characters must be printable and not whitespace (found {symbol!r})")
        seen.add(symbol)


def _known_names() -> str:
    return ", ".join(NAMED_ALPHABETS)
