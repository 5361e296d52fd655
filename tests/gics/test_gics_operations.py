"""The gICS operations' behaviour beyond the guide's examples: fts-next's requests with its
headers and body shapes and its filtering of the answers re-enacted, paging of the domain's
consents, per-request errors and hostile input, batches, profiles, audit, and the agreement of
$isConsented, $currentPolicyStatesForPerson and $getAllConsentedIdsFor on the demo data.

The demo consents at the tests' clock (2025-06-02): dic_1H51T (form 1.6.f, 2021) and dic_GCC83
(NUM-CODEX, 2021) and dic_810MT (form 1.7.2, 2022) accepted patient data; dic_811MT accepted in
2022 and withdrew patient data in 2023; dic_812MT accepted in 2017, so collecting medical data
(MDAT_erheben, five years) has ended. dic_1H51T also consented in the num domain (2019).
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gics_helpers import BASE, example, gateway, post, shape
from ttp_gateway.core.auth import Client
from ttp_gateway.core.gateway import Call
from ttp_gateway.core.observability import audit_trail
from ttp_gateway.core.operations import bind, scoped_values
from ttp_gateway.plugins.gics.operations import GicsOperations
from ttp_gateway.plugins.gics.resources import PROFILE_DE, PROFILE_MII

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
PSEUDONYM = "https://ths-greifswald.de/fhir/gics/identifiers/Pseudonym"
MII_POLICY_SYSTEM = "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3"
FTS_POLICIES = {f"2.16.840.1.113883.3.1937.777.24.5.3.{n}" for n in (2, 3, 6, 7)}
DEMO_PERSONS = ["dic_1H51T", "dic_GCC83", "dic_810MT", "dic_811MT", "dic_812MT"]
OPERATIONS = {op.name: op for op in GicsOperations().declarations()}


@pytest.fixture
def client(tmp_path):
    with gateway(tmp_path) as test_client:
        yield test_client


def fts_consented_patients(outer: dict, policy_system: str = MII_POLICY_SYSTEM,
                           policies: set[str] = FTS_POLICIES) -> dict[str, dict[str, tuple[str, str]]]:
    """fts-next's reading of an $allConsentsFor... answer: of every inner Bundle, the Patient's
    identifier in the Pseudonym system and the periods of the nested provisions coded in the
    policy system with a wanted code; a patient counts when its Bundle names every wanted
    policy. (Like fts-next, it does not look at the provisions' type.)"""
    found = {}
    for entry in outer["entry"]:
        inner = entry["resource"]
        if inner["resourceType"] != "Bundle":
            continue
        resources = [e["resource"] for e in inner["entry"]]
        pid = next((i["value"] for r in resources if r["resourceType"] == "Patient"
                    for i in r["identifier"] if i["system"] == PSEUDONYM), None)
        periods = {}
        for consent in (r for r in resources if r["resourceType"] == "Consent"):
            for provision in consent["provision"].get("provision", []):
                for concept in provision["code"]:
                    for coding in concept["coding"]:
                        if coding["system"] == policy_system and coding["code"] in policies:
                            periods[coding["code"]] = (provision["period"]["start"], provision["period"]["end"])
        if pid is not None and set(periods) >= policies:
            found[pid] = periods
    return found


def handler_call(client, operation: str, body: dict, query: dict | None = None, who: str = "fts") -> Call:
    """A call as the core makes it, with the URL's query parameters."""
    op = OPERATIONS[operation]
    call = Call(client.app.state.gateway, op, bind(op.parameters, body["parameter"]), Client(name=who))
    call.query = query or {}  # type: ignore[attr-defined]
    return call


def domain_body(domain: str = "MII") -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": domain}]}


# --- fts-next ---------------------------------------------------------------------------------

def test_fts_next_finds_the_operations_it_requires(client) -> None:
    statement = client.get(f"{BASE}/metadata?_elements=rest.operation", headers=FHIR_JSON).json()
    names = {o["name"] for rest in statement["rest"] for o in rest["operation"]}
    assert {"allConsentsForDomain", "allConsentsForPerson"} <= names


def test_fts_next_fetch_all_pages_through_the_domain(client) -> None:
    """fts-next posts $allConsentsForDomain?_count=N&_offset=M with only the domain in the body,
    and asks for the next page while offset + count < total."""
    selected, offset, count, pages = {}, 0, 2, 0
    while True:
        call = handler_call(client, "allConsentsForDomain", domain_body(), {"_count": str(count), "_offset": str(offset)})
        outer = OPERATIONS["allConsentsForDomain"].handler(call)
        pages += 1
        assert len(outer["entry"]) <= count
        selected.update(fts_consented_patients(outer))
        if offset + count >= outer["total"]:
            break
        offset += count
    assert outer["total"] == 6 and pages == 3
    # the withdrawn patient is not selected; the one whose data collection ended is, with the
    # end of that period, so that only data of the consented years are transferred
    assert sorted(selected) == ["dic_1H51T", "dic_810MT", "dic_812MT", "dic_GCC83"]
    start, end = selected["dic_812MT"]["2.16.840.1.113883.3.1937.777.24.5.3.6"]
    assert (start, end) == ("2017-03-01T00:00:00+01:00", "2022-03-01T00:00:00+01:00")
    assert selected["dic_812MT"]["2.16.840.1.113883.3.1937.777.24.5.3.7"][1] == "2047-03-01T00:00:00+01:00"


def test_fts_next_fetch_over_http(client) -> None:
    """The same request as fts-next sends it, headers and all: every consent in one page."""
    answer = client.post(f"{BASE}/$allConsentsForDomain?_count=100&_offset=0", json=domain_body(), headers=FHIR_JSON)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/fhir+json")
    outer = answer.json()
    assert outer["total"] == 6
    assert sorted(fts_consented_patients(outer)) == ["dic_1H51T", "dic_810MT", "dic_812MT", "dic_GCC83"]


def test_fts_next_fetch_for_persons(client) -> None:
    """fts-next sends the domain first, then a page of its patient identifiers."""
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "domain", "valueString": "MII"},
        *({"name": "personIdentifier", "valueIdentifier": {"system": PSEUDONYM, "value": pid}}
          for pid in ("dic_1H51T", "dic_811MT", "dic_unknown"))]}
    answer = client.post(f"{BASE}/$allConsentsForPerson", json=body, headers=FHIR_JSON)
    assert answer.status_code == 200
    assert len(answer.json()["entry"]) == 3  # dic_1H51T's consent, dic_811MT's consent and withdrawal
    assert sorted(fts_consented_patients(answer.json())) == ["dic_1H51T"]


