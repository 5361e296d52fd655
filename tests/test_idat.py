"""The clearing's IDAT: extraction from the IDAT profile, normalisation, agreement levels, and the
Fellegi–Sunter comparison, on hand-worked cases and on generated people."""

from __future__ import annotations

import copy
import traceback
from dataclasses import replace
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing_corpus import BIRTH_DATE_TYPO, Corpus, clearing_corpus
from linkage.people import DAY_MONTH_SWAPPED, Record, population
from ttp_gateway.core.errors import Unprocessable
from ttp_gateway.plugins.dispatcher.idat import (
    BIRTH_DATE, BIRTH_DATE_U_STRANGERS, BIRTH_PLACE, BIRTH_YEARS, FAMILY_NAME, GIVEN_NAMES, MATCH_THRESHOLD,
    NON_MATCH_THRESHOLD, REQUIRED_FIELDS, SEX, SIBLING_SHARE, Comparison, Decision, Idat, IdatError, Level,
    Probabilities, birth_date_level, birth_date_u_among_strangers, compare, compare_pairs, explain,
    family_level, field_probabilities, field_weight, idat_from_patient, name_level, normalise_name,
    place_level, sex_level, tokens_agree,
)
from ttp_gateway.plugins.dispatcher.studies import REQUIRED_ELEMENTS

QUALIFIER_URL = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier"
# The example of the IDAT profile (Idat-example-1 / the providePatientData request example).
GUIDE_EXAMPLE = {
    "resourceType": "Patient",
    "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                   "valueAddress": {"city": "Musterhausen"}}],
    "name": [{"family": "Mustermann", "given": ["Martin"], "prefix": ["Dr. med."],
              "_prefix": [{"extension": [{"url": QUALIFIER_URL, "valueCode": "AC"}]}]}],
    "gender": "male",
    "birthDate": "1965-12-03",
}
GUIDE_REQUEST = {"given", "family", "birthdate", "gender", "birthplace", "degree"}
CLEARING_REQUEST = {"given", "family", "birthdate", "gender", "birthplace", "maidenname"}
VALUES = ("Mustermann", "Martin", "Musterhausen", "Dr. med.", "1965", "male")


def _patient(**changes) -> dict:
    patient = copy.deepcopy(GUIDE_EXAMPLE)
    for key, value in changes.items():
        if value is None:
            patient.pop(key, None)
        else:
            patient[key] = value
    return patient


def _raises_idat_error(patient: dict, requested=GUIDE_REQUEST) -> IdatError:
    with pytest.raises(IdatError) as caught:
        idat_from_patient(patient, requested)
    error = caught.value
    # No value of the Patient in the message, the repr, or anything a logged traceback would show.
    shown = "".join(traceback.format_exception(error)) + repr(error) + str(error.diagnostics)
    for value in (*VALUES, "not-a-date", "xyz", "secret"):
        assert value not in shown.replace("IdatError", ""), value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return error


# --- extraction -----------------------------------------------------------------------------------

def test_guide_example_extracts() -> None:
    idat = idat_from_patient(GUIDE_EXAMPLE, GUIDE_REQUEST)
    assert idat == Idat(given_names=("Martin",), family_name="Mustermann", birth_date=date(1965, 12, 3),
                        sex="male", birth_place="Musterhausen", degrees=("Dr. med.",))
    assert sorted(idat.present_elements()) == sorted(GUIDE_REQUEST)


def test_only_requested_elements_are_taken() -> None:
    idat = idat_from_patient(GUIDE_EXAMPLE, {"family", "birthdate"})
    assert idat == Idat(family_name="Mustermann", birth_date=date(1965, 12, 3))


def test_idat_repr_shows_no_values() -> None:
    idat = idat_from_patient(GUIDE_EXAMPLE, GUIDE_REQUEST)
    text = repr(idat) + str(idat) + f"{idat}"
    assert "birthdate" in text
    assert not any(value in text for value in VALUES)


