"""Linkage studies: their sites, project domains, Bloom filter versions, thresholds and events.

A study is configured in `[[dispatcher.studies]]` or created with `ttp-gateway studies create`;
either way it lives in storage. Sites and project domains are gPAS domains of this service: a
site's pseudonyms and a project's pseudonyms are drawn there, through the repository.

A project name ending in `*` names a family of project domains, one per name with that prefix,
each created when `$requestPsnWorkflow` first uses it (the NUM portal asks for
`extern_<project id>`, one per research project); an event may name the pattern as its target. `identifier_system`, where set, is the Identifier.system of the study's answers (the
NUM sites accept only `https://ths-greifswald.de/dispatcher`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Mapping

from ttp_gateway.backends.base import Repository
from ttp_gateway.core.registry import StoredObjects
from ttp_gateway.core.fhir import is_absolute_uri

from .idat import ELEMENT_ATTRIBUTES
from .store import LINKAGE, StudyRecord

PATTERN = "*"  # a project name ending in it is a prefix of project domains
# `source` of `$requestPsnWorkflow` for originals that are the target site's own local
# identifiers rather than pseudonyms of a study domain (data sent without record linkage).
LOCAL_SOURCE = "local"
DEFAULT_ELEMENTS = ("given", "family", "birthdate", "gender", "birthplace", "maidenname")
# Sites send requested IDAT "as far as known"; a clearing cannot decide without these.
REQUIRED_ELEMENTS = frozenset({"given", "family", "birthdate", "gender"})


@dataclass(frozen=True)
class BloomFilterVersion:
    name: str
    length: int  # bits


@dataclass(frozen=True)
class Event:
    """A named `$requestPsnWorkflow` workflow: which target it serves, from which sources, and
    whether it may create pseudonyms there or only look them up."""

    name: str
    target: str  # a domain, or a pattern of project domains ("extern_*")
    sources: tuple[str, ...] = ()
    create: bool = True

    def leads_to(self, target: str) -> bool:
        return target == self.target or (self.target.endswith(PATTERN) and _matches(self.target, target))


@dataclass(frozen=True)
class Study:
    name: str
    sites: tuple[str, ...]
    projects: tuple[str, ...] = ()
    versions: Mapping[str, BloomFilterVersion] = field(default_factory=dict)
    default_version: str = "1"
    match_threshold: float = 0.94
    possible_match_threshold: float = 0.82
    task_ttl: timedelta = timedelta(days=14)
    idat_elements: tuple[str, ...] = DEFAULT_ELEMENTS
    events: Mapping[str, Event] = field(default_factory=dict)
    candidates: int = 3  # persons compared in one clearing at most
    identifier_system: str | None = None  # None: the endpoint's

    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any]) -> "Study":
        """A study from its settings; ValueError names the first one that cannot work."""
        known = {"name", "sites", "projects", "versions", "default_version", "match_threshold",
                 "possible_match_threshold", "task_ttl_hours", "idat_elements", "events", "candidates",
                 "identifier_system"}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"study {name!r}: unknown settings {', '.join(sorted(unknown))}")
        sites = tuple(settings.get("sites", ()))
        projects = tuple(settings.get("projects", ()))
        if not (sites or projects) or not all(isinstance(s, str) and s for s in sites + projects):
            raise ValueError(f"study {name!r} needs sites or projects (names of domains)")
        if any(PATTERN in s for s in sites) or any(PATTERN in p[:-1] or p == PATTERN for p in projects):
            raise ValueError(f"study {name!r}: only a project name may end in {PATTERN!r} (a prefix "
                             "of project domains), and only there")
        versions = {}
        for entry in settings.get("versions", [{"name": "1", "length": 1600}]):
            version = BloomFilterVersion(str(entry.get("name", "")), int(entry.get("length", 0)))
            if not version.name or version.length < 8:
                raise ValueError(f"study {name!r}: every version needs a name and a length of at least 8 bits")
            versions[version.name] = version
        default_version = str(settings.get("default_version", next(iter(versions))))
        if default_version not in versions:
            raise ValueError(f"study {name!r}: default_version {default_version!r} is not a configured version")
        match = float(settings.get("match_threshold", cls.match_threshold))
        possible = float(settings.get("possible_match_threshold", cls.possible_match_threshold))
        if not 0 < possible <= match <= 1:
            raise ValueError(f"study {name!r}: thresholds must satisfy 0 < possible_match_threshold "
                             "<= match_threshold <= 1")
        elements = tuple(settings.get("idat_elements", DEFAULT_ELEMENTS))
        strange = [e for e in elements if e not in ELEMENT_ATTRIBUTES]
        if strange or not elements:
            raise ValueError(f"study {name!r}: unknown IDAT elements {', '.join(strange) or '(none given)'}")
        ttl_hours = float(settings.get("task_ttl_hours", 14 * 24))
        if ttl_hours <= 0:
            raise ValueError(f"study {name!r}: task_ttl_hours must be positive")
        events = {}
        for entry in settings.get("events", []):
            event = Event(name=str(entry.get("name", "")), target=str(entry.get("target", "")),
                          sources=tuple(entry.get("sources", ())), create=bool(entry.get("create", True)))
            domains = set(sites) | set(projects)
            if not event.name or event.target not in domains or not set(event.sources) <= domains | {LOCAL_SOURCE}:
                raise ValueError(f"study {name!r}: event {event.name or '(unnamed)'} needs a name and a "
                                 "target (and sources) among the study's sites and projects")
            events[event.name] = event
        candidates = int(settings.get("candidates", 3))
        if candidates < 1:
            raise ValueError(f"study {name!r}: candidates must be at least 1")
        system = settings.get("identifier_system")
        if system is not None and not is_absolute_uri(system):
            raise ValueError(f"study {name!r}: identifier_system must be an absolute URI")
        return cls(name=name, sites=sites, projects=projects, versions=versions,
                   default_version=default_version, match_threshold=match,
                   possible_match_threshold=possible, task_ttl=timedelta(hours=ttl_hours),
                   idat_elements=elements, events=events, candidates=candidates,
                   identifier_system=system)

    def settings(self) -> dict[str, Any]:
        return {
            "sites": list(self.sites), "projects": list(self.projects),
            "versions": [{"name": v.name, "length": v.length} for v in self.versions.values()],
            "default_version": self.default_version, "match_threshold": self.match_threshold,
            "possible_match_threshold": self.possible_match_threshold,
            "task_ttl_hours": self.task_ttl.total_seconds() / 3600, "idat_elements": list(self.idat_elements),
            "events": [{"name": e.name, "target": e.target, "sources": list(e.sources), "create": e.create}
                       for e in self.events.values()],
            "candidates": self.candidates,
            **({"identifier_system": self.identifier_system} if self.identifier_system else {}),
        }

    @property
    def domains(self) -> tuple[str, ...]:
        """Every domain the study names: sites first, then projects (not the patterns)."""
        return self.sites + tuple(p for p in self.projects if p not in self.sites and not p.endswith(PATTERN))

    def has_domain(self, name: str) -> bool:
        """Whether `name` is a site or project domain of the study, by name or by pattern."""
        return name in self.domains or self.by_pattern(name)

    def by_pattern(self, name: str) -> bool:
        """Whether `name` is a project domain of the study only through a pattern."""
        return name not in self.projects and any(
            p.endswith(PATTERN) and _matches(p, name) for p in self.projects)

    def person_key(self, person: int) -> str:
        """The original under which a person's pseudonyms are kept in the study's domains."""
        return f"{self.name}:{person}"

    def person_of(self, key: str | None) -> int | None:
        """The person of a key of this study; None for a key of another study or none."""
        if not key:
            return None
        study, _, number = key.rpartition(":")
        return int(number) if study == self.name and number.isdigit() else None


def _matches(pattern: str, name: str) -> bool:
    prefix = pattern[:-len(PATTERN)]
    return len(name) > len(prefix) and name.startswith(prefix) and PATTERN not in name


class StudyRegistry(StoredObjects[Study]):
    """The studies in storage, cached per process."""

    def __init__(self, repository: Repository, reload_interval: float = 1.0) -> None:
        super().__init__(self._load, reload_interval)
        self._repository = repository

    def _load(self) -> dict[str, Study]:
        with self._repository.read() as unit:
            records = unit[LINKAGE].get_studies()
        return {r.name: Study.from_settings(r.name, r.settings) for r in records}

    def put(self, study: Study) -> bool:
        created = self._repository.write(
            lambda unit: unit[LINKAGE].put_study(StudyRecord(study.name, study.settings())))
        self.remember(study.name, study)
        return created