def test_fts_next_with_gics_policy_codes(client) -> None:
    """Configured with the gICS Policy system and names instead of the MII OIDs."""
    answer = client.post(f"{BASE}/$allConsentsForDomain", json=domain_body(), headers=FHIR_JSON).json()
    gics = "https://ths-greifswald.de/fhir/CodeSystem/gics/Policy"
    wanted = {"IDAT_erheben", "IDAT_speichern_verarbeiten", "MDAT_erheben", "MDAT_speichern_verarbeiten"}
    assert sorted(fts_consented_patients(answer, gics, wanted)) == ["dic_1H51T", "dic_810MT", "dic_812MT",
                                                                     "dic_GCC83"]


# --- paging -------------------------------------------------------------------------------------

def _page(client, query: dict, operation: str = "allConsentsForDomain", body: dict | None = None) -> dict:
    return OPERATIONS[operation].handler(handler_call(client, operation, body or domain_body(), query))


def test_pages_follow_their_links_without_overlap(client) -> None:
    first = _page(client, {"_count": "4"})
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert set(links) == {"self", "next"} and first["total"] == 6
    second = _page(client, {k: v[0] for k, v in parse_qs(urlsplit(links["next"]).query).items()})
    assert urlsplit(links["next"]).path == f"{BASE}/$allConsentsForDomain"
    assert {link["relation"] for link in second["link"]} == {"self", "previous"}
    ids = [e["resource"]["id"] for page in (first, second) for e in page["entry"]]
    assert len(ids) == len(set(ids)) == 6


