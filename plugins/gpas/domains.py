"""Pseudonymisation domains: their rules, and the registry that keeps them at hand.

A domain is configured in `[[gpas.domains]]` or created with `ttp-gateway domains create`;
either way it lives in storage, and every worker reads it from there (`DomainRegistry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ttp_gateway.backends.base import Repository
from ttp_gateway.core.registry import StoredObjects

from .pseudonyms import PseudonymFormat
from .store import PSEUDONYMS, DomainRecord

FORMAT_SETTINGS = ("alphabet", "generator", "length", "prefix", "suffix", "include_prefix",
                   "include_suffix", "delimiter", "delimiter_every")
FLAG_SETTINGS = ("multi_psn", "deletable")
DEFAULTS: dict[str, Any] = {"alphabet": "Symbol32", "generator": "NoCheckDigits", "length": 8,
                            "prefix": "", "suffix": "", "include_prefix": False,
                            "include_suffix": False, "delimiter": "", "delimiter_every": 0,
                            "multi_psn": False, "deletable": False}


@dataclass(frozen=True)
class Domain:
    name: str
    format: PseudonymFormat
    multi_psn: bool = False
    deletable: bool = False
    description: str = ""

    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any], description: str = "") -> "Domain":
        """A domain from its settings (configuration table or stored record); ValueError names
        the first setting that cannot work."""
        unknown = set(settings) - set(FORMAT_SETTINGS) - set(FLAG_SETTINGS) - {"name", "description"}
        if unknown:
            raise ValueError(f"domain {name!r}: unknown settings {', '.join(sorted(unknown))}")
        merged = {**DEFAULTS, **settings}
        for flag in ("multi_psn", "deletable", "include_prefix", "include_suffix"):
            if not isinstance(merged[flag], bool):
                raise ValueError(f"domain {name!r}: {flag} must be true or false")
        try:
            fmt = PseudonymFormat(alphabet=merged["alphabet"], check_digits=merged["generator"],
                                  length=merged["length"], prefix=merged["prefix"],
                                  suffix=merged["suffix"], include_prefix=merged["include_prefix"],
                                  include_suffix=merged["include_suffix"],
                                  delimiter=merged["delimiter"], delimiter_every=merged["delimiter_every"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"domain {name!r}: {error}") from None
        return cls(name=name, format=fmt, multi_psn=merged["multi_psn"],
                   deletable=merged["deletable"], description=description or settings.get("description", ""))

    def settings(self) -> dict[str, Any]:
        """The settings to store, complete, so a later change of defaults cannot alter them."""
        f = self.format
        return {"alphabet": f.alphabet, "generator": f.check_digits, "length": f.length,
                "prefix": f.prefix, "suffix": f.suffix, "include_prefix": f.include_prefix,
                "include_suffix": f.include_suffix, "delimiter": f.delimiter,
                "delimiter_every": f.delimiter_every, "multi_psn": self.multi_psn,
                "deletable": self.deletable}

    def record(self) -> DomainRecord:
        return DomainRecord(name=self.name, settings=self.settings(), description=self.description)


class DomainRegistry(StoredObjects[Domain]):
    """The domains in storage, cached per process."""

    def __init__(self, repository: Repository, reload_interval: float = 1.0) -> None:
        super().__init__(self._load, reload_interval)
        self._repository = repository

    def _load(self) -> dict[str, Domain]:
        with self._repository.read() as unit:
            records = unit[PSEUDONYMS].get_domains()
        return {r.name: Domain.from_settings(r.name, r.settings, r.description) for r in records}

    def put(self, domain: Domain) -> bool:
        """Store a domain (create or replace its settings); True if it is new."""
        created = self._repository.write(lambda unit: unit[PSEUDONYMS].put_domain(domain.record()))
        self.remember(domain.name, domain)
        return created
