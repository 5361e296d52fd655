"""Synthetic German patients, their records at several hospital sites, and the sites' Bloom filters.

Test-side code: it plays the sites of a research network. `population()` draws people and lets
each appear at one or more sites, where each record is typed with errors at the rates of
`ErrorRates` (documented there, with their sources). Hard cases are made on purpose: twins (same
family name, birth date and place, other given names) and namesakes (same names, another birth
date). Every record knows its true person and the error kinds it carries (`Record.errors`;
`record_kinds` adds "twin" and "namesake"), so tests and benchmarks count what a linkage found
against the truth, per kind of error.

`BloomFilterEncoder` makes the filters exactly as the NUM sites do, with the Mainzelliste fTTP
client library's published configuration (`ttp_gateway.plugins.dispatcher.encoder`): fields
firstName (the given names, space-separated), lastName, birthDate (YYYYMMDD) and gender (m/f/o/u),
the library's name normalisation, 30 positions per bigram, `length` 800 or 900, i.e. balanced
filters of 1600 or 1800 bits.

Everything is reproducible for a seed (within one Python version: `random.Random` is used for the
people; the Bloom filters use `java.util.Random`, as the sites do, and are stable everywhere).

The name lists are our own compilation of common German names; weights fall with the rank
(Zipf-like), so namesakes occur roughly as often as they do in reality. First names with "ß" are
practically non-existent in German, so "ß" appears in family names (Groß, Weiß, Strauß, ...) and
birth places only.
"""

from __future__ import annotations

import base64
import random
import re
import unicodedata
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from itertools import combinations

import numpy as np

from ttp_gateway.plugins.dispatcher.encoder import (
    PUBLISHED_NORMALISATION, PUBLISHED_VOCABULARY, RecordFilterEncoder, RecordFilterSpec,
)

# --- name and place lists -------------------------------------------------------------------------

