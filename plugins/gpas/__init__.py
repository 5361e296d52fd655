"""The gPAS endpoint (`/ttp-fhir/fhir/gpas`): pseudonymisation domains and their operations.

Configuration:

    [gpas]
    identifier_system = "https://ths-greifswald.de/gpas"   # Identifier.system of every answer
    [[gpas.domains]]              # created or updated in storage at start-up
    name = "MIRACUM"
    alphabet = "Symbol32"         # Numbers, NumbersWithoutZero, NumbersX, Hex, Symbol31, Symbol32 or characters
    generator = "NoCheckDigits"   # LuhnModN, Damm, Verhoeff, ...
    length = 8
    prefix = "mrcm_"
    multi_psn = false
    deletable = true

    [[gpas.pairs]]                # pairs stored at start-up where absent (demo data, migrations)
    domain = "MIRACUM"
    original = "1001000000022"
    pseudonym = "mrcm_T0TYNV21"
"""

from __future__ import annotations

import logging
from typing import Any

from ttp_gateway.backends.base import StoreRegistry
from ttp_gateway.core.auth import ScopeKinds
from ttp_gateway.core.config import Config
from ttp_gateway.core.hookspecs import hookimpl

from .api import GPAS
from .domains import Domain, DomainRegistry
from ttp_gateway.core.fhir import is_absolute_uri

from .operations import SYSTEM, GpasOperations
from .service import PairOutcome, Pseudonymizer
from .store import definition

log = logging.getLogger("ttp_gateway.gpas")


@hookimpl
def ttp_scope_kinds(kinds: ScopeKinds) -> None:
    kinds.add("domains", "pseudonymisation domains (gPAS)")


@hookimpl
def ttp_stores(stores: StoreRegistry) -> None:
    stores.add(definition())


@hookimpl
def ttp_setup(gateway) -> None:
    gateway.provide(GPAS, Pseudonymizer(DomainRegistry(gateway.repository)))


@hookimpl
def ttp_operations(gateway) -> list:
    system = gateway.config.section("gpas").get("identifier_system", SYSTEM)
    return GpasOperations(gateway.service(GPAS), system).declarations()


@hookimpl
def ttp_startup(gateway) -> None:
    pseudonymizer = gateway.service(GPAS)
    section = gateway.config.section("gpas")
    for settings in section.get("domains", []):
        domain = Domain.from_settings(settings["name"], settings)
        pseudonymizer.domains.put(domain)
    pairs_by_domain: dict[str, list[tuple[str, str]]] = {}
    for pair in section.get("pairs", []):
        pairs_by_domain.setdefault(pair["domain"], []).append((pair["original"], pair["pseudonym"]))
    for name, pairs in pairs_by_domain.items():
        domain = pseudonymizer.domain(name)
        outcomes = gateway.repository.write(lambda unit: pseudonymizer.insert_pairs(unit, domain, pairs))
        refused = sum(1 for o in outcomes if o not in (PairOutcome.CREATED, PairOutcome.EXISTS))
        if refused:
            log.warning("configured pairs not stored", extra={"domain": name, "refused": refused})
@hookimpl
def ttp_check_config(config: Config) -> list[str]:
    section = config.section("gpas")
    problems: list[str] = []
    if not is_absolute_uri(section.get("identifier_system", SYSTEM)):
        problems.append("[gpas] identifier_system must be an absolute URI")
    names: set[str] = set()
    for index, settings in enumerate(_tables(section, "domains", problems)):
        name = settings.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"[[gpas.domains]] #{index + 1} needs a name")
            continue
        if name in names:
            problems.append(f"[[gpas.domains]] {name!r} is configured twice")
        names.add(name)
        try:
            Domain.from_settings(name, settings)
        except ValueError as error:
            problems.append(f"[[gpas.domains]] {error}")
    for index, pair in enumerate(_tables(section, "pairs", problems)):
        if not all(isinstance(pair.get(k), str) for k in ("domain", "original", "pseudonym")):
            problems.append(f"[[gpas.pairs]] #{index + 1} needs domain, original and pseudonym strings")
        elif pair["domain"] not in names:
            problems.append(f"[[gpas.pairs]] #{index + 1} names a domain not configured in [[gpas.domains]]")
    return problems


@hookimpl
def ttp_cli_commands(subparsers: Any) -> None:
    from .cli import add_commands

    add_commands(subparsers)


def _tables(section: dict, key: str, problems: list[str]) -> list[dict]:
    value = section.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.append(f"gpas.{key} must be an array of tables")
        return []
    return value