@pytest.mark.parametrize("query, entries", [({"_count": "0"}, 0), ({"_offset": "6"}, 0), ({"_offset": "5"}, 1),
                                            ({"_count": "5000"}, 6), ({}, 6)])
def test_page_edges(client, query: dict, entries: int) -> None:
    page = _page(client, query)
    assert page["total"] == 6 and len(page["entry"]) == entries


@pytest.mark.parametrize("query", [{"_count": "-1"}, {"_offset": "1e3"}, {"_count": "9" * 12}])
def test_page_parameters_are_checked(client, query: dict) -> None:
    from ttp_gateway.core.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        _page(client, query)


def test_template_pages(client) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "domain", "valueString": "MII"}, {"name": "template", "valueString": "MII;Patienteneinwilligung MII;1.6.d"}]}
    page = _page(client, {"_count": "1"}, "allConsentsForTemplate", body)
    assert page["total"] == 2 and len(page["entry"]) == 1
    assert "template=MII%3BPatienteneinwilligung+MII%3B1.6.d" in page["link"][1]["url"]


class CountingStore:
    """Wraps a store and counts the consents each unit of work hands out."""

    def __init__(self, store) -> None:
        self.store, self.handed_out = store, 0

    def transaction(self, write: bool = False):
        outer = self

        class Unit:
            def __init__(self, unit) -> None:
                self.unit = unit

            def __getattr__(self, name: str) -> Any:
                method = getattr(self.unit, name)

                def counted(*args, **kwargs):
                    result = method(*args, **kwargs)
                    if isinstance(result, list):
                        outer.handed_out += len(result)
                    return result

                return counted

        from contextlib import contextmanager

        @contextmanager
        def unit():
            with self.store.transaction(write) as inner:
                yield Unit(inner)

        return unit()


def test_a_page_reads_only_its_own_consents(tmp_path) -> None:
    """Over a domain of 300 consents, a page of 10 reads 10 consents and those of their persons."""
    consents = [{"domain": "num", "template": "Einwilligung NUM|1.0", "signer_ids": [f"Pseudonym|p{i:04d}"],
                 "date": "2020-01-01", "answers": {"MDAT_NUM|1.0": "ACCEPTED"}} for i in range(300)]
    from gics_helpers import demo_settings

    with gateway(tmp_path, demo_settings(persons=[], extra_consents=consents)) as client:
        service = client.app.state.gateway.service("gics")
        counting = CountingStore(service.store)
        service.store = counting
        page = _page(client, {"_count": "10", "_offset": "150"}, body=domain_body("num"))
    assert page["total"] == 300 and len(page["entry"]) == 10
    assert counting.handed_out <= 20


# --- the answers agree -------------------------------------------------------------------------

def _person(pid: str) -> dict:
    return {"name": "personIdentifier", "valueIdentifier": {"system": PSEUDONYM, "value": pid}}


