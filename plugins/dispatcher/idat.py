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

The comparison (`compare`) is a small set of explicit rules, listed there; thresholds are the
named constants below.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from itertools import combinations
from typing import Any

from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

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


# --- normalisation and string similarity ----------------------------------------------------------

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


def jaro(a: str, b: str) -> float:
    """Jaro similarity (M. A. Jaro, 1989) in [0, 1]."""
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    window = max(0, max(len(a), len(b)) // 2 - 1)
    matched_b = [False] * len(b)
    a_matches: list[str] = []
    for i, ch in enumerate(a):
        for j in range(max(0, i - window), min(len(b), i + window + 1)):
            if not matched_b[j] and b[j] == ch:
                matched_b[j] = True
                a_matches.append(ch)
                break
    m = len(a_matches)
    if m == 0:
        return 0.0
    b_matches = [b[j] for j in range(len(b)) if matched_b[j]]
    transpositions = sum(x != y for x, y in zip(a_matches, b_matches)) / 2
    return (m / len(a) + m / len(b) + (m - transpositions) / m) / 3


def jaro_winkler(a: str, b: str, *, prefix_scale: float = 0.1, max_prefix: int = 4) -> float:
    """Jaro–Winkler similarity (W. E. Winkler, 1990): Jaro raised for a common prefix (up to 4)."""
    similarity = jaro(a, b)
    prefix = 0
    for x, y in zip(a[:max_prefix], b[:max_prefix]):
        if x != y:
            break
        prefix += 1
    return similarity + prefix * prefix_scale * (1 - similarity)


def edit_distance(a: str, b: str, limit: int | None = None) -> int:
    """Damerau–Levenshtein distance (optimal string alignment): the edits typing errors make.

    With `limit`, any distance above it is reported as limit + 1 (and found out early).
    """
    if a == b:
        return 0
    cap = max(len(a), len(b)) if limit is None else limit
    if abs(len(a) - len(b)) > cap:
        return cap + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > cap and min(previous) > cap:
            return cap + 1  # every later row builds on these two
        previous2, previous = previous, current
    return min(previous[len(b)], cap + 1)


# --- comparison -----------------------------------------------------------------------------------

# A name token (normalised) agrees with another if equal, or at most TYPO_MAX_EDITS typing errors
# apart; long tokens (two records with a typo each) may be LONG_NAME_MAX_EDITS apart if their
# Jaro–Winkler similarity also reaches NAME_SIMILARITY_THRESHOLD.
TYPO_MAX_EDITS = 1
TYPO_MIN_LENGTH = 3  # "Bo"/"Jo": in names this short one edit makes another name
LONG_NAME_MIN_LENGTH = 8
LONG_NAME_MAX_EDITS = 2
NAME_SIMILARITY_THRESHOLD = 0.92

# Weights of the informational score (the decision does not use it).
SCORE_WEIGHTS = {"given": 0.3, "family": 0.3, "birth_date": 0.2, "sex": 0.1, "birth_place": 0.1}


class Decision(StrEnum):
    MATCH = "match"
    NO_MATCH = "no-match"


class Agreement(StrEnum):
    """How two values of one element relate, after normalisation."""

    EQUAL = "equal"          # identical
    PARTIAL = "partial"      # one holds a part of the other (a given name left out, a double name)
    SIMILAR = "similar"      # equal up to typing errors
    DIFFERENT = "different"
    MISSING = "missing"      # absent on at least one side

    @property
    def agrees(self) -> bool:
        return self in (Agreement.EQUAL, Agreement.PARTIAL, Agreement.SIMILAR)


class Rule(StrEnum):
    """What the comparison observed; codes only, so they may be logged and returned."""

    GIVEN_NAMES_MISSING = "given-names-missing"
    FAMILY_NAME_MISSING = "family-name-missing"
    BIRTH_DATE_MISSING = "birth-date-missing"
    SEX_MISSING = "sex-missing"
    SEX_EQUAL = "sex-equal"
    SEX_DIFFERS = "sex-differs"
    BIRTH_DATE_EQUAL = "birth-date-equal"
    BIRTH_DATE_DAY_MONTH_SWAPPED = "birth-date-day-month-swapped"
    BIRTH_DATE_SWAP_ACCEPTED = "birth-date-swap-accepted"
    BIRTH_DATE_SWAP_REJECTED = "birth-date-swap-rejected"
    BIRTH_DATE_DIFFERS = "birth-date-differs"
    GIVEN_NAMES_EQUAL = "given-names-equal"
    GIVEN_NAMES_PARTIAL = "given-names-partial"
    GIVEN_NAMES_SIMILAR = "given-names-similar"
    GIVEN_NAMES_DIFFER = "given-names-differ"
    FAMILY_NAME_EQUAL = "family-name-equal"
    FAMILY_NAME_PARTIAL = "family-name-partial"
    FAMILY_NAME_SIMILAR = "family-name-similar"
    FAMILY_NAME_DIFFERS = "family-name-differs"
    BIRTH_NAME_LINKS_FAMILY_NAMES = "birth-name-links-family-names"
    BIRTH_PLACE_AGREES = "birth-place-agrees"
    BIRTH_PLACE_DIFFERS = "birth-place-differs"
    BIRTH_PLACE_NOT_COMPARED = "birth-place-not-compared"
    FAMILY_NAME_CHANGE_ACCEPTED = "family-name-change-accepted"
    FAMILY_NAME_CHANGE_REJECTED = "family-name-change-rejected"
    TWIN_SUSPECTED = "twin-suspected"
    NAMESAKE_SUSPECTED = "namesake-suspected"


@dataclass(frozen=True)
class Comparison:
    """The clearing's verdict on two records; holds codes and numbers only, no IDAT."""

    decision: Decision
    score: float
    rules: tuple[Rule, ...]

    @property
    def is_match(self) -> bool:
        return self.decision is Decision.MATCH


def _tokens(text: str | None) -> list[str]:
    return normalise_name(text).split()


def _given_tokens(idat: Idat) -> list[str]:
    return [token for given in idat.given_names for token in _tokens(given)]


_SPELLED_UMLAUTS = re.compile(r"(?<=[aou])e")


def _skeleton(token: str) -> str:
    """A normalised token with spelled umlauts reduced to the vowel (mueller -> muller), because
    one mistyped key (Felix -> Feöix) becomes two letters once the umlaut is spelled out."""
    return _SPELLED_UMLAUTS.sub("", token)


def tokens_agree(a: str, b: str) -> bool:
    """Two normalised name tokens are the same name up to typing errors."""
    if a == b:
        return True
    if max(len(a), len(b)) < TYPO_MIN_LENGTH:
        return False
    distance = edit_distance(a, b, LONG_NAME_MAX_EDITS)
    if distance > TYPO_MAX_EDITS:
        distance = min(distance, edit_distance(_skeleton(a), _skeleton(b), LONG_NAME_MAX_EDITS))
    if distance <= TYPO_MAX_EDITS:
        return True
    return (min(len(a), len(b)) >= LONG_NAME_MIN_LENGTH and distance <= LONG_NAME_MAX_EDITS
            and jaro_winkler(a, b) >= NAME_SIMILARITY_THRESHOLD)


def _all_placed(shorter: list[str], longer: list[str], agree) -> bool:
    """Every token of `shorter` agrees with its own token of `longer` (tiny lists: backtracking)."""
    if not shorter:
        return True
    head, rest = shorter[0], shorter[1:]
    return any(agree(head, candidate) and _all_placed(rest, longer[:i] + longer[i + 1:], agree)
               for i, candidate in enumerate(longer))


def name_agreement(a: list[str], b: list[str], *, initials: bool = False) -> Agreement:
    """How two names, as lists of normalised tokens, relate.

    EQUAL: same tokens (in any order) or same letters once spaces are dropped ("Annalena").
    PARTIAL: every token of the shorter name is a token of the longer ("Anna" / "Anna Lena").
    SIMILAR: the same up to typing errors, token by token or as a whole.
    With `initials`, a single letter stands for any token it begins ("Hans P." / "Hans Peter").
    """
    if not a or not b:
        return Agreement.MISSING
    if sorted(a) == sorted(b) or "".join(a) == "".join(b):
        return Agreement.EQUAL
    shorter, longer = sorted((a, b), key=len)

    def exact(x: str, y: str) -> bool:
        return x == y or (initials and len(x) == 1 and y.startswith(x))

    def tolerant(x: str, y: str) -> bool:
        return exact(x, y) or tokens_agree(x, y)

    if _all_placed(shorter, longer, exact):
        return Agreement.PARTIAL
    if _all_placed(shorter, longer, tolerant) or tokens_agree("".join(a), "".join(b)):
        return Agreement.SIMILAR
    return Agreement.DIFFERENT


def place_agreement(a: str | None, b: str | None) -> Agreement:
    """Birth places agree if equal, equal up to typos, or one is the other's leading part
    ("Frankfurt" / "Frankfurt am Main", "Halle" / "Halle (Saale)")."""
    ta, tb = _tokens(a), _tokens(b)
    if not ta or not tb:
        return Agreement.MISSING
    if ta == tb:
        return Agreement.EQUAL
    shorter, longer = sorted((ta, tb), key=len)
    if longer[:len(shorter)] == shorter:
        return Agreement.PARTIAL
    if tokens_agree("".join(ta), "".join(tb)):
        return Agreement.SIMILAR
    return Agreement.DIFFERENT


def _day_month_swapped(a: date, b: date) -> bool:
    return a.year == b.year and a.day == b.month and a.month == b.day and a.day != a.month


def _similarity(a: list[str], b: list[str]) -> float:
    """Jaro–Winkler of token lists: the better of whole-name and best token-by-token pairing
    (averaged over the tokens of the shorter list; symmetric)."""
    if not a or not b:
        return 0.0

    def pairwise(xs: list[str], ys: list[str]) -> float:
        return sum(max(jaro_winkler(x, y) for y in ys) for x in xs) / len(xs)

    whole = max(jaro_winkler(" ".join(a), " ".join(b)), jaro_winkler(" ".join(b), " ".join(a)))
    if len(a) == len(b):
        return max(whole, pairwise(a, b), pairwise(b, a))
    shorter, longer = (a, b) if len(a) < len(b) else (b, a)
    return max(whole, pairwise(shorter, longer))


_GIVEN_RULES = {Agreement.EQUAL: Rule.GIVEN_NAMES_EQUAL, Agreement.PARTIAL: Rule.GIVEN_NAMES_PARTIAL,
                Agreement.SIMILAR: Rule.GIVEN_NAMES_SIMILAR, Agreement.DIFFERENT: Rule.GIVEN_NAMES_DIFFER}
_FAMILY_RULES = {Agreement.EQUAL: Rule.FAMILY_NAME_EQUAL, Agreement.PARTIAL: Rule.FAMILY_NAME_PARTIAL,
                 Agreement.SIMILAR: Rule.FAMILY_NAME_SIMILAR, Agreement.DIFFERENT: Rule.FAMILY_NAME_DIFFERS}


def compare(a: Idat, b: Idat) -> Comparison:
    """Decide whether two records' IDAT belong to the same person.

    Required on both sides: given name(s), family name, birth date and sex; any of them absent
    gives NO_MATCH (the clearing does not merge on less). Then, in this order:

    1. Sex must be equal (the code as sent: "unknown" equals only "unknown").
    2. Given names must agree (`name_agreement`: equal, a name left out, or typing errors).
       Twins differ exactly here, so this rule is what keeps them apart; twins whose names are
       one typo apart ("Lena"/"Lea") cannot be told from a typo by any IDAT comparison.
    3. Birth place, where both records carry one, must agree (`place_agreement`).
    4. Birth date equal, and family names agree (equal, a part of a double name, or typos): MATCH.
    5. Birth date equal, family names differ (marriage, divorce): MATCH if the change is
       corroborated, either by a birth name (one record's birth name agrees with the other's
       family name, or both birth names agree), or by the birth place (present and agreeing on
       both sides). Without either, NO_MATCH: same given names, birth date and sex alone are
       too common.
    6. Birth date with day and month exchanged (03.12. / 12.03., same year): accepted only where
       the names agree strongly: given names equal (or one record lacking a further given name)
       and family names equal or at most typos apart; then MATCH, otherwise NO_MATCH. The
       exchange is a frequent entry error, but together with a changed family name or given
       names that are only similar it would let too many other people through.
    7. Any other birth date: NO_MATCH (namesakes are stopped here).

    The score (weighted Jaro–Winkler and agreement of the elements, in [0, 1]) is informational.
    """
    rules: list[Rule] = []
    given_a, given_b = _given_tokens(a), _given_tokens(b)
    family_a, family_b = _tokens(a.family_name), _tokens(b.family_name)
    birth_a, birth_b = _tokens(a.birth_name), _tokens(b.birth_name)

    # Element by element: what agrees, what does not.
    if not given_a or not given_b:
        rules.append(Rule.GIVEN_NAMES_MISSING)
    if not family_a or not family_b:
        rules.append(Rule.FAMILY_NAME_MISSING)
    if a.birth_date is None or b.birth_date is None:
        rules.append(Rule.BIRTH_DATE_MISSING)
    if not a.sex or not b.sex:
        rules.append(Rule.SEX_MISSING)
    required_missing = bool(rules)

    if a.sex and b.sex:
        rules.append(Rule.SEX_EQUAL if a.sex == b.sex else Rule.SEX_DIFFERS)
    date_equal = swapped = False
    if a.birth_date is not None and b.birth_date is not None:
        date_equal = a.birth_date == b.birth_date
        swapped = not date_equal and _day_month_swapped(a.birth_date, b.birth_date)
        rules.append(Rule.BIRTH_DATE_EQUAL if date_equal else
                     Rule.BIRTH_DATE_DAY_MONTH_SWAPPED if swapped else Rule.BIRTH_DATE_DIFFERS)
    given = name_agreement(given_a, given_b, initials=True)
    family = name_agreement(family_a, family_b)
    if given in _GIVEN_RULES:
        rules.append(_GIVEN_RULES[given])
    if family in _FAMILY_RULES:
        rules.append(_FAMILY_RULES[family])
    place = place_agreement(a.birth_place, b.birth_place)
    rules.append(Rule.BIRTH_PLACE_NOT_COMPARED if place is Agreement.MISSING else
                 Rule.BIRTH_PLACE_AGREES if place.agrees else Rule.BIRTH_PLACE_DIFFERS)
    birth_name_link = family is Agreement.DIFFERENT and any(
        name_agreement(x, y).agrees
        for x, y in ((birth_a, family_b), (family_a, birth_b), (birth_a, birth_b)))
    if birth_name_link:
        rules.append(Rule.BIRTH_NAME_LINKS_FAMILY_NAMES)

    # Hard cases, named for whoever reads the verdict.
    if family.agrees and date_equal and given is Agreement.DIFFERENT and place is not Agreement.DIFFERENT:
        rules.append(Rule.TWIN_SUSPECTED)
    if given.agrees and family.agrees and not date_equal and not swapped and not required_missing:
        rules.append(Rule.NAMESAKE_SUSPECTED)

    # The decision.
    match = False
    if (not required_missing and a.sex == b.sex and given.agrees and place is not Agreement.DIFFERENT):
        if date_equal and family.agrees:
            match = True
        elif date_equal:
            match = birth_name_link or place.agrees
            rules.append(Rule.FAMILY_NAME_CHANGE_ACCEPTED if match else Rule.FAMILY_NAME_CHANGE_REJECTED)
        elif swapped:
            match = (given in (Agreement.EQUAL, Agreement.PARTIAL)
                     and family in (Agreement.EQUAL, Agreement.SIMILAR))
            rules.append(Rule.BIRTH_DATE_SWAP_ACCEPTED if match else Rule.BIRTH_DATE_SWAP_REJECTED)
    score = _score(a, b, given_a, given_b, family_a, family_b, birth_a, birth_b, date_equal, swapped)
    return Comparison(Decision.MATCH if match else Decision.NO_MATCH, score, tuple(rules))


def _score(a: Idat, b: Idat, given_a: list[str], given_b: list[str], family_a: list[str], family_b: list[str],
           birth_a: list[str], birth_b: list[str], date_equal: bool, swapped: bool) -> float:
    parts: dict[str, float] = {"given": _similarity(given_a, given_b)}
    # A family name may live on as the other record's birth name.
    parts["family"] = max(_similarity(x, y) for x, y in
                          ((family_a, family_b), (birth_a, family_b), (family_a, birth_b)))
    parts["birth_date"] = 1.0 if date_equal else 0.5 if swapped else 0.0
    parts["sex"] = 1.0 if a.sex and a.sex == b.sex else 0.0
    place_a, place_b = _tokens(a.birth_place), _tokens(b.birth_place)
    if place_a and place_b:
        parts["birth_place"] = _similarity(place_a, place_b)
    total = sum(SCORE_WEIGHTS[key] for key in parts)
    return round(sum(SCORE_WEIGHTS[key] * value for key, value in parts.items()) / total, 4)


def compare_pairs(idats: Sequence[Idat]) -> dict[tuple[int, int], Comparison]:
    """Every pair of a clearing with more than two records, keyed by their indices (i < j)."""
    return {(i, j): compare(idats[i], idats[j]) for i, j in combinations(range(len(idats)), 2)}


__all__ = [
    "IDAT_ELEMENTS_SYSTEM", "IDAT_ELEMENT_CODES", "ELEMENT_ATTRIBUTES", "IdatError", "Idat",
    "idat_from_patient", "normalise_name", "jaro", "jaro_winkler", "edit_distance", "tokens_agree",
    "name_agreement", "place_agreement", "Decision", "Agreement", "Rule", "Comparison", "compare",
    "compare_pairs", "TYPO_MAX_EDITS", "TYPO_MIN_LENGTH", "LONG_NAME_MIN_LENGTH", "LONG_NAME_MAX_EDITS",
    "NAME_SIMILARITY_THRESHOLD", "SCORE_WEIGHTS",
]