MALE_GIVEN_NAMES: tuple[str, ...] = (
    "Peter", "Michael", "Thomas", "Andreas", "Wolfgang", "Klaus", "Jürgen", "Günter", "Stefan",
    "Christian", "Uwe", "Werner", "Horst", "Frank", "Dieter", "Manfred", "Gerhard", "Hans", "Bernd",
    "Torsten", "Matthias", "Helmut", "Walter", "Heinz", "Martin", "Jörg", "Rainer", "Ralf", "Karl",
    "Markus", "Sven", "Dirk", "Joachim", "Alexander", "Jan", "Sebastian", "Daniel", "Tobias",
    "Florian", "Tim", "Lukas", "Jonas", "Leon", "Finn", "Paul", "Felix", "Maximilian", "Max",
    "Elias", "Noah", "Ben", "Luca", "Emil", "Anton", "Theo", "Moritz", "Niklas", "Julian", "Philipp",
    "David", "Simon", "Fabian", "Dominik", "Patrick", "Kevin", "Dennis", "Marcel", "Benjamin",
    "Johannes", "Jakob", "Oliver", "Marco", "Björn", "Sören", "Jörn", "Lars", "Kai", "Heiko",
    "Holger", "Volker", "Reinhard", "Erich", "Kurt", "Herbert", "Otto", "Friedrich", "Wilhelm",
    "Ernst", "Hermann", "Rudolf", "Georg", "Gustav", "Fritz", "Hans-Peter", "Karl-Heinz",
    "Hans-Jürgen", "Klaus-Dieter", "Hans-Joachim", "Bernhard", "Norbert", "Ulrich", "Detlef", "Gerd",
    "Rolf", "Armin", "Lothar", "Siegfried", "Erwin", "Alfred", "Willi", "Udo", "Jens", "Mario",
    "Robert", "Oskar", "Ole", "Hannes", "Till", "Henrik", "Malte", "Lennart", "Jannik", "Nico",
    "Robin", "Pascal", "Christoph", "Carsten", "Steffen", "René", "André", "Günther", "Jürgen-Uwe",
)
FEMALE_GIVEN_NAMES: tuple[str, ...] = (
    "Maria", "Ursula", "Monika", "Petra", "Elisabeth", "Sabine", "Renate", "Helga", "Karin",
    "Brigitte", "Ingrid", "Erika", "Andrea", "Gisela", "Claudia", "Susanne", "Gabriele", "Christa",
    "Christine", "Hildegard", "Anna", "Birgit", "Barbara", "Marion", "Stefanie", "Nicole", "Heike",
    "Ute", "Angelika", "Martina", "Silke", "Sandra", "Julia", "Katharina", "Lisa", "Laura", "Sarah",
    "Lena", "Hannah", "Leonie", "Lea", "Emma", "Mia", "Sophie", "Marie", "Lina", "Ella", "Clara",
    "Emilia", "Johanna", "Charlotte", "Luisa", "Amelie", "Ida", "Frieda", "Greta", "Mathilda",
    "Paula", "Jana", "Anja", "Tanja", "Katrin", "Kerstin", "Manuela", "Nadine", "Melanie", "Daniela",
    "Simone", "Jessica", "Jennifer", "Franziska", "Anne", "Antje", "Bärbel", "Käthe", "Dörte",
    "Mareike", "Vanessa", "Michelle", "Jacqueline", "Céline", "Anna-Lena", "Anna Lena", "Marie-Luise",
    "Eva-Maria", "Anne-Kathrin", "Eva", "Inge", "Elke", "Doris", "Margarete", "Gertrud", "Irmgard",
    "Edith", "Waltraud", "Rosemarie", "Hannelore", "Elfriede", "Liselotte", "Anneliese", "Ilse",
    "Beate", "Cornelia", "Dagmar", "Regina", "Sonja", "Carina", "Svenja", "Merle", "Finja", "Nele",
    "Pia", "Lara", "Maja", "Mila", "Lotta", "Ronja", "Sophia", "Alina", "Marlene", "Helene",
    "Theresa", "Josephine", "Yvonne", "Sylvia", "Ines", "Jördis", "Gesa", "Frauke", "Ulrike",
)
FAMILY_NAMES: tuple[str, ...] = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
    "Hoffmann", "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann",
    "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Schmitt", "Werner",
    "Schmitz", "Krause", "Meier", "Lehmann", "Schmid", "Schulze", "Maier", "Köhler", "Herrmann",
    "König", "Walter", "Mayer", "Huber", "Kaiser", "Fuchs", "Peters", "Lang", "Scholz", "Möller",
    "Weiß", "Jung", "Hahn", "Schubert", "Vogel", "Friedrich", "Keller", "Günther", "Frank", "Berger",
    "Winkler", "Roth", "Beck", "Lorenz", "Baumann", "Franke", "Albrecht", "Schuster", "Simon",
    "Ludwig", "Böhm", "Winter", "Kraus", "Martin", "Schumacher", "Krämer", "Vogt", "Stein", "Jäger",
    "Otto", "Sommer", "Groß", "Seidel", "Heinrich", "Brandt", "Haas", "Schreiber", "Graf", "Schulte",
    "Dietrich", "Ziegler", "Kuhn", "Kühn", "Pohl", "Engel", "Horn", "Busch", "Bergmann", "Thomas",
    "Voigt", "Sauer", "Arnold", "Wolff", "Pfeiffer", "Ernst", "Lindner", "Hübner", "Kramer", "Jansen",
    "Franz", "Peter", "Hammer", "Götz", "Lenz", "Ott", "Hermann", "Paul", "Marx", "Riedel", "Schenk",
    "Schwab", "Bock", "Kirchner", "Kolb", "Wendt", "Thiel", "Brinkmann", "Wirth", "Haase", "Schramm",
    "Wild", "Petersen", "Stahl", "Hansen", "Kuhlmann", "Beyer", "Dittrich", "Schilling", "Hein",
    "Reuter", "Kurz", "Böttcher", "Fiedler", "Ebert", "Fritz", "Keil", "Nagel", "Weise", "Berg",
    "Körner", "Rudolph", "Vetter", "Kruse", "Schütz", "Jahn", "Kraft", "Seifert", "Gerlach", "Heller",
    "Nowak", "Bär", "Herzog", "Weiss", "Maurer", "Walther", "Mann", "Schindler", "Lutz", "Schütte",
    "Hess", "Stark", "Kunz", "Rau", "Hoppe", "Voß", "Heinz", "Jakob", "Frey", "Menzel", "Urban",
    "Wegner", "Schuhmacher", "Decker", "Hesse", "Martens", "Link", "Sander", "Moritz", "Heinemann",
    "Bender", "Kern", "Hummel", "Brand", "Pietsch", "Michel", "Thiele", "Krebs", "Meister", "Fink",
    "Fröhlich", "Krug", "Behrens", "Böhme", "Ulrich", "Förster", "Funk", "Marquardt", "Strauß",
    "Naumann", "Kaufmann", "Bach", "Adam", "Geiger", "Wenzel", "Göbel", "Bayer", "Hauser",
    "Reinhardt", "Schreiner", "Mertens", "Auer", "Schade", "Bürger", "Preuß", "Keßler", "Reichel",
    "Dreher", "Hagen", "Wiese", "Kirsch", "Große", "Haupt", "Engelhardt", "Kopp", "Hildebrandt",
    "Rieger", "Steffen", "Bäcker", "Meißner", "Großmann", "Nußbaum", "Roßmann", "Weißmann", "Kloß",
    "Jürgens", "Lüdtke", "Möbius", "Dörr", "Schön", "Schürmann", "Höfer", "Brückner", "Gärtner",
    "Völker", "Röder", "Schlüter", "Tröger", "Ahrens", "Albers", "Alt", "Bartels", "Bartsch", "Baum",
    "Berndt", "Bischoff", "Blum", "Bode", "Buchholz", "Burger", "Conrad", "Diehl", "Döring", "Eckert",
    "Ehlers", "Eichhorn", "Erdmann", "Falk", "Feldmann", "Fritsch", "Gebhardt", "Geisler", "Gross",
    "Haag", "Hartung", "Hecker", "Heim", "Henke", "Hennig", "Hinz", "Hirsch", "Holz", "Jacobs",
    "Janssen", "John", "Jost", "Kaminski", "Kasper", "Kiefer", "Klose", "Knoll", "Koller", "Konrad",
    "Kowalski", "Kranz", "Kühne", "Küster", "Lambert", "Langer", "Lorenzen", "Mack", "Maaß", "Mai",
    "Matthes", "Mayr", "Moser", "Nickel", "Nolte", "Oswald", "Pape", "Pfeifer", "Popp", "Reimann",
    "Reich", "Reinhold", "Rothe", "Rupp", "Sachs", "Scherer", "Schiller", "Schlegel", "Schott",
    "Schrader", "Schuler", "Schultz", "Schweizer", "Seeger", "Siebert", "Singer", "Spies", "Springer",
    "Steiner", "Stephan", "Stoll", "Strobel", "Timm", "Ullrich", "Unger", "Volk", "Wagener", "Walz",
    "Weidner", "Weigel", "Westphal", "Wiegand", "Wilhelm", "Witt", "Wittmann", "Wolter", "Wulf",
    "Zeller", "Zimmer", "Schroeder", "Goebel", "Moeller", "Boehm", "Yılmaz", "Kaya", "Nguyen",
    "Kowalczyk", "Popović", "Müller-Lüdenscheidt", "Schmidt-Rottluff", "von der Heide", "de Vries",
)
# City and a rough weight (thousands of inhabitants; births follow size, roughly).
BIRTH_PLACES: tuple[tuple[str, int], ...] = (
    ("Berlin", 3700), ("Hamburg", 1850), ("München", 1500), ("Köln", 1080), ("Frankfurt am Main", 760),
    ("Stuttgart", 630), ("Düsseldorf", 620), ("Leipzig", 600), ("Dortmund", 590), ("Essen", 580),
    ("Bremen", 570), ("Dresden", 560), ("Hannover", 540), ("Nürnberg", 520), ("Duisburg", 500),
    ("Bochum", 365), ("Wuppertal", 355), ("Bielefeld", 335), ("Bonn", 330), ("Münster", 315),
    ("Mannheim", 310), ("Karlsruhe", 305), ("Augsburg", 300), ("Wiesbaden", 280),
    ("Mönchengladbach", 260), ("Gelsenkirchen", 260), ("Aachen", 250), ("Braunschweig", 250),
    ("Kiel", 245), ("Chemnitz", 245), ("Halle (Saale)", 240), ("Magdeburg", 235),
    ("Freiburg im Breisgau", 230), ("Krefeld", 225), ("Mainz", 220), ("Lübeck", 215), ("Erfurt", 213),
    ("Oberhausen", 210), ("Rostock", 209), ("Kassel", 200), ("Hagen", 190), ("Potsdam", 183),
    ("Saarbrücken", 180), ("Hamm", 178), ("Ludwigshafen am Rhein", 172), ("Oldenburg", 170),
    ("Mülheim an der Ruhr", 170), ("Osnabrück", 165), ("Leverkusen", 163), ("Darmstadt", 160),
    ("Heidelberg", 160), ("Solingen", 159), ("Herne", 156), ("Regensburg", 153), ("Neuss", 152),
    ("Paderborn", 151), ("Ingolstadt", 138), ("Offenbach am Main", 130), ("Würzburg", 127),
    ("Fürth", 128), ("Ulm", 126), ("Heilbronn", 126), ("Pforzheim", 125), ("Wolfsburg", 124),
    ("Göttingen", 118), ("Bottrop", 117), ("Reutlingen", 116), ("Erlangen", 113),
    ("Bremerhaven", 113), ("Koblenz", 113), ("Trier", 111), ("Jena", 110), ("Siegen", 101),
    ("Hildesheim", 100), ("Cottbus", 99), ("Gütersloh", 100), ("Schwerin", 95), ("Gera", 93),
    ("Zwickau", 87), ("Flensburg", 90), ("Lüneburg", 77), ("Greifswald", 59), ("Stralsund", 59),
    ("Neubrandenburg", 63), ("Görlitz", 56), ("Frankfurt (Oder)", 57), ("Brandenburg an der Havel", 72),
    ("Passau", 53), ("Bamberg", 77), ("Bayreuth", 74), ("Fulda", 68), ("Gießen", 90), ("Marburg", 77),
    ("Tübingen", 91), ("Konstanz", 85), ("Landshut", 73), ("Rosenheim", 63), ("Kempten (Allgäu)", 69),
    ("Weiden in der Oberpfalz", 43), ("Neustadt an der Weinstraße", 53), ("Düren", 92),
    ("Völklingen", 40), ("Böblingen", 50), ("Wismar", 43), ("Anklam", 12), ("Wolgast", 12),
    ("Pasewalk", 10), ("Wien", 120), ("Istanbul", 80), ("Łódź", 10), ("Kraków", 10), ("Zürich", 20),
)
ACADEMIC_DEGREES: tuple[tuple[str, int], ...] = (
    ("Dr.", 60), ("Dr. med.", 20), ("Prof. Dr.", 6), ("Dipl.-Ing.", 10), ("Dr. rer. nat.", 6),
    ("Prof. Dr. med.", 3),
)
DEFAULT_SITES: tuple[str, ...] = ("greifswald", "leipzig", "mainz", "erlangen", "kiel")


