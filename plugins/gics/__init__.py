"""The gICS consent endpoint (`/ttp-fhir/fhir/gics`): consent domains, policies, modules,
versioned templates, signed consents and the policy states computed from them.

Configuration (the catalogue is created or replaced in storage at start-up, by every worker
alike; `ttp-gateway gics` manages the same objects in a running store; API keys, users and roles
may be scoped to consent domains with `consent-domains = [...]`):

    [gics]
    timezone = "Europe/Berlin"          # dates without an offset, request dates, answers

    [[gics.domains]]
    name = "MII"
    signer_id_types = ["Pseudonym"]     # identifier systems .../fhir/gics/identifiers/<type>
    policy_system = "https://ths-greifswald.de/fhir/CodeSystem/gics/Policy"

    [[gics.policies]]
    domain = "MII"
    name = "MDAT_erheben"
    version = "1.0"
    codes = ["urn:oid:2.16.840.1.113883.3.1937.777.24.5.3|2.16.840.1.113883.3.1937.777.24.5.3.6"]

    [[gics.modules]]
    domain = "MII"
    name = "PATDAT_erheben_speichern_nutzen"
    version = "1.8"
    policies = ["IDAT_erheben|1.0", { policy = "MDAT_erheben|1.0", expires_after = "P5Y" }]

    [[gics.templates]]
    domain = "MII"
    name = "Patienteneinwilligung MII"
    version = "1.6.d"
    type = "CONSENT"                    # CONSENT_OPT_OUT, WITHDRAWAL, REFUSAL, REVOCATION, OBJECTION
    expires_after = "P30Y"
    modules = [{ module = "PATDAT_erheben_speichern_nutzen|1.8", mandatory = true }]

    signatures = ["consent", "witness"]  # signatures the form asks for (consent, witness, verification)
    properties = { miiAnswerCodeSystem = "2.16.840.1.113883.3.1937.777.24.5.2" }

    [[gics.consents]]                   # signed consents stored at start-up where absent (demo data)
    domain = "MII"
    template = "Patienteneinwilligung MII|1.6.d"
    signer_ids = ["Pseudonym|dic_1H51T"]
    date = "2022-12-21"
    answers = { "PATDAT_erheben_speichern_nutzen|1.8" = "ACCEPTED" }
    location = "Greifswald"             # where it was signed; verified_by: who checked the signature

Domains, policies, modules and templates carry `label`, `description` (templates: `title`) and
`properties` (the guide's ExternalProperty key/value pairs) as the FHIR resources show them.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import timezone
from typing import Any, Mapping

from ttp_gateway.backends.base import StoreRegistry
from ttp_gateway.core.auth import ScopeKinds
from ttp_gateway.core.config import Config
from ttp_gateway.core.hookspecs import hookimpl

from . import resources as fr
from .model import Catalogue, ConsentStatus, Key, SignedConsent, SignerId, parse_moment
from .operations import SCOPE, GicsOperations
from .search import searches
from .service import DEFAULT_ZONE, GICS, ConsentService, known_zone, zone_of
from .store import CONSENTS, definition

log = logging.getLogger("ttp_gateway.gics")
__all__ = ["GICS", "CONSENTS"]


@hookimpl
def ttp_scope_kinds(kinds: ScopeKinds) -> None:
    kinds.add(SCOPE, "consent domains (gICS)")


@hookimpl
def ttp_stores(stores: StoreRegistry) -> None:
    stores.add(definition())


@hookimpl
def ttp_setup(gateway) -> None:
    zone = zone_of(gateway.config.section("gics").get("timezone", DEFAULT_ZONE))
    gateway.provide(GICS, ConsentService(zone, gateway.clock))


@hookimpl
def ttp_operations(gateway) -> list:
    return GicsOperations().declarations()


@hookimpl
def ttp_searches(gateway) -> list:
    return searches()


@hookimpl
def ttp_startup(gateway) -> None:
    """Store the configured catalogue (create or replace) and the configured consents where
    absent. Every worker does this; what one stored first, the others find in place."""
    section = gateway.config.section("gics")
    service: ConsentService = gateway.service(GICS)
    catalogue = Catalogue.from_settings(section)
    consents = [configured_consent(service, catalogue, settings) for settings in section.get("consents", [])]
    if not catalogue.domains and not consents:
        return

    def seed(unit) -> None:
        service.store_catalogue(unit, catalogue)
        if consents:
            unit[CONSENTS].add_consents(consents)

    gateway.repository.write(seed)
    log.info("configured consent catalogue in place", extra={
        "domains": len(catalogue.domains), "templates": len(catalogue.templates), "consents": len(consents)})


def configured_consent(service: ConsentService, catalogue: Catalogue, settings: Mapping[str, Any]) -> SignedConsent:
    """A consent of the `[[gics.consents]]` table, with the form and patient the service makes
    for it. Its id is derived from its unique key, so that every worker and every restart
    derives the same one."""
    template = catalogue.template(settings["domain"], Key.parse(settings["template"]))
    assert template is not None, "ttp_check_config names consents of unknown templates"
    signer_ids = [SignerId(*Key.parse(text, "signer id")) for text in settings["signer_ids"]]
    signed_at = parse_moment(str(settings["date"]), service.zone)
    answers = {Key.parse(k, "module"): ConsentStatus(v) for k, v in settings.get("answers", {}).items()}
    consent = service.signed_consent(catalogue, template, signer_ids, signed_at, answers, {
        "questionnaireResponse": {**fr.form_response(template, answers, signed_at, service.zone), "id": "form",
                                  "subject": {"reference": "Patient/person"}},
        "patient": {**fr.patient_of(signer_ids), "id": "person"},
        "provenance": fr.signatures_of("person", signed_at, service.zone, settings.get("location", ""),
                                       settings.get("verified_by", ""))})
    return replace(consent, id=str(uuid.uuid5(uuid.NAMESPACE_URL, "gics-configured-consent:" + consent.fingerprint)))


@hookimpl
def ttp_check_config(config: Config) -> list[str]:
    section = config.section("gics")
    try:
        catalogue = Catalogue.from_settings(section)
    except ValueError as error:
        return [str(error)]
    problems: list[str] = []
    zone = section.get("timezone", DEFAULT_ZONE)
    if not known_zone(zone):
        problems.append(f"[gics] timezone {zone!r} is not a known time zone")
    consents = section.get("consents", [])
    if not isinstance(consents, list):
        return problems + ["gics.consents must be an array of tables"]
    for index, settings in enumerate(consents):
        problems += _consent_problems(catalogue, settings, f"[[gics.consents]] #{index + 1}")
    return problems


def _consent_problems(catalogue: Catalogue, settings: Any, where: str) -> list[str]:
    if not isinstance(settings, Mapping):
        return [f"{where} must be a table"]
    try:
        domain = catalogue.domain(settings.get("domain"))  # type: ignore[arg-type]
        if domain is None:
            return [f"{where} names an unknown domain"]
        template = catalogue.template(domain.name, Key.parse(str(settings.get("template")), "template"))
        if template is None:
            return [f"{where} names an unknown template"]
        ids = settings.get("signer_ids")
        if not isinstance(ids, list) or not ids:
            return [f"{where} needs signer_ids such as [\"Pseudonym|dic_1H51T\"]"]
        for text in ids:
            signer = SignerId(*Key.parse(str(text), "signer id"))
            if signer.type not in domain.signer_id_types:
                return [f"{where}: {signer.type!r} is not a signer id type of domain {domain.name!r}"]
        parse_moment(str(settings.get("date")), timezone.utc)
        answers = settings.get("answers", {})
        if not isinstance(answers, Mapping):
            return [f"{where}: answers must be a table module|version = STATUS"]
        for module, status in answers.items():
            if Key.parse(module, "module") not in template.module_keys():
                return [f"{where}: {module!r} is not a module of the template"]
            ConsentStatus(status)
    except ValueError as error:
        return [f"{where}: {error}"]
    return []


@hookimpl
def ttp_cli_commands(subparsers: Any) -> None:
    from .cli import add_commands

    add_commands(subparsers)
