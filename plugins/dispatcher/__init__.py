"""The dispatcher endpoint (`/ttp-fhir/fhir/dispatcher`): the federated trust centre (fTTP).

Sites link patients across a study from Bloom filters; uncertain cases go to a clearing that
compares identifying data once and deletes them. Configuration:

    [dispatcher]
    identifier_secret = "..."        # key of the hashes $pseudonymizePatient keeps of identifiers
    index_device = "cpu"             # or "gpu": Bloom filter search on a GPU (needs faiss-gpu)

    [[dispatcher.studies]]
    name = "mii"
    sites = ["dic_muenster", "dic_erlangen"]     # gPAS domains of this service, one per site
    projects = ["eyematics"]                     # project domains
    versions = [{ name = "1", length = 1600 }]   # Bloom filter versions and their length in bits
    match_threshold = 0.9
    possible_match_threshold = 0.75
    task_ttl_hours = 336
    idat_elements = ["given", "family", "birthdate", "gender"]
    events = [{ name = "fttp.getMiiPsn_eyematics", target = "eyematics", create = false }]

    [[dispatcher.persons]]    # persons stored at start-up where absent (demo data, migrations)
    [[dispatcher.clearings]]  # pending clearings stored at start-up where absent (demo data)

Domains a study names that no `[[gpas.domains]]` configures are created with `domain_defaults`
(Symbol32, 8 characters, prefix "<domain>_" unless set).
"""

from __future__ import annotations

import logging
from datetime import timezone
from typing import Any

from ttp_gateway.core.config import Config
from ttp_gateway.core.hookspecs import hookimpl

from .linkage import FilterIndexes, Linker
from .matcher import gpu_available
from .operations import DispatcherOperations, query
from .patients import PatientLinker
from .studies import Study, StudyRegistry

log = logging.getLogger("ttp_gateway.dispatcher")
SERVICE = "dispatcher"


class _LazyPseudonymizer:
    """The gPAS plugin's pseudonymizer, looked up when first used: plugins build their
    operations in no particular order."""

    def __init__(self, gateway) -> None:
        self._gateway = gateway

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway.service("gpas"), name)


@hookimpl
def ttp_operations(gateway) -> list:
    studies = StudyRegistry(gateway.repository)
    section = gateway.config.section("dispatcher")
    indexes = FilterIndexes(device=section.get("index_device", "cpu"))
    linker = Linker(gateway.repository, _LazyPseudonymizer(gateway), indexes)  # type: ignore[arg-type]
    secret = str(section.get("identifier_secret", "")).encode()
    operations = DispatcherOperations(studies, linker, PatientLinker(studies, linker, secret))
    gateway.services[SERVICE] = operations
    return operations.declarations()


@hookimpl(trylast=True)
def ttp_startup(gateway) -> None:
    """After the gPAS plugin has put its domains in place: studies, their domains, demo data."""
    operations: DispatcherOperations = gateway.service(SERVICE)
    section = gateway.config.section("dispatcher")
    pseudonymizer = gateway.service("gpas")
    defaults = section.get("domain_defaults", {})
    for settings in section.get("studies", []):
        study = Study.from_settings(settings["name"], settings)
        operations.studies.put(study)
        for domain in study.domains:
            if pseudonymizer.domains.get(domain) is None:
                from ttp_gateway.plugins.gpas.domains import Domain

                pseudonymizer.domains.put(Domain.from_settings(domain, {"prefix": f"{domain}_", **defaults}))
    for person in section.get("persons", []):
        _seed_person(gateway, operations, person)
    for clearing in section.get("clearings", []):
        _seed_clearing(gateway, operations, clearing)
    # Load every study's filters now rather than in the first request of each.
    for study in operations.studies.all():
        for version in study.versions:
            with gateway.repository.transaction() as tx:
                operations.linker.indexes.synced(tx, study, version)


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
    operations: DispatcherOperations | None = gateway.services.get(SERVICE)
    return {"bloom_filter_indexes": operations.linker.indexes.loaded()} if operations else None


def _seed_person(gateway, operations: DispatcherOperations, seed: dict) -> None:
    """A configured person with its pseudonyms and filters, unless its first pseudonym is known."""
    study = operations.study(seed["study"])
    pseudonymizer = gateway.service("gpas")
    pseudonyms: dict[str, str] = seed.get("pseudonyms", {})
    with gateway.repository.transaction(write=True) as tx:
        tx.lock_study(study.name)  # workers start together: one seeds, the others find it done
        first_domain, first_pseudonym = next(iter(pseudonyms.items()))
        if study.person_of(tx.get_originals(first_domain, [first_pseudonym]).get(first_pseudonym)) is not None:
            return
        person = tx.create_persons(study.name, 1)[0]
        for domain, pseudonym in pseudonyms.items():
            pseudonymizer.insert_pairs(tx, pseudonymizer.domain(domain), [(study.person_key(person), pseudonym)])
        filters = []
        for entry in seed.get("bloomfilters", []):
            found = query(study, entry["bloomfilter"], entry.get("version"))
            if found.error is None:
                filters.append((person, entry["site"], found.version, found.bloom_filter))
        tx.add_bloom_filters(study.name, filters)


def _seed_clearing(gateway, operations: DispatcherOperations, seed: dict) -> None:
    """A pending clearing whose requesting site's task has a configured id, unless it exists."""
    study = operations.study(seed["study"])
    now = gateway.clock().astimezone(timezone.utc)
    with gateway.repository.transaction(write=True) as tx:
        tx.lock_study(study.name)
        if tx.get_task(seed["task_id"]) is not None:
            return
        holder, pseudonym = seed["candidate_site"], seed["candidate"]
        person = study.person_of(tx.get_originals(holder, [pseudonym]).get(pseudonym))
        if person is None:
            log.warning("configured clearing names an unknown candidate", extra={"study": study.name})
            return
        operations.linker.open_clearing(tx, study, seed["site"], query(study, seed["bloomfilter"]),
                                        [(person, 0.0, holder)], now, requester_task=seed["task_id"])


