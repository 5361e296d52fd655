"""The FHIR shapes of the gICS endpoint, built and read as plain dicts.

Built: the catalogue as the guide shows it (ResearchStudy for a domain, ActivityDefinition for a
policy, Questionnaire for a module, a template frame and a composed template), a signed consent
as a *document* Consent with one nested provision per granted policy, a policy's state as a
*policy* Consent with one provision, and the resources a consent came with (QuestionnaireResponse,
Patient, Provenance, DocumentReference) under the service's own ids.

Three Consent profiles can be asked for with `_profile`: the gICS one (default; it also claims
the HL7-DE Einwilligungsmanagement profile, as the reference does), the HL7-DE one alone, and the
MII KDS Consent profile (the MII consent category and policy URI).

Read: the `config` Parameters, QuestionnaireComposed canonicals and TemplateFrame identifiers,
and a QuestionnaireResponse's answers.
"""

from __future__ import annotations

import copy
import uuid
from datetime import date, datetime, tzinfo
from typing import Any, Collection, Iterable, Mapping, Sequence
from urllib.parse import quote_plus, unquote_plus, urlencode

import orjson

from ttp_gateway.core.errors import InvalidRequest

from .model import (OPEN_END, Catalogue, ConsentDomain, ConsentStatus, Key, Module, Policy,
                    SignedConsent, SignedPolicy, SignerId, Template, TemplateType)
from .states import CheckConfig, IdMatching

GICS = "https://ths-greifswald.de/fhir/gics/"
SD = "https://ths-greifswald.de/fhir/StructureDefinition/gics/"
DE = "http://fhir.de/ConsentManagement/"
PROFILE_GICS = SD + "Consent"
PROFILE_DE = DE + "StructureDefinition/Consent"
PROFILE_MII = ("https://www.medizininformatik-initiative.de/fhir/modul-consent/StructureDefinition/"
               "mii-pr-consent-einwilligung")
PROFILES = (PROFILE_GICS, PROFILE_DE, PROFILE_MII)

LOINC = "http://loinc.org"
RESULT_TYPE = DE + "CodeSystem/ResultType"
TEMPLATE_TYPE = DE + "CodeSystem/TemplateType"
CONSENT_STATUS = "https://ths-greifswald.de/fhir/CodeSystem/gics/ConsentStatus"
MII_ANSWERS = "urn:oid:2.16.840.1.113883.3.1937.777.24.5.2"
MII_CATEGORY_SYSTEM = ("https://www.medizininformatik-initiative.de/fhir/modul-consent/CodeSystem/"
                       "mii-cs-consent-consent_category")
MII_CATEGORY = "2.16.840.1.113883.3.1937.777.24.2.184"
ID_MATCHING = "https://ths-greifswald.de/fhir/CodeSystem/gics/IdMatchingType"
COMPOSED_BASE = GICS + "QuestionnaireComposed/"
SCOPE = {"coding": [{"code": "research", "system": "http://terminology.hl7.org/CodeSystem/consentscope"}]}
AGENT = "https://ths-greifswald.de/gics"
SIGNATURE_TYPES = "urn:iso-astm:E1762-95:2013"

# The MII broad consent's answer codes, as clients send them in QuestionnaireResponses.
MII_ANSWER_CODES = {
    MII_ANSWERS[8:] + ".1": ConsentStatus.ACCEPTED,
    MII_ANSWERS[8:] + ".2": ConsentStatus.DECLINED,
    MII_ANSWERS[8:] + ".3": ConsentStatus.UNKNOWN,
}

_NAMESPACE = uuid.UUID("1f0c2f63-52a5-4c4e-9f86-7d3f0c6a7b11")


def _copy(resource: Any) -> Any:
    """A deep copy of JSON values (the given resources are changed for the answer, and kept as
    they were given); several times faster than `copy.deepcopy` on large resources."""
    return orjson.loads(orjson.dumps(resource))