def _rank_weights(count: int, exponent: float) -> list[float]:
    """Zipf-like weights by list position; 0.5 gives ~17:1 between ranks 1 and 300, as in Germany."""
    return [1.0 / (rank ** exponent) for rank in range(1, count + 1)]


_MALE_WEIGHTS = _rank_weights(len(MALE_GIVEN_NAMES), 0.6)
_FEMALE_WEIGHTS = _rank_weights(len(FEMALE_GIVEN_NAMES), 0.6)
_FAMILY_WEIGHTS = _rank_weights(len(FAMILY_NAMES), 0.5)
_PLACE_NAMES = tuple(name for name, _ in BIRTH_PLACES)
_PLACE_WEIGHTS = tuple(weight for _, weight in BIRTH_PLACES)
_DEGREE_NAMES = tuple(name for name, _ in ACADEMIC_DEGREES)
_DEGREE_WEIGHTS = tuple(weight for _, weight in ACADEMIC_DEGREES)

# --- error kinds ----------------------------------------------------------------------------------

TYPO_GIVEN = "typo-given"
TYPO_FAMILY = "typo-family"
UMLAUT_VARIANT = "umlaut-variant"
HYPHEN_VARIANT = "hyphen-variant"
FAMILY_NAME_CHANGED = "family-name-changed"
DAY_MONTH_SWAPPED = "day-month-swapped"
BIRTH_DATE_TYPO = "birth-date-typo"
SECOND_GIVEN_MISSING = "second-given-missing"
CASE_NOISE = "case-noise"
WHITESPACE_NOISE = "whitespace-noise"
TITLE_IN_NAME = "title-in-name"
TYPOS = frozenset({TYPO_GIVEN, TYPO_FAMILY})
ERROR_KINDS: tuple[str, ...] = (
    TYPO_GIVEN, TYPO_FAMILY, UMLAUT_VARIANT, HYPHEN_VARIANT, FAMILY_NAME_CHANGED, DAY_MONTH_SWAPPED,
    BIRTH_DATE_TYPO, SECOND_GIVEN_MISSING, CASE_NOISE, WHITESPACE_NOISE, TITLE_IN_NAME)