def test_is_consented_agrees_with_current_states_and_consented_ids(client) -> None:
    """For every demo person and every MII policy: $isConsented, the permit of
    $currentPolicyStatesForPerson and membership in $getAllConsentedIdsFor say the same."""
    policies = client.app.state.gateway.service("gics").catalogue().policies_of("MII")
    states = {}
    for pid in DEMO_PERSONS:
        answer = post(client, "currentPolicyStatesForPerson", {"resourceType": "Parameters", "parameter": [
            _person(pid), {"name": "domain", "valueString": "MII"}]}).json()
        states[pid] = {e["resource"]["provision"]["code"][0]["coding"][0]["code"]: e["resource"]["provision"]["type"]
                       for e in answer["entry"]}
    checked = 0
    for policy in policies:
        coding = {"name": "policy", "valueCoding": {"system": policy.system, "code": policy.name}}
        ids = post(client, "getAllConsentedIdsFor", {"resourceType": "Parameters", "parameter": [
            {"name": "domain", "valueString": "MII"}, {"name": "signerIdTypeName", "valueString": "Pseudonym"},
            coding, {"name": "version", "valueString": policy.version}]}).json()
        consented_ids = {p["valueIdentifier"]["value"] for p in ids.get("parameter", [])}
        for pid in DEMO_PERSONS:
            answer = post(client, "isConsented", {"resourceType": "Parameters", "parameter": [
                _person(pid), {"name": "domain", "valueString": "MII"}, coding,
                {"name": "version", "valueString": policy.version}]}).json()
            consented = answer["parameter"][0]["valueBoolean"]
            assert consented == (states[pid].get(policy.name) == "permit") == (pid in consented_ids), (pid, policy.name)
            checked += consented
    assert checked > 30  # the comparison is not vacuous


def test_withdrawal_and_expiry_in_the_answers(client) -> None:
    def consented(pid: str, code: str, request_date: str | None = None) -> bool:
        parameters = [_person(pid), {"name": "domain", "valueString": "MII"},
                      {"name": "policy", "valueCoding": {"system": MII_POLICY_SYSTEM,
                                                         "code": f"2.16.840.1.113883.3.1937.777.24.5.3.{code}"}},
                      {"name": "version", "valueString": "1.1"}]
        if request_date:
            parameters.append({"name": "config", "resource": {"resourceType": "Parameters", "parameter": [
                {"name": "requestDate", "valueDate": request_date}]}})
        return post(client, "isConsented", {"resourceType": "Parameters", "parameter": parameters}).json()[
            "parameter"][0]["valueBoolean"]

    assert consented("dic_811MT", "7", "2023-05-31") and not consented("dic_811MT", "7")
    assert consented("dic_812MT", "6", "2022-02-28") and not consented("dic_812MT", "6")
    assert consented("dic_812MT", "7")


# --- batches and profiles -----------------------------------------------------------------------

def test_is_consented_in_a_batch(client) -> None:
    request = example("Parameters-IsConsented-request-example-2")
    other = copy.deepcopy(request)
    other["parameter"][0]["valueIdentifier"]["value"] = "dic_unknown"
    broken = copy.deepcopy(request)
    broken["parameter"][1]["valueString"] = "no-such-domain"
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": r, "request": {"method": "POST", "url": "$isConsented"}} for r in (request, other, broken)]}
    answer = client.post(f"{BASE}/$isConsented", json=bundle)
    assert answer.status_code == 200
    entries = answer.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200", "200", "404"]
    assert [e["resource"]["parameter"][0]["valueBoolean"] for e in entries[:2]] == [True, False]


@pytest.mark.parametrize("profile, profiles, category", [
    (None, ["https://ths-greifswald.de/fhir/StructureDefinition/gics/Consent", PROFILE_DE], "document"),
    (PROFILE_DE + "|2.0.3", [PROFILE_DE], "document"),
    (PROFILE_MII, ["https://ths-greifswald.de/fhir/StructureDefinition/gics/Consent", PROFILE_MII],
     "2.16.840.1.113883.3.1937.777.24.2.184"),
])
def test_profiles(client, profile: str | None, profiles: list[str], category: str) -> None:
    body = example("Parameters-AllConsentsForPerson-request-example-1")
    if profile:
        body["parameter"].append({"name": "_profile", "valueCanonical": profile})
    answer = post(client, "allConsentsForPerson", body).json()
    consent = next(e["resource"] for e in answer["entry"][0]["resource"]["entry"]
                   if e["resource"]["resourceType"] == "Consent")
    assert consent["meta"]["profile"] == profiles
    assert consent["category"][1]["coding"][0]["code"] == category