def object_id(*parts: str) -> str:
    """A stable id for something the service derives (domains, policies, a consent's
    resources): the same in every process and on every replica."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))


def fhir_moment(moment: datetime, zone: tzinfo) -> str:
    return moment.astimezone(zone).isoformat(timespec="seconds")


def fhir_instant(moment: datetime, zone: tzinfo) -> str:
    return moment.astimezone(zone).isoformat(timespec="milliseconds")


def _ext(url: str, **value: Any) -> dict:
    return {"url": url, **value}


def _property(url: str, key: str, value: str) -> dict:
    return {"extension": [{"url": "key", "valueString": key}, {"url": "value", "valueString": value}],
            "url": url}


def _coding(system: str, code: str, display: str = "") -> dict:
    coding = {"code": code, "system": system}
    if display:
        coding["display"] = display
    return coding


def domain_id(domain: str) -> str:
    return object_id("domain", domain)


def _domain_reference(domain: str, with_domain: bool = True) -> dict:
    parts = [{"url": "domain", "valueReference": {"reference": f"ResearchStudy/{domain_id(domain)}"}}] \
        if with_domain else []
    parts.append({"url": "status", "valueCoding": _coding("http://hl7.org/fhir/publication-status", "active")})
    return {"extension": parts, "url": DE + "StructureDefinition/DomainReference"}


# --- the catalogue ---------------------------------------------------------------------------

def research_study(domain: ConsentDomain) -> dict:
    extensions: list[dict] = [
        {"extension": [{"url": "resourceType", "valueCoding": _coding("http://hl7.org/fhir/resource-types", "Patient")},
                       {"url": "system", "valueUri": GICS + "identifiers/" + kind}],
         "url": DE + "StructureDefinition/ContextIdentifier"}
        for kind in domain.signer_id_types]
    extensions += [_ext(SD + "PolicyVersionFormat", valueString=domain.policy_version_format),
                   _ext(SD + "ModuleVersionFormat", valueString=domain.module_version_format),
                   _ext(SD + "TemplateVersionFormat", valueString=domain.template_version_format)]
    extensions += [_property(SD + "ExternalProperty", k, v) for k, v in sorted(domain.properties.items())]
    if domain.valid_from is not None:
        extensions.append(_ext(SD + "ValidFromProperty", valueDate=domain.valid_from.isoformat()))
    study = {"resourceType": "ResearchStudy", "id": domain_id(domain.name),
             "meta": {"profile": [GICS + "StructureDefinition/ConsentDomain"]},
             "extension": extensions,
             "identifier": [{"system": GICS, "value": domain.name}],
             "title": domain.label or domain.name, "status": "in-review"}
    if domain.description:
        study["description"] = domain.description
    return study


def policy_id(policy: Policy | Key, domain: str | None = None) -> str:
    key = policy.key if isinstance(policy, Policy) else policy
    return object_id("policy", domain or policy.domain, str(key))  # type: ignore[union-attr]


def activity_definition(policy: Policy) -> dict:
    definition = {
        "resourceType": "ActivityDefinition", "id": policy_id(policy),
        "meta": {"profile": [SD + "ActivityDefinition/ConsentPolicy"]},
        "useContext": [{"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type",
                                 "code": "program"},
                        "valueReference": {"reference": f"ResearchStudy/{domain_id(policy.domain)}"}}],
        "version": policy.version, "name": policy.name, "title": policy.label or policy.name,
        "status": "active",
        "code": {"coding": [_coding(c.system, c.code) for c in policy.codings()]},
    }
    extensions = [_property(SD + "ExternalProperty", k, v) for k, v in sorted(policy.properties.items())]
    if extensions:
        definition["extension"] = extensions
    if policy.description:
        definition["description"] = policy.description
    return definition


def module_id(module: Module | Key, domain: str | None = None) -> str:
    key = module.key if isinstance(module, Module) else module
    return object_id("module", domain or module.domain, str(key))  # type: ignore[union-attr]


def module_questionnaire(module: Module) -> dict:
    extensions: list[dict] = []
    for entry in module.policies:
        reference: list[dict] = [{"url": "reference", "valueReference": {
            "reference": f"ActivityDefinition/{policy_id(entry.policy, module.domain)}"}}]
        if entry.expiry is not None:
            reference += [{"extension": [{"url": "key", "valueString": k}, {"url": "value", "valueString": v}],
                           "url": "expirationProperty"} for k, v in entry.expiry.properties()]
        extensions.append({"extension": reference, "url": SD + "ConsentPolicyReference"})
    extensions.append(_ext(SD + "QuestionnaireLabel", valueString=module.label or module.name))
    extensions += [_property(SD + "ExternalProperty", k, v) for k, v in sorted(module.properties.items())]
    item: dict[str, Any] = {"extension": extensions, "linkId": str(module.key), "type": "choice"}
    if module.text:
        item["text"] = module.text
    return {"resourceType": "Questionnaire", "id": module_id(module),
            "meta": {"profile": [GICS + "StructureDefinition/ConsentModule"]},
            "useContext": [{"code": _coding(DE + "CodeSystem/QuestionnaireComponents", "TemplateModule"),
                            "valueReference": {"reference": f"ResearchStudy/{domain_id(module.domain)}"}}],
            "item": [item], "language": "de", "version": module.version, "name": module.name,
            "status": "active"}


def template_url(template: Template, kind: str = "ConsentTemplate") -> str:
    return f"{GICS}{kind}/{template.domain}/{quote_plus(template.name)}|{template.version}"


# The answers a module of each kind of form offers: a value set of the guide, and its codes.
_ANSWERS = {
    TemplateType.CONSENT: ("ConsentStatusConsentShortValues", ("ACCEPTED", "DECLINED")),
    TemplateType.CONSENT_OPT_OUT: ("ConsentStatusConsentOptOutShortValues", ("ACCEPTED_OPT_OUT",)),
    TemplateType.WITHDRAWAL: ("ConsentStatusWithdrawalShortValues", ("WITHDRAWN", "NOT_CHOSEN")),
    TemplateType.REFUSAL: ("ConsentStatusRefusalShortValues", ("ACCEPTED", "DECLINED")),
    TemplateType.REVOCATION: ("ConsentStatusConsentShortValues", ("ACCEPTED", "DECLINED")),
    TemplateType.OBJECTION: ("ConsentStatusObjectionShortValues", ("OBJECTED",)),
}
SIGNATURES = {"consent": ("1.2.840.10065.1.12.1.7", "Consent Signature"),
              "witness": ("1.2.840.10065.1.12.1.11", "Consent Witness Signature"),
              "verification": ("1.2.840.10065.1.12.1.5", "Verification Signature")}


def _template_items(template: Template, catalogue: Catalogue, composed: bool) -> list[dict]:
    items = []
    value_set, answers = _ANSWERS[template.type]
    for position, assigned in enumerate(template.modules):
        module = catalogue.module(template.domain, assigned.module)
        extensions = [_ext(DE + "StructureDefinition/SubQuestionnaire",
                           valueReference={"reference": f"Questionnaire/{module_id(assigned.module, template.domain)}"})]
        if not composed:
            extensions.append(_ext(SD + "Position", valueInteger=position))
        item: dict[str, Any] = {"extension": extensions, "linkId": str(assigned.module), "type": "choice",
                                "required": assigned.mandatory}
        if composed:
            item["answerValueSet"] = f"https://ths-greifswald.de/fhir/ValueSet/gics/{value_set}"
        else:
            item["answerOption"] = [{"valueCoding": _coding(CONSENT_STATUS, a, a)} for a in answers]
        if module is not None and module.text:
            item["text"] = module.text
        items.append(item)
    return items


def template_questionnaire(template: Template, catalogue: Catalogue, composed: bool = False) -> dict:
    """The template as a TemplateFrame (gICS ConsentTemplate profile) or, `composed`, as the
    QuestionnaireComposed a QuestionnaireResponse refers to."""
    extensions: list[dict] = []
    if not composed:
        extensions.append(_ext(SD + "QuestionnaireLabel", valueString=template.label or template.name))
    extensions += [{"url": "http://hl7.org/fhir/StructureDefinition/questionnaire-signatureRequired",
                    "valueCodeableConcept": {"coding": [_coding(SIGNATURE_TYPES, *SIGNATURES[kind])]}}
                   for kind in template.signatures]
    if not composed:
        extensions += [_property(SD + "ExternalProperty", k, v) for k, v in sorted(template.properties.items())]
        if template.expiry is not None:
            extensions += [_property(SD + "ExpirationProperty", k, v) for k, v in template.expiry.properties()]
    kind = "QuestionnaireComposed" if composed else "TemplateFrame"
    questionnaire = {
        "resourceType": "Questionnaire",
        "id": object_id(kind, template.domain, str(template.key)),
        "meta": {"profile": [DE + "StructureDefinition/QuestionnaireComposed" if composed
                             else GICS + "StructureDefinition/ConsentTemplate"]},
        "extension": extensions,
        "url": template_url(template, "QuestionnaireComposed" if composed else "ConsentTemplate"),
        "identifier": [{"system": GICS, "value": template.identifier}],
        "version": template.version, "name": template.name, "title": template.title or template.name,
        "status": "active",
        "useContext": [{"code": _coding(DE + "CodeSystem/QuestionnaireComponents", kind),
                        "valueReference": {"reference": f"ResearchStudy/{domain_id(template.domain)}"}}],
        "code": [_coding(LOINC, "59284-0")],
        "item": _template_items(template, catalogue, composed),
        "language": "de",
    }
    if composed:
        questionnaire["derivedFrom"] = [template_url(template, "TemplateFrame")]
    if template.description:
        questionnaire["purpose"] = template.description
    if template.type is not TemplateType.CONSENT:
        questionnaire["code"].append(_coding(TEMPLATE_TYPE, template.type.fhir_code))
    return questionnaire


# --- reading requests ------------------------------------------------------------------------

def parse_composed_canonical(url: str) -> tuple[str, Key]:
    """(domain, template) of a QuestionnaireComposed canonical:
    `.../QuestionnaireComposed/<domain>/<name>|<version>` (name URL-encoded), or the older
    `.../gics/<domain>|<name>|<version>`."""
    if not isinstance(url, str) or not url.startswith(GICS):
        raise InvalidRequest(f"the questionnaire must be a canonical starting with {COMPOSED_BASE}")
    rest = url[len(GICS):]
    if rest.startswith("QuestionnaireComposed/"):
        path, sep, version = rest[len("QuestionnaireComposed/"):].rpartition("|")
        domain, slash, name = path.partition("/")
        if sep and slash and domain and name and version:
            return unquote_plus(domain), Key(unquote_plus(name), version)
    else:
        parts = unquote_plus(rest).split("|")
        if len(parts) == 3 and all(parts):
            return parts[0], Key(parts[1], parts[2])
    raise InvalidRequest("the questionnaire canonical names no template as "
                         f"{COMPOSED_BASE}<domain>/<template>|<version>")


def parse_template_identifier(text: str, domain: str) -> Key:
    """A TemplateFrame identifier value `domain;name;version` (or with '|'); the domain must be
    the request's."""
    for separator in (";", "|"):
        parts = text.split(separator)
        if len(parts) == 3 and all(p.strip() for p in parts):
            if parts[0] != domain:
                raise InvalidRequest("the template identifier names another domain than 'domain'")
            return Key(parts[1], parts[2])
    raise InvalidRequest("'template' must be a template identifier domain;name;version")