# Labels of records whose person is a hard case, not an error of the record.
TWIN = "twin"
NAMESAKE = "namesake"


@dataclass(frozen=True)
class ErrorRates:
    """Per-record probabilities of each kind of error, where the error is possible.

    A rate applies where the error is possible: the umlaut variant to records with umlauts, ß or a
    transcribed umlaut, the hyphen variant to names with a hyphen or a space, the day/month swap to
    dates with day <= 12 and day != month, the missing second given name to people with two, the
    title in the name to people with a degree at the sites that type titles into names.

    The defaults, and why (no German registry publishes per-field error rates that we found, so
    most are assumptions; they err on the side of more errors):

    - typo_given, typo_family 2 % each: one keyboard slip (substitution by a neighbouring key,
      deletion, insertion, transposition) in a name typed at registration. Assumption.
    - umlaut_variant 10 %: ä/ö/ü/ß spelled ae/oe/ue/ss (systems without umlauts, transferred
      records), or a spelled-out umlaut typed as one. Assumption. Harmless for the library's
      normalisation, which spells umlauts out and upper-cases ß to SS.
    - hyphen_variant 15 %: "Hans-Peter" as "Hans Peter" or "Hanspeter", "Anna Lena" as
      "Anna-Lena", a double family name without its hyphen. Assumption.
    - family_name_changed 2 %: a name changed between the records of two sites (marriage,
      divorce). About 400,000 marriages a year in Germany (Destatis), in about three quarters of
      which the wife takes the husband's name, change the names of roughly 0.4 % of adults a
      year; records at two sites lie years apart.
    - day_month_swapped 0.5 %, birth_date_typo 0.5 % (one digit of day, month or the last two of
      the year): in English hospital data checked against the NHS register, sex and birth date
      disagreed or were missing in 0.11 % of records (Harron et al., BMC Med Res Methodol 2017,
      17:23); without a national identifier to check against, we assume more.
    - second_given_missing 15 %: many systems register the call name only. Assumption.
    - case_noise 10 %, whitespace_noise 5 %: upper-case entry, stray or double blanks. Case is
      harmless (upper-cased); leading and trailing blanks are trimmed, inner double blanks stay.
    - title_in_name 80 %: at sites whose systems have no field for academic titles (every third
      site), a title goes in front of a name; the library removes "Dr." and "Dipl." only.

    Twins (`twin_share` of `population`, 3 %) and namesakes (`namesake_share`, 2 % on top of the
    namesakes the name frequencies make) are people, not errors: multiple births are about 1.5 to
    2 % of deliveries in Germany (Destatis), so about 3 % of people are a twin.
    """

    typo_given: float = 0.02
    typo_family: float = 0.02
    umlaut_variant: float = 0.10
    hyphen_variant: float = 0.15
    family_name_changed: float = 0.02
    day_month_swapped: float = 0.005
    birth_date_typo: float = 0.005
    second_given_missing: float = 0.15
    case_noise: float = 0.10
    whitespace_noise: float = 0.05
    title_in_name: float = 0.8

    @classmethod
    def none(cls) -> ErrorRates:
        return cls(**{name: 0.0 for name in cls.__dataclass_fields__})


# --- people and records ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Person:
    """A (synthetic) person as they truly are."""

    person_id: int
    given_names: tuple[str, ...]
    family_name: str
    birth_name: str | None
    sex: str  # "male" or "female"
    birth_date: date
    birth_place: str
    degree: str | None = None
    twin_of: int | None = None      # the other twin's person_id, on both twins
    namesake_of: int | None = None  # the person whose names this one shares, on the later one


EN_QUALIFIER_URL = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier"
BIRTH_PLACE_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"


@dataclass(frozen=True)
class Record:
    """One site's record of a person: the fields as the site typed them."""

    record_id: str
    site: str
    person_id: int
    given_names: tuple[str, ...]
    family_name: str
    birth_name: str | None
    sex: str
    birth_date: date
    birth_place: str | None
    degree: str | None  # the academic title as the site stores it (FHIR name.prefix with "AC")
    errors: frozenset[str] = frozenset()
    person: Person | None = field(default=None, repr=False, compare=False)

    @property
    def typo_count(self) -> int:
        return len(self.errors & TYPOS)

    def as_patient(self) -> dict:
        """This record as a FHIR Patient (JSON dict) in the dispatcher's IDAT profile."""
        name: dict = {"family": self.family_name, "given": list(self.given_names)}
        if self.degree:
            name["prefix"] = [self.degree]
            name["_prefix"] = [{"extension": [{"url": EN_QUALIFIER_URL, "valueCode": "AC"}]}]
        names = [name]
        if self.birth_name:
            names = [{"use": "official", **name}, {"use": "maiden", "family": self.birth_name}]
        patient: dict = {"resourceType": "Patient"}
        if self.birth_place:
            patient["extension"] = [{"url": BIRTH_PLACE_URL, "valueAddress": {"city": self.birth_place}}]
        patient["name"] = names
        patient["gender"] = self.sex
        patient["birthDate"] = self.birth_date.isoformat()
        return patient


def _fold(text: str) -> str:
    """A rough comparison form for the generator's own checks (independent of the service)."""
    text = unicodedata.normalize("NFC", text).casefold()
    for umlaut, spelled in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss")):
        text = text.replace(umlaut, spelled)
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return re.sub(r"[^a-z]+", " ", text).strip()