@pytest.mark.parametrize(("patient", "code"), [
    (_patient(birthDate=None), "birthdate"),
    (_patient(gender=None), "gender"),
    (_patient(extension=None), "birthplace"),
    (_patient(name=[{"family": "Mustermann", "prefix": ["Dr. med."]}]), "given"),
    (_patient(name=[{"given": ["Martin"], "family": "   "}]), "family"),  # blank is empty
    (_patient(name=[{"family": "Mustermann", "given": ["Martin"], "prefix": ["Dr. med."]}]), "degree"),
    (_patient(name=[{"use": "maiden", "family": "Mustermann", "given": ["Martin"]}]), "family"),
])
def test_missing_requested_element(patient: dict, code: str) -> None:
    error = _raises_idat_error(patient)
    assert code in error.missing and code in str(error)
    assert error.invalid == []


def test_missing_maiden_name_unless_optional() -> None:
    error = _raises_idat_error(GUIDE_EXAMPLE, GUIDE_REQUEST | {"maidenname"})
    assert error.missing == ["maidenname"]
    idat = idat_from_patient(GUIDE_EXAMPLE, GUIDE_REQUEST | {"maidenname"}, optional={"maidenname"})
    assert idat.birth_name is None


@pytest.mark.parametrize(("changes", "code"), [
    ({"gender": "xyz"}, "gender"),
    ({"birthDate": "not-a-date"}, "birthdate"),
    ({"birthDate": "1965-13-03"}, "birthdate"),
    ({"birthDate": "1965"}, "birthdate"),  # valid FHIR, but too vague to compare
    ({"name": [{"family": "Mustermann", "given": [""]}]}, "given"),
    ({"name": {"family": "Mustermann"}}, "Patient.name"),
    ({"name": [{"use": "xyz", "family": "Mustermann", "given": ["Martin"]}]}, "Patient.name"),
    ({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                     "valueAddress": {"city": 5}}]}, "birthplace"),
    ({"_birthDate": {"extension": [{"url": 5}]}}, "birthdate"),
    ({"secret": "secret"}, "Patient"),  # an unknown key: not even its name is echoed
    ({"resourceType": "Observation"}, "Patient"),
])
def test_invalid_patient(changes: dict, code: str) -> None:
    error = _raises_idat_error(_patient(**changes))
    assert code in error.invalid
    assert code in str(error)


def test_idat_error_is_a_422() -> None:
    error = _raises_idat_error(_patient(gender="xyz"))
    assert isinstance(error, Unprocessable) and error.status == 422


def test_not_a_patient_at_all() -> None:
    assert _raises_idat_error(["not", "a", "dict"]).invalid == ["Patient"]  # type: ignore[arg-type]


def test_unknown_element_code_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="shoesize"):
        idat_from_patient(GUIDE_EXAMPLE, {"given", "shoesize"})


def test_all_elements_of_the_profile() -> None:
    patient = {
        "resourceType": "Patient",
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
             "valueAddress": {"city": "Anklam"}},
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-nationality",
             "extension": [{"url": "code", "valueCodeableConcept": {
                 "coding": [{"system": "urn:iso:std:iso:3166", "code": "DE"}]}}]},
        ],
        "name": [
            {"use": "maiden", "family": "Schulz"},
            {"use": "official", "family": "Weiß", "given": ["Anna", "Lena"], "prefix": ["Prof.", "Dr. med."],
             "_prefix": [None, {"extension": [{"url": QUALIFIER_URL, "valueCode": "AC"}]}],
             "suffix": ["MBA"]},
        ],
        "gender": "female",
        "birthDate": "1980-04-12",
        "address": [{"use": "old", "city": "Berlin"},
                    {"line": ["Domstraße 11"], "city": "Greifswald", "postalCode": "17489"}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                      "code": "M"}]},
        "communication": [{"language": {"text": "Plattdeutsch"}, "preferred": True}],
    }
    every = {"given", "family", "prefix", "suffix", "birthdate", "gender", "address-line", "address-city",
             "address-postalcode", "birthplace", "maidenname", "degree", "language", "nationality",
             "maritalstatus"}
    assert idat_from_patient(patient, every) == Idat(
        given_names=("Anna", "Lena"), family_name="Weiß", birth_name="Schulz", birth_date=date(1980, 4, 12),
        sex="female", birth_place="Anklam", prefixes=("Prof.", "Dr. med."), suffixes=("MBA",),
        degrees=("Dr. med.",), address_lines=("Domstraße 11",), city="Greifswald", postal_code="17489",
        language="Plattdeutsch", nationality="DE", marital_status="M")


