"""The consent model: domains, policies, modules, versioned templates, and signed consents.

A *domain* (e.g. "MII") is a consent context with the signer id types by which persons are
known in it (e.g. "Pseudonym"). A *policy* is one permission (e.g. `MDAT_erheben`), a *module*
is one question of a form and grants a set of policies, a *template* is a form made of modules.
Policies, modules and templates are versioned: `name|version` names one version, and a new
version is a new object, never a change of an old one.

A *signed consent* is one template filled in and signed by a person on a date: the status of
each module (ACCEPTED, DECLINED, ...) and, derived from it when it is recorded, the status and
expiry of every policy the modules grant (`SignedPolicy`). The FHIR resources it came with (the
QuestionnaireResponse, the Patient, the Provenance with its signatures, scanned documents) are
kept as given.

Everything here is a plain value; `Catalogue.from_settings` reads the `[gics]` configuration
and says what is wrong with it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from enum import Enum
from typing import Any, Iterable, Mapping, NamedTuple

GICS_POLICY_SYSTEM = "https://ths-greifswald.de/fhir/CodeSystem/gics/Policy"
SIGNER_ID_SYSTEM_PREFIX = "https://ths-greifswald.de/fhir/gics/identifiers/"
# Names of catalogue objects and signer id values are bounded, as the stores' keys are.
MAX_NAME = 255
# A policy that never expires is shown with this end, as the reference does (fts-next needs one).
OPEN_END = datetime(3000, 1, 1, tzinfo=timezone.utc)


class ConsentStatus(str, Enum):
    """The status of a module or policy in a signed consent (gICS ConsentStatus)."""

    ACCEPTED = "ACCEPTED"
    ACCEPTED_OPT_OUT = "ACCEPTED_OPT_OUT"
    DECLINED = "DECLINED"
    UNKNOWN = "UNKNOWN"
    NOT_ASKED = "NOT_ASKED"
    NOT_CHOSEN = "NOT_CHOSEN"
    WITHDRAWN = "WITHDRAWN"
    INVALIDATED = "INVALIDATED"
    REFUSED = "REFUSED"
    EXPIRED = "EXPIRED"
    OBJECTED = "OBJECTED"

    @property
    def accepting(self) -> bool:
        return self in _ACCEPTING

    @property
    def declining(self) -> bool:
        return self in _DECLINING

    @property
    def unknown(self) -> bool:
        """Says nothing about the person's will (not asked, not chosen, unknown)."""
        return self in _UNKNOWN


_ACCEPTING = frozenset({ConsentStatus.ACCEPTED, ConsentStatus.ACCEPTED_OPT_OUT})
_DECLINING = frozenset({ConsentStatus.DECLINED, ConsentStatus.WITHDRAWN, ConsentStatus.INVALIDATED,
                        ConsentStatus.REFUSED, ConsentStatus.OBJECTED, ConsentStatus.EXPIRED})
_UNKNOWN = frozenset({ConsentStatus.UNKNOWN, ConsentStatus.NOT_ASKED, ConsentStatus.NOT_CHOSEN})


class TemplateType(str, Enum):
    """What signing a template does to the policies of its modules.

    A CONSENT form records each module's answer as given. The other forms state one thing per
    module that the person accepts or not: a WITHDRAWAL withdraws, a REFUSAL refuses, a
    REVOCATION invalidates, an OBJECTION objects (opt-out contexts); a module whose statement
    the person does not accept leaves the policy as it was."""

    CONSENT = "CONSENT"
    CONSENT_OPT_OUT = "CONSENT_OPT_OUT"
    WITHDRAWAL = "WITHDRAWAL"
    REFUSAL = "REFUSAL"
    REVOCATION = "REVOCATION"
    OBJECTION = "OBJECTION"

    @property
    def fhir_code(self) -> str:
        """The code in http://fhir.de/ConsentManagement/CodeSystem/TemplateType."""
        return self.value.replace("_", "-")


# The policy status a statement form gives a module whose statement the person accepted.
STATEMENT_STATUS = {
    TemplateType.WITHDRAWAL: ConsentStatus.WITHDRAWN,
    TemplateType.REFUSAL: ConsentStatus.REFUSED,
    TemplateType.REVOCATION: ConsentStatus.INVALIDATED,
    TemplateType.OBJECTION: ConsentStatus.OBJECTED,
}