def _edits(a: str, b: str) -> int:
    """Damerau–Levenshtein (optimal string alignment) distance."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


TWIN_NAME_MIN_EDITS = 3


def clearly_different(names_a: Sequence[str], names_b: Sequence[str]) -> bool:
    """No given name of one is within TWIN_NAME_MIN_EDITS - 1 typing errors of one of the other.

    Twins get names like these: parents do name twins "Lena" and "Lea", but such twins cannot be
    told from a typo by any comparison of IDAT, so the generator leaves them out on purpose.
    """
    tokens_a = [t for name in names_a for t in _fold(name).split()]
    tokens_b = [t for name in names_b for t in _fold(name).split()]
    pairs = [(x, y) for x in tokens_a for y in tokens_b] + [("".join(tokens_a), "".join(tokens_b))]
    return all(_edits(x, y) >= TWIN_NAME_MIN_EDITS for x, y in pairs)


def _random_date(rng: random.Random, first_year: int, last_year: int) -> date:
    start, end = date(first_year, 1, 1), date(last_year, 12, 31)
    return start + timedelta(days=rng.randrange((end - start).days + 1))


def _swap_day_month(day: date) -> date | None:
    if day.day > 12 or day.day == day.month:
        return None
    return date(day.year, day.day, day.month)


class _PeopleFactory:
    def __init__(self, rng: random.Random, years: tuple[int, int]) -> None:
        self.rng = rng
        self.years = years
        self.people: list[Person] = []

    def given_name(self, sex: str) -> str:
        names, weights = ((MALE_GIVEN_NAMES, _MALE_WEIGHTS) if sex == "male"
                          else (FEMALE_GIVEN_NAMES, _FEMALE_WEIGHTS))
        return self.rng.choices(names, weights)[0]

    def given_names(self, sex: str, avoid: Sequence[str] = ()) -> tuple[str, ...]:
        """One or two given names; with `avoid`, all clearly different from those (twins)."""
        for _ in range(1000):
            names = [self.given_name(sex)]
            if self.rng.random() < 0.35:
                second = self.given_name(sex)
                if _fold(second) not in _fold(names[0]) and _fold(names[0]) not in _fold(second):
                    names.append(second)
            if not avoid or clearly_different(avoid, names):
                return tuple(names)
        raise RuntimeError("no clearly different given names found")  # pragma: no cover

    def family_name(self, other_than: str | None = None) -> str:
        while True:
            name = self.rng.choices(FAMILY_NAMES, _FAMILY_WEIGHTS)[0]
            if other_than is None or _fold(name) != _fold(other_than):
                return name

    def degree(self, birth_date: date) -> str | None:
        if birth_date.year <= 1995 and self.rng.random() < 0.06:
            return self.rng.choices(_DEGREE_NAMES, _DEGREE_WEIGHTS)[0]
        return None

    def add(self, **fields) -> Person:
        person = Person(person_id=len(self.people), **fields)
        self.people.append(person)
        return person

    def new_person(self) -> Person:
        sex = self.rng.choice(("male", "female"))
        born = _random_date(self.rng, *self.years)
        family = self.family_name()
        birth_name = None
        adult = born.year <= self.years[1] - 20
        if adult and self.rng.random() < (0.30 if sex == "female" else 0.03):
            birth_name = self.family_name(other_than=family)  # took a spouse's name
        return self.add(given_names=self.given_names(sex), family_name=family, birth_name=birth_name,
                        sex=sex, birth_date=born, birth_place=self.place(), degree=self.degree(born))

    def place(self) -> str:
        return self.rng.choices(_PLACE_NAMES, _PLACE_WEIGHTS)[0]

    def twins(self) -> tuple[Person, Person]:
        # Twins keep the family name they were born with; both share birth date and place.
        first = replace(self.new_person(), birth_name=None, twin_of=len(self.people))
        self.people[first.person_id] = first
        sex = first.sex if self.rng.random() < 0.65 else ("female" if first.sex == "male" else "male")
        second = self.add(given_names=self.given_names(sex, avoid=first.given_names),
                          family_name=first.family_name, birth_name=None, sex=sex,
                          birth_date=first.birth_date, birth_place=first.birth_place,
                          degree=self.degree(first.birth_date), twin_of=first.person_id)
        return first, second

    def namesake(self, same_year_share: float) -> Person:
        original = self.rng.choice(self.people)
        excluded = {original.birth_date, _swap_day_month(original.birth_date)}
        while True:
            if self.rng.random() < same_year_share:
                born = _random_date(self.rng, original.birth_date.year, original.birth_date.year)
            else:
                born = _random_date(self.rng, *self.years)
            if born not in excluded:
                break
        return self.add(given_names=original.given_names, family_name=original.family_name,
                        birth_name=None, sex=original.sex, birth_date=born, birth_place=self.place(),
                        degree=self.degree(born), namesake_of=original.person_id)


def generate_people(n_people: int, seed: int = 0, *, twin_share: float = 0.03,
                    namesake_share: float = 0.02, namesake_same_year_share: float = 0.1,
                    birth_years: tuple[int, int] = (1930, 2020)) -> list[Person]:
    """`n_people` people; about `twin_share` of them are twins, `namesake_share` namesakes."""
    rng = random.Random(seed)
    factory = _PeopleFactory(rng, birth_years)
    pair_probability = twin_share / (2 - twin_share) if twin_share < 1 else 1.0  # a pair adds two
    while len(factory.people) < n_people:
        draw = rng.random()
        if draw < pair_probability and len(factory.people) <= n_people - 2:
            factory.twins()
        elif draw < pair_probability + namesake_share and factory.people:
            factory.namesake(namesake_same_year_share)
        else:
            factory.new_person()
    return factory.people


# --- errors as sites make them --------------------------------------------------------------------

_QWERTZ_ROWS = ("qwertzuiopü", "asdfghjklöä", "yxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    neighbours: dict[str, str] = defaultdict(str)
    for r, row in enumerate(_QWERTZ_ROWS):
        for c, key in enumerate(row):
            for rr, cc in ((r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c), (r + 1, c - 1)):
                if 0 <= rr < len(_QWERTZ_ROWS) and 0 <= cc < len(_QWERTZ_ROWS[rr]):
                    neighbours[key] += _QWERTZ_ROWS[rr][cc]
    return dict(neighbours)


_NEIGHBOURS = _keyboard_neighbours()


def _recase(original: str, changed: str) -> str:
    """Give a typo'd name the capitalisation the original had (word starts upper case)."""
    if original.isupper():
        return changed.upper()
    if original.islower():
        return changed
    def capital(match: re.Match) -> str:
        letter = match.group(2)
        upper = letter.upper()  # but not "ı" -> "I", which lower-cases to another letter
        return match.group(1) + (upper if len(upper) == 1 and upper.lower() == letter else letter)

    return re.sub(r"(^|[\s\-])(\w)", capital, changed.lower())