# --- recording consents -------------------------------------------------------------------------

def test_a_recorded_consent_keeps_what_was_given_and_answers_states(client) -> None:
    request = example("Parameters-Parameters-AddConsent-request-example-1")
    first = post(client, "addConsent", request)
    again = post(client, "addConsent", request)
    assert first.status_code == again.status_code == 200
    consent_ids = [next(e["resource"]["id"] for e in a.json()["entry"] if e["resource"]["resourceType"] == "Consent")
                   for a in (first, again)]
    assert consent_ids[0] == consent_ids[1]  # a retry finds the consent recorded before
    given = {p["name"]: p.get("resource") for p in request["parameter"]}
    answered = {e["resource"]["resourceType"]: e["resource"] for e in first.json()["entry"]}
    scan = answered["DocumentReference"]["content"][0]["attachment"]["data"]
    assert scan == given["documentReference"]["content"][0]["attachment"]["data"]
    assert [s["who"]["display"] for s in answered["Provenance"]["signature"]] == \
           [s["who"]["display"] for s in given["provenance"]["signature"]]
    assert answered["Provenance"]["target"][0]["reference"] == f"QuestionnaireResponse/{answered['QuestionnaireResponse']['id']}"
    assert answered["QuestionnaireResponse"]["subject"]["reference"] == f"Patient/{answered['Patient']['id']}"
    # and the person is now consented to MDAT_erheben for five years from the form's date
    check = {"resourceType": "Parameters", "parameter": [
        {"name": "personIdentifier", "valueIdentifier": {"system": PSEUDONYM, "value": "studypsn1"}},
        {"name": "domain", "valueString": "MII"},
        {"name": "policy", "valueCoding": {"code": "MDAT_erheben"}}, {"name": "version", "valueString": "1.1"},
        {"name": "config", "resource": {"resourceType": "Parameters", "parameter": [
            {"name": "requestDate", "valueDate": "2027-12-20"}]}}]}
    assert post(client, "isConsented", check).json()["parameter"][0]["valueBoolean"] is True
    check["parameter"][-1]["resource"]["parameter"][0]["valueDate"] = "2027-12-21"
    assert post(client, "isConsented", check).json()["parameter"][0]["valueBoolean"] is False


def test_the_same_consent_with_other_answers_conflicts(client) -> None:
    request = example("Parameters-Parameters-AddConsent-request-example-1")
    assert post(client, "addConsent", request).status_code == 200
    changed = copy.deepcopy(request)
    response = next(p["resource"] for p in changed["parameter"] if p["name"] == "questionnaireResponse")
    response["item"][0]["answer"][0]["valueCoding"]["code"] = "2.16.840.1.113883.3.1937.777.24.5.2.1"
    answer = post(client, "addConsent", changed)
    assert answer.status_code == 409 and answer.json()["issue"][0]["code"] == "duplicate"


def _add_consent(mutate) -> dict:
    request = example("Parameters-Parameters-AddConsent-request-example-1")
    parts = {p["name"]: p for p in request["parameter"]}
    mutate(parts)
    return request