def check_config(parameters: Mapping[str, Any] | None) -> CheckConfig:
    """The `config` Parameters of the state operations."""
    if parameters is None:
        return CheckConfig()
    values: dict[str, Any] = {}
    given = parameters.get("parameter", [])
    if not isinstance(given, list):
        raise InvalidRequest("'config.parameter' must be an array")
    for item in given:
        if not isinstance(item, dict):
            raise InvalidRequest("every entry of 'config.parameter' must be an object")
        name = item.get("name")
        if name in values:
            raise InvalidRequest(f"parameter 'config.{name}' must not be repeated")
        if name == "idMatchingType":
            coding = item.get("valueCoding")
            code = coding.get("code") if isinstance(coding, dict) else item.get("valueCode", item.get("valueString"))
            try:
                values[name] = IdMatching(code)
            except ValueError:
                raise InvalidRequest("'config.idMatchingType' must be AT_LEAST_ONE, AT_LEAST_ALL or EXACT") from None
        elif name in ("ignoreVersionNumber", "unknownStateIsConsideredAsDecline"):
            if type(item.get("valueBoolean")) is not bool:
                raise InvalidRequest(f"parameter 'config.{name}' needs a boolean value")
            values[name] = item["valueBoolean"]
        elif name == "requestDate":
            text = item.get("valueDate", item.get("valueDateTime", item.get("valueString")))
            try:
                values[name] = date.fromisoformat(str(text)[:10])
            except ValueError:
                raise InvalidRequest("parameter 'config.requestDate' needs a date value") from None
    return CheckConfig(id_matching=values.get("idMatchingType", IdMatching.AT_LEAST_ONE),
                       ignore_version=values.get("ignoreVersionNumber", False),
                       unknown_as_decline=values.get("unknownStateIsConsideredAsDecline", False),
                       request_date=values.get("requestDate"))