# --- normalisation and similarity -----------------------------------------------------------------

@pytest.mark.parametrize("spellings", [
    ("Müller", "Mueller", "MÜLLER", "müller", "MUELLER", " Müller ", "Mu\u0308ller"),
    ("Groß", "Gross", "GROSS", "GROẞ"),
    ("Hans-Peter", "Hans Peter", "hans  peter", "HANS-PETER", "Hans - Peter"),
    ("Jürgen", "Dr. Jürgen", "Prof. Dr. med. Jürgen", "Dipl.-Ing. Juergen", "Dr.Jürgen", "Dr Jürgen"),
    ("René", "Rene", "RENÉ"),
    ("O'Neill", "ONeill", "O’Neill"),
    ("Łódź", "Lodz"),
    ("Halle (Saale)", "Halle Saale"),
])
def test_normalise_name_makes_spellings_equal(spellings: tuple[str, ...]) -> None:
    assert len({normalise_name(spelling) for spelling in spellings}) == 1


@pytest.mark.parametrize(("text", "normal"), [
    ("Müller", "mueller"), ("Weiß", "weiss"), ("Hans-Peter", "hans peter"), ("Prof. Dr. Anna Lena", "anna lena"),
    ("Müller, Dr.", "mueller"), ("Phil", "phil"), ("Dr. phil. Phil", "phil"), ("Ma", "ma"), ("", ""), (None, ""),
    ("Dr. h.c. mult. Anna", "anna"), ("H. Peter", "h peter"),
])
def test_normalise_name(text: str | None, normal: str) -> None:
    assert normalise_name(text) == normal


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdeüß ", max_size=12), st.text(alphabet="abcdeüß ", max_size=12))
def test_name_comparison_properties(a: str, b: str) -> None:
    assert normalise_name(normalise_name(a)) == normalise_name(a)
    x, y = normalise_name(a).replace(" ", ""), normalise_name(b).replace(" ", "")
    assert tokens_agree(x, y) == tokens_agree(y, x)
    assert name_level([a], [b]) is name_level([b], [a])
    assert name_level([a], [a]) in (Level.EQUAL, Level.MISSING)


@pytest.mark.parametrize(("a", "b", "agree"), [
    ("anna", "anan", True),              # neighbouring letters exchanged: one typing error
    ("mueller", "muller", True),         # one letter left out
    ("felix", "felox", True),
    ("maximilian", "maximlain", True),   # two errors, long name, still alike
    ("christian", "christine", True),    # the price of that tolerance
    ("bo", "jo", False),                 # too short: one edit makes another name
    ("anna", "sophie", False),
    ("kitten", "sitting", False),
])
def test_tokens_agree(a: str, b: str, agree: bool) -> None:
    assert tokens_agree(a, b) is agree


def test_given_name_levels() -> None:
    def level(a: str, b: str) -> Level:
        return name_level(a.split(), b.split(), initials=True)

    assert level("Anna Lena", "Anna-Lena") is Level.EQUAL
    assert level("Anna Lena", "Annalena") is Level.EQUAL
    assert level("Lena Anna", "Anna Lena") is Level.EQUAL
    assert level("Anna Lena", "Anna") is Level.PARTIAL
    assert level("Hans P.", "Hans Peter") is Level.PARTIAL
    assert level("Anna Lena", "Anan") is Level.TYPO
    assert level("Felix", "Feöix") is Level.TYPO  # one key, two letters once spelled out
    assert level("Anna", "Sophie") is Level.DIFFERENT
    assert level("Anna Maria", "Lena Maria") is Level.DIFFERENT
    assert level("Bo", "Jo") is Level.DIFFERENT
    assert level("", "Anna") is Level.MISSING


