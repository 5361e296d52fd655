"""The clearing's comparison of identifying data (IDAT).

When the Bloom-filter linkage cannot decide whether two records belong to the same patient, the
dispatcher asks the sites for the IDAT of both records (`$requestTasks` with `send_idat`, answered
by `$providePatientData`) and compares them here. The IDAT arrive as a FHIR Patient in the IDAT
profile (https://ths-greifswald.de/fhir/StructureDefinition/dispatcher/Patient/Idat); the elements
the dispatcher asked for are codes of https://ths-greifswald.de/fhir/CodeSystem/dispatcher/IdatElements,
mapped as the profile documents them:

    given               name.given                 (the name whose use is not "maiden")
    family              name.family                (the name whose use is not "maiden")
    prefix / suffix     name.prefix / name.suffix
    degree              name.prefix entries with the iso21090-EN-qualifier extension "AC"
    maidenname          name.family of the name with use "maiden"
    birthdate           birthDate (the clearing needs a full date: YYYY-MM-DD)
    gender              gender
    birthplace          extension patient-birthPlace, valueAddress.city
    address-line / address-city / address-postalcode    address.line / .city / .postalCode
    language            communication.language (preferred = true), code or text
    nationality         extension patient-nationality, code: coding.code or text
    maritalstatus       maritalStatus, coding.code or text

Only requested elements are taken over into an `Idat`, even if the Patient carries more: both
records of a clearing are asked for the same elements, so the comparison never rests on data that
only one side sent, and the service holds no more IDAT than it asked for.

Privacy: IDAT are patient data. Nothing in this module logs, no exception message names a value
(only element codes and FHIR paths), validation errors from the FHIR models, whose texts quote
input values, are never passed on or chained, and `Idat.__repr__` shows which elements are
present, not what they hold.

The comparison (`compare`) is a Fellegi–Sunter model: each field's agreement level (equal, a
typing error, a given name left out, day and month exchanged, ...) adds its log-likelihood weight
log2(m/u), and two thresholds on the sum decide. Every m- and u-probability is a named table below,
with its source or assumption; a `Comparison` carries the levels and the weight, never a value, so
the audit of a clearing can say which fields agreed (`explain`).
"""

from __future__ import annotations

import calendar
import functools
import math
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from itertools import combinations
from typing import Any

from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError
from rapidfuzz.distance import OSA, JaroWinkler

from ttp_gateway.core.errors import Unprocessable

IDAT_ELEMENTS_SYSTEM = "https://ths-greifswald.de/fhir/CodeSystem/dispatcher/IdatElements"
BIRTH_PLACE_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
NATIONALITY_URL = "http://hl7.org/fhir/StructureDefinition/patient-nationality"
EN_QUALIFIER_URL = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier"
ACADEMIC_QUALIFIER = "AC"
ADMINISTRATIVE_GENDERS = frozenset({"male", "female", "other", "unknown"})
NAME_USES = frozenset({"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"})

# Element code -> attribute of Idat.
ELEMENT_ATTRIBUTES: dict[str, str] = {
    "given": "given_names",
    "family": "family_name",
    "prefix": "prefixes",
    "suffix": "suffixes",
    "birthdate": "birth_date",
    "gender": "sex",
    "address-line": "address_lines",
    "address-city": "city",
    "address-postalcode": "postal_code",
    "birthplace": "birth_place",
    "maidenname": "birth_name",
    "degree": "degrees",
    "language": "language",
    "nationality": "nationality",
    "maritalstatus": "marital_status",
}
IDAT_ELEMENT_CODES = frozenset(ELEMENT_ATTRIBUTES)


# --- errors ---------------------------------------------------------------------------------------

