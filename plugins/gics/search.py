"""FHIR searches of the gICS endpoint: `GET [base]/Consent?...` and the catalogue's
`GET [base]/ResearchStudy`, `[base]/Questionnaire`, `[base]/ActivityDefinition`.

Each is a `Search` the core routes to (`ttp_searches`): the handler gets the query parameters
(name -> list of values, as the URL gave them) as `call.args` and answers a `searchset` Bundle;
a caller scoped to some consent domains sees only those, and naming another is refused (401).

Consent search parameters (all AND-linked):

    domain:identifier / domain            consent domain (recommended; without it every domain
                                          the client may use is searched)
    patient.identifier / patient:identifier   signer id system|value
    category                              ResultType policy (default), document or consent-status
    mii-provision-provision-code / provisionCode     [system|]code of a policy
    mii-provision-provision-type          permit | deny (at the time of the search)
    mii-provision-provision-code-type     [system|]code$permit
    mii-provision-provision-period / provisionPeriod   [prefix]date on the provision period
    mii-provision-provision-code-period   [system|]code$[prefix]date
    _revinclude=Provenance:target         the signatures of each consent found
    _count (default 100, at most 1000), _offset (default 0)

Result type `policy` answers one Consent per signed policy, `document` one per signed consent
(both in the MII consent profile), `consent-status` one per person with the current state of
every policy (it needs patient.identifier; its ids are computed, not stored). Every answer
carries `total` and `self`, `next` and `previous` links.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any, Mapping, Sequence

from ttp_gateway.core.auth import Client
from ttp_gateway.core.errors import InvalidRequest, NotAuthenticated
from ttp_gateway.core.gateway import Call
from ttp_gateway.core.operations import Search

from . import resources as fr
from .model import OPEN_END, SIGNER_ID_SYSTEM_PREFIX, Catalogue, SignerId
from .operations import ENDPOINT, SCOPE, paging
from .service import GICS, ConsentService, revoked_grants
from .states import current_states, decides, effective_status
from .store import CONSENTS, DATE_PREFIXES, ConsentStore, PolicyFilter

RESULT_TYPES = ("policy", "document", "consent-status")
CONSENT_PARAMETERS = ("domain", "domain:identifier", "patient.identifier", "patient:identifier", "category",
                      "mii-provision-provision-code", "provisionCode", "mii-provision-provision-type",
                      "provisionType", "mii-provision-provision-code-type", "mii-provision-provision-period",
                      "provisionPeriod", "mii-provision-provision-code-period", "_revinclude", "_count", "_offset")
# Control parameters the core handles or that change nothing here.
_IGNORED = {"_format", "_pretty", "_summary", "_elements", "_sort", "_total", "mii-policy-uri"}
MAX_PERIODS = 8


def _one(query: Mapping[str, Sequence[str]], *names: str) -> str | None:
    values = [v for name in names for v in query.get(name, [])]
    if len(values) > 1:
        raise InvalidRequest(f"search parameter '{names[0]}' must not be repeated")
    return values[0] if values else None


def _all(query: Mapping[str, Sequence[str]], *names: str) -> list[str]:
    return [v for name in names for v in query.get(name, [])]


def _token(text: str) -> tuple[str | None, str]:
    system, sep, code = text.rpartition("|")
    if not code:
        raise InvalidRequest("a token search value needs a code")
    return (system or None) if sep else None, code


def _date_range(text: str, zone: tzinfo) -> tuple[str, datetime, datetime]:
    prefix = text[:2] if text[:2] in DATE_PREFIXES else "eq"
    value = text[2:] if text[:2] in DATE_PREFIXES else text
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            low = datetime.combine(day, time(), zone)
            return prefix, low, low + timedelta(days=1)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest("a date search value must be [prefix]YYYY-MM-DD or a dateTime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return prefix, moment, moment + timedelta(seconds=1)


def _domains(named: str | None, catalogue: Catalogue, client: Client) -> list[str]:
    """The domains a search covers: the one asked for, or every one the client may use."""
    if named is not None:
        name = named.rpartition("|")[2]
        if not client.may_use(SCOPE, name):
            raise NotAuthenticated("this caller may not use the consent-domain it named")
        return [name] if catalogue.domain(name) is not None else []
    return [d for d in sorted(catalogue.domains) if client.may_use(SCOPE, d)]


def _searchset(entries: list[dict], total: int, links: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}


def _service(call: Call) -> ConsentService:
    return call.gateway.service(GICS)


# --- Consent --------------------------------------------------------------------------------------

def search_consents(call: Call) -> dict:
    """`GET [base]/Consent?...` as a searchset Bundle."""
    query: Mapping[str, Sequence[str]] = call.args
    service = _service(call)
    zone, now = service.zone, call.now()
    base = call.base_url
    count, offset = paging(query)
    result_type = "policy"
    category = _one(query, "category")
    if category is not None:
        system, result_type = _token(category)
        if system not in (None, fr.RESULT_TYPE) or result_type not in RESULT_TYPES:
            raise InvalidRequest("category must be a ResultType: policy, document or consent-status")
    signer_ids = []
    for text in _all(query, "patient.identifier", "patient:identifier"):
        system, value = _token(text)
        if not system or not system.startswith(SIGNER_ID_SYSTEM_PREFIX):
            raise InvalidRequest(f"patient.identifier needs a system starting with {SIGNER_ID_SYSTEM_PREFIX}")
        signer_ids.append(SignerId(system[len(SIGNER_ID_SYSTEM_PREFIX):], value))
    codes: list[str] = []
    kinds: list[str] = []
    periods: list[tuple[str, datetime, datetime]] = []
    codes += _all(query, "mii-provision-provision-code", "provisionCode")
    kinds += _all(query, "mii-provision-provision-type", "provisionType")
    for composite in _all(query, "mii-provision-provision-code-type"):
        token, sep, kind = composite.partition("$")
        if not sep:
            raise InvalidRequest("mii-provision-provision-code-type is [system|]code$permit or $deny")
        codes.append(token)
        kinds.append(kind)
    for text in _all(query, "mii-provision-provision-period", "provisionPeriod"):
        periods.append(_date_range(text, zone))
    for composite in _all(query, "mii-provision-provision-code-period"):
        token, sep, when = composite.partition("$")
        if not sep:
            raise InvalidRequest("mii-provision-provision-code-period is [system|]code$[prefix]date")
        codes.append(token)
        periods.append(_date_range(when, zone))
    if any(kind not in ("permit", "deny") for kind in kinds):
        raise InvalidRequest("the provision type must be permit or deny")
    if len(periods) > MAX_PERIODS:
        raise InvalidRequest(f"a search may compare at most {MAX_PERIODS} dates")
    tokens = [_token(code) for code in codes]
    revinclude = _one(query, "_revinclude")
    if revinclude not in (None, "Provenance:target"):
        raise InvalidRequest("only _revinclude=Provenance:target is supported")
    permit = None if not kinds else kinds[0] == "permit"
    contradictory = len(set(kinds)) > 1  # permit AND deny: nothing can match

    applied = [(k, v) for k, values in query.items() for v in values
               if k not in ("_count", "_offset") and k not in _IGNORED]
    entries: list[dict] = []
    total = 0
    with call.reading() as unit:
        catalogue = service.catalogue(unit)
        domains = _domains(_one(query, "domain:identifier", "domain"), catalogue, call.client)
        filters = []
        for name in domains:
            policies = None
            for system, code in tokens:
                found = {p.name for p in catalogue.find_policies(name, system, code)}
                policies = found if policies is None else policies & found
            filters.append(PolicyFilter(domain=name, signer_ids=tuple(signer_ids),
                                        policies=frozenset(policies) if policies is not None else None,
                                        permit=permit, at=now, periods=tuple(periods)))
        store = unit[CONSENTS]
        if result_type == "consent-status":
            entries, total = _consent_status(service, store, catalogue, filters, signer_ids, now, count, offset,
                                             base)
        elif filters and not contradictory:
            total, entries = _page_of(service, store, catalogue, filters, result_type, count, offset, base,
                                      revinclude)
    call.audit("search-consent", domains=domains, result_type=result_type,
               persons=sorted(str(s) for s in signer_ids), consents=len(entries))
    return _searchset(entries, total, fr.page_links(f"{base}/Consent", applied, count, offset, total))


def _page_of(service: ConsentService, store: ConsentStore, catalogue: Catalogue, filters: list[PolicyFilter],
             result_type: str, count: int, offset: int, base: str,
             revinclude: str | None) -> tuple[int, list[dict]]:
    zone = service.zone
    entries: list[dict] = []
    total = 0
    # Domains one after another: the page runs on into the next domain.
    skip, room = offset, count
    for wanted in filters:
        if result_type == "document":
            size = store.count_matching_consents(wanted)
        else:
            size = store.count_signed_policies(wanted)
        total += size
        if room <= 0 or skip >= size:
            skip = max(0, skip - size)
            continue
        if result_type == "document":
            consents = store.matching_consents_page(wanted, offset=skip, limit=room)
            signers = sorted({s for c in consents for s in c.signer_ids})
            persons = store.consents_of_persons(wanted.domain, signers) if signers else []
            found = [(c, fr.document_consent(c, catalogue, zone, fr.PROFILE_MII, revoked_grants(c, persons)))
                     for c in consents]
        else:
            rows = store.signed_policies_page(wanted, offset=skip, limit=room, resources=bool(revinclude))
            found = [(c, fr.policy_consent(c, p, _permits(p, wanted.at), catalogue, zone, "search",
                                           fr.PROFILE_MII)) for c, p in rows]
        for consent, resource in found:
            entries.append({"fullUrl": f"{base}/Consent/{resource['id']}", "resource": resource,
                            "search": {"mode": "match"}})
            if revinclude:
                provenance = fr.given_resources(consent, catalogue, zone)["provenance"]
                entries.append({"fullUrl": f"{base}/Provenance/{provenance['id']}", "resource": provenance,
                                "search": {"mode": "include"}})
        room -= len(found)
        skip = 0
    return total, entries


def _permits(signed: Any, at: datetime | None) -> bool:
    return effective_status(signed, at or OPEN_END).accepting


def _consent_status(service: ConsentService, store: ConsentStore, catalogue: Catalogue,
                    filters: list[PolicyFilter], signer_ids: list[SignerId], now: datetime, count: int,
                    offset: int, base: str) -> tuple[list[dict], int]:
    """One computed Consent per domain for the person asked about: the current state of each
    of its policies."""
    if not signer_ids:
        raise InvalidRequest("category consent-status needs patient.identifier")
    entries = []
    for wanted in filters:
        consents = store.consents_of_persons(wanted.domain, list(signer_ids))
        if not consents:
            continue
        states = [s for s in current_states(consents, signer_ids, now).values()
                  if wanted.policies is None or s.policy.name in wanted.policies]
        if wanted.permit is not None and not any(decides(s) == wanted.permit for s in states):
            continue
        permitted = sorted((s for s in states if decides(s)), key=lambda s: (s.policy.name, s.policy.version))
        if not states:
            continue
        newest = max(consents, key=lambda c: c.order())
        resource = fr.document_consent(newest, catalogue, service.zone, fr.PROFILE_GICS)
        resource["id"] = fr.object_id("consent-status", newest.domain, newest.person_key, now.isoformat())
        resource["category"][1]["coding"][0]["code"] = "consent-status"
        resource["provision"]["provision"] = [
            {"period": fr.period_of(s.start, s.end, service.zone),
             "code": fr.policy_codes(catalogue, s.consent.domain, s.signed), "type": "permit"}
            for s in permitted]
        if not permitted:
            del resource["provision"]["provision"]
        entries.append({"fullUrl": f"{base}/Consent/{resource['id']}", "resource": resource,
                        "search": {"mode": "match"}})
    total = len(entries)
    return entries[offset:offset + count], total


# --- the catalogue -----------------------------------------------------------------------------

def search_catalogue(call: Call) -> dict:
    """`GET [base]/ResearchStudy|Questionnaire|ActivityDefinition?...` as a searchset Bundle."""
    resource_type = call.invoked_as or call.operation.name
    query: Mapping[str, Sequence[str]] = call.args
    service = _service(call)
    count, offset = paging(query)
    with call.reading() as unit:
        catalogue = service.catalogue(unit)
    if resource_type == "ResearchStudy":
        wanted = _one(query, "identifier")
        domains = [d for d in _domains(None, catalogue, call.client)
                   if wanted is None or d == wanted.rpartition("|")[2]]
        resources = [fr.research_study(catalogue.domains[d]) for d in domains]
    else:
        domains = _domains(_one(query, "useContextIdentifier", "domain:identifier", "domain"), catalogue,
                           call.client)
        version = _one(query, "version")
        if resource_type == "ActivityDefinition":
            code = _one(query, "code")
            system, token = _token(code) if code else (None, None)
            resources = [fr.activity_definition(p) for d in domains for p in catalogue.policies_of(d)
                         if (token is None or p.answers_to(system, token))
                         and (version is None or p.version == version)]
        else:
            kind = _one(query, "context-type") or "TemplateFrame"
            name = _one(query, "name")
            if kind == "TemplateModule":
                resources = [fr.module_questionnaire(m) for d in domains for m in catalogue.modules_of(d)
                             if (name is None or m.name == name) and (version is None or m.version == version)]
            elif kind in ("TemplateFrame", "QuestionnaireComposed"):
                resources = [fr.template_questionnaire(t, catalogue, kind == "QuestionnaireComposed")
                             for d in domains for t in catalogue.templates_of(d)
                             if (name is None or t.name == name) and (version is None or t.version == version)]
            else:
                raise InvalidRequest("context-type must be TemplateFrame, TemplateModule or QuestionnaireComposed")
    applied = [(k, v) for k, values in query.items() for v in values
               if k not in ("_count", "_offset") and k not in _IGNORED]
    page = resources[offset:offset + count]
    base = call.base_url
    entries = [{"fullUrl": f"{base}/{resource_type}/{r['id']}", "resource": r, "search": {"mode": "match"}}
               for r in page]
    return _searchset(entries, len(resources), fr.page_links(f"{base}/{resource_type}", applied, count, offset,
                                                             len(resources)))


def searches() -> list[Search]:
    return [
        Search(ENDPOINT, "Consent", search_consents, CONSENT_PARAMETERS,
               "Signed policies (category policy, the default), signed consents (document) or a person's "
               "current states (consent-status) in the MII consent profile; paged with _count and _offset."),
        Search(ENDPOINT, "ResearchStudy", search_catalogue, ("identifier", "_count", "_offset"),
               "Consent domains."),
        Search(ENDPOINT, "Questionnaire", search_catalogue,
               ("useContextIdentifier", "context-type", "name", "version", "_count", "_offset"),
               "Templates (TemplateFrame, QuestionnaireComposed) and modules (TemplateModule) of a domain."),
        Search(ENDPOINT, "ActivityDefinition", search_catalogue,
               ("useContextIdentifier", "code", "version", "_count", "_offset"), "Policies of a domain."),
    ]