def test_family_name_levels_and_umlaut_spellings() -> None:
    def level(a: str, b: str, birth_a: str | None = None, birth_b: str | None = None) -> Level:
        return family_level(Idat(family_name=a, birth_name=birth_a), Idat(family_name=b, birth_name=birth_b))

    assert level("Müller", "Mueller") is Level.EQUAL  # the umlaut spelled out
    assert level("Müller", "Muller") is Level.EQUAL   # the umlaut's dots dropped
    assert level("Mueller", "Muller") is Level.TYPO   # neither says which letter was meant
    assert level("Müller", "MÜLLER") is Level.EQUAL
    assert level("Müller", "Müller-Schmidt") is Level.PARTIAL
    assert level("Müller", "Müler") is Level.TYPO
    assert level("Schmidt", "Müller", birth_b="Schmidt") is Level.BIRTH_NAME
    assert level("Schmidt", "Meier", "Weiß", "Weiss") is Level.BIRTH_NAME
    assert level("Schmidt", "Müller") is Level.DIFFERENT
    assert level("Schmidt", "Müller", birth_a="Meier") is Level.DIFFERENT


def test_place_levels() -> None:
    assert place_level("Frankfurt am Main", "FRANKFURT AM MAIN") is Level.EQUAL
    assert place_level("München", "Muenchen") is Level.EQUAL
    assert place_level("München", "Munchen") is Level.EQUAL
    assert place_level("Frankfurt am Main", "Frankfurt") is Level.SIMILAR
    assert place_level("Greifswald", "Greifswlad") is Level.SIMILAR
    assert place_level("Frankfurt (Oder)", "Frankfurt am Main") is Level.DIFFERENT
    assert place_level(None, "Kiel") is Level.MISSING


@pytest.mark.parametrize(("other", "level"), [
    (date(1980, 4, 12), Level.EQUAL),
    (date(1980, 12, 4), Level.DAY_MONTH_SWAPPED),
    (date(1980, 4, 13), Level.ONE_DIGIT),       # a digit of the day
    (date(1980, 4, 21), Level.ONE_DIGIT),       # the day's digits exchanged
    (date(1980, 5, 12), Level.ONE_DIGIT),       # a digit of the month
    (date(1981, 4, 12), Level.YEAR_ONE_DIGIT),
    (date(1908, 4, 12), Level.YEAR_ONE_DIGIT),  # the year's digits exchanged
    (date(1981, 4, 13), Level.DIFFERENT),       # two errors
    (date(1981, 12, 4), Level.DIFFERENT),       # a swap in another year
    (date(1980, 7, 30), Level.DIFFERENT),
    (None, Level.MISSING),
])
def test_birth_date_levels(other: date | None, level: Level) -> None:
    assert birth_date_level(date(1980, 4, 12), other) is level
    assert birth_date_level(other, date(1980, 4, 12)) is level


def test_sex_levels() -> None:
    assert sex_level("female", "female") is Level.EQUAL
    assert sex_level("female", "male") is Level.DIFFERENT
    assert sex_level("female", "other") is Level.DIFFERENT
    assert sex_level("female", "unknown") is Level.MISSING  # says nothing about the person
    assert sex_level(None, "male") is Level.MISSING


# --- the model ------------------------------------------------------------------------------------

def _tables() -> dict[str, dict[Level, Probabilities]]:
    tables = {"given": GIVEN_NAMES, "family": FAMILY_NAME, "gender": SEX}
    for family in SIBLING_SHARE:
        tables[f"birthdate | family {family}"] = BIRTH_DATE[family]
        tables[f"birthplace | family {family}"] = BIRTH_PLACE[family]
    return tables


