"""The dispatcher endpoint (`/ttp-fhir/fhir/dispatcher`): the federated trust centre (fTTP).

Sites link patients across a study from Bloom filters; uncertain cases go to a clearing that
compares identifying data once and deletes them. Configuration:

    [dispatcher]
    identifier_secret = "..."        # key of the hashes kept of identifiers ($pseudonymizePatient, source=local)
    idat_key = "..."                 # 32 bytes, base64: seals identifying data while a clearing runs
    identifier_system = "https://ths-greifswald.de/gpas"   # Identifier.system of answers; per study too
    domain_defaults = { length = 8 } # settings of domains a study names but no [[gpas.domains]] configures
    index_device = "cpu"             # or "gpu": Bloom filter search on a GPU (needs faiss-gpu)

    [[dispatcher.studies]]
    name = "mii"
    sites = ["dic_muenster", "dic_erlangen"]     # gPAS domains of this service, one per site
    projects = ["eyematics", "extern_*"]         # project domains; "x_*": each x_... created on first use
    versions = [{ name = "1", length = 1600 }]   # Bloom filter versions and their length in bits
    match_threshold = 0.9
    possible_match_threshold = 0.75
    task_ttl_hours = 336
    idat_elements = ["given", "family", "birthdate", "gender"]
    events = [{ name = "fttp.getMiiPsn_eyematics", target = "eyematics", create = false }]
    identifier_system = "https://ths-greifswald.de/dispatcher"   # optional

    [[dispatcher.persons]]    # persons stored at start-up where absent (demo data, migrations)
    [[dispatcher.clearings]]  # pending clearings stored at start-up where absent (demo data)

Domains a study names that no `[[gpas.domains]]` configures are created with `domain_defaults`
(Symbol32, 8 characters, prefix "<domain>_" unless set).
"""

from __future__ import annotations

import logging
from datetime import timezone
from typing import Any

from ttp_gateway.backends.base import StoreRegistry, UnitOfWork
from ttp_gateway.core.auth import ScopeKinds
from ttp_gateway.core.config import Config
from ttp_gateway.core.hookspecs import hookimpl
from ttp_gateway.core.fhir import is_absolute_uri
from ttp_gateway.plugins.gpas.api import GPAS

from .api import DISPATCHER
from .linkage import FilterIndexes, Linker
from .matcher import gpu_available
from .operations import SYSTEM, DispatcherOperations, new_domain, query
from .patients import PatientLinker
from .sealing import IdatDigest, IdatSeal, parse_key
from .store import LINKAGE, definition
from .studies import Study, StudyRegistry

log = logging.getLogger("ttp_gateway.dispatcher")


@hookimpl
def ttp_requires() -> list[str]:
    return ["gpas"]


@hookimpl
def ttp_scope_kinds(kinds: ScopeKinds) -> None:
    kinds.add("studies", "linkage studies (dispatcher)")


@hookimpl
def ttp_stores(stores: StoreRegistry) -> None:
    stores.add(definition())


@hookimpl
def ttp_setup(gateway) -> None:
    section = gateway.config.section("dispatcher")
    studies = StudyRegistry(gateway.repository)
    idat_key = parse_key(str(section["idat_key"])) if section.get("idat_key") else None
    # Without a key no clearing can keep IDAT (check-config insists on one when studies exist).
    indexes = FilterIndexes(gateway.repository, device=section.get("index_device", "cpu"))
    linker = Linker(gateway.repository, gateway.service(GPAS), IdatSeal(idat_key) if idat_key else None, indexes)
    secret = str(section.get("identifier_secret", "")).encode()
    system = section.get("identifier_system", SYSTEM)
    operations = DispatcherOperations(studies, linker, PatientLinker(studies, linker, secret, system),
                                      IdatDigest(idat_key or secret), system, section.get("domain_defaults", {}))
    gateway.provide(DISPATCHER, operations)


@hookimpl
def ttp_operations(gateway) -> list:
    return gateway.service(DISPATCHER).declarations()


@hookimpl
def ttp_startup(gateway) -> None:
    """Studies, their domains, demo data; then every study's filters into memory."""
    operations = gateway.service(DISPATCHER)
    section = gateway.config.section("dispatcher")
    pseudonymizer = gateway.service(GPAS)
    defaults = section.get("domain_defaults", {})
    for settings in section.get("studies", []):
        study = Study.from_settings(settings["name"], settings)
        operations.studies.put(study)
        for domain in study.domains:
            if pseudonymizer.domains.get(domain) is None:
                pseudonymizer.domains.put(new_domain(domain, defaults))
    for person in section.get("persons", []):
        _seed_person(gateway, operations, person)
    for clearing in section.get("clearings", []):
        _seed_clearing(gateway, operations, clearing)
    # Load every study's filters now rather than in the first request of each.
    for study in operations.studies.all():
        for version in study.versions:
            operations.linker.indexes.synced(study, version)