@pytest.mark.parametrize("mutate, status", [
    (lambda p: p["domain"].update(valueString="nowhere"), 404),
    (lambda p: p["questionnaireResponse"]["resource"].update(
        questionnaire="https://ths-greifswald.de/fhir/gics/QuestionnaireComposed/MII/Unbekannt|1.0"), 404),
    (lambda p: p["questionnaireResponse"]["resource"].update(
        questionnaire="https://ths-greifswald.de/fhir/gics/QuestionnaireComposed/num/Einwilligung+NUM|1.0"), 400),
    (lambda p: p["questionnaireResponse"]["resource"].update(questionnaire="http://elsewhere/Q|1"), 400),
    (lambda p: p["questionnaireResponse"]["resource"].pop("authored"), 400),
    (lambda p: p["questionnaireResponse"]["resource"].update(authored="yesterday"), 400),
    (lambda p: p["questionnaireResponse"]["resource"]["item"].append(
        {"linkId": "Nicht_im_Formular|1.0", "answer": [{"valueCoding": {"code": "ACCEPTED"}}]}), 400),
    (lambda p: p["questionnaireResponse"]["resource"]["item"][0].update(answer=[{"valueString": "ja"}]), 400),
    (lambda p: p["questionnaireResponse"]["resource"].update(item=[]), 400),  # PATDAT is mandatory
    (lambda p: p["patient"]["resource"]["identifier"][0].update(system="http://hospital/mrn"), 422),
    (lambda p: p["patient"]["resource"]["identifier"][0].update(
        system="https://ths-greifswald.de/fhir/gics/identifiers/CaseId"), 422),
    (lambda p: p["patient"]["resource"].update(identifier=[]), 422),
    (lambda p: p["patient"]["resource"].update(identifier="x"), 422),
    (lambda p: p["patient"].update(resource={"resourceType": "Observation"}), 400),
    (lambda p: p["domain"].update(valueString=None, valueInteger=3), 400),
])
def test_add_consent_refuses_what_does_not_fit(client, mutate, status: int) -> None:
    answer = post(client, "addConsent", _add_consent(mutate))
    assert answer.status_code == status, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "studypsn1" not in answer.text.split("diagnostics")[-1]  # no signer id in the message


@pytest.mark.parametrize("operation, parameters, status", [
    ("isConsented", [_person("x"), {"name": "domain", "valueString": "MII"},
                     {"name": "policy", "valueCoding": {"code": "Unbekannt"}}, {"name": "version", "valueString": "1.1"}],
     404),
    ("isConsented", [_person("x"), {"name": "domain", "valueString": "MII"},
                     {"name": "policy", "valueCoding": {"code": "MDAT_erheben"}}, {"name": "version", "valueString": "9"}],
     404),
    ("isConsented", [_person("x"), {"name": "domain", "valueString": "MII"},
                     {"name": "policy", "valueCoding": {"system": 3}}, {"name": "version", "valueString": "1.1"}], 400),
    ("isConsented", [_person("x"), {"name": "domain", "valueString": "MII"},
                     {"name": "policy", "valueCoding": {"code": "MDAT_erheben"}}, {"name": "version", "valueString": "1.1"},
                     {"name": "config", "resource": {"resourceType": "Parameters", "parameter": [
                         {"name": "idMatchingType", "valueCoding": {"code": "SOMETIMES"}}]}}], 400),
    ("isConsented", [_person("x"), {"name": "domain", "valueString": "MII"},
                     {"name": "policy", "valueCoding": {"code": "MDAT_erheben"}}, {"name": "version", "valueString": "1.1"},
                     {"name": "config", "resource": {"resourceType": "Parameters", "parameter": [
                         {"name": "requestDate", "valueDate": "13.01.2022"}]}}], 400),
    ("currentPolicyStatesForPerson", [{"name": "personIdentifier", "valueIdentifier": {"system": "http://x", "value": "1"}},
                                      {"name": "domain", "valueString": "MII"}], 422),
    ("currentPolicyStatesForPerson", [{"name": "domain", "valueString": "MII"}], 400),
    ("allConsentsForTemplate", [{"name": "template", "valueString": "num;Einwilligung NUM;1.0"},
                                {"name": "domain", "valueString": "MII"}], 400),
    ("allConsentsForTemplate", [{"name": "template", "valueString": "MII;Unbekannt;1.0"},
                                {"name": "domain", "valueString": "MII"}], 404),
    ("allConsentsForDomain", [{"name": "domain", "valueString": "MII"},
                              {"name": "_profile", "valueCanonical": "http://example.org/other"}], 400),
    ("getAllConsentedIdsFor", [{"name": "domain", "valueString": "MII"}, {"name": "signerIdTypeName", "valueString": "CaseId"},
                               {"name": "policy", "valueCoding": {"code": "MDAT_erheben"}},
                               {"name": "version", "valueString": "1.1"}], 404),
    ("addConsentOptOut", [{"name": "patient", "resource": {"resourceType": "Patient", "identifier": [
        {"system": PSEUDONYM, "value": "p"}]}}, {"name": "domain", "valueString": "MII"},
        {"name": "questionnaire", "valueCanonical": "https://ths-greifswald.de/fhir/gics/QuestionnaireComposed/MII/X|1"}],
     404),
])
def test_whole_request_errors(client, operation: str, parameters: list, status: int) -> None:
    answer = post(client, operation, {"resourceType": "Parameters", "parameter": parameters})
    assert answer.status_code == status, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("body", [
    {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "MII"},
                                                 {"name": "personIdentifier", "valueIdentifier": "x"}]},
    {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "MII"},
                                                 {"name": "personIdentifier", "valueIdentifier": {"system": [], "value": {}}}]},
    {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "MII"}, *[
        {"name": "personIdentifier", "valueIdentifier": {"system": PSEUDONYM, "value": "a" * 10}}] * 10_001]},
    {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "M" * 10_000},
                                                 _person("x")]},
    {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {"resourceType": "Parameters"}}]},
])
def test_hostile_input_gets_an_outcome_not_a_crash(client, body: dict) -> None:
    answer = post(client, "allConsentsForPerson", body)
    assert answer.status_code in (400, 404, 422), answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_questionnaire_response_items_may_nest_and_carry_free_text(client) -> None:
    def nest(parts: dict) -> None:
        response = parts["questionnaireResponse"]["resource"]
        response["item"] = [{"linkId": "group", "item": response["item"]},
                            {"linkId": "Bemerkung", "answer": [{"valueString": "frei"}]}]
    answer = post(client, "addConsent", _add_consent(nest))
    assert answer.status_code == 200, answer.text