@pytest.mark.parametrize("name", list(_tables()))
def test_m_and_u_are_distributions(name: str) -> None:
    table = _tables()[name]
    assert sum(p.m for p in table.values()) == pytest.approx(1.0)
    assert sum(p.u for p in table.values()) == pytest.approx(1.0)
    assert all(0 < p.m < 1 and 0 < p.u < 1 for p in table.values())
    # Agreement speaks for the same person, disagreement against.
    assert table[Level.EQUAL].weight > 0 > table[Level.DIFFERENT].weight


def test_birth_date_u_follows_from_an_even_spread_of_birth_dates() -> None:
    derived = birth_date_u_among_strangers()
    assert derived.keys() == BIRTH_DATE_U_STRANGERS.keys()
    for level, u in BIRTH_DATE_U_STRANGERS.items():
        assert u == pytest.approx(derived[level], rel=1e-3), level
    assert derived[Level.EQUAL] == pytest.approx(1 / (365.25 * BIRTH_YEARS), rel=1e-3)


def test_no_level_weighs_more_than_equal() -> None:
    for family in SIBLING_SHARE:
        for field in ("given", "family", "birthdate", "gender", "birthplace"):
            equal = field_weight(field, Level.EQUAL, family)
            for level in Level:
                if field_probabilities_exist(field, level, family):
                    assert field_weight(field, level, family) <= equal, (field, level, family)
    assert field_weight("birthdate", Level.MISSING, Level.EQUAL) == 0.0


def field_probabilities_exist(field: str, level: Level, family: Level) -> bool:
    try:
        return field_probabilities(field, level, family) is not None
    except KeyError:
        return False


def test_twins_cannot_reach_a_match_without_their_given_names() -> None:
    """Between people with one family name, birth date, birth place and sex agreeing cannot reach the
    match threshold on their own: the given names must agree too. With the given names clearly
    different, the weight stays below the non-match threshold whatever else agrees."""
    for family in (Level.EQUAL, Level.PARTIAL, Level.BIRTH_NAME):
        rest = (field_weight("family", family, family) + field_weight("birthdate", Level.EQUAL, family)
                + field_weight("birthplace", Level.EQUAL, family) + field_weight("gender", Level.EQUAL, family))
        assert rest < MATCH_THRESHOLD, family
    for family in (Level.EQUAL, Level.PARTIAL, Level.BIRTH_NAME, Level.TYPO, Level.DIFFERENT):
        rest = (field_weight("family", family, family) + field_weight("birthdate", Level.EQUAL, family)
                + field_weight("birthplace", Level.EQUAL, family) + field_weight("gender", Level.EQUAL, family))
        assert rest + field_weight("given", Level.DIFFERENT, family) < NON_MATCH_THRESHOLD, family
    # The same through `compare`, whose cap keeps a family name's typo from weighing more.
    nameless = replace(ANNA, given_names=())
    for relative in (nameless, replace(nameless, family_name="Müller-Schmidt"), replace(nameless, family_name="Müler"),
                     replace(nameless, family_name="Schmidt", birth_name="Müller")):
        assert compare(nameless, relative).weight < MATCH_THRESHOLD, relative.family_name


def test_required_fields_are_the_studies_required_elements() -> None:
    assert REQUIRED_FIELDS == REQUIRED_ELEMENTS


# --- hand-worked cases ----------------------------------------------------------------------------

ANNA = Idat(given_names=("Anna", "Lena"), family_name="Müller", birth_date=date(1980, 4, 12), sex="female",
            birth_place="Greifswald")
UNPLACED = replace(ANNA, birth_place=None)


