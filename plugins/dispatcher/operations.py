"""The dispatcher's operations: declarations and handlers.

Answers follow the guide's examples part for part. Per-item problems (a filter of an unknown
version, a pending clearing, an unknown site pseudonym) are `error` parts beside the other
items' answers; a study, site, task or event named once for the whole request that is not
known fails the request with 404. Identifiers carry the study's `identifier_system`, else the
endpoint's (`[dispatcher] identifier_system`, the guide's `https://ths-greifswald.de/gpas` by
default).

`$requestPsnWorkflow` with `source=local` maps a site's own local identifiers (CODEX and
EyeMatics send a patient's RFC 4122 UUID when they have no Bloom filter, "data transfer without
record linkage") to that site's pseudonyms: `target` must be the site, each local identifier
is a person of its own, known again by a keyed hash of (site, identifier).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from ttp_gateway.core import fhir
from ttp_gateway.core.errors import Conflict, InvalidRequest, NotFound
from ttp_gateway.core.gateway import Call
from ttp_gateway.core.operations import Args, Operation, Param
from ttp_gateway.backends.base import UnitOfWork
from ttp_gateway.plugins.gpas.api import Domain

from . import bloom
from .idat import IDAT_ELEMENTS_SYSTEM, idat_from_patient
from .linkage import PSN_AVAILABLE, REPEAT_REQUEST, SEND_IDAT, Linker, Query, idat_to_document
from .patients import PatientLinker
from .sealing import IdatDigest
from .store import LINKAGE, Task
from .studies import LOCAL_SOURCE, REQUIRED_ELEMENTS, Study, StudyRegistry

ENDPOINT = "dispatcher"
SYSTEM = "https://ths-greifswald.de/gpas"  # the guide's Identifier.system, the default
CANONICAL = "https://ths-greifswald.de/fhir/OperationDefinition/dispatcher"
PENDING = fhir.issue_type("incomplete")  # linkage deferred to a clearing: ask again after it
NOT_FOUND = fhir.issue_type("not-found")
INVALID = fhir.issue_type("invalid")
TASK_ORDER = (PSN_AVAILABLE, SEND_IDAT, REPEAT_REQUEST)


def _id(name: str, value: str, system: str) -> dict[str, Any]:
    return {"name": name, "valueIdentifier": {"system": system, "value": value}}


def new_domain(name: str, defaults: Mapping[str, Any]) -> Domain:
    """A domain for a study that names one no `[[gpas.domains]]` configures."""
    return Domain.from_settings(name, {"prefix": f"{name}_", **defaults})


def _bloom_filter(value: str) -> dict[str, Any]:
    return {"name": "bloomfilter", "valueBase64Binary": value}


def _code(name: str, coding: dict) -> dict[str, Any]:
    return {"name": name, "valueCoding": coding}


def query(study: Study, text: str, version: str | None = None) -> Query:
    """A filter as sent, decoded for its version (the study's default when none is named), or
    the issue-type code of why it cannot be used."""
    version = version or study.default_version
    found = Query(given=text, version=version)
    if version not in study.versions:
        found.error = "not-found"
        return found
    try:
        found.bloom_filter = bloom.decode_filter(text, study.versions[version].length)
    except ValueError:
        found.error = "invalid"
        return found
    found.canonical = bloom.encode_filter(found.bloom_filter)
    return found


def _received(decided: bool) -> dict:
    message = "Patient data received; clearing decided." if decided else "Patient data received."
    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": fhir.informational(message, fhir.MSG_CREATED)}]}


def _instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class DispatcherOperations:
    def __init__(self, studies: StudyRegistry, linker: Linker, patients: PatientLinker,
                 digest: IdatDigest, system: str = SYSTEM,
                 domain_defaults: Mapping[str, Any] | None = None) -> None:
        self.studies = studies
        self.linker = linker
        self.patients = patients
        self.digest = digest
        self.system = system
        self.domain_defaults = dict(domain_defaults or {})

    # --- lookups ------------------------------------------------------------------------------
    def study(self, name: str) -> Study:
        study = self.studies.get(name)
        if study is None:
            raise NotFound(f"study {name!r} is not known")
        return study

    def system_of(self, study: Study) -> str:
        return study.identifier_system or self.system

    @staticmethod
    def _domain_of(study: Study, name: str, *, sites_only: bool = False) -> str:
        if not (name in study.sites if sites_only else study.has_domain(name)):
            raise NotFound(f"{'site' if sites_only else 'domain'} {name!r} is not part of study {study.name!r}")
        return name

    def _target_domain(self, study: Study, name: str, create: bool) -> Domain | None:
        """The gPAS domain of a target; one that a pattern names is created on first use, and
        is None until then for a request that may not create."""
        pseudonyms = self.linker.pseudonyms
        domain = pseudonyms.domains.get(name)
        if domain is None and study.by_pattern(name):
            if not create:
                return None
            domain = new_domain(name, self.domain_defaults)
            pseudonyms.domains.put(domain)
        return domain or pseudonyms.domain(name)

    # --- $requestPsnFromBfWorkflow ------------------------------------------------------------
    def request_psn_from_bf(self, call: Call) -> dict:
        study = self.study(call.args["study"])
        site = self._domain_of(study, call.args["target"], sites_only=True)
        queries = [query(study, *((item["bloomfilter"], item["version"]) if isinstance(item, Args) else (item,)))
                   for item in call.args["bloomfilter"]]
        snapshot = self.linker.search(study, queries)
        with call.writing() as unit:
            outcomes = self.linker.link(unit, study, site, queries, snapshot, call.now())
        call.audit("request-psn-from-bf", study=study.name, site=site, items=len(queries),
                   pending=sum(1 for o in outcomes if o.pending))
        system = self.system_of(study)
        answer = []
        for sent, outcome in zip(queries, outcomes):
            if outcome.pseudonym is not None:
                answer.append({"name": "pseudonym-bf", "part": [
                    _bloom_filter(sent.given), _id("target", site, system),
                    _id("pseudonym", outcome.pseudonym, system)]})
            else:
                code = PENDING if outcome.pending else fhir.issue_type(outcome.error or "invalid")
                answer.append({"name": "error", "part": [
                    _bloom_filter(sent.given), _id("target", site, system), _code("error-code", code)]})
        return fhir.parameters(answer)

    # --- $requestTasks ------------------------------------------------------------------------
    def request_tasks(self, call: Call) -> dict:
        study = self.study(call.args["study"])
        site = self._domain_of(study, call.args["target"])
        now = call.now()
        self.linker.expire(study, now)
        with call.reading() as unit:
            tasks = [t for t in unit[LINKAGE].get_open_tasks(study.name, site=site) if t.expires > now]
        tasks.sort(key=lambda t: (TASK_ORDER.index(t.kind), t.created, t.id))
        call.audit("request-tasks", study=study.name, site=site, items=len(tasks))
        system = self.system_of(study)
        return fhir.parameters(self._task_parameter(study, t, system) for t in tasks)

    @staticmethod
    def _task_parameter(study: Study, task, system: str) -> dict:
        details = task.details
        if task.kind == PSN_AVAILABLE:
            parts = [_bloom_filter(details["bloomfilter"]), _id("target", task.site, system),
                     _id("pseudonym", details["pseudonym"], system)]
        elif task.kind == SEND_IDAT:
            parts = [{"name": "expires", "valueInstant": _instant(task.expires)},
                     {"name": "taskId", "valueId": task.id}]
            parts.append(_id("pseudonym", details["pseudonym"], system) if "pseudonym" in details
                         else _bloom_filter(details["bloomfilter"]))
            parts += [_code("element", {"code": element, "system": IDAT_ELEMENTS_SYSTEM})
                      for element in details["elements"]]
        else:
            parts = [_id("study", study.name, system), _bloom_filter(details["bloomfilter"]),
                     _id("target", task.site, system)]
        return {"name": task.kind, "part": parts}

    # --- $providePatientData ------------------------------------------------------------------
    def provide_patient_data(self, call: Call) -> dict:
        task_id, site, now = call.args["taskId"], call.args["target"], call.now()
        with call.reading() as unit:
            task = unit[LINKAGE].get_task(task_id)
        # Unknown and another site's tasks get the same answer: a caller learns nothing of others.
        if task is None or task.kind != SEND_IDAT or task.site != site \
                or not call.client.may_use("studies", task.study):
            raise NotFound(f"task {task_id!r} is not known")
        study = self.study(task.study)
        requested = task.details["elements"]
        idat = idat_from_patient(call.args["patient"], requested,  # 422 when lacking or wrong
                                 optional=set(requested) - REQUIRED_ELEMENTS)
        digest = self.digest.of(task.id, idat_to_document(idat))
        if task.status == "done":
            return self._answered_again(task, digest)
        if task.status != "open" or task.expires <= now:
            raise NotFound(f"task {task_id!r} is no longer open", issue_code="expired")
        with call.writing() as unit:
            store = unit[LINKAGE]
            store.lock_study(study.name)
            current = store.get_task(task_id)
            if current is not None and current.status == "done":
                return self._answered_again(current, digest)
            if current is None or current.status != "open":
                raise NotFound(f"task {task_id!r} is no longer open", issue_code="expired")
            outcome = self.linker.provide(unit, study, current, idat, digest, now)
        call.audit("provide-patient-data", study=study.name, site=site, task=task_id,
                   decided=outcome.decided, comparisons=outcome.comparisons)
        return _received(outcome.decided)

    @staticmethod
    def _answered_again(task: Task, digest: str) -> dict:
        """A repeated answer to a task (a retry after a lost response): the same success for
        the same data, a conflict for other data."""
        if task.details.get("idat") != digest:
            raise Conflict(f"task {task.id!r} was answered already, with other patient data")
        return _received(bool(task.details.get("decided")))

    # --- $updateBf ----------------------------------------------------------------------------
    def update_bf(self, call: Call) -> dict:
        study = self.study(call.args["study"])
        site = self._domain_of(study, call.args["source"], sites_only=True)
        version = call.args["bfVersion"]
        if version not in study.versions:
            raise NotFound(f"Bloom filter version {version!r} is not configured for study {study.name!r}")
        try:
            data = bloom.decode_filter(call.args["bloomfilter"], study.versions[version].length)
        except ValueError as error:
            raise InvalidRequest(f"parameter 'bloomfilter': {error}") from None
        pseudonym = call.args["pseudonym"]
        domain = self.linker.pseudonyms.domain(site)
        with call.writing() as unit:
            person = study.person_of(self.linker.pseudonyms.originals(unit, domain, [pseudonym]).get(pseudonym))
            if person is None:
                raise NotFound(f"the pseudonym is not known at {site!r} in study {study.name!r}")
            store = unit[LINKAGE]
            store.lock_study(study.name)
            store.replace_bloom_filters(study.name, person, site, version, data)
        call.audit("update-bf", study=study.name, site=site, version=version)
        return fhir.informational("Bloomfilter updated.", fhir.MSG_UPDATED)

    # --- $requestPsnWorkflow ------------------------------------------------------------------
    def request_psn_workflow(self, call: Call) -> dict:
        study = self.study(call.args["study"])
        target = self._domain_of(study, call.args["target"])
        source = call.args["source"]
        local = source == LOCAL_SOURCE and not study.has_domain(source)
        if local:  # a site's local identifiers lead only to its own pseudonyms
            self._domain_of(study, target, sites_only=True)
        else:
            self._domain_of(study, source)
        create = True
        if call.args["event"] is not None:
            event = study.events.get(call.args["event"])
            if event is None:
                raise NotFound(f"event {call.args['event']!r} is not configured for study {study.name!r}")
            if not event.leads_to(target) or (event.sources and source not in event.sources):
                raise InvalidRequest(f"event {event.name!r} does not lead from {source!r} to {target!r}")
            create = event.create
        originals = call.args["original"]
        domain = self._target_domain(study, target, create)
        keys: dict[str, str] = {}
        found: dict[str, str] = {}
        if domain is not None:
            psn = self.linker.pseudonyms
            with (call.writing() if create else call.reading()) as unit:
                if local:
                    keys = self._local_persons(unit, study, target, originals, create)
                else:
                    owners = psn.originals(unit, psn.domain(source), originals)
                    keys = {o: key for o in originals if study.person_of(key := owners.get(o)) is not None}
                if create:
                    found = psn.get_or_create(unit, domain, sorted(set(keys.values())))
                else:
                    found = psn.lookup(unit, domain, sorted(set(keys.values())))
        call.audit("request-psn-workflow", study=study.name, source=source, target=target, items=len(originals))
        system = self.system_of(study)
        answer = []
        for original in originals:
            pseudonym = found.get(keys.get(original, ""))
            if pseudonym is not None:
                answer.append({"name": "pseudonym", "part": [
                    _id("original", original, system), _id("target", target, system),
                    _id("pseudonym", pseudonym, system)]})
            else:
                answer.append({"name": "error", "part": [
                    _id("original", original, system), _id("target", target, system),
                    _code("error-code", NOT_FOUND)]})
        return fhir.parameters(answer)

    def _local_persons(self, unit: UnitOfWork, study: Study, site: str, originals: list[str],
                       create: bool) -> dict[str, str]:
        """The person key of each local identifier of a site; new persons for unknown ones where
        the request may create (no record linkage: the identifier is all there is)."""
        hashes = {original: self.patients.local_key(site, original) for original in originals if original}
        tx = unit[LINKAGE]
        if create:
            tx.lock_study(study.name)  # two requests for one new identifier make one person
        known = tx.find_persons(study.name, sorted(set(hashes.values())))
        if create:
            missing = sorted(set(hashes.values()) - set(known))
            if missing:
                persons = tx.create_persons(study.name, len(missing))
                tx.add_person_keys(study.name, list(zip(missing, persons)))
                known.update(zip(missing, persons))
        return {original: study.person_key(known[h]) for original, h in hashes.items() if h in known}

    # --- declarations -------------------------------------------------------------------------
    def declarations(self) -> list[Operation]:
        study = Param("study", "string", 1, 1, "the study", scope="studies")
        target_site = Param("target", "string", 1, 1, "the site (its domain)", scope="domains")
        return [
            self._op("requestPsnFromBfWorkflow", self.request_psn_from_bf,
                     description="Link 1..n Bloom filters of a site within a study; answers the site "
                                 "pseudonym of each, or an error part (pending clearing, unusable filter).",
                     parameters=(
                         study,
                         Param("bloomfilter", "base64Binary", 1, "*",
                               "Bloom filter (base64), plain or as bloomfilter and version parts", parts=(
                                   Param("bloomfilter", "base64Binary", 1, 1, "Bloom filter"),
                                   Param("version", "string", 1, 1, "its version"))),
                         target_site),
                     returns=(
                         Param("pseudonym-bf", None, 0, "*", "the site pseudonym of one filter", parts=(
                             Param("bloomfilter", "base64Binary", 1, 1), Param("target", "Identifier", 1, 1),
                             Param("pseudonym", "Identifier", 1, 1))),
                         Param("error", None, 0, "*", "a filter without a pseudonym (yet)", parts=(
                             Param("bloomfilter", "base64Binary", 0, 1), Param("target", "Identifier", 0, 1),
                             Param("error-code", "Coding", 1, 1))))),
            self._op("requestTasks", self.request_tasks, affects_state=False,
                     description="The open tasks of a site: send_idat, dic_psn_available, repeat_request.",
                     parameters=(study, Param("target", "string", 1, 1, "the site asking", scope="domains")),
                     returns=(
                         Param("dic_psn_available", None, 0, "*", "a pseudonym decided by a clearing", parts=(
                             Param("expires", "instant", 0, 1), Param("bloomfilter", "base64Binary", 1, 1),
                             Param("target", "Identifier", 1, 1), Param("pseudonym", "Identifier", 1, 1))),
                         Param("send_idat", None, 0, "*", "identifying data wanted for a clearing", parts=(
                             Param("expires", "instant", 1, 1), Param("taskId", "id", 1, 1),
                             Param("pseudonym", "Identifier", 0, 1), Param("bloomfilter", "base64Binary", 0, 1),
                             Param("element", "Coding", 1, "*"))),
                         Param("repeat_request", None, 0, "*", "a request to send again", parts=(
                             Param("expires", "instant", 0, 1), Param("study", "Identifier", 1, 1),
                             Param("bloomfilter", "base64Binary", 1, 1), Param("target", "Identifier", 1, 1))))),
            self._op("providePatientData", self.provide_patient_data,
                     description="Identifying data for a send_idat task; deleted irrevocably once the "
                                 "clearing is decided.",
                     parameters=(Param("taskId", "id", 1, 1, "the send_idat task"),
                                 Param("target", "string", 1, 1, "the site answering", scope="domains"),
                                 Param("patient", "Patient", 1, 1, "Patient in the IDAT profile")),
                     returns=(Param("return", "Bundle", 0, 1, "outcome"),)),
            self._op("updateBf", self.update_bf, url=f"{CANONICAL}/UpdateBf",
                     description="Replace the Bloom filter of a version for a known site pseudonym.",
                     parameters=(study, Param("bloomfilter", "base64Binary", 1, 1, "the new Bloom filter"),
                                 Param("source", "string", 1, 1, "the site", scope="domains"),
                                 Param("pseudonym", "string", 1, 1, "its pseudonym at the site"),
                                 Param("bfVersion", "string", 1, 1, "Bloom filter version")),
                     returns=(Param("return", "OperationOutcome", 1, 1, "outcome"),)),
            self._op("requestPsnWorkflow", self.request_psn_workflow,
                     description="Map 1..n pseudonyms of a source domain to the person's pseudonym in a "
                                 "target domain, created where needed (unless the event only looks up).",
                     parameters=(Param("original", "string", 1, "*", "pseudonyms in the source domain"),
                                 study,
                                 Param("source", "string", 1, 1, "source domain", scope="domains"),
                                 Param("target", "string", 1, 1, "target domain", scope="domains"),
                                 Param("event", "string", 0, 1, "a configured workflow")),
                     returns=(
                         Param("pseudonym", None, 0, "*", "the target pseudonym of one original", parts=(
                             Param("original", "Identifier", 1, 1), Param("target", "Identifier", 1, 1),
                             Param("pseudonym", "Identifier", 1, 1))),
                         Param("error", None, 0, "*", "an original without one", parts=(
                             Param("original", "Identifier", 0, 1), Param("target", "Identifier", 0, 1),
                             Param("error-code", "Coding", 1, 1))))),
            self._op("pseudonymizePatient", self.patients.pseudonymize_patient, batch=True,
                     url="https://ths-greifswald.de/fhir/OperationDefinition/gpas/pseudonymizePatient",
                     description="Link a Patient by its identifiers or demographics and answer count "
                                 "pseudonyms per context domain; several in a batch Bundle.",
                     parameters=(study, Param("patient", "Patient", 1, 1, "the Patient"),
                                 Param("context", None, 1, "*", "where to pseudonymise", parts=(
                                     Param("target", "string", 1, 1, "domain", scope="domains"),
                                     Param("count", "integer", 0, 1, "pseudonyms wanted; 0 looks up only",
                                           creates=True)))),
                     returns=(Param("externalPatientId", "string", 1, 1, "Patient.id as sent"),
                              Param("pseudonym", None, 1, "*", "pseudonyms of one domain", parts=(
                                  Param("target", "Identifier", 1, 1), Param("value", "Identifier", 0, "*"))))),
        ]

    @staticmethod
    def _op(name: str, handler: Any, url: str | None = None, **declaration: Any) -> Operation:
        return Operation(endpoint=ENDPOINT, name=name, handler=handler, url=url or f"{CANONICAL}/{name}",
                         title=name, **declaration)