def answers_of(response: Mapping[str, Any], template: Template) -> tuple[dict[Key, ConsentStatus], list[str]]:
    """The module answers of a QuestionnaireResponse against its template, and a problem
    sentence for every item that names a module the template lacks or has no usable answer.
    Items whose linkId is not `module|version` are free-text fields and are kept, not read."""
    answers: dict[Key, ConsentStatus] = {}
    problems: list[str] = []
    modules = template.module_keys()
    for index, item in enumerate(_items(response.get("item", []))):
        link = item.get("linkId")
        if not isinstance(link, str) or "|" not in link:
            continue
        key = Key(*link.rsplit("|", 1))
        if key not in modules:
            problems.append(f"item {index + 1} answers a module the template does not contain")
            continue
        if key in answers:
            problems.append(f"item {index + 1} answers a module a second time")
            continue
        status = _answer_status(item.get("answer"))
        if status is None:
            problems.append(f"item {index + 1} has no consent status answer")
            continue
        answers[key] = status
    for assigned in template.modules:
        if assigned.mandatory and assigned.module not in answers:
            problems.append(f"the mandatory module {assigned.module} is not answered")
    return answers, problems


def _items(items: Any, depth: int = 0) -> Iterable[dict]:
    if not isinstance(items, list) or depth > 8:
        return
    for item in items:
        if isinstance(item, dict):
            yield item
            yield from _items(item.get("item"), depth + 1)