@hookimpl
def ttp_check_config(config: Config) -> list[str]:
    section = config.section("dispatcher")
    problems: list[str] = []
    studies: dict[str, Study] = {}
    for index, settings in enumerate(section.get("studies", [])):
        name = settings.get("name") if isinstance(settings, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(f"[[dispatcher.studies]] #{index + 1} needs a name")
            continue
        try:
            studies[name] = Study.from_settings(name, settings)
        except (TypeError, ValueError) as error:
            problems.append(f"[[dispatcher.studies]] {error}")
    if studies and not section.get("identifier_secret"):
        problems.append("[dispatcher] identifier_secret is required when studies are configured")
    if studies and not section.get("idat_key"):
        problems.append("[dispatcher] idat_key is required when studies are configured: identifying data "
                        "of a clearing are kept sealed under it (e.g. `openssl rand -base64 32`)")
    elif section.get("idat_key"):
        try:
            parse_key(str(section["idat_key"]))
        except ValueError as error:
            problems.append(f"[dispatcher] {error}")
    if not is_absolute_uri(section.get("identifier_system", SYSTEM)):
        problems.append("[dispatcher] identifier_system must be an absolute URI")
    try:  # domains a study names are made from these, some only when a request first needs them
        new_domain("domain", section.get("domain_defaults", {}))
    except (TypeError, ValueError) as error:
        problems.append(f"[dispatcher] domain_defaults: {error}")
    device = section.get("index_device", "cpu")
    if device not in ("cpu", "gpu"):
        problems.append('[dispatcher] index_device must be "cpu" or "gpu"')
    elif device == "gpu" and not gpu_available():
        problems.append('[dispatcher] index_device = "gpu" needs faiss with GPU support (faiss-gpu) and a GPU; '
                        'this faiss has none or sees no GPU')
    for kind in ("persons", "clearings"):
        for index, seed in enumerate(section.get(kind, [])):
            study = studies.get(seed.get("study")) if isinstance(seed, dict) else None
            if study is None:
                problems.append(f"[[dispatcher.{kind}]] #{index + 1} names no configured study")
    return problems


@hookimpl
def ttp_cli_commands(subparsers: Any) -> None:
    from .cli import add_commands

    add_commands(subparsers)


@hookimpl
def ttp_readiness(gateway) -> dict[str, Any] | None:
    operations = gateway.services.get(DISPATCHER.name)
    return {"bloom_filter_indexes": operations.linker.indexes.loaded()} if operations else None


def _seed_person(gateway, operations: DispatcherOperations, seed: dict) -> None:
    """A configured person with its pseudonyms and filters, unless its first pseudonym is known."""
    study = operations.study(seed["study"])
    pseudonymizer = gateway.service(GPAS)
    pseudonyms: dict[str, str] = seed.get("pseudonyms", {})

    def seed_person(unit: UnitOfWork) -> None:
        store = unit[LINKAGE]
        store.lock_study(study.name)  # workers start together: one seeds, the others find it done
        first_domain, first_pseudonym = next(iter(pseudonyms.items()))
        owner = pseudonymizer.originals(unit, pseudonymizer.domain(first_domain), [first_pseudonym])
        if study.person_of(owner.get(first_pseudonym)) is not None:
            return
        person = store.create_persons(study.name, 1)[0]
        for domain, pseudonym in pseudonyms.items():
            pseudonymizer.insert_pairs(unit, pseudonymizer.domain(domain), [(study.person_key(person), pseudonym)])
        filters = []
        for entry in seed.get("bloomfilters", []):
            found = query(study, entry["bloomfilter"], entry.get("version"))
            if found.error is None:
                filters.append((person, entry["site"], found.version, found.bloom_filter))
        store.add_bloom_filters(study.name, filters)

    gateway.repository.write(seed_person)


def _seed_clearing(gateway, operations: DispatcherOperations, seed: dict) -> None:
    """A pending clearing whose requesting site's task has a configured id, unless it exists."""
    study = operations.study(seed["study"])
    now = gateway.clock().astimezone(timezone.utc)
    pseudonymizer = gateway.service(GPAS)

    def seed_clearing(unit: UnitOfWork) -> None:
        store = unit[LINKAGE]
        store.lock_study(study.name)
        if store.get_task(seed["task_id"]) is not None:
            return
        holder, pseudonym = seed["candidate_site"], seed["candidate"]
        owner = pseudonymizer.originals(unit, pseudonymizer.domain(holder), [pseudonym])
        person = study.person_of(owner.get(pseudonym))
        if person is None:
            log.warning("configured clearing names an unknown candidate", extra={"study": study.name})
            return
        operations.linker.open_clearing(unit, study, seed["site"], query(study, seed["bloomfilter"]),
                                        [(person, 0.0, holder)], now, requester_task=seed["task_id"])

    gateway.repository.write(seed_clearing)