def typo(text: str, rng: random.Random) -> str:
    """One typing error: a letter substituted by a neighbouring key, deleted, inserted, or two
    adjacent letters swapped. Always changes the text; never leaves fewer than two letters."""
    lower = text.lower()
    letters = [i for i, ch in enumerate(lower) if ch.isalpha()]
    for _ in range(100):
        kind = rng.choice(("substitute", "delete", "insert", "transpose"))
        i = rng.choice(letters)
        ch = lower[i]
        if kind == "substitute" and _NEIGHBOURS.get(ch):
            changed = lower[:i] + rng.choice(_NEIGHBOURS[ch]) + lower[i + 1:]
        elif kind == "delete" and len(letters) > 2:
            changed = lower[:i] + lower[i + 1:]
        elif kind == "insert":
            inserted = rng.choice(_NEIGHBOURS.get(ch, ch) + ch)  # a neighbour, or the key twice
            changed = lower[:i + 1] + inserted + lower[i + 1:]
        elif kind == "transpose" and i + 1 < len(lower) and lower[i + 1].isalpha() and lower[i + 1] != ch:
            changed = lower[:i] + lower[i + 1] + ch + lower[i + 2:]
        else:
            continue
        result = _recase(text, changed)
        if _fold(result) != _fold(text):
            return result
    return text  # pragma: no cover - a name without any typeable change