def _answer_status(answer: Any) -> ConsentStatus | None:
    if not isinstance(answer, list) or len(answer) != 1 or not isinstance(answer[0], dict):
        return None
    coding = answer[0].get("valueCoding")
    if not isinstance(coding, dict):
        return None
    system, code = coding.get("system"), coding.get("code")
    if system == CONSENT_STATUS and isinstance(code, str):
        try:
            return ConsentStatus(code)
        except ValueError:
            return None
    if system == MII_ANSWERS and isinstance(code, str):
        return MII_ANSWER_CODES.get(code)
    return None


def form_response(template: Template, answers: Mapping[Key, ConsentStatus], signed_at: datetime,
                  zone: tzinfo) -> dict:
    """A QuestionnaireResponse for answers the service records itself (opt-out, demo data).
    A template whose `miiAnswerCodeSystem` property names the MII answer codes is answered in
    them, as the MII forms are."""
    mii = template.properties.get("miiAnswerCodeSystem") == MII_ANSWERS[8:]
    by_status = {status: code for code, status in MII_ANSWER_CODES.items()}

    def answer(status: ConsentStatus) -> dict:
        if mii and status in by_status:
            return _coding(MII_ANSWERS, by_status[status])
        return _coding(CONSENT_STATUS, status.value)

    return {"resourceType": "QuestionnaireResponse", "language": "de", "status": "completed",
            "questionnaire": template_url(template, "QuestionnaireComposed"),
            "authored": fhir_moment(signed_at, zone),
            "item": [{"linkId": str(key), "answer": [{"valueCoding": answer(status)}]}
                     for key, status in answers.items()]}


ANONYMOUS = {"coding": [_coding("http://terminology.hl7.org/CodeSystem/v2-0203", "ANON", "Anonymous identifier")]}


def patient_of(signer_ids: Iterable[SignerId]) -> dict:
    """The Patient the service makes for a person it records itself."""
    return {"resourceType": "Patient",
            "identifier": [{"type": copy.deepcopy(ANONYMOUS), "system": s.system, "value": s.value}
                           for s in sorted(signer_ids)]}