class IdatError(Unprocessable):
    """A Patient that is not valid FHIR or lacks requested IDAT elements (422).

    `missing` and `invalid` hold element codes (or FHIR paths for structure outside the IDAT
    elements); the message is built from them alone and never contains a value.
    """

    def __init__(self, message: str, missing: Sequence[str] = (), invalid: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.invalid = list(invalid)


# --- the IDAT of one record -----------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class Idat:
    """The identifying data of one record, as sent (not normalised); absent elements are None/()."""

    given_names: tuple[str, ...] = ()
    family_name: str | None = None
    birth_name: str | None = None
    birth_date: date | None = None
    sex: str | None = None
    birth_place: str | None = None
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    degrees: tuple[str, ...] = ()
    address_lines: tuple[str, ...] = ()
    city: str | None = None
    postal_code: str | None = None
    language: str | None = None
    nationality: str | None = None
    marital_status: str | None = None

    def present_elements(self) -> list[str]:
        """The element codes this Idat holds a value for."""
        return [code for code, attribute in ELEMENT_ATTRIBUTES.items()
                if getattr(self, attribute) not in (None, ())]

    def __repr__(self) -> str:
        # Values are patient data: a repr may end up in a log or a traceback.
        return f"Idat(<{', '.join(self.present_elements())}>)"

    __str__ = __repr__


def idat_from_patient(patient: dict[str, Any], requested: Collection[str], *,
                      optional: Collection[str] = frozenset()) -> Idat:
    """The requested IDAT elements of a FHIR R4B Patient (JSON dict) in the IDAT profile.

    Every requested element must be present and non-empty, except those also named in `optional`
    (the profile says sites send the elements "as far as known"; the caller decides which of them
    the clearing can do without). Raises IdatError naming the missing and invalid element codes;
    raises ValueError for a requested code that is not in the IdatElements CodeSystem (a
    configuration error, not the site's).
    """
    unknown = sorted(set(requested) - IDAT_ELEMENT_CODES)
    if unknown:
        raise ValueError(f"unknown IDAT element code(s): {', '.join(unknown)}")
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise IdatError("IDAT must be a FHIR Patient resource", invalid=["Patient"])
    try:
        Patient.model_validate(patient)
    except ValidationError as exc:
        where = _dedupe(_element_of(error["loc"], patient) for error in exc.errors())
        # `from None`: the validation error quotes input values and must not travel along.
        raise IdatError(f"IDAT Patient is not a valid FHIR R4B Patient; invalid: {', '.join(where)}",
                        invalid=where) from None
    except Exception:  # noqa: BLE001 - whatever else the model trips over, the resource is invalid
        raise IdatError("IDAT Patient is not a valid FHIR R4B Patient", invalid=["Patient"]) from None

    # The R4B models check a code's syntax, not its value set; these two codes steer extraction.
    invalid: list[str] = []
    if "gender" in patient and patient["gender"] not in ADMINISTRATIVE_GENDERS:
        invalid.append("gender")
    if any(name.get("use", "official") not in NAME_USES for name in _names(patient)):
        invalid.append("Patient.name")

    values: dict[str, Any] = {}
    missing: list[str] = []
    for code in sorted(set(requested), key=list(ELEMENT_ATTRIBUTES).index):
        if code in invalid:
            continue
        try:
            value = _EXTRACTORS[code](patient)
        except _InvalidElement:
            invalid.append(code)
            continue
        if value in (None, ()):
            if code not in optional:
                missing.append(code)
            continue
        values[ELEMENT_ATTRIBUTES[code]] = value
    if missing or invalid:
        parts = ([f"missing: {', '.join(missing)}"] if missing else []) + \
                ([f"invalid: {', '.join(invalid)}"] if invalid else [])
        raise IdatError(f"IDAT Patient lacks requested elements or carries invalid ones; {'; '.join(parts)}",
                        missing=missing, invalid=invalid)
    return Idat(**values)


class _InvalidElement(Exception):
    """An element that is valid FHIR but unusable as IDAT (e.g. a partial birth date)."""


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _texts(values: Any) -> tuple[str, ...]:
    if not isinstance(values, list):
        return ()
    return tuple(text for text in (_text(value) for value in values) if text is not None)


def _names(patient: dict) -> list[dict]:
    return [name for name in patient.get("name") or [] if isinstance(name, dict)]


def _current_name(patient: dict) -> dict | None:
    """The name the person goes by: official first, then usual/unspecified, then any non-maiden one."""
    names = [name for name in _names(patient) if name.get("use") != "maiden"]
    for wanted in (("official",), ("usual", None)):
        for name in names:
            if name.get("use") in wanted:
                return name
    return names[0] if names else None


def _maiden_name(patient: dict) -> dict | None:
    return next((name for name in _names(patient) if name.get("use") == "maiden"), None)


def _is_academic(prefix_element: Any) -> bool:
    if not isinstance(prefix_element, dict):
        return False
    return any(isinstance(ext, dict) and ext.get("url") == EN_QUALIFIER_URL
               and ext.get("valueCode") == ACADEMIC_QUALIFIER
               for ext in prefix_element.get("extension") or [])


def _prefixes(patient: dict, *, academic_only: bool) -> tuple[str, ...]:
    name = _current_name(patient)
    if name is None:
        return ()
    prefixes = name.get("prefix") or []
    elements = name.get("_prefix") or []
    found = []
    for index, prefix in enumerate(prefixes):
        element = elements[index] if index < len(elements) else None
        text = _text(prefix)
        if text is not None and (not academic_only or _is_academic(element)):
            found.append(text)
    return tuple(found)


def _birth_date(patient: dict) -> date | None:
    text = patient.get("birthDate")
    if text is None:
        return None
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise _InvalidElement  # a year or year-month is valid FHIR but too vague for a clearing
    return date.fromisoformat(text)


def _address(patient: dict) -> dict:
    addresses = [a for a in patient.get("address") or [] if isinstance(a, dict) and a.get("use") != "old"]
    return next((a for a in addresses if a.get("use") == "home"), addresses[0] if addresses else {})


def _extension(patient: dict, url: str) -> dict:
    extensions = [ext for ext in patient.get("extension") or [] if isinstance(ext, dict)]
    return next((ext for ext in extensions if ext.get("url") == url), {})


def _concept_text(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and _text(coding.get("code")):
            return _text(coding.get("code"))
    return _text(concept.get("text"))


def _nationality(patient: dict) -> str | None:
    for part in _extension(patient, NATIONALITY_URL).get("extension") or []:
        if isinstance(part, dict) and part.get("url") == "code":
            return _concept_text(part.get("valueCodeableConcept"))
    return None


def _language(patient: dict) -> str | None:
    for communication in patient.get("communication") or []:
        if isinstance(communication, dict) and communication.get("preferred") is True:
            return _concept_text(communication.get("language"))
    return None


_EXTRACTORS = {
    "given": lambda p: _texts((_current_name(p) or {}).get("given")),
    "family": lambda p: _text((_current_name(p) or {}).get("family")),
    "prefix": lambda p: _prefixes(p, academic_only=False),
    "suffix": lambda p: _texts((_current_name(p) or {}).get("suffix")),
    "birthdate": _birth_date,
    "gender": lambda p: _text(p.get("gender")),
    "address-line": lambda p: _texts(_address(p).get("line")),
    "address-city": lambda p: _text(_address(p).get("city")),
    "address-postalcode": lambda p: _text(_address(p).get("postalCode")),
    "birthplace": lambda p: _text((_extension(p, BIRTH_PLACE_URL).get("valueAddress") or {}).get("city")),
    "maidenname": lambda p: _text((_maiden_name(p) or {}).get("family")),
    "degree": lambda p: _prefixes(p, academic_only=True),
    "language": _language,
    "nationality": _nationality,
    "maritalstatus": lambda p: _concept_text(p.get("maritalStatus")),
}

_PATIENT_FIELDS = frozenset(
    (info.alias or name) for name, info in Patient.model_fields.items()) | {"resourceType"}


def _element_of(loc: tuple, patient: dict) -> str:
    """The element code (or FHIR path) a validation error location points into; never a value."""
    head = loc[0] if loc else None
    if isinstance(head, str) and head.startswith("_") and head != "_":
        head = head[1:]  # "_birthDate" carries the extensions of birthDate
    sub = loc[2] if len(loc) > 2 else None

    def item(key: str) -> Any:
        items = patient.get(key)
        index = loc[1] if len(loc) > 1 else None
        if isinstance(items, list) and isinstance(index, int) and 0 <= index < len(items):
            return items[index]
        return None

    if head == "birthDate":
        return "birthdate"
    if head == "gender":
        return "gender"
    if head == "maritalStatus":
        return "maritalstatus"
    if head == "communication":
        return "language"
    if head == "name":
        name = item("name")
        maiden = isinstance(name, dict) and name.get("use") == "maiden"
        element = {"family": "maidenname" if maiden else "family", "given": "given",
                   "prefix": "prefix", "_prefix": "prefix", "suffix": "suffix"}.get(sub)
        return element or "Patient.name"
    if head == "address":
        return {"line": "address-line", "city": "address-city",
                "postalCode": "address-postalcode"}.get(sub, "Patient.address")
    if head == "extension":
        extension = item("extension")
        url = extension.get("url") if isinstance(extension, dict) else None
        return {BIRTH_PLACE_URL: "birthplace", NATIONALITY_URL: "nationality"}.get(url, "Patient.extension")
    if isinstance(head, str) and head in _PATIENT_FIELDS:
        return f"Patient.{head}"
    return "Patient"  # e.g. an unknown key: its name was chosen by the sender, so it is not echoed


# --- normalisation -------------------------------------------------------------------------------

# Letters that NFKD does not decompose into a base letter plus marks.
_TRANSLITERATION = str.maketrans({
    "ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ẞ": "ss", "æ": "ae", "œ": "oe", "ø": "o",
    "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i",
})
# Parts of German (and a few international) academic titles and degrees, lower case, no dots.
_TITLE_PARTS = frozenset({
    "prof", "dr", "pd", "dipl", "ing", "med", "dent", "vet", "rer", "nat", "phil", "jur", "oec",
    "pol", "theol", "habil", "mult", "hc", "sc", "techn", "univ", "em", "apl", "mag", "lic", "kfm",
    "kff", "psych", "paed", "biol", "chem", "phys", "math", "inform", "soc", "agr", "des", "ba",
    "ma", "bsc", "msc", "mba", "llm", "phd",
})
# Titles recognised even without a dot, because sites type "Dr Hans" or "Prof Dr Meier".
_BARE_TITLES = frozenset({"dr", "prof", "pd", "dipl", "dipl-ing", "dr-ing", "dipl-kfm", "dipl-psych"})


def _is_title(token: str, after_bare_title: bool) -> bool:
    if token in _BARE_TITLES or token.replace(".", "") == "hc":  # "h.c." (honoris causa)
        return True
    parts = [part for part in re.split(r"[.\-]", token) if part]
    # "Phil", "Ma", "Med" are names too: without a dot they count as titles only after a title
    # typed without dots ("Dr med Hans"); after "Dr. phil." a bare "Phil" is the name.
    return bool(parts) and all(part in _TITLE_PARTS for part in parts) and ("." in token or after_bare_title)


def _strip_titles(text: str) -> str:
    kept: list[str] = []
    after_bare_title = False
    for token in text.split():
        if _is_title(token, after_bare_title):
            after_bare_title = "." not in token
        else:
            after_bare_title = False
            kept.append(token)
    return " ".join(kept)


def normalise_name(text: str | None) -> str:
    """The comparison form of a name: lower case ASCII letters and digits, single spaces.

    Case folded; umlauts as ae/oe/ue and ß as ss (so Müller = Mueller = MÜLLER = müller);
    academic titles removed; other diacritics stripped (é -> e); hyphens and punctuation become
    spaces (Hans-Peter = Hans Peter), apostrophes vanish (O'Brien = OBrien); whitespace collapsed.
    """
    if not text:
        return ""
    folded = unicodedata.normalize("NFC", text).casefold().translate(_TRANSLITERATION)
    folded = re.sub(r"\.(?=[^\W\d_]{2})", ". ", folded)  # "Dr.Hans" -> "Dr. Hans", not "h.c."
    folded = _strip_titles(folded)
    decomposed = unicodedata.normalize("NFKD", folded)
    ascii_only = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    ascii_only = re.sub(r"['’`´]", "", ascii_only)
    ascii_only = re.sub(r"[^a-z0-9]+", " ", ascii_only.translate(_TRANSLITERATION))
    return ascii_only.strip()



_UMLAUT_VOWELS = str.maketrans({"ä": "a", "ö": "o", "ü": "u", "Ä": "A", "Ö": "O", "Ü": "U"})


def name_forms(*texts: str | None) -> tuple[tuple[str, ...], ...]:
    """The token lists a name is compared in: umlauts spelled out (Müller -> mueller), and, for a
    name with umlauts, also with their dots dropped (Müller -> muller), as systems without umlauts
    store them. Mueller and Muller are not made equal: neither tells which letter was meant."""
    present = [unicodedata.normalize("NFC", text) for text in texts if text]
    spelled = tuple(token for text in present for token in normalise_name(text).split())
    dotless = tuple(token for text in present for token in normalise_name(text.translate(_UMLAUT_VOWELS)).split())
    return (spelled,) if dotless == spelled else (spelled, dotless)


# --- agreement levels -----------------------------------------------------------------------------

class Level(StrEnum):
    """How the two values of one field relate; the codes the audit of a clearing shows."""

    EQUAL = "equal"                          # identical after normalisation
    PARTIAL = "partial"                      # names: one holds a part of the other (a given name left
                                             # out, a double name)
    TYPO = "typo"                            # names: the same up to typing errors
    BIRTH_NAME = "birth-name"                # family names differ, but a birth name links them
    SIMILAR = "similar"                      # birth places: one the other's leading part, or typing errors
    DAY_MONTH_SWAPPED = "day-month-swapped"  # birth dates: day and month exchanged
    ONE_DIGIT = "one-digit"                  # birth dates: one digit of day or month mistyped (or two
                                             # neighbouring digits exchanged), same year
    YEAR_ONE_DIGIT = "year-one-digit"        # birth dates: same day and month, one digit of the year
    DIFFERENT = "different"
    MISSING = "missing"                      # absent on at least one side: contributes nothing


# A name token agrees with another up to typing errors if at most TYPO_MAX_EDITS edits apart
# (optimal string alignment: substitution, insertion, deletion, neighbours exchanged); long tokens
# (a typo in each record) may be LONG_NAME_MAX_EDITS apart if their Jaro–Winkler similarity also
# reaches LONG_NAME_MIN_SIMILARITY.
TYPO_MAX_EDITS = 1
TYPO_MIN_LENGTH = 3  # "Bo"/"Jo": in names this short one edit makes another name
LONG_NAME_MIN_LENGTH = 8
LONG_NAME_MAX_EDITS = 2
LONG_NAME_MIN_SIMILARITY = 0.92  # Maximilian/Maximlain 0.96 agree; Christian/Christoph 0.87 do not


def tokens_agree(a: str, b: str) -> bool:
    """Two normalised name tokens are the same name up to typing errors."""
    if a == b:
        return True
    if max(len(a), len(b)) < TYPO_MIN_LENGTH:
        return False
    distance = OSA.distance(a, b, score_cutoff=LONG_NAME_MAX_EDITS)
    if distance <= TYPO_MAX_EDITS:
        return True
    return (min(len(a), len(b)) >= LONG_NAME_MIN_LENGTH and distance <= LONG_NAME_MAX_EDITS
            and JaroWinkler.similarity(a, b) >= LONG_NAME_MIN_SIMILARITY)


def _all_placed(shorter: Sequence[str], longer: Sequence[str], agree: Callable[[str, str], bool]) -> bool:
    """Every token of `shorter` agrees with its own token of `longer` (tiny lists: backtracking)."""
    if not shorter:
        return True
    head, rest = shorter[0], shorter[1:]
    return any(agree(head, candidate) and _all_placed(rest, [*longer[:i], *longer[i + 1:]], agree)
               for i, candidate in enumerate(longer))


_NAME_ORDER = (Level.EQUAL, Level.PARTIAL, Level.TYPO, Level.DIFFERENT, Level.MISSING)


def _token_level(a: Sequence[str], b: Sequence[str], initials: bool) -> Level:
    if not a or not b:
        return Level.MISSING
    if sorted(a) == sorted(b) or "".join(a) == "".join(b):
        return Level.EQUAL
    shorter, longer = sorted((a, b), key=len)

    def exact(x: str, y: str) -> bool:
        return x == y or (initials and len(x) == 1 and y.startswith(x))

    def tolerant(x: str, y: str) -> bool:
        return exact(x, y) or tokens_agree(x, y)

    if _all_placed(shorter, longer, exact):
        return Level.PARTIAL
    if _all_placed(shorter, longer, tolerant) or tokens_agree("".join(a), "".join(b)):
        return Level.TYPO
    return Level.DIFFERENT


def name_level(a: Sequence[str | None], b: Sequence[str | None], *, initials: bool = False) -> Level:
    """How two names (their parts as sent, e.g. the given names) relate.

    EQUAL: the same tokens in any order, or the same letters once spaces are dropped ("Annalena").
    PARTIAL: every token of the shorter name is a token of the longer ("Anna" / "Anna Lena").
    TYPO: the same up to typing errors (`tokens_agree`), token by token or as a whole.
    With `initials`, a single letter stands for any token it begins ("Hans P." / "Hans Peter").
    The best level over the spellings of `name_forms` counts (Müller = Mueller, Müller = Muller).
    """
    return min((_token_level(x, y, initials) for x in name_forms(*a) for y in name_forms(*b)),
               key=_NAME_ORDER.index)


def family_level(a: Idat, b: Idat) -> Level:
    """Family names as `name_level` relates them; where they differ, BIRTH_NAME if a birth name
    links them (one's birth name agrees with the other's family name, or the birth names agree):
    a family name changed by marriage or divorce."""
    level = name_level([a.family_name], [b.family_name])
    if level is not Level.DIFFERENT:
        return level
    links = ((a.birth_name, b.family_name), (a.family_name, b.birth_name), (a.birth_name, b.birth_name))
    if any(x and y and name_level([x], [y]) in (Level.EQUAL, Level.PARTIAL, Level.TYPO) for x, y in links):
        return Level.BIRTH_NAME
    return Level.DIFFERENT


def place_level(a: str | None, b: str | None) -> Level:
    """Birth places: EQUAL, or SIMILAR where one is the other's leading part ("Frankfurt" /
    "Frankfurt am Main", "Halle" / "Halle (Saale)") or they differ by typing errors."""
    best = Level.MISSING
    for x in name_forms(a):
        for y in name_forms(b):
            if not x or not y:
                continue
            shorter, longer = sorted((x, y), key=len)
            if x == y:
                return Level.EQUAL
            if tuple(longer[:len(shorter)]) == tuple(shorter) or tokens_agree("".join(x), "".join(y)):
                best = Level.SIMILAR
            elif best is Level.MISSING:
                best = Level.DIFFERENT
    return best


def birth_date_level(a: date | None, b: date | None) -> Level:
    """Birth dates: EQUAL; DAY_MONTH_SWAPPED (03.12. / 12.03., same year); ONE_DIGIT (same year,
    day and month one typing error apart in their four digits: 12.04. / 13.04., 12.04. / 21.04.);
    YEAR_ONE_DIGIT (same day and month, the year one typing error apart: 1980 / 1989, 1980 / 1908);
    DIFFERENT otherwise."""
    if a is None or b is None:
        return Level.MISSING
    if a == b:
        return Level.EQUAL
    if a.year == b.year and (a.day, a.month) == (b.month, b.day):
        return Level.DAY_MONTH_SWAPPED
    if a.year == b.year and OSA.distance(f"{a.day:02d}{a.month:02d}", f"{b.day:02d}{b.month:02d}") == 1:
        return Level.ONE_DIGIT
    if (a.month, a.day) == (b.month, b.day) and OSA.distance(f"{a.year:04d}", f"{b.year:04d}") == 1:
        return Level.YEAR_ONE_DIGIT
    return Level.DIFFERENT


def sex_level(a: str | None, b: str | None) -> Level:
    """Administrative gender codes; "unknown" says nothing and counts as missing."""
    if not a or not b or "unknown" in (a, b):
        return Level.MISSING
    return Level.EQUAL if a == b else Level.DIFFERENT


# --- the Fellegi–Sunter model ---------------------------------------------------------------------
#
# Each field's level is scored with its log-likelihood ratio log2(m / u), m = P(level | same person),
# u = P(level | different persons), and the field weights are summed (Fellegi & Sunter 1969). The
# m-probabilities are assumed error rates of the records' data entry; the u-probabilities say how
# often different people's values coincide at that level. Every number is stated with its source or
# the assumption it rests on; the tests recompute the derived ones and hold the decisions to the
# cases a data steward decides (tests/test_idat.py).
#
# One dependence is modelled, because plain Fellegi–Sunter (fields independent) would link twins: a
# different person in a clearing who shares the family name is typically a sibling, found by the
# Bloom filter because relatives share most IDAT, and siblings share the birth place often and, as
# twins, the birth date. So the u-probabilities of birth date and birth place depend on the family
# name's level: among people with the same family name they are mixed from those of siblings and of
# strangers (SIBLING_SHARE), otherwise they are those of strangers. The given names, which tell twins
# apart, must then carry the decision: with the given names missing, all other fields agreeing stay
# below the match threshold. Where this makes a worse family-name level weigh more (a typo makes the
# others strangers' and their agreement stronger), `compare` caps the sum at the family names' EQUAL.


@dataclass(frozen=True)
class Probabilities:
    """m = P(level | same person), u = P(level | different persons)."""

    m: float
    u: float

    @property
    def weight(self) -> float:
        """The level's evidence for "same person", in bits: log2(m / u)."""
        return math.log2(self.m / self.u)


def _table(levels: dict[Level, tuple[float, float | None]]) -> dict[Level, Probabilities]:
    """Probabilities per level; the one u given as None is the rest, so each u sums to 1."""
    rest = 1.0 - sum(u for _, u in levels.values() if u is not None)
    return {level: Probabilities(m, rest if u is None else u) for level, (m, u) in levels.items()}


GIVEN_NAMES = _table({
    # m: sites take names from the health insurance card (assumed); a further given name left out at one site
    # (about a third of people have two or more, and records drop one in about 15 % of cases),
    # typing errors in about 3 % of records (registries report 1–5 %), two records to a pair.
    # Given names that share no name and are beyond typing errors (a call name instead of the official
    # one, given and family name exchanged) are assumed rare: 1 pair in 2,000.
    # u: different people share their given names about 1 in 300 (assumed from German name statistics:
    # a cohort's most common names are each borne by 1–3 % of one sex, the study mixes sexes and
    # cohorts); one's given names a part of the other's, or one typing error apart (Jan/Jana,
    # Lena/Lea, Paul/Paula), assumed about as often.
    Level.EQUAL: (0.89, 0.003),
    Level.PARTIAL: (0.05, 0.002),
    Level.TYPO: (0.0595, 0.003),
    Level.DIFFERENT: (0.0005, None),
})

FAMILY_NAME = _table({
    # m: typing errors in about 2 % of records; the family name changed between the records
    # (marriage, divorce) in about 5 % of pairs, mostly linked by a birth name that one site records
    # (the clearing asks for "maidenname"), a double name formed or dropped in 1 %.
    # u: different people share a family name about 1 in 500 (assumption: the most common German
    # family name is borne by under 1 % of people, the sum of squared name shares is of the order of
    # 0.1 %; rounded up because names cluster in a study's region); names one typing error apart are
    # more common still (Maier/Meier/Mayer/Meyer, Schmidt/Schmitt); a birth name equal to the other's
    # family name needs a recorded birth name (about a fifth of people) besides the coincidence.
    Level.EQUAL: (0.90, 0.002),
    Level.PARTIAL: (0.01, 0.0002),
    Level.TYPO: (0.04, 0.003),
    Level.BIRTH_NAME: (0.044, 0.0005),
    Level.DIFFERENT: (0.006, None),
})

SEX = _table({
    # m: the sex recorded differently for one person (a data-entry error, a changed gender entry),
    # assumed 1 pair in 500. u: two people are of the same sex about half the time.
    Level.EQUAL: (0.998, 0.5),
    Level.DIFFERENT: (0.002, None),
})

# Birth dates. m: a typing error in the date in about 1 % of records (day or month as often as the
# year), day and month exchanged in about 1 % of the records where that is possible (day <= 12, a
# third of dates), a wholly other date (a wrong record, a placeholder) in 0.5 %; two records to a pair.
BIRTH_DATE_M = {Level.EQUAL: 0.965, Level.DAY_MONTH_SWAPPED: 0.007, Level.ONE_DIGIT: 0.010,
                Level.YEAR_ONE_DIGIT: 0.008, Level.DIFFERENT: 0.010}
# u among strangers: birth dates spread evenly over BIRTH_YEARS years (a study's patients are 0 to
# about 90 years old); each value is the average share of the other dates of the span that lie at
# that level from a date (`birth_date_u_among_strangers` computes them; a test recomputes these).
BIRTH_YEARS = 90
BIRTH_DATE_U_STRANGERS = {Level.EQUAL: 3.042e-5, Level.DAY_MONTH_SWAPPED: 1.099e-5,
                          Level.ONE_DIGIT: 5.339e-4, Level.YEAR_ONE_DIGIT: 4.372e-4}
# u among siblings: twins (about one delivery in 60 in Germany is a multiple birth; rounded up to
# 2 % of sibling pairs); siblings born in the same year (assumed 5 %) at one of the ~17.5 dates one
# digit away (of 365), or on the same day of the year (1/365) in years one digit apart (~70 % of
# sibling pairs: 1980 / 1983); a swap needs the same year and the one mirrored date.
BIRTH_DATE_U_SIBLINGS = {Level.EQUAL: 0.02, Level.DAY_MONTH_SWAPPED: 2e-5,
                         Level.ONE_DIGIT: 0.0024, Level.YEAR_ONE_DIGIT: 0.0019}

# Birth places. m: another place recorded (residence, hospital town) in 4 %, a leading part or a
# typing error ("Frankfurt" / "Frankfurt am Main") in 5 %. u among strangers: birth places of
# different people coincide about 1 in 100 (assumed: births concentrate in towns with maternity
# wards, and a study's patients come from one region); among siblings: they are born in the same
# town about half the time (assumed).
BIRTH_PLACE_M = {Level.EQUAL: 0.91, Level.SIMILAR: 0.05, Level.DIFFERENT: 0.04}
BIRTH_PLACE_U_STRANGERS = {Level.EQUAL: 0.01, Level.SIMILAR: 0.002}
BIRTH_PLACE_U_SIBLINGS = {Level.EQUAL: 0.5, Level.SIMILAR: 0.03}

# The share of siblings among the different people in a clearing at each family-name level. With the
# family name agreeing (or linked by a birth name) assumed 60 %: the Bloom filter brings relatives to
# a clearing, the rest are namesakes and others with a common name. Names one typing error apart are a
# sibling's only if a typo happened (about 5 % of pairs, so 3 %); other names are strangers'.
SIBLING_SHARE = {Level.EQUAL: 0.6, Level.PARTIAL: 0.6, Level.BIRTH_NAME: 0.6, Level.TYPO: 0.03,
                 Level.DIFFERENT: 0.0, Level.MISSING: 0.0}


def _mixed(m: dict[Level, float], strangers: dict[Level, float], siblings: dict[Level, float],
                  share: float) -> dict[Level, Probabilities]:
    """m and the u mixed from strangers and siblings; the DIFFERENT level takes the rest of u."""
    return _table({level: (m[level], None if level is Level.DIFFERENT else
                           share * siblings[level] + (1 - share) * strangers[level]) for level in m})


BIRTH_DATE = {family: _mixed(BIRTH_DATE_M, BIRTH_DATE_U_STRANGERS, BIRTH_DATE_U_SIBLINGS, share)
              for family, share in SIBLING_SHARE.items()}
BIRTH_PLACE = {family: _mixed(BIRTH_PLACE_M, BIRTH_PLACE_U_STRANGERS, BIRTH_PLACE_U_SIBLINGS, share)
               for family, share in SIBLING_SHARE.items()}

# Decision thresholds on the summed weight, in bits. At or above MATCH_THRESHOLD the records are one
# person. Below NON_MATCH_THRESHOLD they are clearly two. Between the two the model cannot tell (a
# changed family name with nothing to corroborate it, a different sex, a namesake with a mistyped
# date at another birth place): the clearing must decide, and it keeps such records apart (a missed
# link costs a duplicate person; a false one mixes two patients' data, the worse error), marking the
# comparison `undecided` for the audit. The thresholds sit between the weights of the cases a data
# steward decides one way and the other (tests/test_idat.py lists them).
MATCH_THRESHOLD = 18.5
NON_MATCH_THRESHOLD = 14.0

# The clearing never merges records on less than these fields (IDAT element codes; the studies'
# REQUIRED_ELEMENTS); the others count where both records have them.
REQUIRED_FIELDS = frozenset({"given", "family", "birthdate", "gender"})


def field_probabilities(field: str, level: Level, family: Level) -> Probabilities | None:
    """m and u of a field's level (for birth date and place: given the family name's level);
    None for a missing field."""
    if level is Level.MISSING:
        return None
    if field == "given":
        return GIVEN_NAMES[level]
    if field == "family":
        return FAMILY_NAME[level]
    if field == "gender":
        return SEX[level]
    return (BIRTH_DATE if field == "birthdate" else BIRTH_PLACE)[family][level]


def field_weight(field: str, level: Level, family: Level) -> float:
    """The weight a field's level adds, in bits: log2(m/u), 0 for a missing field.

    No level weighs more than its field's EQUAL: among siblings the model as estimated would rate day
    and month exchanged above an equal date (twins share the date, siblings hardly ever have mirrored
    ones), and a swapped date must not outrank an equal one when the clearing ranks candidates.
    """
    probabilities = field_probabilities(field, level, family)
    if probabilities is None:
        return 0.0
    equal = field_probabilities(field, Level.EQUAL, family)
    return min(probabilities.weight, equal.weight) if equal is not None else probabilities.weight


def birth_date_u_among_strangers(first_year: int = 1930, years: int = BIRTH_YEARS) -> dict[Level, float]:
    """The u-probabilities of the birth-date levels for birth dates spread evenly over `years`
    years: for each date, the share of the span's dates at each level from it, averaged."""
    last_year = first_year + years - 1
    dates = sum(366 if calendar.isleap(year) else 365 for year in range(first_year, last_year + 1))
    counts = dict.fromkeys((Level.DAY_MONTH_SWAPPED, Level.ONE_DIGIT, Level.YEAR_ONE_DIGIT), 0)
    for year in range(first_year, last_year + 1):
        other_years = [int(text) for text in _one_edit_away(f"{year:04d}") if first_year <= int(text) <= last_year]
        for month in range(1, 13):
            for day in range(1, calendar.monthrange(year, month)[1] + 1):
                swapped, one_digit = _same_year_neighbours(day, month, calendar.isleap(year))
                counts[Level.DAY_MONTH_SWAPPED] += swapped
                counts[Level.ONE_DIGIT] += one_digit
                counts[Level.YEAR_ONE_DIGIT] += sum(1 for other in other_years
                                                    if (month, day) != (2, 29) or calendar.isleap(other))
    return {Level.EQUAL: 1 / dates, **{level: count / dates ** 2 for level, count in counts.items()}}


def _one_edit_away(digits: str) -> set[str]:
    """The digit strings one substitution or one exchange of neighbours away."""
    found = {digits[:i] + d + digits[i + 1:] for i in range(len(digits)) for d in "0123456789"}
    found |= {digits[:i] + digits[i + 1] + digits[i] + digits[i + 2:] for i in range(len(digits) - 1)}
    return found - {digits}


@functools.cache
def _same_year_neighbours(day: int, month: int, leap: bool) -> tuple[int, int]:
    """How many dates of the same year are day/month-swapped and how many one digit away."""
    year = 2000 if leap else 2001
    found = {Level.DAY_MONTH_SWAPPED: 0, Level.ONE_DIGIT: 0}
    for text in _one_edit_away(f"{day:02d}{month:02d}") | {f"{month:02d}{day:02d}"}:
        try:
            other = date(year, int(text[2:]), int(text[:2]))
        except ValueError:
            continue
        level = birth_date_level(date(year, month, day), other)
        if level in found:
            found[level] += 1
    return found[Level.DAY_MONTH_SWAPPED], found[Level.ONE_DIGIT]


# --- the comparison -------------------------------------------------------------------------------

class Decision(StrEnum):
    MATCH = "match"
    NO_MATCH = "no-match"


@dataclass(frozen=True)
class Comparison:
    """The clearing's verdict on two records: codes and numbers only, never a value of the IDAT.

    `levels` holds each field's agreement level (by IDAT element code), `weight` the summed
    log-likelihood ratio in bits. `undecided`: no match, yet the weight is not low enough to call
    the records clearly two people (between the thresholds, or a required field missing)."""

    decision: Decision
    weight: float
    levels: tuple[tuple[str, Level], ...]

    @property
    def is_match(self) -> bool:
        return self.decision is Decision.MATCH

    @property
    def score(self) -> float:
        """The weight: the higher, the likelier the same person (linkage ranks candidates by it)."""
        return self.weight

    @property
    def undecided(self) -> bool:
        return self.decision is Decision.NO_MATCH and self.weight >= NON_MATCH_THRESHOLD

    def level(self, field: str) -> Level:
        return dict(self.levels)[field]


def explain(comparison: Comparison) -> dict[str, str]:
    """For the audit of a clearing: which fields agreed, and how (field code -> level code)."""
    return {field: level.value for field, level in comparison.levels}


def compare(a: Idat, b: Idat) -> Comparison:
    """Decide whether two records' IDAT belong to the same person (a Fellegi–Sunter model).

    Each field gets its agreement level (`name_level` for the given names, `family_level`,
    `birth_date_level`, `sex_level`, `place_level`); the weights of the levels (`field_weight`) are
    summed, a missing field adding 0. The sum is capped at what the pair would weigh with its family
    names equal: birth date and place weigh less between people with one family name (who may be
    siblings), and a family name one typo apart must not gain from having them weighed as
    strangers'. MATCH at or above MATCH_THRESHOLD if the required fields (given names, family name,
    birth date, sex) are present on both sides; NO_MATCH otherwise. What that means for the hard
    cases:

    - Twins (family name, birth date and place shared, given names differ) stay apart: birth date
      and place agreement weigh little between people with one family name (they may be siblings),
      and different given names weigh heavily against.
    - Namesakes (names shared, another birth date) stay apart: a different birth date weighs
      against as much as equal names weigh for.
    - A birth date with one digit mistyped matches where the names agree, the sex is the same and
      the birth place, where both records have one, agrees. Day and month exchanged weigh like an
      equal date (only one date is the mirror of another).
    - A changed family name matches if a birth name links the names or the birth place agrees.
    - Twins whose given names are one typing error apart ("Lena"/"Lea") cannot be told from a typo by
      any comparison of IDAT; they are linked.
    """
    levels = (("given", name_level(a.given_names, b.given_names, initials=True)),
              ("family", family_level(a, b)),
              ("birthdate", birth_date_level(a.birth_date, b.birth_date)),
              ("gender", sex_level(a.sex, b.sex)),
              ("birthplace", place_level(a.birth_place, b.birth_place)))
    weight = min(_weight(dict(levels)), _weight({**dict(levels), "family": Level.EQUAL}))
    complete = all(getattr(x, ELEMENT_ATTRIBUTES[code]) not in (None, ())
                   for x in (a, b) for code in REQUIRED_FIELDS)
    match = complete and weight >= MATCH_THRESHOLD
    return Comparison(Decision.MATCH if match else Decision.NO_MATCH, round(weight, 6), levels)


def _weight(levels: dict[str, Level]) -> float:
    return sum(field_weight(field, level, levels["family"]) for field, level in levels.items())


def compare_pairs(idats: Sequence[Idat]) -> dict[tuple[int, int], Comparison]:
    """Every pair of a clearing with more than two records, keyed by their indices (i < j)."""
    return {(i, j): compare(idats[i], idats[j]) for i, j in combinations(range(len(idats)), 2)}


__all__ = [
    "IDAT_ELEMENTS_SYSTEM", "IDAT_ELEMENT_CODES", "ELEMENT_ATTRIBUTES", "ADMINISTRATIVE_GENDERS", "IdatError",
    "Idat", "idat_from_patient", "normalise_name", "name_forms", "tokens_agree", "Level", "name_level",
    "family_level", "place_level", "birth_date_level", "sex_level", "Probabilities", "GIVEN_NAMES",
    "FAMILY_NAME", "SEX", "BIRTH_DATE", "BIRTH_PLACE", "SIBLING_SHARE", "field_probabilities", "field_weight",
    "birth_date_u_among_strangers", "MATCH_THRESHOLD", "NON_MATCH_THRESHOLD", "REQUIRED_FIELDS",
    "Decision", "Comparison", "explain", "compare", "compare_pairs", "TYPO_MAX_EDITS", "TYPO_MIN_LENGTH",
    "LONG_NAME_MIN_LENGTH", "LONG_NAME_MAX_EDITS", "LONG_NAME_MIN_SIMILARITY",
]