class Key(NamedTuple):
    """A versioned object's name and version; written `name|version`."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}|{self.version}"

    @classmethod
    def parse(cls, text: str, what: str = "reference") -> "Key":
        name, sep, version = text.rpartition("|")
        if not sep or not name or not version:
            raise ValueError(f"{what} {text!r} must be written name|version")
        return cls(name, version)


class SignerId(NamedTuple):
    """One identifier of a person in a domain: its signer id type and value."""

    type: str
    value: str

    @property
    def system(self) -> str:
        return SIGNER_ID_SYSTEM_PREFIX + self.type

    def __str__(self) -> str:
        return f"{self.type}|{self.value}"


class Coding(NamedTuple):
    system: str
    code: str
    display: str = ""


@lru_cache(maxsize=4096)
def version_order(version: str) -> tuple:
    """Sort key of a version: "1.6.d" < "1.6.f" < "1.10"; numbers as numbers, the rest as text."""
    parts = re.split(r"[.\-_ ]+", version.strip())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


# --- durations and expiry -------------------------------------------------------------------

_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?$")


@dataclass(frozen=True)
class Duration:
    """A calendar duration (ISO 8601 `P30Y`, `P5Y6M`, `P2W`, `P10D`)."""

    years: int = 0
    months: int = 0
    days: int = 0

    @classmethod
    def parse(cls, text: str) -> "Duration":
        found = _DURATION.match(text.strip()) if isinstance(text, str) else None
        if not found or not any(found.groups()):
            raise ValueError(f"{text!r} is not a duration such as P30Y, P6M or P10D")
        years, months, weeks, days = (int(g or 0) for g in found.groups())
        return cls(years, months, weeks * 7 + days)

    def after(self, start: datetime) -> datetime:
        month_index = start.month - 1 + self.months + 12 * self.years
        year, month = start.year + month_index // 12, month_index % 12 + 1
        day = min(start.day, _days_in_month(year, month))
        return start.replace(year=year, month=month, day=day) + timedelta(days=self.days)

    def __str__(self) -> str:
        text = "P" + "".join(f"{n}{unit}" for n, unit in ((self.years, "Y"), (self.months, "M"),
                                                           (self.days, "D")) if n)
        return text if text != "P" else "P0D"


def _days_in_month(year: int, month: int) -> int:
    following = date(year + month // 12, month % 12 + 1, 1)
    return (following - timedelta(days=1)).day


@dataclass(frozen=True)
class Expiry:
    """When what a consent grants ends: a duration after signing, a fixed date, or the earlier
    of both."""

    after: Duration | None = None
    on: date | None = None

    def end(self, start: datetime, zone: tzinfo) -> datetime | None:
        ends = []
        if self.after is not None:
            ends.append(self.after.after(start))
        if self.on is not None:
            ends.append(datetime.combine(self.on, time(), zone))
        return min(ends) if ends else None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], where: str) -> "Expiry | None":
        after, on = settings.get("expires_after"), settings.get("expires_on")
        if after is None and on is None:
            return None
        try:
            duration = Duration.parse(after) if after is not None else None
        except ValueError as error:
            raise ValueError(f"{where}: expires_after {error}") from None
        if on is not None and not isinstance(on, date):
            try:
                on = date.fromisoformat(str(on))
            except ValueError:
                raise ValueError(f"{where}: expires_on must be a date (YYYY-MM-DD)") from None
        if isinstance(on, datetime):
            on = on.date()
        return cls(after=duration, on=on)

    def settings(self) -> dict[str, str]:
        """As `expires_after` / `expires_on` settings."""
        found = {}
        if self.after is not None:
            found["expires_after"] = str(self.after)
        if self.on is not None:
            found["expires_on"] = self.on.isoformat()
        return found

    def properties(self) -> list[tuple[str, str]]:
        """As the guide's ExpirationProperty key/value pairs."""
        found = []
        if self.after is not None:
            found.append(("VALIDITY_PERIOD", str(self.after)))
        if self.on is not None:
            found.append(("FIX_DATE", self.on.isoformat()))
        return found


def earliest(*ends: datetime | None) -> datetime | None:
    present = [e for e in ends if e is not None]
    return min(present) if present else None


# --- the catalogue: domains and their versioned objects ------------------------------------