# --- scope and audit ----------------------------------------------------------------------------

def test_consent_domains_are_scoped() -> None:
    for op in OPERATIONS.values():
        domain = next(p for p in op.parameters if p.name == "domain")
        assert domain.scope == "consent-domains", op.name
    body = example("Parameters-IsConsented-request-example-1")
    args = bind(OPERATIONS["isConsented"].parameters, body["parameter"])
    assert list(scoped_values(OPERATIONS["isConsented"].parameters, args)) == [("consent-domains", "num")]


def test_reads_and_writes_are_audited_without_content(client, monkeypatch) -> None:
    records: list[tuple[str, dict]] = []
    monkeypatch.setattr(audit_trail, "record", lambda action, facts: records.append((action, facts)))
    post(client, "addConsent", example("Parameters-Parameters-AddConsent-request-example-1"))
    post(client, "currentPolicyStatesForPerson", example("Parameters-CurrentPolicyStatesForPerson-request-example-1"))
    client.post(f"{BASE}/$allConsentsForDomain", json=domain_body())
    actions = [(action, facts.get("persons"), facts["client"]) for action, facts in records]
    assert actions == [("add-consent", ["Pseudonym|studypsn1"], "demo"),
                       ("currentPolicyStatesForPerson", ["Pseudonym|dic_1H51T"], "demo"),
                       ("allConsentsForDomain", None, "demo")]
    text = repr(records)
    assert "ACCEPTED" not in text and "MDAT" not in text and "JVBERi" not in text


def test_shape_comparison_sees_a_changed_code() -> None:
    expected = example("Bundle-CurrentPolicyStatesForPerson-response-example-1")
    changed = copy.deepcopy(expected)
    changed["entry"][0]["resource"]["provision"]["code"][1]["coding"][0]["code"] += "9"
    assert shape(changed) != shape(expected)
    changed = copy.deepcopy(expected)
    changed["entry"][0]["resource"]["provision"]["type"] = "permit"
    assert shape(changed) != shape(expected)