def signatures_of(patient: str, signed_at: datetime, zone: tzinfo, location: str = "",
                  verified_by: str = "") -> dict:
    """A Provenance with the person's consent signature and, where someone verified it, a
    verification signature; the signature images themselves are absent."""
    absent = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                             "valueCode": "unknown"}]}

    def signature(code: str, display: str, who: dict) -> dict:
        entry: dict[str, Any] = {"type": [_coding(SIGNATURE_TYPES, code, display)],
                                 "when": fhir_instant(signed_at, zone), "who": who, "_data": copy.deepcopy(absent)}
        if location:
            entry["extension"] = [_ext(DE + "StructureDefinition/SignatureLocation", valueString=location)]
        return entry

    signatures = [signature("1.2.840.10065.1.12.1.7", "Consent Signature", {"reference": f"Patient/{patient}"})]
    if verified_by:
        signatures.append(signature("1.2.840.10065.1.12.1.5", "Verification Signature", {"display": verified_by}))
    return {"resourceType": "Provenance", "target": [{"reference": "QuestionnaireResponse/form"}],
            "signature": signatures, "agent": [{"who": {"display": AGENT}}]}


# --- a signed consent's resources ------------------------------------------------------------

def patient_id(consent: SignedConsent) -> str:
    return object_id("patient", consent.domain, consent.person_key)


def _ids(consent: SignedConsent) -> dict[str, str]:
    return {"QuestionnaireResponse": object_id("qr", consent.id),
            "Provenance": object_id("provenance", consent.id),
            "Patient": patient_id(consent),
            "VerificationResult": object_id("quality", consent.id)}


def _person_display(consent: SignedConsent, domain: ConsentDomain | None) -> str:
    order = {t: i for i, t in enumerate(domain.signer_id_types)} if domain else {}
    first = min(consent.signer_ids, key=lambda s: (order.get(s.type, 99), s.type, s.value))
    return f"{first.type} {first.value}"


def _rewrite_references(resource: Any, mapping: Mapping[str, str]) -> None:
    if isinstance(resource, dict):
        for key, value in resource.items():
            if key == "reference" and isinstance(value, str) and value in mapping:
                resource[key] = mapping[value]
            else:
                _rewrite_references(value, mapping)
    elif isinstance(resource, list):
        for value in resource:
            _rewrite_references(value, mapping)


def given_resources(consent: SignedConsent, catalogue: Catalogue, zone: tzinfo) -> dict[str, Any]:
    """The resources the consent came with, under the service's ids, references rewritten:
    questionnaireResponse, patient, provenance, documentReference (a list)."""
    ids = _ids(consent)
    given = consent.resources
    response = _copy(given.get("questionnaireResponse") or {"resourceType": "QuestionnaireResponse"})
    patient = _copy(given.get("patient") or {"resourceType": "Patient"})
    provenance = _copy(given.get("provenance")) if given.get("provenance") else None
    documents = [_copy(d) for d in given.get("documentReference", []) if isinstance(d, dict)]
    mapping: dict[str, str] = {}
    for kind, resource in (("QuestionnaireResponse", response), ("Patient", patient), ("Provenance", provenance)):
        if resource is not None and isinstance(resource.get("id"), str):
            mapping[f"{kind}/{resource['id']}"] = f"{kind}/{ids[kind]}"
    document_ids = [object_id("document", consent.id, str(i)) for i in range(len(documents))]
    for document, new_id in zip(documents, document_ids):
        if isinstance(document.get("id"), str):
            mapping[f"DocumentReference/{document['id']}"] = f"DocumentReference/{new_id}"
    updated = fhir_instant(consent.recorded, zone)
    display = _person_display(consent, catalogue.domain(consent.domain))
    person = {"reference": f"Patient/{ids['Patient']}", "display": display}

    response.update(id=ids["QuestionnaireResponse"],
                    meta={"profile": [DE + "StructureDefinition/QuestionnaireResponse"], "lastUpdated": updated})
    _rewrite_references(response, mapping)
    for field_name in ("subject", "author", "source"):
        response.setdefault(field_name, dict(person))
    patient.update(id=ids["Patient"], meta={"profile": [DE + "StructureDefinition/Patient"], "lastUpdated": updated})
    if not patient.get("identifier"):
        patient["identifier"] = [{"system": s.system, "value": s.value} for s in sorted(consent.signer_ids)]
    for document, new_id in zip(documents, document_ids):
        document.update(id=new_id, meta={"profile": [DE + "StructureDefinition/DocumentReference"],
                                         "lastUpdated": updated})
        _rewrite_references(document, mapping)
    if provenance is None:
        provenance = {"resourceType": "Provenance",
                      "target": [{"reference": f"QuestionnaireResponse/{ids['QuestionnaireResponse']}"}],
                      "recorded": updated, "agent": [{"who": {"display": AGENT}}]}
    else:
        _rewrite_references(provenance, mapping)
        provenance["recorded"] = updated
        for signature in provenance.get("signature", []) if isinstance(provenance.get("signature"), list) else []:
            for extension in signature.get("extension", []) if isinstance(signature, dict) else []:
                if isinstance(extension, dict) and "url" not in extension:
                    extension["url"] = DE + "StructureDefinition/SignatureLocation"
    provenance.update(id=ids["Provenance"], meta={"profile": [SD + "Provenance", DE + "StructureDefinition/Provenance"],
                                                  "lastUpdated": fhir_instant(consent.date, zone)})
    return {"questionnaireResponse": response, "patient": patient, "provenance": provenance,
            "documentReference": documents}


