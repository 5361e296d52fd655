"""The MII pseudonymisation interface on the gPAS domains (`[base]/gpas/v2`).

The Medical Informatics Initiative's vendor-neutral interface (implementation guide
`mii-interface-module-pseudonymization` 2026.1.0, FHIR R4): `$pseudonymize` (create or get),
`$get-pseudonym`, `$pseudonymize-multiple`, `$de-pseudonymize`, `$delete-pseudonym` and
`$anonymize-original`, each for one `context` and one `original` (or `pseudonym`) given as
Identifiers, and lists as `batch` or `transaction` Bundles of such calls, in JSON or XML. The
same domains and pseudonyms as gPAS's own endpoint, served through gPAS's public API only: the
plugin keeps no data of its own. How it answers the guide's open questions: `operations`.

Configuration:

    [mii_psn]
    base = "gpas/v2"                # the endpoint below [server] base_path (default gpas/v2)
    draft_base = "gpas/v2-draft"    # optional: the drafts' request form (DicomShield), see `draft`

    [mii_psn.systems]               # optional, per gPAS domain: the Identifier.system that names
    Transfer1 = "https://sample/psn-system"   # it as a context; also the system of its pseudonyms

A context whose domain has a configured system must be sent with that system or none; a
domain without one accepts any. Callers are scoped to domains (`domains = [...]` of an API key,
user or role) and to the endpoint (`endpoints = ["gpas/v2"]`) like every other caller.
"""

from __future__ import annotations

import re
from typing import Any

from ttp_gateway.core.config import Config
from ttp_gateway.core.fhir import is_absolute_uri
from ttp_gateway.core.hookspecs import hookimpl
from ttp_gateway.plugins.gpas.api import GPAS

from .draft import DraftInterface
from .operations import ENDPOINT, MiiInterface

_ENDPOINT_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
# gPAS's own endpoint: its $pseudonymize means something else (read only, string lists).
_GPAS_ENDPOINT = "gpas"


@hookimpl
def ttp_requires() -> list[str]:
    return ["gpas"]


@hookimpl
def ttp_operations(gateway: Any) -> list:
    section = gateway.config.section("mii_psn")
    pseudonymizer = gateway.service(GPAS)
    systems = section.get("systems", {})
    operations = MiiInterface(pseudonymizer, systems, _endpoint(section.get("base", ENDPOINT))).declarations()
    draft = section.get("draft_base", "")
    if draft:
        operations += DraftInterface(pseudonymizer, systems, _endpoint(draft)).declarations()
    return operations


@hookimpl
def ttp_check_config(config: Config) -> list[str]:
    section = config.section("mii_psn")
    problems: list[str] = []
    unknown = set(section) - {"base", "draft_base", "systems"}
    if unknown:
        problems.append(f"[mii_psn] unknown settings {', '.join(sorted(unknown))}")
    bases = {}
    for key, default in (("base", ENDPOINT), ("draft_base", "")):
        value = section.get(key, default)
        if key == "draft_base" and value == "":
            continue
        if not isinstance(value, str) or not all(_ENDPOINT_SEGMENT.fullmatch(s) for s in value.strip("/").split("/")):
            problems.append(f"[mii_psn] {key} must be an endpoint path such as \"gpas/v2\" "
                            "(letters, digits, '.', '_', '~', '-' between slashes)")
            continue
        if _endpoint(value) == _GPAS_ENDPOINT:
            problems.append(f"[mii_psn] {key} must not be gPAS's own endpoint \"gpas\"")
        bases[key] = _endpoint(value)
    if len(bases) == 2 and bases["base"] == bases["draft_base"]:
        problems.append("[mii_psn] base and draft_base must be different endpoints")
    systems = section.get("systems", {})
    if not isinstance(systems, dict):
        problems.append("[mii_psn] systems must be a table of domain names and systems")
    else:
        for domain, system in systems.items():
            if not is_absolute_uri(system):
                problems.append(f"[mii_psn.systems] the system of domain {domain!r} must be an absolute URI")
    return problems


def _endpoint(base: str) -> str:
    return base.strip("/")