def _compare(a: Idat, b: Idat, **levels: str) -> Comparison:
    """The comparison, checked for symmetry and for the expected levels (field code -> level)."""
    result = compare(a, b)
    assert compare(b, a) == result
    shown = explain(result)
    for field, level in levels.items():
        assert shown[field] == level, (field, shown)
    return result


@pytest.mark.parametrize(("a", "b", "levels"), [
    (ANNA, ANNA, {"given": "equal", "family": "equal", "birthdate": "equal"}),
    (ANNA, replace(ANNA, given_names=("Anan", "Lena")), {"given": "typo"}),
    (ANNA, replace(ANNA, family_name="Müler"), {"family": "typo"}),
    (ANNA, replace(ANNA, family_name="Mueller"), {"family": "equal"}),
    (ANNA, replace(ANNA, family_name="Muller"), {"family": "equal"}),
    (replace(ANNA, family_name="Mueller"), replace(ANNA, family_name="Muller"), {"family": "typo"}),
    (ANNA, replace(ANNA, family_name="MÜLLER", given_names=("ANNA", "LENA")), {"given": "equal"}),
    (ANNA, replace(ANNA, given_names=("Anna-Lena",)), {"given": "equal"}),         # double name
    (ANNA, replace(ANNA, family_name="Müller-Schmidt"), {"family": "partial"}),    # double name after marriage
    (ANNA, replace(ANNA, given_names=("Anna",)), {"given": "partial"}),            # a given name left out
    (ANNA, replace(ANNA, given_names=("Dr. Anna", "Lena")), {"given": "equal"}),   # title typed into the name
    (ANNA, replace(ANNA, birth_date=date(1980, 4, 13)), {"birthdate": "one-digit"}),
    (ANNA, replace(ANNA, birth_date=date(1980, 5, 12)), {"birthdate": "one-digit"}),
    (ANNA, replace(ANNA, birth_date=date(1980, 4, 21)), {"birthdate": "one-digit"}),
    (ANNA, replace(ANNA, birth_date=date(1981, 4, 12)), {"birthdate": "year-one-digit"}),
    (ANNA, replace(ANNA, birth_date=date(1980, 12, 4)), {"birthdate": "day-month-swapped"}),
    # The same without a birth place: the names and the sex carry it.
    (UNPLACED, replace(UNPLACED, birth_date=date(1980, 4, 13)), {"birthplace": "missing"}),
    (UNPLACED, replace(UNPLACED, birth_date=date(1981, 4, 12)), {"birthplace": "missing"}),
    (UNPLACED, replace(UNPLACED, birth_date=date(1980, 12, 4)), {"birthplace": "missing"}),
    (UNPLACED, replace(UNPLACED, birth_date=date(1980, 12, 4), given_names=("Anna",), family_name="Mueller"), {}),
    (ANNA, replace(ANNA, birth_date=date(1980, 12, 4), family_name="Müler"), {}),
    (ANNA, replace(ANNA, birth_date=date(1980, 4, 13), given_names=("Anna",)), {}),
    (UNPLACED, replace(UNPLACED, given_names=("Anan", "Lena")), {}),
    # Optional fields missing on one side count for nothing.
    (ANNA, replace(ANNA, birth_place=None), {"birthplace": "missing"}),
    (ANNA, replace(ANNA, sex="unknown"), {"gender": "missing"}),
    # The birth place is the weakest field: with everything else equal, a differing one is an error.
    (ANNA, replace(ANNA, birth_place="Köln"), {"birthplace": "different"}),
])
def test_same_person_matches(a: Idat, b: Idat, levels: dict[str, str]) -> None:
    result = _compare(a, b, **levels)
    assert result.is_match and result.decision is Decision.MATCH
    assert result.weight >= MATCH_THRESHOLD


