"""FHIR searches of the gICS endpoint: `GET [base]/Consent?...` and the catalogue's
`GET [base]/ResearchStudy`, `[base]/Questionnaire`, `[base]/ActivityDefinition`.

A search is a plain function of the query parameters (name -> list of values, as the URL gave
them) that answers a `searchset` Bundle; the route that calls it authenticates the client and
passes it in, so that a key scoped to some consent domains sees only those.

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
from typing import Any, Callable, Mapping, Sequence

from ttp_gateway.core.auth import Client
from ttp_gateway.core.errors import InvalidRequest, NotAuthenticated

from . import resources as fr
from .model import OPEN_END, SIGNER_ID_SYSTEM_PREFIX, Catalogue, SignerId
from .operations import DEFAULT_PAGE, MAX_PAGE, SCOPE
from .service import ConsentService, revoked_grants
from .states import current_states, decides, effective_status
from .store import PolicyFilter

RESULT_TYPES = ("policy", "document", "consent-status")
_PREFIXES = ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb")
_IGNORED = {"_format", "_pretty", "_summary", "_elements", "_sort", "_total", "mii-policy-uri"}
Audit = Callable[..., None]


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


def _page(query: Mapping[str, Sequence[str]]) -> tuple[int, int]:
    values = []
    for name, default in (("_count", DEFAULT_PAGE), ("_offset", 0)):
        text = _one(query, name)
        if text is None:
            values.append(default)
        elif text.isdigit() and len(text) <= 9:
            values.append(int(text))
        else:
            raise InvalidRequest(f"'{name}' must be a non-negative integer")
    return min(values[0], MAX_PAGE), values[1]


def _date_range(text: str, zone: tzinfo) -> tuple[str, datetime, datetime]:
    prefix = text[:2] if text[:2] in _PREFIXES else "eq"
    value = text[2:] if text[:2] in _PREFIXES else text
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


def _domains(query: Mapping[str, Sequence[str]], catalogue: Catalogue, client: Client) -> list[str]:
    """The domains a search covers: the one asked for, or every one the client may use."""
    named = _one(query, "domain:identifier", "domain")
    if named is not None:
        name = named.rpartition("|")[2]
        if not client.may_use(SCOPE, name):
            raise NotAuthenticated(f"this API key may not use consent-domain {name!r}")
        return [name] if catalogue.domain(name) is not None else []
    return [d for d in sorted(catalogue.domains) if client.may_use(SCOPE, d)]


def _searchset(entries: list[dict], total: int, links: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}


def search_consents(query: Mapping[str, Sequence[str]], service: ConsentService, base: str,
                    client: Client, audit: Audit) -> dict:
    """`GET [base]/Consent?...` as a searchset Bundle."""
    catalogue = service.catalogues.fresher()
    zone, now = service.zone, service.clock()
    count, offset = _page(query)
    domains = _domains(query, catalogue, client)
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
    names: set[str] | None = None
    permit: bool | None = None
    periods: list[tuple[str, datetime, datetime]] = []

    def narrow(token: str) -> None:
        nonlocal names
        system, code = _token(token)
        found = {p.name for d in domains for p in catalogue.find_policies(d, system, code)}
        names = found if names is None else names & found

    def want(kind: str) -> None:
        nonlocal permit
        if kind not in ("permit", "deny"):
            raise InvalidRequest("the provision type must be permit or deny")
        wanted = kind == "permit"
        if permit is not None and permit != wanted:
            contradictory.append(kind)
        permit = wanted

    contradictory: list[str] = []  # permit AND deny: nothing can match
    for token in _all(query, "mii-provision-provision-code", "provisionCode"):
        narrow(token)
    for kind in _all(query, "mii-provision-provision-type", "provisionType"):
        want(kind)
    for composite in _all(query, "mii-provision-provision-code-type"):
        token, sep, kind = composite.partition("$")
        if not sep:
            raise InvalidRequest("mii-provision-provision-code-type is [system|]code$permit or $deny")
        narrow(token)
        want(kind)
    for text in _all(query, "mii-provision-provision-period", "provisionPeriod"):
        periods.append(_date_range(text, zone))
    for composite in _all(query, "mii-provision-provision-code-period"):
        token, sep, when = composite.partition("$")
        if not sep:
            raise InvalidRequest("mii-provision-provision-code-period is [system|]code$[prefix]date")
        narrow(token)
        periods.append(_date_range(when, zone))
    revinclude = _one(query, "_revinclude")
    if revinclude not in (None, "Provenance:target"):
        raise InvalidRequest("only _revinclude=Provenance:target is supported")

    applied = [(k, v) for k, values in query.items() for v in values
               if k not in ("_count", "_offset") and k not in _IGNORED]
    filters = [PolicyFilter(domain=d, signer_ids=tuple(signer_ids),
                            policies=frozenset(names) if names is not None else None,
                            permit=permit, at=now, periods=tuple(periods)) for d in domains]
    entries: list[dict] = []
    total = 0
    if result_type == "consent-status":
        entries, total = _consent_status(service, catalogue, filters, signer_ids, now, count, offset, base)
    elif filters and not contradictory:
        total, entries = _page_of(service, catalogue, filters, result_type, count, offset, base, revinclude)
    audit("search-consent", domains=domains, result_type=result_type,
          persons=sorted(str(s) for s in signer_ids), consents=len(entries))
    return _searchset(entries, total, fr.page_links(f"{base}/Consent", applied, count, offset, total))


def _page_of(service: ConsentService, catalogue: Catalogue, filters: list[PolicyFilter], result_type: str,
             count: int, offset: int, base: str, revinclude: str | None) -> tuple[int, list[dict]]:
    zone = service.zone
    entries: list[dict] = []
    total = 0
    with service.store.transaction() as unit:
        # Domains one after another: the page runs on into the next domain.
        skip, room = offset, count
        for wanted in filters:
            if result_type == "document":
                size = unit.count_matching_consents(wanted)
            else:
                size = unit.count_signed_policies(wanted)
            total += size
            if room <= 0 or skip >= size:
                skip = max(0, skip - size)
                continue
            if result_type == "document":
                consents = unit.matching_consents_page(wanted, offset=skip, limit=room)
                signers = sorted({s for c in consents for s in c.signer_ids})
                persons = unit.consents_of_persons(wanted.domain or "", signers) if signers else []
                found = [(c, fr.document_consent(c, catalogue, zone, fr.PROFILE_MII, revoked_grants(c, persons)))
                         for c in consents]
            else:
                rows = unit.signed_policies_page(wanted, offset=skip, limit=room, resources=bool(revinclude))
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


def _consent_status(service: ConsentService, catalogue: Catalogue, filters: list[PolicyFilter],
                    signer_ids: list[SignerId], now: datetime, count: int, offset: int,
                    base: str) -> tuple[list[dict], int]:
    """One computed Consent per person asked about: the current state of each of its policies."""
    if not signer_ids:
        raise InvalidRequest("category consent-status needs patient.identifier")
    entries = []
    with service.store.transaction() as unit:
        for wanted in filters:
            consents = unit.consents_of_persons(wanted.domain or "", list(signer_ids))
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

def search_catalogue(resource_type: str, query: Mapping[str, Sequence[str]], service: ConsentService,
                     base: str, client: Client) -> dict:
    """`GET [base]/ResearchStudy|Questionnaire|ActivityDefinition?...` as a searchset Bundle."""
    catalogue = service.catalogues.fresher()
    count, offset = _page(query)
    if resource_type == "ResearchStudy":
        wanted = _one(query, "identifier")
        domains = [d for d in _domains({}, catalogue, client)
                   if wanted is None or d == wanted.rpartition("|")[2]]
        resources = [fr.research_study(catalogue.domains[d]) for d in domains]
    else:
        named = _one(query, "useContextIdentifier", "domain:identifier", "domain")
        domains = _domains({"domain": [named]} if named else {}, catalogue, client)
        version = _one(query, "version")
        if resource_type == "ActivityDefinition":
            code = _one(query, "code")
            system, token = _token(code) if code else (None, None)
            resources = [fr.activity_definition(p) for d in domains for p in catalogue.policies_of(d)
                         if (token is None or p.answers_to(system, token))
                         and (version is None or p.version == version)]
        elif resource_type == "Questionnaire":
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
        else:
            raise InvalidRequest(f"no search for {resource_type} at the gICS endpoint")
    applied = [(k, v) for k, values in query.items() for v in values if k not in ("_count", "_offset")]
    page = resources[offset:offset + count]
    entries = [{"fullUrl": f"{base}/{resource_type}/{r['id']}", "resource": r, "search": {"mode": "match"}}
               for r in page]
    return _searchset(entries, len(resources), fr.page_links(f"{base}/{resource_type}", applied, count, offset,
                                                             len(resources)))

