"""The ten gICS operations: declarations and handlers.

Parameters, types and cardinalities are the guide's OperationDefinitions'. A domain, template
or policy named once for the whole request that does not exist fails it with 404; a patient
whose identifiers are not signer ids of the domain with 422; a QuestionnaireResponse that does
not fit its template with 400.

`$allConsentsForDomain` and `$allConsentsForTemplate` page with `_count` (default 100, at most
1000) and `_offset` (default 0), given in the URL's query as the reference gateway takes them
(also beside a POST body, as fts-next sends them); the answer carries `total` and `self`/`next`/
`previous` links that repeat the operation's parameters, so that they can be followed with GET.
A page reads only its own consents and those of their persons.

Handlers read in `call.reading()` and write in `call.writing()`; a handler may run again when
the store was busy, so nothing else is changed on the way (the audit is the core's to write).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ttp_gateway.core import fhir
from ttp_gateway.core.errors import InvalidRequest, NotFound, Unprocessable
from ttp_gateway.core.gateway import Call
from ttp_gateway.core.operations import Operation, Param

from . import resources as fr
from .model import Catalogue, ConsentDomain, Key, SignerId, parse_moment, signer_ids_of
from .service import GICS, ConsentService, opt_out_answers, revoked_grants
from .states import all_states, current_consent, current_states, decides, is_consented
from .store import CONSENTS

ENDPOINT = "gics"
CANONICAL = "https://ths-greifswald.de/fhir/OperationDefinition/gics"
SCOPE = "consent-domains"
DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_IDENTIFIERS = 10_000
SIGNERS_BATCH = 1000


def _service(call: Call) -> ConsentService:
    return call.gateway.service(GICS)


# --- reading parameters ---------------------------------------------------------------------

def _profile(call: Call) -> str:
    given = call.args.get("_profile")
    if given is None:  # a GET invocation names it in the query
        values = call.query.get("_profile") or []
        given = values[-1] if values else None
    if given is None:
        return fr.PROFILE_GICS
    profile = given.split("|", 1)[0]
    if profile not in fr.PROFILES:
        raise InvalidRequest("'_profile' must be one of " + ", ".join(fr.PROFILES))
    return profile


def _person(call: Call, domain: ConsentDomain) -> list[SignerId]:
    identifiers = call.args["personIdentifier"]
    if len(identifiers) > MAX_IDENTIFIERS:
        raise InvalidRequest(f"at most {MAX_IDENTIFIERS} personIdentifier parameters are accepted")
    found, problems = signer_ids_of(identifiers, domain)
    if problems:
        raise Unprocessable("personIdentifier: " + problems[0])
    return found


def paging(query: Mapping[str, Sequence[str]]) -> tuple[int, int]:
    """`_count` and `_offset` of a URL's query (the last value of each counts)."""
    values = {}
    for name, default in (("_count", DEFAULT_PAGE), ("_offset", 0)):
        given = query.get(name) or []
        if not given:
            values[name] = default
            continue
        text = str(given[-1]).strip()
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            raise InvalidRequest(f"'{name}' must be a non-negative integer")
        values[name] = int(text)
    return min(values["_count"], MAX_PAGE), values["_offset"]


def _links(call: Call, operation: str, params: Mapping[str, str], count: int, offset: int,
           total: int) -> list[dict]:
    """Links of a page, naming the operation's own parameters too, so that they can be followed
    with GET."""
    return fr.page_links(f"{call.base_url}/${operation}", list(params.items()), count, offset, total)


def _policy_keys(catalogue: Catalogue, domain: str, coding: Mapping[str, Any], version: str,
                 ignore_version: bool) -> list[Key]:
    code = coding.get("code")
    system = coding.get("system")
    if not isinstance(code, str) or not code or (system is not None and not isinstance(system, str)):
        raise InvalidRequest("'policy' needs a Coding with a code")
    policies = catalogue.find_policies(domain, system, code)
    if not ignore_version:
        policies = [p for p in policies if p.version == version]
    if not policies:
        raise NotFound(f"unknown policy in consent domain {domain!r}")
    return list(dict.fromkeys(Key(p.name, version) for p in policies))


def _persons_label(signer_ids: Sequence[SignerId]) -> list[str]:
    """Whose consent was read or written, for the audit trail."""
    return sorted(str(s) for s in signer_ids)


# --- handlers -------------------------------------------------------------------------------