_UMLAUT_SPELLINGS = {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"}
_CONSONANTS = "bcdfghjklmnpqrstvwxz"
_SPELLED_UMLAUT = re.compile(rf"(?<=[{_CONSONANTS}])(ae|oe|ue)(?=[{_CONSONANTS}])", re.IGNORECASE)


def spell_out_umlauts(text: str) -> str:
    """ü -> ue, ö -> oe, ä -> ae, ß -> ss: how systems without umlauts store names."""
    return "".join(_UMLAUT_SPELLINGS.get(ch, ch) for ch in text)


def restore_umlaut(text: str) -> str:
    """The way back for a family name: the first ae/oe/ue between consonants becomes an umlaut
    ("Schroeder" -> "Schröder"). Not for given names, where "ue" is often no umlaut (Manuel)."""
    return _SPELLED_UMLAUT.sub(lambda m: {"ae": "ä", "oe": "ö", "ue": "ü"}[m.group(1)], text, count=1)


def hyphen_variant(name: str, rng: random.Random) -> str:
    """A compound name spelled another way: "Hans-Peter" as "Hans Peter" or "Hanspeter",
    "Anna Lena" as "Anna-Lena"."""
    if "-" in name:
        if rng.random() < 0.6:
            return name.replace("-", " ")
        first, _, rest = name.partition("-")
        return first + rest.replace("-", "").lower()
    return name.replace(" ", "-")


def _birth_date_typo(day: date, rng: random.Random) -> date:
    """One digit of day, month or the year's last two digits typed wrong, giving another valid
    date (not the day/month swap, which is an error kind of its own)."""
    digits = f"{day.day:02d}{day.month:02d}{day.year:04d}"
    while True:
        position = rng.choice((0, 1, 2, 3, 6, 7))
        digit = rng.choice([d for d in "0123456789" if d != digits[position]])
        typed = digits[:position] + digit + digits[position + 1:]
        try:
            result = date(int(typed[4:]), int(typed[2:4]), int(typed[:2]))
        except ValueError:
            continue
        if result != _swap_day_month(day):
            return result


def _has_umlaut(text: str | None) -> bool:
    return bool(text) and any(ch in _UMLAUT_SPELLINGS for ch in text)


def _whitespace_noise(text: str, rng: random.Random) -> str:
    choice = rng.randrange(3)
    if choice == 0:
        return f" {text}" if rng.random() < 0.5 else f"{text} "
    if choice == 1 and (" " in text or "-" in text):
        return text.replace(" ", "  ").replace("-", " - " if rng.random() < 0.5 else "- ")
    return f"{text}  "


class _RecordMaker:
    def __init__(self, rng: random.Random, rates: ErrorRates, title_sites: Collection[str],
                 factory: _PeopleFactory) -> None:
        self.rng = rng
        self.rates = rates
        self.title_sites = title_sites
        self.factory = factory  # for family names drawn at marriage

    def happens(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def make(self, person: Person, site: str, record_id: str) -> Record:
        rng, rates = self.rng, self.rates
        errors: set[str] = set()
        given = list(person.given_names)
        family, birth_name = person.family_name, person.birth_name
        birth_date, place, degree = person.birth_date, person.birth_place, person.degree

        if self.happens(rates.family_name_changed):
            birth_name = person.birth_name or person.family_name
            family = self.factory.family_name(other_than=person.family_name)
            errors.add(FAMILY_NAME_CHANGED)
        if len(given) > 1 and self.happens(rates.second_given_missing):
            given = given[:1]
            errors.add(SECOND_GIVEN_MISSING)
        if self.happens(rates.typo_given):
            index = 0 if len(given) == 1 or rng.random() < 0.7 else rng.randrange(1, len(given))
            given[index] = typo(given[index], rng)
            errors.add(TYPO_GIVEN)
        if self.happens(rates.typo_family):
            family = typo(family, rng)
            errors.add(TYPO_FAMILY)
        swapped = _swap_day_month(birth_date)
        if swapped is not None and self.happens(rates.day_month_swapped):
            birth_date = swapped
            errors.add(DAY_MONTH_SWAPPED)
        if self.happens(rates.birth_date_typo):
            birth_date = _birth_date_typo(birth_date, rng)
            errors.add(BIRTH_DATE_TYPO)
        parted = [i for i, name in enumerate(given) if "-" in name or " " in name]
        if (parted or "-" in family) and self.happens(rates.hyphen_variant):
            if parted and ("-" not in family or rng.random() < 0.7):
                index = rng.choice(parted)
                given[index] = hyphen_variant(given[index], rng)
            else:
                family = hyphen_variant(family, rng)
            errors.add(HYPHEN_VARIANT)
        texts = [*given, family, birth_name, place]
        if any(_has_umlaut(text) for text in texts):
            if self.happens(rates.umlaut_variant):
                given = [spell_out_umlauts(name) for name in given]
                family = spell_out_umlauts(family)
                birth_name = spell_out_umlauts(birth_name) if birth_name else None
                place = spell_out_umlauts(place)
                errors.add(UMLAUT_VARIANT)
        elif restore_umlaut(family) != family and self.happens(rates.umlaut_variant):
            family = restore_umlaut(family)
            errors.add(UMLAUT_VARIANT)
        if degree and site in self.title_sites and self.happens(rates.title_in_name):
            # Some sites' systems have no title field: the title goes in front of a name.
            if rng.random() < 0.7:
                given[0] = f"{degree} {given[0]}"
            else:
                family = f"{degree} {family}"
            degree = None
            errors.add(TITLE_IN_NAME)
        if self.happens(rates.case_noise):
            style = rng.choice(("upper", "upper", "lower", "family-upper"))
            if style == "upper":
                given, family = [g.upper() for g in given], family.upper()
                birth_name = birth_name.upper() if birth_name else None
                place = place.upper()
            elif style == "lower":
                given, family = [g.lower() for g in given], family.lower()
            else:
                family = family.upper()
            errors.add(CASE_NOISE)
        if self.happens(rates.whitespace_noise):
            if rng.random() < 0.5:
                index = rng.randrange(len(given))
                given[index] = _whitespace_noise(given[index], rng)
            else:
                family = _whitespace_noise(family, rng)
            errors.add(WHITESPACE_NOISE)
        return Record(record_id=record_id, site=site, person_id=person.person_id,
                      given_names=tuple(given), family_name=family, birth_name=birth_name,
                      sex=person.sex, birth_date=birth_date, birth_place=place, degree=degree,
                      errors=frozenset(errors), person=person)


def population(n_people: int, sites: Sequence[str] = DEFAULT_SITES, seed: int = 0,
               error_rates: ErrorRates = ErrorRates(), *, max_sites_per_person: int = 3,
               site_count_weights: Sequence[float] | None = None, twin_share: float = 0.03,
               namesake_share: float = 0.02, namesake_same_year_share: float = 0.1,
               title_sites: Collection[str] | None = None,
               people: Sequence[Person] | None = None) -> list[Record]:
    """The records of `n_people` synthetic people at `sites`, errors drawn per record.

    Each person appears at 1..`max_sites_per_person` distinct sites (weights halve with each
    further site unless `site_count_weights` gives them). `title_sites` type academic titles into
    names (default: every third site, starting with the second). Pass `people` to reuse a drawn
    population with other error rates or sites.
    """
    if people is None:
        people = generate_people(n_people, seed, twin_share=twin_share, namesake_share=namesake_share,
                                 namesake_same_year_share=namesake_same_year_share)
    max_sites = max(1, min(max_sites_per_person, len(sites)))
    weights = list(site_count_weights or [0.5 ** k for k in range(max_sites)])[:max_sites]
    titled = frozenset(sites[1::3] if title_sites is None else title_sites)
    rng = random.Random(f"{seed}/records")
    spouses = _PeopleFactory(random.Random(f"{seed}/marriages"), (1930, 2020))
    maker = _RecordMaker(rng, error_rates, titled, spouses)
    records: list[Record] = []
    for person in people:
        count = rng.choices(range(1, max_sites + 1), weights)[0]
        for site in rng.sample(list(sites), count):
            records.append(maker.make(person, site, f"{site}-{len(records):07d}"))
    return records


# --- the truth, for tests -------------------------------------------------------------------------

def records_by_person(records: Iterable[Record]) -> dict[int, list[Record]]:
    grouped: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        grouped[record.person_id].append(record)
    return dict(grouped)


def _pair(a: Record, b: Record) -> tuple[str, str]:
    return (a.record_id, b.record_id) if a.record_id < b.record_id else (b.record_id, a.record_id)


def true_match_pairs(records: Iterable[Record]) -> set[tuple[str, str]]:
    """Record-id pairs (sorted) that belong to the same person."""
    return {_pair(a, b) for group in records_by_person(records).values() for a, b in combinations(group, 2)}


def _related_pairs(records: Sequence[Record], relation: str) -> list[tuple[Record, Record]]:
    grouped = records_by_person(records)
    pairs = []
    for person_id, group in grouped.items():
        other = getattr(group[0].person, relation, None)
        if other is None or (relation == "twin_of" and other < person_id):
            continue  # each twin pair once
        pairs.extend((a, b) for a in group for b in grouped.get(other, ()))
    return pairs


def twin_pairs(records: Sequence[Record]) -> list[tuple[Record, Record]]:
    """Pairs of records of twins (one record of each twin): the same family name, birth date and
    place, but two people."""
    return _related_pairs(records, "twin_of")


def namesake_pairs(records: Sequence[Record]) -> list[tuple[Record, Record]]:
    """Pairs of records of namesakes: the same names, another birth date, two people."""
    return _related_pairs(records, "namesake_of")


def record_kinds(records: Sequence[Record]) -> dict[str, frozenset[str]]:
    """Each record's error kinds, with TWIN / NAMESAKE added where the record's person has a
    twin / a namesake among the people of `records` (both of a namesake pair are labelled)."""
    present = {record.person_id for record in records}
    twins, namesakes = set(), set()
    for record in records:
        person = record.person
        if person is None:
            continue
        if person.twin_of is not None and person.twin_of in present:
            twins.add(person.person_id)
        if person.namesake_of is not None and person.namesake_of in present:
            namesakes.update((person.person_id, person.namesake_of))
    return {record.record_id: record.errors | ({TWIN} if record.person_id in twins else set())
            | ({NAMESAKE} if record.person_id in namesakes else set()) for record in records}


def duplicate_pairs(records: Sequence[Record]) -> list[tuple[Record, Record]]:
    """Pairs of records of the same person."""
    return [(a, b) for group in records_by_person(records).values() for a, b in combinations(group, 2)]


# --- Bloom filters --------------------------------------------------------------------------------

def bitset_to_bytes(bits: np.ndarray | Sequence[bool]) -> bytes:
    """Java `BitSet.toByteArray()`: bit i is bit i % 8 (least significant first) of byte i // 8;
    trailing zero bytes dropped."""
    packed = np.packbits(np.asarray(bits, dtype=bool), bitorder="little").tobytes()
    return packed.rstrip(b"\x00")


def bitset_from_bytes(data: bytes | str, length: int) -> np.ndarray:
    """The bits of a `BitSet.toByteArray()` serialisation (bytes or base64), as `length` booleans."""
    raw = _as_bytes(data)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little").astype(bool)
    if len(bits) > length and bits[length:].any():
        raise ValueError("bit set longer than the filter")
    out = np.zeros(length, dtype=bool)
    out[:min(length, len(bits))] = bits[:length]
    return out


def _as_bytes(data: bytes | str) -> bytes:
    return base64.b64decode(data, validate=True) if isinstance(data, str) else bytes(data)


def dice(a: bytes | str, b: bytes | str) -> float:
    """Sørensen–Dice coefficient of two serialised bit sets (bytes or base64): 2|A∩B| / (|A|+|B|)."""
    x, y = int.from_bytes(_as_bytes(a), "little"), int.from_bytes(_as_bytes(b), "little")
    total = x.bit_count() + y.bit_count()
    return 2 * (x & y).bit_count() / total if total else 1.0


# The published test configuration of the Mainzelliste fTTP library: public seeds, fine for a test
# network (a real network keeps its seeds secret).
NETWORK_SEEDS: Mapping[str, int] = {"firstName": 487484864, "lastName": 311296856, "birthDate": 897689196,
                                    "gender": 298767897}
NETWORK_BALANCED_SEED = 154866848
# In the published vocabulary ("m" and "f" are in it; a lower-case "w" would set no bits).
SEX_CODES: Mapping[str, str] = {"male": "m", "female": "f", "other": "o", "unknown": "u"}
FILTER_LENGTHS = (800, 900)  # the library's length: filters of 1600 and 1800 bits


class BloomFilterEncoder:
    """The sites' filters of records, exactly as the Mainzelliste fTTP library makes them.

    `length` is the library's: the filters have 2·length bits (`filter_bits`). Seeds, vocabulary
    and normalisation are the library's published configuration unless given.
    """

    def __init__(self, length: int = 800, *, seeds: Mapping[str, int] = NETWORK_SEEDS,
                 balanced_seed: int = NETWORK_BALANCED_SEED, vocabulary: str = PUBLISHED_VOCABULARY,
                 sex_codes: Mapping[str, str] = SEX_CODES) -> None:
        self.spec = RecordFilterSpec(seeds=seeds, balanced_seed=balanced_seed, length=length,
                                     vocabulary=vocabulary, normalisation=PUBLISHED_NORMALISATION)
        self.encoder = RecordFilterEncoder(self.spec)
        self.sex_codes = dict(sex_codes)

    @property
    def length(self) -> int:
        return self.spec.length

    @property
    def filter_bits(self) -> int:
        return self.spec.filter_bits

    def field_values(self, record: Record) -> dict[str, str]:
        """The record as a site hands it to the library (before the library's normalisation)."""
        day = record.birth_date
        return {"firstName": " ".join(record.given_names), "lastName": record.family_name,
                "birthDate": f"{day.year:04d}{day.month:02d}{day.day:02d}",
                "gender": self.sex_codes.get(record.sex, "")}

    def bits(self, record: Record) -> np.ndarray:
        return self.encoder.bits(self.field_values(record))

    def encode(self, record: Record) -> bytes:
        """The balanced filter as Java `BitSet.toByteArray()` bytes."""
        return self.encoder.encode(self.field_values(record))

    def encode_base64(self, record: Record) -> str:
        return self.encoder.encode_base64(self.field_values(record))

    def encode_many(self, records: Iterable[Record]) -> list[bytes]:
        """`encode` for many records (names repeat: their bigram positions are cached)."""
        return [self.encode(record) for record in records]