def verification_result(consent: SignedConsent, zone: tzinfo) -> dict:
    ids = _ids(consent)
    return {"resourceType": "VerificationResult", "id": ids["VerificationResult"],
            "meta": {"profile": [SD + "VerificationResult/ConsentQualityControl"],
                     "lastUpdated": fhir_instant(consent.recorded, zone)},
            "target": [{"reference": f"QuestionnaireResponse/{ids['QuestionnaireResponse']}"}],
            "validationType": {"text": "not_checked"}, "status": "validated",
            "statusDate": fhir_moment(consent.recorded, zone)}


def _profiles(profile: str, claim_de: bool = True) -> list[str]:
    if profile == PROFILE_DE:
        return [PROFILE_DE]
    if profile == PROFILE_MII:
        return [PROFILE_GICS, PROFILE_MII]
    return [PROFILE_GICS, PROFILE_DE] if claim_de else [PROFILE_GICS]


def policy_codes(catalogue: Catalogue, domain: str, signed: SignedPolicy | Key) -> list[dict]:
    key = signed.key if isinstance(signed, SignedPolicy) else signed
    policy = catalogue.policy(domain, key)
    if policy is None:  # a policy removed from the catalogue after it was signed
        owner = catalogue.domain(domain)
        return [{"coding": [_coding(owner.policy_system if owner else "", key.name)]}]
    return [{"coding": [_coding(c.system, c.code, c.display)]} for c in policy.codings()]


def period_of(start: datetime, end: datetime | None, zone: tzinfo) -> dict:
    return {"start": fhir_moment(start, zone), "end": fhir_moment(end or OPEN_END, zone)}


def _consent_frame(consent: SignedConsent, profile: str, result_type: str, zone: tzinfo,
                   catalogue: Catalogue, consent_id: str, claim_de: bool = True) -> dict:
    domain = catalogue.domain(consent.domain)
    ids = _ids(consent)
    mii = profile == PROFILE_MII
    category = [{"coding": [_coding(LOINC, "57016-8")]},
                {"coding": [_coding(MII_CATEGORY_SYSTEM, MII_CATEGORY) if mii else _coding(RESULT_TYPE, result_type)]}]
    if consent.template_type is not TemplateType.CONSENT and result_type == "document":
        category.append({"coding": [_coding(TEMPLATE_TYPE, consent.template_type.fhir_code)]})
    return {
        "resourceType": "Consent", "id": consent_id,
        "meta": {"profile": _profiles(profile, claim_de), "lastUpdated": fhir_instant(consent.recorded, zone)},
        "extension": [_domain_reference(consent.domain)],
        "category": category,
        "organization": [{"display": consent.domain}],
        "policy": [{"uri": f"urn:oid:{MII_CATEGORY}" if mii else f"urn:uuid:{domain_id(consent.domain)}"}],
        "status": "active", "scope": _copy(SCOPE),
        "patient": {"reference": f"Patient/{ids['Patient']}", "display": _person_display(consent, domain)},
        "dateTime": fhir_moment(consent.date, zone),
        "sourceReference": {"reference": f"QuestionnaireResponse/{ids['QuestionnaireResponse']}"},
    }