class GicsOperations:
    def add_consent(self, call: Call) -> dict:
        service = _service(call)
        profile = _profile(call)
        response = call.args["questionnaireResponse"]
        with call.reading() as unit:
            catalogue, domain = service.domain(unit, call.args["domain"])
            signer_ids = self._patient(call.args["patient"], domain)
            template_domain, key = fr.parse_composed_canonical(response.get("questionnaire"))
            if template_domain != domain.name:
                raise InvalidRequest("the questionnaire belongs to another domain than 'domain'")
            catalogue, template = service.template(unit, domain.name, key)
        answers, problems = fr.answers_of(response, template)
        if problems:
            raise InvalidRequest("questionnaireResponse: " + problems[0])
        try:
            signed_at = parse_moment(response.get("authored"), service.zone)
        except (ValueError, TypeError):
            raise InvalidRequest("questionnaireResponse.authored must be the date of signing") from None
        documents = call.args["documentReference"]
        consent = service.signed_consent(catalogue, template, signer_ids, signed_at, answers, {
            "questionnaireResponse": response, "patient": call.args["patient"],
            "provenance": call.args["provenance"], "documentReference": documents})
        with call.writing() as unit:
            store = unit[CONSENTS]
            stored = service.record(store, consent)
            persons = store.consents_of_persons(domain.name, sorted(signer_ids))
        call.audit("add-consent", domain=domain.name, template=str(template.key), consent=stored.id,
                   persons=_persons_label(signer_ids))
        given = fr.given_resources(stored, catalogue, service.zone)
        document = fr.document_consent(stored, catalogue, service.zone, profile, revoked_grants(stored, persons),
                                       claim_de=False)
        return fr.collection([given["questionnaireResponse"], document, given["provenance"],
                              *given["documentReference"], given["patient"],
                              fr.verification_result(stored, service.zone)])

    def add_consent_opt_out(self, call: Call) -> dict:
        service = _service(call)
        with call.reading() as unit:
            catalogue, domain = service.domain(unit, call.args["domain"])
            signer_ids = self._patient(call.args["patient"], domain)
            template_domain, key = fr.parse_composed_canonical(call.args["questionnaire"])
            if template_domain != domain.name:
                raise InvalidRequest("the questionnaire belongs to another domain than 'domain'")
            catalogue, template = service.template(unit, domain.name, key)
        now = call.now()
        answers = opt_out_answers(template)
        response = fr.form_response(template, answers, now, service.zone)
        consent = service.signed_consent(catalogue, template, signer_ids, now, answers, {
            "questionnaireResponse": response, "patient": call.args["patient"]})
        with call.writing() as unit:
            stored = service.record(unit[CONSENTS], consent)
        call.audit("add-consent-opt-out", domain=domain.name, template=str(template.key), consent=stored.id,
                   persons=_persons_label(signer_ids))
        return fr.collection([fr.document_consent(stored, catalogue, service.zone)])

    def all_consents_for_domain(self, call: Call) -> dict:
        return self._consent_pages(call, "allConsentsForDomain", None)

    def all_consents_for_template(self, call: Call) -> dict:
        return self._consent_pages(call, "allConsentsForTemplate", call.args["template"])

    def _consent_pages(self, call: Call, operation: str, template_identifier: str | None) -> dict:
        service = _service(call)
        profile = _profile(call)
        count, offset = paging(call.query)
        with call.reading() as unit:
            catalogue, domain = service.domain(unit, call.args["domain"])
            params = {"domain": domain.name}
            template: Key | None = None
            if template_identifier is not None:
                key = fr.parse_template_identifier(template_identifier, domain.name)
                catalogue, found = service.template(unit, domain.name, key)
                template, params["template"] = found.key, template_identifier
            store = unit[CONSENTS]
            total = store.count_consents(domain.name, template)
            page = store.consents_page(domain.name, offset=offset, limit=count, template=template) \
                if count and offset < total else []
            signers = sorted({s for c in page for s in c.signer_ids})
            persons = store.consents_of_persons(domain.name, signers) if signers else []
        call.audit(operation, domain=domain.name, consents=len(page), offset=offset)
        if profile != fr.PROFILE_GICS:
            params["_profile"] = profile
        bundles = [fr.consent_bundle(c, catalogue, service.zone, profile, revoked_grants(c, persons)) for c in page]
        return fr.collection(bundles, total=total, links=_links(call, operation, params, count, offset, total))

    def all_consents_for_person(self, call: Call) -> dict:
        service = _service(call)
        profile = _profile(call)
        with call.reading() as unit:
            catalogue, domain = service.domain(unit, call.args["domain"])
            signer_ids = _person(call, domain)
            consents = unit[CONSENTS].consents_of_persons(domain.name, signer_ids, resources=True)
        call.audit("allConsentsForPerson", domain=domain.name, persons=_persons_label(signer_ids),
                   consents=len(consents))
        bundles = [fr.consent_bundle(c, catalogue, service.zone, profile, revoked_grants(c, consents))
                   for c in consents]
        return fr.collection(bundles, total=len(bundles))

    def current_consent_for_person_and_template(self, call: Call) -> dict:
        service = _service(call)
        profile = _profile(call)
        ignore_version = bool(call.args["ignore-version-number"])
        with call.reading() as unit:
            catalogue, domain = service.domain(unit, call.args["domain"])
            signer_ids = _person(call, domain)
            key = fr.parse_template_identifier(call.args["template"], domain.name)
            if not ignore_version:
                catalogue, _ = service.template(unit, domain.name, key)
            consents = unit[CONSENTS].consents_of_persons(domain.name, signer_ids, resources=True)
        current = current_consent(consents, signer_ids, key, ignore_version)
        call.audit("currentConsentForPersonAndTemplate", domain=domain.name, persons=_persons_label(signer_ids),
                   consents=int(current is not None))
        if current is None:
            return fr.collection([], total=0)
        return fr.collection([fr.consent_bundle(current, catalogue, service.zone, profile,
                                                revoked_grants(current, consents))], total=1)

    def all_policy_states_for_person(self, call: Call) -> dict:
        service = _service(call)
        with call.reading() as unit:
            catalogue, domain = service.domain(unit, call.args["domain"])
            signer_ids = _person(call, domain)
            consents = unit[CONSENTS].consents_of_persons(domain.name, signer_ids)
        states = all_states(consents, signer_ids, call.now())
        call.audit("allPolicyStatesForPerson", domain=domain.name, persons=_persons_label(signer_ids),
                   policies=len(states))
        states.sort(key=lambda s: (s.policy.name, s.consent.order()))
        return fr.collection([fr.policy_consent(s.consent, s.signed, s.permits, catalogue, service.zone, "all")
                              for s in states])

    def current_policy_states_for_person(self, call: Call) -> dict:
        service = _service(call)
        config = fr.check_config(call.args["config"])
        with call.reading() as unit:
            catalogue, domain = service.domain(unit, call.args["domain"])
            signer_ids = _person(call, domain)
            consents = unit[CONSENTS].consents_of_persons(domain.name, signer_ids)
        at = config.moment(call.now(), service.zone)
        states = current_states(consents, signer_ids, at, config)
        call.audit("currentPolicyStatesForPerson", domain=domain.name, persons=_persons_label(signer_ids),
                   policies=len(states))
        ordered = sorted(states.values(), key=lambda s: (s.policy.name, s.policy.version))
        return fr.collection([fr.policy_consent(s.consent, s.signed, decides(s), catalogue, service.zone)
                              for s in ordered])

    def is_consented(self, call: Call) -> dict:
        service = _service(call)
        config = fr.check_config(call.args["config"])
        with call.reading() as unit:
            catalogue, domain = service.domain(unit, call.args["domain"])
            signer_ids = _person(call, domain)
            keys = _policy_keys(catalogue, domain.name, call.args["policy"], call.args["version"],
                                config.ignore_version)
            consents = unit[CONSENTS].consents_of_persons(domain.name, signer_ids)
        at = config.moment(call.now(), service.zone)
        consented = any(is_consented(consents, signer_ids, key, at, config) for key in keys)
        call.audit("isConsented", domain=domain.name, persons=_persons_label(signer_ids),
                   policy=",".join(str(k) for k in keys))
        return fhir.parameters([{"name": "consented", "valueBoolean": consented}])

    def get_all_consented_ids_for(self, call: Call) -> dict:
        service = _service(call)
        config = fr.check_config(call.args["config"])
        id_type = call.args["signerIdTypeName"]
        consented: list[str] = []
        with call.reading() as unit:
            catalogue, domain = service.domain(unit, call.args["domain"])
            if id_type not in domain.signer_id_types:
                raise NotFound(f"{id_type!r} is not a signer id type of consent domain {domain.name!r}")
            keys = _policy_keys(catalogue, domain.name, call.args["policy"], call.args["version"],
                                config.ignore_version)
            at = config.moment(call.now(), service.zone)
            store = unit[CONSENTS]
            after = ""
            while True:
                page = store.signers_page(domain.name, id_type, after=after, limit=SIGNERS_BATCH)
                for value, consents in page:
                    asked = [SignerId(id_type, value)]
                    if any(is_consented(consents, asked, key, at, config) for key in keys):
                        consented.append(value)
                if not page:
                    break
                after = page[-1][0]
        call.audit("getAllConsentedIdsFor", domain=domain.name, signer_id_type=id_type,
                   policy=",".join(str(k) for k in keys), persons=len(consented))
        system = SignerId(id_type, "").system
        return fhir.parameters({"name": "personIdentifier", "valueIdentifier": {"system": system, "value": v}}
                               for v in consented)

    @staticmethod
    def _patient(patient: Mapping[str, Any], domain: ConsentDomain) -> list[SignerId]:
        identifiers = patient.get("identifier", [])
        if not isinstance(identifiers, list) or not identifiers:
            raise Unprocessable("the patient needs at least one identifier")
        found, problems = signer_ids_of(identifiers, domain)
        if problems:
            raise Unprocessable("patient: " + problems[0])
        return found

    # --- declarations -----------------------------------------------------------------------
    def declarations(self) -> list[Operation]:
        person = Param("personIdentifier", "Identifier", 1, "*",
                       "signer ids of the person (system https://ths-greifswald.de/fhir/gics/identifiers/"
                       "<signer id type>); several are OR-linked")
        domain = Param("domain", "string", 1, 1, "the consent domain", scope=SCOPE)
        profile = Param("_profile", "canonical", 0, 1,
                        "Consent profile of the answer: gICS (default), HL7-DE Einwilligungsmanagement or MII")
        template = Param("template", "string", 1, 1, "template identifier domain;name;version")
        config = Param("config", "Parameters", 0, 1,
                       "idMatchingType, ignoreVersionNumber, unknownStateIsConsideredAsDecline, requestDate")
        policy = Param("policy", "Coding", 1, 1, "the policy: gICS Policy code or one of its further codes")
        bundle = Param("return", "Bundle", 0, 1, "collection Bundle")
        return [
            self._op("addConsent", self.add_consent, returns=(Param("return", "Bundle", 1, 1, "collection Bundle"),),
                     description="Record a signed consent: a QuestionnaireResponse against a template, with the "
                                 "patient, scans and signatures kept as given; answers the computed Consent.",
                     parameters=(Param("patient", "Patient", 1, 1, "the signer"), domain,
                                 Param("questionnaireResponse", "QuestionnaireResponse", 1, 1, "the filled-in form"),
                                 Param("documentReference", "DocumentReference", 0, "*", "scans of the signed form"),
                                 Param("provenance", "Provenance", 0, 1, "signatures"), profile)),
            self._op("addConsentOptOut", self.add_consent_opt_out,
                     returns=(Param("return", "Bundle", 1, 1, "collection Bundle"),),
                     description="Record the consent an opt-out context implies: every module of the template "
                                 "ACCEPTED_OPT_OUT as of now.",
                     parameters=(Param("patient", "Patient", 1, 1, "the person"), domain,
                                 Param("questionnaire", "canonical", 1, 1, "QuestionnaireComposed canonical"))),
            self._op("allConsentsForDomain", self.all_consents_for_domain, affects_state=False, returns=(bundle,),
                     description="Every consent of a domain, one Bundle each; paged with _count and _offset.",
                     parameters=(domain, profile)),
            self._op("allConsentsForPerson", self.all_consents_for_person, affects_state=False, returns=(bundle,),
                     description="Every consent of a person in a domain, one Bundle each.",
                     parameters=(person, domain, profile)),
            self._op("allConsentsForTemplate", self.all_consents_for_template, affects_state=False,
                     returns=(bundle,), description="Every consent of a template version; paged like the domain's.",
                     parameters=(template, domain, profile)),
            self._op("currentConsentForPersonAndTemplate", self.current_consent_for_person_and_template,
                     affects_state=False, returns=(bundle,),
                     description="A person's current consent of a template: the highest template version's "
                                 "newest, or the newest of any version with ignore-version-number.",
                     parameters=(person, domain,
                                 Param("ignore-version-number", "boolean", 0, 1, "newest of any template version"),
                                 template, profile)),
            self._op("allPolicyStatesForPerson", self.all_policy_states_for_person, affects_state=False,
                     returns=(bundle,), description="Every policy a person ever signed, one Consent each.",
                     parameters=(person, domain)),
            self._op("currentPolicyStatesForPerson", self.current_policy_states_for_person, affects_state=False,
                     returns=(bundle,), description="The current state of every policy a person signed.",
                     parameters=(person, domain, config)),
            self._op("isConsented", self.is_consented, affects_state=False, batch=True, quick_read=True,
                     returns=(Param("consented", "boolean", 1, 1, "whether the policy is consented"),),
                     description="Whether a person consented to a policy; a batch Bundle checks many at once.",
                     parameters=(person, domain, policy, Param("version", "string", 1, 1, "policy version"),
                                 config)),
            self._op("getAllConsentedIdsFor", self.get_all_consented_ids_for, affects_state=False,
                     returns=(Param("personIdentifier", "Identifier", 0, "*", "a consented signer id"),),
                     description="The signer ids of one type of everyone who consented to a policy.",
                     parameters=(domain, Param("signerIdTypeName", "string", 1, 1, "signer id type"), policy,
                                 Param("version", "string", 1, 1, "policy version"), config)),
        ]

    @staticmethod
    def _op(name: str, handler: Any, **declaration: Any) -> Operation:
        return Operation(endpoint=ENDPOINT, name=name, handler=handler, url=f"{CANONICAL}/{name}",
                         title=name, **declaration)