def test_changed_family_name() -> None:
    married = replace(ANNA, family_name="Schmidt")
    # Corroborated by the birth place:
    assert _compare(ANNA, married, family="different", birthplace="equal").is_match
    # ... or by a birth name, where no birth place is known:
    assert _compare(UNPLACED, replace(married, birth_place=None, birth_name="Müller"), family="birth-name").is_match
    assert _compare(replace(UNPLACED, birth_name="Weiß"), replace(married, birth_place=None, birth_name="Weiss"),
                    family="birth-name").is_match
    # Uncorroborated: the same given names, birth date and sex alone are too common; the model
    # cannot tell, and the clearing keeps the records apart.
    uncorroborated = _compare(UNPLACED, replace(married, birth_place=None), family="different")
    assert not uncorroborated.is_match and uncorroborated.undecided
    # A changed family name is tolerated only with the given names agreeing.
    assert not _compare(ANNA, replace(married, given_names=("Sophie",))).is_match


def test_twins_do_not_match() -> None:
    twin = replace(ANNA, given_names=("Sophie",))
    result = _compare(ANNA, twin, given="different", family="equal", birthdate="equal", birthplace="equal")
    assert not result.is_match and not result.undecided  # clearly two people
    assert not _compare(ANNA, replace(twin, sex="male", given_names=("Jonas",))).is_match
    assert not _compare(ANNA, replace(twin, given_names=("Marie", "Lena"))).is_match
    assert not _compare(ANNA, replace(twin, family_name="Müler")).is_match  # and a typo in one record
    # Twins of different sex named alike ("Paul"/"Paula"): the sex keeps them apart.
    paul = Idat(given_names=("Paul",), family_name="Weber", birth_date=date(2001, 3, 4), sex="male",
                birth_place="Kiel")
    assert not _compare(paul, replace(paul, given_names=("Paula",), sex="female"), given="typo",
                        gender="different").is_match


def test_twins_named_one_typo_apart_are_linked() -> None:
    """Twins named "Lena" and "Lea" cannot be told from a typo by any comparison of IDAT: with all
    else equal, the model links them, as it must link "Lena" mistyped as "Lea"."""
    lena = replace(ANNA, given_names=("Lena",))
    assert _compare(lena, replace(lena, given_names=("Lea",)), given="typo").is_match


def test_namesakes_do_not_match() -> None:
    namesake = replace(ANNA, birth_date=date(1962, 9, 30), birth_place="Kiel")
    result = _compare(ANNA, namesake, given="equal", family="equal", birthdate="different")
    assert not result.is_match and not result.undecided
    for other in (replace(namesake, birth_place="Greifswald"), replace(namesake, birth_place=None),
                  replace(ANNA, birth_date=date(1980, 7, 30))):  # another date in the same year
        result = _compare(ANNA, other, birthdate="different")
        assert not result.is_match and not result.undecided
    # A namesake whose date is one digit away: born elsewhere, the model cannot tell and keeps apart.
    near = _compare(ANNA, replace(ANNA, birth_date=date(1980, 4, 13), birth_place="Kiel"), birthdate="one-digit")
    assert not near.is_match and near.undecided


def test_different_sex_does_not_match() -> None:
    for other in (replace(ANNA, sex="male"), replace(ANNA, sex="other"), replace(UNPLACED, sex="male")):
        result = _compare(ANNA if other.birth_place else UNPLACED, other, gender="different")
        assert not result.is_match and result.undecided


@pytest.mark.parametrize("element", ["given_names", "family_name", "birth_date", "sex"])
def test_required_elements(element: str) -> None:
    lacking = replace(ANNA, **{element: () if element == "given_names" else None})
    assert not _compare(ANNA, lacking).is_match
    assert not _compare(lacking, lacking).is_match


def test_comparison_holds_no_values() -> None:
    result = compare(ANNA, replace(ANNA, given_names=("Anan", "Lena")))
    assert result.is_match
    text = repr(result) + str(explain(result))
    for value in ("Anna", "Anan", "Lena", "Müller", "Greifswald", "1980"):
        assert value not in text, value
    assert set(explain(result)) == {"given", "family", "birthdate", "gender", "birthplace"}
    assert set(explain(result).values()) <= {level.value for level in Level}