def document_consent(consent: SignedConsent, catalogue: Catalogue, zone: tzinfo, profile: str = PROFILE_GICS,
                     revoked: Collection[Key] = (), claim_de: bool = True) -> dict:
    """The consent as a document: a deny (permit in an opt-out context) with one nested permit
    per policy it grants, each until it expires. A grant a newer consent of the person has
    declined (`revoked`: withdrawn, refused, answered no) is left out, so that a client that
    selects persons by their documents' permits never selects a withdrawn one. The gICS
    variant also claims the HL7-DE profile, except in `$addConsent`'s answer (`claim_de`), as
    the reference does."""
    resource = _consent_frame(consent, profile, "document", zone, catalogue, consent.id, claim_de)
    nested = []
    for signed in consent.policies:
        if not signed.status.accepting or signed.key in revoked:
            continue
        nested.append({"period": period_of(consent.date, signed.expires, zone),
                       "code": policy_codes(catalogue, consent.domain, signed), "type": "permit"})
    last = max((p.expires or OPEN_END for p in consent.policies), default=OPEN_END)
    resource["provision"] = {
        "period": period_of(consent.date, last, zone),
        "provision": nested,
        "type": "permit" if consent.template_type is TemplateType.CONSENT_OPT_OUT else "deny"}
    if not nested:
        del resource["provision"]["provision"]
    return resource


def policy_consent(consent: SignedConsent, signed: SignedPolicy, permits: bool, catalogue: Catalogue,
                   zone: tzinfo, variant: str = "current", profile: str = PROFILE_GICS) -> dict:
    """One policy's state as a Consent with a single provision.

    `variant` is "current" ($currentPolicyStatesForPerson: organization and policy URI),
    "all" ($allPolicyStatesForPerson: the policy as policyRule) or "search" (both)."""
    resource = _consent_frame(consent, profile, "policy", zone, catalogue,
                              object_id("policy-state", consent.id, str(signed.key)))
    codes = policy_codes(catalogue, consent.domain, signed)
    resource["provision"] = {"period": period_of(consent.date, signed.expires, zone), "code": codes,
                             "type": "permit" if permits else "deny"}
    if variant == "all":
        del resource["organization"], resource["policy"]
        resource["extension"] = [_domain_reference(consent.domain, with_domain=False)]
    if variant in ("all", "search"):
        resource["policyRule"] = {"coding": codes[0]["coding"]}
    return resource


def consent_bundle(consent: SignedConsent, catalogue: Catalogue, zone: tzinfo, profile: str = PROFILE_GICS,
                   revoked: Collection[Key] = ()) -> dict:
    """One consent with everything it came with, as a collection Bundle."""
    given = given_resources(consent, catalogue, zone)
    return collection([given["questionnaireResponse"],
                       document_consent(consent, catalogue, zone, profile, revoked),
                       given["provenance"], *given["documentReference"], given["patient"]],
                      bundle_id=object_id("bundle", consent.id))


def page_links(url: str, query: Sequence[tuple[str, str]], count: int, offset: int, total: int) -> list[dict]:
    """`self`, `next` and `previous` links of a page of `count` at `offset` of `total`; `url`
    is the page's address without query, `query` the parameters that chose what is paged."""
    def at(position: int) -> str:
        return url + "?" + urlencode([*query, ("_count", str(count)), ("_offset", str(position))])

    links = [{"relation": "self", "url": at(offset)}]
    if count and offset + count < total:
        links.append({"relation": "next", "url": at(offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": at(max(0, offset - count))})
    return links


def collection(resources: Sequence[dict], *, total: int | None = None, links: Sequence[dict] = (),
               bundle_id: str | None = None) -> dict:
    bundle: dict[str, Any] = {"resourceType": "Bundle"}
    if bundle_id:
        bundle["id"] = bundle_id
    bundle["type"] = "collection"
    if total is not None:
        bundle["total"] = total
    if links:
        bundle["link"] = list(links)
    bundle["entry"] = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]
    return bundle