@dataclass(frozen=True)
class ConsentDomain:
    name: str
    label: str = ""
    description: str = ""
    signer_id_types: tuple[str, ...] = ("Pseudonym",)
    policy_system: str = GICS_POLICY_SYSTEM
    policy_version_format: str = "major.minor"
    module_version_format: str = "major.minor"
    template_version_format: str = "major.minor.char"
    valid_from: date | None = None
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    domain: str
    name: str
    version: str
    label: str = ""
    description: str = ""
    system: str = GICS_POLICY_SYSTEM
    # Further codes of the same policy, e.g. the MII broad consent's OID code that clients
    # such as fts-next ask for.
    codes: tuple[Coding, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return Key(self.name, self.version)

    def codings(self) -> list[Coding]:
        return [Coding(self.system, self.name, self.label or self.description), *self.codes]

    def answers_to(self, system: str | None, code: str) -> bool:
        """Whether a Coding names this policy: its own system and name (a bare name too) or
        one of its further codes."""
        if code == self.name and system in (None, "", self.system):
            return True
        return any(code == c.code and system in (None, "", c.system) for c in self.codes)


@dataclass(frozen=True)
class ModulePolicy:
    policy: Key
    expiry: Expiry | None = None


@dataclass(frozen=True)
class Module:
    domain: str
    name: str
    version: str
    label: str = ""
    text: str = ""
    policies: tuple[ModulePolicy, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return Key(self.name, self.version)


@dataclass(frozen=True)
class AssignedModule:
    module: Key
    mandatory: bool = False


@dataclass(frozen=True)
class Template:
    domain: str
    name: str
    version: str
    type: TemplateType = TemplateType.CONSENT
    label: str = ""
    title: str = ""
    description: str = ""
    expiry: Expiry | None = None
    modules: tuple[AssignedModule, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    signatures: tuple[str, ...] = ("consent",)  # consent, witness, verification

    @property
    def key(self) -> Key:
        return Key(self.name, self.version)

    @property
    def identifier(self) -> str:
        """The TemplateFrame identifier value: `domain;name;version`."""
        return f"{self.domain};{self.name};{self.version}"

    def module_keys(self) -> set[Key]:
        return {m.module for m in self.modules}


@dataclass
class Catalogue:
    """Every domain with its policies, modules and templates, as one consistent snapshot."""

    domains: dict[str, ConsentDomain] = field(default_factory=dict)
    policies: dict[tuple[str, Key], Policy] = field(default_factory=dict)
    modules: dict[tuple[str, Key], Module] = field(default_factory=dict)
    templates: dict[tuple[str, Key], Template] = field(default_factory=dict)
    _by_code: dict[tuple[str, str], list[Policy]] | None = field(default=None, compare=False, repr=False)

    def domain(self, name: str) -> ConsentDomain | None:
        return self.domains.get(name)

    def policy(self, domain: str, key: Key) -> Policy | None:
        return self.policies.get((domain, key))

    def module(self, domain: str, key: Key) -> Module | None:
        return self.modules.get((domain, key))

    def template(self, domain: str, key: Key) -> Template | None:
        return self.templates.get((domain, key))

    def policies_of(self, domain: str) -> list[Policy]:
        return sorted((p for (d, _), p in self.policies.items() if d == domain),
                      key=lambda p: (p.name, version_order(p.version)))

    def modules_of(self, domain: str) -> list[Module]:
        return sorted((m for (d, _), m in self.modules.items() if d == domain),
                      key=lambda m: (m.name, version_order(m.version)))

    def templates_of(self, domain: str) -> list[Template]:
        return sorted((t for (d, _), t in self.templates.items() if d == domain),
                      key=lambda t: (t.name, version_order(t.version)))

    def find_policies(self, domain: str, system: str | None, code: str) -> list[Policy]:
        """The policies (every version) a Coding names. Asked on every state request: the
        policies are indexed by their codes once per catalogue, which is not changed once read."""
        if self._by_code is None:
            index: dict[tuple[str, str], list[Policy]] = {}
            for name in sorted(self.domains):
                for policy in self.policies_of(name):
                    for known in {policy.name, *(c.code for c in policy.codes)}:
                        index.setdefault((name, known), []).append(policy)
            self._by_code = index
        return [p for p in self._by_code.get((domain, code), ()) if p.answers_to(system, code)]

    def problems(self) -> list[str]:
        """References that point nowhere, one sentence each."""
        found = []
        for (domain, key), module in self.modules.items():
            if domain not in self.domains:
                found.append(f"module {key} names an unknown domain {domain!r}")
            for entry in module.policies:
                if (domain, entry.policy) not in self.policies:
                    found.append(f"module {key} of domain {domain!r} names an unknown policy {entry.policy}")
        for (domain, key), template in self.templates.items():
            if domain not in self.domains:
                found.append(f"template {key} names an unknown domain {domain!r}")
            for assigned in template.modules:
                if (domain, assigned.module) not in self.modules:
                    found.append(f"template {key} of domain {domain!r} names an unknown module "
                                 f"{assigned.module}")
        for (domain, key) in self.policies:
            if domain not in self.domains:
                found.append(f"policy {key} names an unknown domain {domain!r}")
        return found

    @classmethod
    def from_settings(cls, section: Mapping[str, Any], known: "Catalogue | None" = None,
                      check: bool = True) -> "Catalogue":
        """The catalogue a `[gics]` section declares; ValueError names the first problem. Its
        references may also point into `known` (what storage holds already). Without `check`,
        references that point nowhere are let pass (a stored catalogue is read as it is)."""
        catalogue = cls()
        for settings in _tables(section, "domains"):
            domain = domain_from_settings(settings)
            if domain.name in catalogue.domains:
                raise ValueError(f"[[gics.domains]] {domain.name!r} is configured twice")
            catalogue.domains[domain.name] = domain
        domains = {**(known.domains if known else {}), **catalogue.domains}
        for kind, build, target in (("policies", policy_from_settings, catalogue.policies),
                                    ("modules", module_from_settings, catalogue.modules),
                                    ("templates", template_from_settings, catalogue.templates)):
            for settings in _tables(section, kind):
                domain = domains.get(settings.get("domain"))  # type: ignore[arg-type]
                if domain is None:
                    raise ValueError(f"[[gics.{kind}]] {settings.get('name')!r} names an unknown "
                                     f"domain {settings.get('domain')!r}")
                item = build(settings, domain)
                if (item.domain, item.key) in target:
                    raise ValueError(f"[[gics.{kind}]] {item.key} of domain {item.domain!r} is "
                                     "configured twice")
                target[(item.domain, item.key)] = item
        problems = (catalogue.merged_into(known) if known else catalogue).problems() if check else []
        if problems:
            raise ValueError(problems[0])
        return catalogue

    def merged_into(self, base: "Catalogue") -> "Catalogue":
        """`base` with this catalogue's objects added or replacing base's."""
        return Catalogue({**base.domains, **self.domains}, {**base.policies, **self.policies},
                         {**base.modules, **self.modules}, {**base.templates, **self.templates})


def catalogue_settings(item: "ConsentDomain | Policy | Module | Template") -> dict[str, Any]:
    """The settings a catalogue object is read back from (`*_from_settings`), as a store keeps
    it: the same keys as its `[gics]` table."""
    if isinstance(item, ConsentDomain):
        settings: dict[str, Any] = {
            "name": item.name, "label": item.label, "description": item.description,
            "signer_id_types": list(item.signer_id_types), "policy_system": item.policy_system,
            "policy_version_format": item.policy_version_format,
            "module_version_format": item.module_version_format,
            "template_version_format": item.template_version_format, "properties": dict(item.properties)}
        if item.valid_from is not None:
            settings["valid_from"] = item.valid_from.isoformat()
        return settings
    common = {"domain": item.domain, "name": item.name, "version": item.version, "label": item.label,
              "properties": dict(item.properties)}
    if isinstance(item, Policy):
        return {**common, "description": item.description, "system": item.system,
                "codes": [f"{c.system}|{c.code}" for c in item.codes]}
    if isinstance(item, Module):
        return {**common, "text": item.text,
                "policies": [{"policy": str(e.policy), **(e.expiry.settings() if e.expiry else {})}
                             for e in item.policies]}
    return {**common, "type": item.type.value, "title": item.title, "description": item.description,
            "modules": [{"module": str(m.module), "mandatory": m.mandatory} for m in item.modules],
            "signatures": list(item.signatures), **(item.expiry.settings() if item.expiry else {})}


def _tables(section: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = section.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ValueError(f"gics.{key} must be an array of tables")
    return value


def _text(settings: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    value = settings.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be a string")
    return value


def _name(settings: Mapping[str, Any], where: str, key: str = "name") -> str:
    value = settings.get(key)
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ValueError(f"{where} needs a {key} without surrounding spaces")
    if "|" in value or ";" in value or any(unicodedata.category(c)[0] == "C" for c in value):
        raise ValueError(f"{where}: {key} must not contain '|', ';' or control characters")
    if len(value) > MAX_NAME:
        raise ValueError(f"{where}: {key} must not be longer than {MAX_NAME} characters")
    return value


def _properties(settings: Mapping[str, Any], where: str) -> dict[str, str]:
    value = settings.get("properties", {})
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in value.items()):
        raise ValueError(f"{where}: properties must be a table of strings")
    return dict(value)


DOMAIN_SETTINGS = {"name", "label", "description", "signer_id_types", "policy_system",
                   "policy_version_format", "module_version_format", "template_version_format",
                   "valid_from", "properties"}


def domain_from_settings(settings: Mapping[str, Any]) -> ConsentDomain:
    where = f"[[gics.domains]] {settings.get('name')!r}"
    name = _name(settings, "[[gics.domains]]")
    unknown = set(settings) - DOMAIN_SETTINGS
    if unknown:
        raise ValueError(f"{where}: unknown settings {', '.join(sorted(unknown))}")
    types = settings.get("signer_id_types", ["Pseudonym"])
    if (not isinstance(types, list) or not types
            or not all(isinstance(t, str) and re.fullmatch(r"[A-Za-z0-9_.\-]+", t) for t in types)):
        raise ValueError(f"{where}: signer_id_types must be a non-empty array of names "
                         "(letters, digits, '_', '-', '.')")
    valid_from = settings.get("valid_from")
    if valid_from is not None and not isinstance(valid_from, date):
        try:
            valid_from = date.fromisoformat(str(valid_from))
        except ValueError:
            raise ValueError(f"{where}: valid_from must be a date (YYYY-MM-DD)") from None
    return ConsentDomain(
        name=name, label=_text(settings, "label", where, name),
        description=_text(settings, "description", where),
        signer_id_types=tuple(dict.fromkeys(types)),
        policy_system=_text(settings, "policy_system", where, GICS_POLICY_SYSTEM),
        policy_version_format=_text(settings, "policy_version_format", where, "major.minor"),
        module_version_format=_text(settings, "module_version_format", where, "major.minor"),
        template_version_format=_text(settings, "template_version_format", where, "major.minor.char"),
        valid_from=valid_from, properties=_properties(settings, where))


def policy_from_settings(settings: Mapping[str, Any], domain: ConsentDomain) -> Policy:
    where = f"[[gics.policies]] {settings.get('name')!r}"
    unknown = set(settings) - {"domain", "name", "version", "label", "description", "system",
                               "codes", "properties"}
    if unknown:
        raise ValueError(f"{where}: unknown settings {', '.join(sorted(unknown))}")
    codes = []
    for text in settings.get("codes", []):
        if not isinstance(text, str):
            raise ValueError(f"{where}: codes must be strings system|code")
        system, sep, code = text.rpartition("|")
        if not sep or not system or not code:
            raise ValueError(f"{where}: code {text!r} must be written system|code")
        codes.append(Coding(system, code, _name(settings, where)))
    return Policy(domain=domain.name, name=_name(settings, where),
                  version=_name(settings, where, "version"),
                  label=_text(settings, "label", where), description=_text(settings, "description", where),
                  system=_text(settings, "system", where, domain.policy_system), codes=tuple(codes),
                  properties=_properties(settings, where))


def module_from_settings(settings: Mapping[str, Any], domain: ConsentDomain) -> Module:
    where = f"[[gics.modules]] {settings.get('name')!r}"
    unknown = set(settings) - {"domain", "name", "version", "label", "text", "policies", "properties"}
    if unknown:
        raise ValueError(f"{where}: unknown settings {', '.join(sorted(unknown))}")
    entries = []
    for entry in settings.get("policies", []):
        if isinstance(entry, str):
            entries.append(ModulePolicy(Key.parse(entry, f"{where}: policy")))
        elif isinstance(entry, Mapping) and isinstance(entry.get("policy"), str):
            entries.append(ModulePolicy(Key.parse(entry["policy"], f"{where}: policy"),
                                        Expiry.from_settings(entry, where)))
        else:
            raise ValueError(f"{where}: policies must be 'name|version' strings or tables with "
                             "policy, expires_after, expires_on")
    if len({e.policy for e in entries}) != len(entries):
        raise ValueError(f"{where}: a policy is named twice")
    return Module(domain=domain.name, name=_name(settings, where), version=_name(settings, where, "version"),
                  label=_text(settings, "label", where), text=_text(settings, "text", where),
                  policies=tuple(entries), properties=_properties(settings, where))


def template_from_settings(settings: Mapping[str, Any], domain: ConsentDomain) -> Template:
    where = f"[[gics.templates]] {settings.get('name')!r}"
    unknown = set(settings) - {"domain", "name", "version", "type", "label", "title", "description",
                               "expires_after", "expires_on", "modules", "properties", "signatures"}
    if unknown:
        raise ValueError(f"{where}: unknown settings {', '.join(sorted(unknown))}")
    try:
        kind = TemplateType(str(settings.get("type", "CONSENT")).upper().replace("-", "_"))
    except ValueError:
        raise ValueError(f"{where}: type must be one of {', '.join(t.value for t in TemplateType)}") from None
    assigned = []
    for entry in settings.get("modules", []):
        if isinstance(entry, str):
            assigned.append(AssignedModule(Key.parse(entry, f"{where}: module")))
        elif isinstance(entry, Mapping) and isinstance(entry.get("module"), str):
            mandatory = entry.get("mandatory", False)
            if not isinstance(mandatory, bool):
                raise ValueError(f"{where}: mandatory must be true or false")
            assigned.append(AssignedModule(Key.parse(entry["module"], f"{where}: module"), mandatory))
        else:
            raise ValueError(f"{where}: modules must be 'name|version' strings or tables with "
                             "module and mandatory")
    if not assigned:
        raise ValueError(f"{where} needs at least one module")
    if len({a.module.name for a in assigned}) != len(assigned):
        raise ValueError(f"{where}: a module is named twice")
    signatures = settings.get("signatures", ["consent"])
    if not isinstance(signatures, list) or not set(signatures) <= {"consent", "witness", "verification"}:
        raise ValueError(f"{where}: signatures must name consent, witness or verification")
    return Template(domain=domain.name, name=_name(settings, where), version=_name(settings, where, "version"),
                    type=kind, label=_text(settings, "label", where), title=_text(settings, "title", where),
                    description=_text(settings, "description", where),
                    expiry=Expiry.from_settings(settings, where), modules=tuple(assigned),
                    properties=_properties(settings, where), signatures=tuple(dict.fromkeys(signatures)))


# --- signed consents ------------------------------------------------------------------------

class SignedPolicy(NamedTuple):
    """A policy as one consent grants or refuses it: valid from the consent's date until
    `expires` (None: no end)."""

    name: str
    version: str
    status: ConsentStatus
    expires: datetime | None

    @property
    def key(self) -> Key:
        return Key(self.name, self.version)


@dataclass(frozen=True)
class SignedConsent:
    """One filled-in, signed template, as stored.

    `seq` is the store's insertion order, used for paging; `resources` holds what the client
    sent (questionnaireResponse, patient, provenance, documentReference) as given."""

    id: str
    domain: str
    template: Key
    template_type: TemplateType
    signer_ids: frozenset[SignerId]
    date: datetime
    recorded: datetime
    modules: tuple[tuple[Key, ConsentStatus], ...]
    policies: tuple[SignedPolicy, ...]
    resources: Mapping[str, Any] = field(default_factory=dict, compare=False)
    seq: int = 0

    @property
    def person_key(self) -> str:
        """The signer ids in a canonical order, as one string (a unique key's part)."""
        return "\n".join(sorted(str(s) for s in self.signer_ids))

    @property
    def fingerprint(self) -> str:
        """The consent's unique key as a fixed-length digest: one consent per domain, template
        version, signer ids and moment of signing."""
        key = "\x1f".join((self.domain, self.template.name, self.template.version, self.person_key,
                            str(to_millis(self.date))))
        return hashlib.sha256(key.encode()).hexdigest()

    def order(self) -> tuple:
        """Newer consents sort after older ones: by date, then template version, then the
        moment they were recorded."""
        return (self.date, version_order(self.template.version), self.recorded, self.seq)


def to_millis(moment: datetime) -> int:
    """Milliseconds since the epoch, as stores keep moments."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def from_millis(millis: int) -> datetime:
    seconds, rest = divmod(millis, 1000)
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.replace(microsecond=rest * 1000) if rest else moment


def whole_millis(moment: datetime) -> datetime:
    """The moment as precise as stores keep it."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def sign(template: Template, catalogue: Catalogue, answers: Mapping[Key, ConsentStatus],
         signed_at: datetime, zone: tzinfo) -> tuple[tuple[tuple[Key, ConsentStatus], ...], tuple[SignedPolicy, ...]]:
    """The module and policy statuses of a template signed with these answers at `signed_at`.

    A module without an answer counts as NOT_ASKED. A policy that several modules grant takes
    the most affirmative status among them and the earliest expiry of those that grant it."""
    modules: list[tuple[Key, ConsentStatus]] = []
    chosen: dict[Key, SignedPolicy] = {}
    template_end = template.expiry.end(signed_at, zone) if template.expiry else None
    statement = STATEMENT_STATUS.get(template.type)
    for assigned in template.modules:
        status = answers.get(assigned.module, ConsentStatus.NOT_ASKED)
        modules.append((assigned.module, status))
        if statement is not None:
            if status not in (ConsentStatus.ACCEPTED, statement):
                continue  # the person did not accept this module's statement: nothing changes
            status = statement
        module = catalogue.module(template.domain, assigned.module)
        assert module is not None, "templates are checked against their modules when stored"
        for entry in module.policies:
            end = earliest(template_end, entry.expiry.end(signed_at, zone) if entry.expiry else None)
            candidate = SignedPolicy(entry.policy.name, entry.policy.version, status, end)
            known = chosen.get(entry.policy)
            if known is None or _rank(candidate) > _rank(known):
                chosen[entry.policy] = candidate
    return tuple(modules), tuple(sorted(chosen.values(), key=lambda p: (p.name, version_order(p.version))))


def _rank(policy: SignedPolicy) -> tuple:
    affirmative = 2 if policy.status.accepting else 1 if policy.status.declining else 0
    # Among equals the earlier end wins: the stricter module sets the limit.
    return (affirmative, -(policy.expires or OPEN_END).timestamp())


def parse_moment(text: str, zone: tzinfo) -> datetime:
    """A FHIR date or dateTime as an aware datetime; a date or a time without offset is read
    in `zone`."""
    if not isinstance(text, str) or not text:
        raise ValueError("not a date")
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    if re.fullmatch(r"\d{4}", value):
        value += "-01-01"
    elif re.fullmatch(r"\d{4}-\d{2}", value):
        value += "-01"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a date or dateTime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment


def signer_ids_of(identifiers: Iterable[Mapping[str, Any]], domain: ConsentDomain) -> tuple[
        list[SignerId], list[str]]:
    """The signer ids among FHIR Identifiers, and a problem sentence for each identifier that
    is not one of the domain's signer id types."""
    found: list[SignerId] = []
    problems: list[str] = []
    for index, identifier in enumerate(identifiers):
        system = identifier.get("system") if isinstance(identifier, Mapping) else None
        value = identifier.get("value") if isinstance(identifier, Mapping) else None
        if not isinstance(system, str) or not isinstance(value, str) or not value:
            problems.append(f"identifier {index + 1} needs a system and a value")
            continue
        if len(value) > MAX_NAME:
            problems.append(f"identifier {index + 1}: the value is longer than {MAX_NAME} characters")
            continue
        if not system.startswith(SIGNER_ID_SYSTEM_PREFIX):
            problems.append(f"identifier {index + 1}: the system must start with {SIGNER_ID_SYSTEM_PREFIX}")
            continue
        kind = system[len(SIGNER_ID_SYSTEM_PREFIX):]
        if kind not in domain.signer_id_types:
            problems.append(f"identifier {index + 1}: {kind!r} is not a signer id type of domain "
                            f"{domain.name!r}")
            continue
        found.append(SignerId(kind, value))
    return list(dict.fromkeys(found)), problems