def test_explain_for_the_audit() -> None:
    swapped = compare(ANNA, replace(ANNA, birth_date=date(1980, 12, 4), birth_place=None))
    assert explain(swapped) == {"given": "equal", "family": "equal", "birthdate": "day-month-swapped",
                                "gender": "equal", "birthplace": "missing"}


def test_compare_pairs() -> None:
    pairs = compare_pairs([ANNA, replace(ANNA, family_name="Mueller"), replace(ANNA, given_names=("Sophie",))])
    assert {key: value.decision for key, value in pairs.items()} == {
        (0, 1): Decision.MATCH, (0, 2): Decision.NO_MATCH, (1, 2): Decision.NO_MATCH}


def test_scores_order_sensibly() -> None:
    exact = compare(ANNA, ANNA).score
    typo = compare(ANNA, replace(ANNA, family_name="Müler")).score
    swapped = compare(ANNA, replace(ANNA, birth_date=date(1980, 12, 4))).score
    twin = compare(ANNA, replace(ANNA, given_names=("Sophie",))).score
    stranger = compare(ANNA, Idat(given_names=("Jonas",), family_name="Schmidt", birth_date=date(1955, 1, 2),
                                  sex="male", birth_place="Köln")).score
    assert exact >= typo > twin > stranger  # a family name's typo never weighs more than equality
    assert exact >= swapped > twin


# --- over generated people ------------------------------------------------------------------------

def _idat(record: Record) -> Idat:
    """The way the service sees a record: as a FHIR Patient in the IDAT profile."""
    return idat_from_patient(record.as_patient(), CLEARING_REQUEST, optional={"maidenname"})


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return clearing_corpus(4000, seed=21)


def test_precision_and_recall_over_generated_people(corpus: Corpus) -> None:
    """Every pair of records of one person against hard pairs of two (the same family name, the same
    birth date, twins, namesakes), on the IDAT comparison alone."""
    idats = {record.record_id: _idat(record) for record in corpus.records}

    def matches(pairs: list[tuple[Record, Record]]) -> list[bool]:
        return [compare(idats[a.record_id], idats[b.record_id]).is_match for a, b in pairs]

    found = matches(corpus.same)
    false = {kind: sum(matches(pairs)) for kind, pairs in corpus.different.items()}
    recall = sum(found) / len(found)
    precision = sum(found) / (sum(found) + sum(false.values()))
    by_error = {error: [hit for (a, b), hit in zip(corpus.same, found) if error in a.errors ^ b.errors]
                for error in (BIRTH_DATE_TYPO, DAY_MONTH_SWAPPED)}
    print(f"\nsame-person pairs {len(found)}, different-person pairs "
          f"{ {kind: len(pairs) for kind, pairs in corpus.different.items()} }: "
          f"recall {recall:.4f}, precision {precision:.5f}, false links {false}; "
          + ", ".join(f"{error} {sum(hits)}/{len(hits)}" for error, hits in by_error.items()))
    assert len(found) > 2500 and sum(len(pairs) for pairs in corpus.different.values()) > 5000
    assert recall >= 0.99
    assert precision >= 0.999
    assert false["twins"] == 0  # the generator names twins clearly differently
    # The rules before this model decided every mistyped birth date "different person".
    assert sum(by_error[BIRTH_DATE_TYPO]) / len(by_error[BIRTH_DATE_TYPO]) >= 0.9
    assert sum(by_error[DAY_MONTH_SWAPPED]) / len(by_error[DAY_MONTH_SWAPPED]) >= 0.9


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_compare_is_symmetric_and_reflexive(seed: int) -> None:
    records = population(12, seed=seed, twin_share=0.3, namesake_share=0.3)
    idats = [_idat(record) for record in records]
    for idat in idats:
        assert compare(idat, idat).is_match
    for i, a in enumerate(idats):
        for b in idats[i + 1:]:
            assert compare(a, b) == compare(b, a)
