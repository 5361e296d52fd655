"""The gICS operations' behaviour beyond the guide's examples, on every backend: fts-next's
requests with its headers, body shapes and URL parameters, and its filtering of the answers
re-enacted; paging of the domain's consents; per-request errors and hostile input (a 4xx
OperationOutcome, nothing written); batches, profiles, scoping by consent domain, audit; and the
agreement of $isConsented, $currentPolicyStatesForPerson and $getAllConsentedIdsFor on the demo
data.

The demo consents at the tests' clock (2025-06-02): dic_1H51T (form 1.6.f, 2021) and dic_GCC83
(NUM-CODEX, 2021) and dic_810MT (form 1.7.2, 2022) accepted patient data; dic_811MT accepted in
2022 and withdrew patient data in 2023; dic_812MT accepted in 2017, so collecting medical data
(MDAT_erheben, five years) has ended. dic_1H51T also consented in the num domain (2019).
"""

from __future__ import annotations

import copy
from urllib.parse import parse_qs, urlsplit

import pytest

from gics_helpers import (BASE, PSEUDONYM, SQLITE_ONLY, count_consents, demo_settings, example, gateway, person,
                          post, shape)
from ttp_gateway.core.observability import audit_trail
from ttp_gateway.core.operations import bind, scoped_values
from ttp_gateway.plugins.gics import store_mongo, store_sql
from ttp_gateway.plugins.gics.operations import GicsOperations
from ttp_gateway.plugins.gics.resources import PROFILE_DE, PROFILE_MII

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
MII_POLICY_SYSTEM = "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3"
FTS_POLICIES = {f"2.16.840.1.113883.3.1937.777.24.5.3.{n}" for n in (2, 3, 6, 7)}
DEMO_PERSONS = ["dic_1H51T", "dic_GCC83", "dic_810MT", "dic_811MT", "dic_812MT"]
OPERATIONS = {op.name: op for op in GicsOperations().declarations()}


@pytest.fixture
def client(storage_url):
    with gateway(storage_url) as test_client:
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


def domain_body(domain: str = "MII") -> dict:
    """fts-next's body: the domain only (paging goes into the URL)."""
    return {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": domain}]}


def fetch_all(client, count: int, offset: int, domain: str = "MII", operation: str = "allConsentsForDomain",
              body: dict | None = None) -> dict:
    """One page as fts-next asks for it: POST with _count and _offset in the URL."""
    answer = client.post(f"{BASE}/${operation}?_count={count}&_offset={offset}", json=body or domain_body(domain),
                         headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    return answer.json()


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
        outer = fetch_all(client, count, offset)
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


def test_fts_next_fetch_in_one_page(client) -> None:
    outer = fetch_all(client, 100, 0)
    assert outer["total"] == 6 and len(outer["entry"]) == 6
    assert sorted(fts_consented_patients(outer)) == ["dic_1H51T", "dic_810MT", "dic_812MT", "dic_GCC83"]


def test_fts_next_fetch_for_persons(client) -> None:
    """fts-next sends the domain first, then a page of its patient identifiers."""
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "domain", "valueString": "MII"}, *(person(pid) for pid in ("dic_1H51T", "dic_811MT", "dic_unknown"))]}
    answer = client.post(f"{BASE}/$allConsentsForPerson", json=body, headers=FHIR_JSON)
    assert answer.status_code == 200
    assert len(answer.json()["entry"]) == 3  # dic_1H51T's consent, dic_811MT's consent and withdrawal
    assert sorted(fts_consented_patients(answer.json())) == ["dic_1H51T"]


def test_fts_next_with_gics_policy_codes(client) -> None:
    """Configured as fts-next's example project is: the gICS Policy system and names."""
    answer = fetch_all(client, 100, 0)
    gics = "https://ths-greifswald.de/fhir/CodeSystem/gics/Policy"
    wanted = {"IDAT_erheben", "IDAT_speichern_verarbeiten", "MDAT_erheben", "MDAT_speichern_verarbeiten"}
    assert sorted(fts_consented_patients(answer, gics, wanted)) == ["dic_1H51T", "dic_810MT", "dic_812MT",
                                                                     "dic_GCC83"]


# --- paging -------------------------------------------------------------------------------------

def _follow(client, url: str) -> dict:
    """A page link followed as a link is: GET."""
    answer = client.get(url)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_pages_follow_their_links_without_overlap(client) -> None:
    first = fetch_all(client, 4, 0)
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert set(links) == {"self", "next"} and first["total"] == 6
    assert urlsplit(links["next"]).path == f"{BASE}/$allConsentsForDomain"
    assert parse_qs(urlsplit(links["next"]).query) == {"domain": ["MII"], "_count": ["4"], "_offset": ["4"]}
    second = _follow(client, links["next"])
    assert {link["relation"] for link in second["link"]} == {"self", "previous"}
    ids = [e["resource"]["id"] for page in (first, second) for e in page["entry"]]
    assert len(ids) == len(set(ids)) == 6
    back = _follow(client, next(link["url"] for link in second["link"] if link["relation"] == "previous"))
    assert [e["resource"]["id"] for e in back["entry"]] == [e["resource"]["id"] for e in first["entry"]]


@SQLITE_ONLY
def test_links_carry_the_public_base_url(storage_url) -> None:
    with gateway(storage_url, server={"public_base_url": "https://ttp.example.org/ttp-fhir/fhir"}) as client:
        page = fetch_all(client, 2, 0)
    assert page["link"][1]["url"].startswith("https://ttp.example.org/ttp-fhir/fhir/gics/$allConsentsForDomain?")


def test_page_edges(client) -> None:
    for (count, offset), entries in {(0, 0): 0, (100, 6): 0, (100, 5): 1, (5000, 0): 6, (2, 5): 1,
                                     (100, 10 ** 8): 0}.items():
        page = fetch_all(client, count, offset)
        assert page["total"] == 6 and len(page["entry"]) == entries, (count, offset)
    defaults = post(client, "allConsentsForDomain", domain_body()).json()
    assert len(defaults["entry"]) == 6 and "_count=100" in defaults["link"][0]["url"]


@SQLITE_ONLY
@pytest.mark.parametrize("query", ["_count=-1", "_offset=1e3", "_count=" + "9" * 12, "_offset=%C2%B2"])
def test_page_parameters_are_checked(client, query: str) -> None:
    answer = client.post(f"{BASE}/$allConsentsForDomain?{query}", json=domain_body())
    assert answer.status_code == 400 and answer.json()["resourceType"] == "OperationOutcome"


def test_template_pages(client) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "domain", "valueString": "MII"}, {"name": "template", "valueString": "MII;Patienteneinwilligung MII;1.6.d"}]}
    page = fetch_all(client, 1, 0, operation="allConsentsForTemplate", body=body)
    assert page["total"] == 2 and len(page["entry"]) == 1
    assert "template=MII%3BPatienteneinwilligung+MII%3B1.6.d" in page["link"][1]["url"]
    second = _follow(client, page["link"][1]["url"])
    assert second["total"] == 2 and second["entry"][0]["resource"]["id"] != page["entry"][0]["resource"]["id"]


def test_a_page_reads_only_its_own_consents(storage_url, monkeypatch) -> None:
    """Over a domain of 300 consents, a page of 10 reads 10 consents and those of their persons:
    the consents the store decodes are counted."""
    consents = [{"domain": "num", "template": "Einwilligung NUM|1.0", "signer_ids": [f"Pseudonym|p{i:04d}"],
                 "date": "2020-01-01", "answers": {"MDAT_NUM|1.0": "ACCEPTED"}} for i in range(300)]
    decoded = []
    for module in (store_sql, store_mongo):
        original = module._consent
        monkeypatch.setattr(module, "_consent", lambda *a, _original=original: decoded.append(1) or _original(*a))
    with gateway(storage_url, demo_settings(persons=[], extra_consents=consents)) as client:
        decoded.clear()
        page = fetch_all(client, 10, 150, domain="num")
    assert page["total"] == 300 and len(page["entry"]) == 10
    patients = [next(r["resource"] for r in e["resource"]["entry"] if r["resource"]["resourceType"] == "Patient")
                for e in page["entry"]]
    assert [p["identifier"][0]["value"] for p in patients] == [f"p{i:04d}" for i in range(150, 160)]
    assert len(decoded) <= 20


# --- the answers agree -------------------------------------------------------------------------

_person = person


def test_is_consented_agrees_with_current_states_and_consented_ids(client) -> None:
    """For every demo person and every MII policy: $isConsented, the permit of
    $currentPolicyStatesForPerson and membership in $getAllConsentedIdsFor say the same."""
    policies = client.get(f"{BASE}/ActivityDefinition?useContextIdentifier=MII&_count=1000").json()
    assert policies["total"] == len(policies["entry"]) > 30
    states = {}
    for pid in DEMO_PERSONS:
        answer = post(client, "currentPolicyStatesForPerson", {"resourceType": "Parameters", "parameter": [
            _person(pid), {"name": "domain", "valueString": "MII"}]}).json()
        states[pid] = {e["resource"]["provision"]["code"][0]["coding"][0]["code"]: e["resource"]["provision"]["type"]
                       for e in answer["entry"]}
    checked = 0
    for entry in policies["entry"]:
        policy = entry["resource"]
        coding = {"name": "policy", "valueCoding": policy["code"]["coding"][0]}
        name = coding["valueCoding"]["code"]
        ids = post(client, "getAllConsentedIdsFor", {"resourceType": "Parameters", "parameter": [
            {"name": "domain", "valueString": "MII"}, {"name": "signerIdTypeName", "valueString": "Pseudonym"},
            coding, {"name": "version", "valueString": policy["version"]}]}).json()
        consented_ids = {p["valueIdentifier"]["value"] for p in ids.get("parameter", [])}
        for pid in DEMO_PERSONS:
            answer = post(client, "isConsented", {"resourceType": "Parameters", "parameter": [
                _person(pid), {"name": "domain", "valueString": "MII"}, coding,
                {"name": "version", "valueString": policy["version"]}]}).json()
            consented = answer["parameter"][0]["valueBoolean"]
            assert consented == (states[pid].get(name) == "permit") == (pid in consented_ids), (pid, name)
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


def test_reads_allow_get(client) -> None:
    """Operations that change nothing may be invoked with GET (their links are)."""
    answer = client.get(f"{BASE}/$isConsented", params={
        "domain": "MII", "version": "1.1", "_format": "json"})
    assert answer.status_code == 400  # personIdentifier and policy cannot be sent as strings
    page = client.get(f"{BASE}/$allConsentsForDomain?domain=MII&_count=2&_offset=4&_profile={PROFILE_MII}")
    assert page.status_code == 200 and len(page.json()["entry"]) == 2
    consent = next(e["resource"] for e in page.json()["entry"][0]["resource"]["entry"]
                   if e["resource"]["resourceType"] == "Consent")
    assert PROFILE_MII in consent["meta"]["profile"]
    assert client.get(f"{BASE}/$addConsent?domain=MII").status_code == 405


# --- batches and profiles -----------------------------------------------------------------------

def test_is_consented_in_a_batch(client) -> None:
    """Bulk checks in one round trip: a batch Bundle of $isConsented, one answer per entry; a bad
    entry fails alone."""
    request = example("Parameters-IsConsented-request-example-2")
    entries = []
    for pid in [*DEMO_PERSONS, "dic_unknown"]:
        check = copy.deepcopy(request)
        check["parameter"][0]["valueIdentifier"]["value"] = pid
        check["parameter"][1]["valueString"] = "MII"
        entries.append(check)
    broken = copy.deepcopy(request)
    broken["parameter"][1]["valueString"] = "no-such-domain"
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": r, "request": {"method": "POST", "url": "$isConsented"}} for r in (*entries, broken)]}
    answer = client.post(f"{BASE}/$isConsented", json=bundle)
    assert answer.status_code == 200
    found = answer.json()["entry"]
    assert [e["response"]["status"] for e in found] == ["200"] * 6 + ["404"]
    # MDAT_erheben (.6) on 2025-06-02: dic_811MT withdrew, dic_812MT's five years are over
    assert [e["resource"]["parameter"][0]["valueBoolean"] for e in found[:6]] == [True, True, True, False, False,
                                                                                  False]


@SQLITE_ONLY
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
    assert count_consents(client) == 7
    given = {p["name"]: p.get("resource") for p in request["parameter"]}
    answered = {e["resource"]["resourceType"]: e["resource"] for e in first.json()["entry"]}
    scan = answered["DocumentReference"]["content"][0]["attachment"]["data"]
    assert scan == given["documentReference"]["content"][0]["attachment"]["data"]
    assert [s["who"]["display"] for s in answered["Provenance"]["signature"]] == \
           [s["who"]["display"] for s in given["provenance"]["signature"]]
    assert answered["Provenance"]["target"][0]["reference"] == f"QuestionnaireResponse/{answered['QuestionnaireResponse']['id']}"
    assert answered["QuestionnaireResponse"]["subject"]["reference"] == f"Patient/{answered['Patient']['id']}"
    # what was stored comes back as it was given
    stored = post(client, "allConsentsForPerson", {"resourceType": "Parameters", "parameter": [
        {"name": "domain", "valueString": "MII"}, _person("studypsn1")]}).json()
    inner = {e["resource"]["resourceType"]: e["resource"] for e in stored["entry"][0]["resource"]["entry"]}
    assert inner["DocumentReference"]["content"] == answered["DocumentReference"]["content"]
    assert inner["Consent"]["provision"] == answered["Consent"]["provision"]
    # and the person is now consented to MDAT_erheben for five years from the form's date
    check = {"resourceType": "Parameters", "parameter": [
        _person("studypsn1"), {"name": "domain", "valueString": "MII"},
        {"name": "policy", "valueCoding": {"code": "MDAT_erheben"}}, {"name": "version", "valueString": "1.1"},
        {"name": "config", "resource": {"resourceType": "Parameters", "parameter": [
            {"name": "requestDate", "valueDate": "2027-12-20"}]}}]}
    assert post(client, "isConsented", check).json()["parameter"][0]["valueBoolean"] is True
    check["parameter"][-1]["resource"]["parameter"][0]["valueDate"] = "2027-12-21"
    assert post(client, "isConsented", check).json()["parameter"][0]["valueBoolean"] is False


def test_an_opt_out_is_recorded_once(client) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "resource": {"resourceType": "Patient", "identifier": [{"system": PSEUDONYM,
                                                                                    "value": "optout1"}]}},
        {"name": "domain", "valueString": "opt-out"},
        {"name": "questionnaire", "valueCanonical": "https://ths-greifswald.de/fhir/gics/QuestionnaireComposed/"
                                                    "opt-out/Opt-Out|1.0"}]}
    assert post(client, "addConsentOptOut", body).status_code == 200
    assert post(client, "addConsentOptOut", body).status_code == 200  # the same moment: the same consent
    assert count_consents(client, "opt-out") == 1


def test_the_same_consent_with_other_answers_conflicts(client) -> None:
    request = example("Parameters-Parameters-AddConsent-request-example-1")
    assert post(client, "addConsent", request).status_code == 200
    changed = copy.deepcopy(request)
    response = next(p["resource"] for p in changed["parameter"] if p["name"] == "questionnaireResponse")
    response["item"][0]["answer"][0]["valueCoding"]["code"] = "2.16.840.1.113883.3.1937.777.24.5.2.1"
    answer = post(client, "addConsent", changed)
    assert answer.status_code == 409 and answer.json()["issue"][0]["code"] == "duplicate"
    assert count_consents(client) == 7


def test_a_failed_add_consent_writes_nothing(storage_url) -> None:
    """The consent is written, then the answer turns out too large to send: the request fails
    with 413, and the consent is not there."""
    with gateway(storage_url, limits={"max_answer_bytes": 2000}) as client:
        answer = post(client, "addConsent", example("Parameters-Parameters-AddConsent-request-example-1"))
        assert answer.status_code == 413 and answer.json()["resourceType"] == "OperationOutcome"
        assert count_consents(client) == 6
        assert post(client, "allConsentsForPerson", {"resourceType": "Parameters", "parameter": [
            {"name": "domain", "valueString": "MII"}, _person("studypsn1")]}).json()["total"] == 0


def _add_consent(mutate) -> dict:
    request = example("Parameters-Parameters-AddConsent-request-example-1")
    parts = {p["name"]: p for p in request["parameter"]}
    mutate(parts)
    return request


MISFITS = [
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
    (lambda p: p["questionnaireResponse"]["resource"].update(item=[{"item": [{"item": [{"item": [{"item": [
        {"item": [{"item": [{"item": [{"item": [{"item": [{"linkId": "x"}]}]}]}]}]}]}]}]}]}]), 400),
]


def test_add_consent_refuses_what_does_not_fit_and_writes_nothing(client) -> None:
    for index, (mutate, status) in enumerate(MISFITS):
        answer = post(client, "addConsent", _add_consent(mutate))
        assert answer.status_code == status, (index, answer.text)
        assert answer.json()["resourceType"] == "OperationOutcome"
        assert "studypsn1" not in answer.text  # no signer id in the message
    assert count_consents(client) == 6


@SQLITE_ONLY
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


HOSTILE = [
    {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "MII"},
                                                 {"name": "personIdentifier", "valueIdentifier": "x"}]},
    {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "MII"},
                                                 {"name": "personIdentifier", "valueIdentifier": {"system": [], "value": {}}}]},
    {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "MII"}, *[
        {"name": "personIdentifier", "valueIdentifier": {"system": PSEUDONYM, "value": "a" * 10}}] * 10_001]},
    {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "M" * 10_000}, _person("x")]},
    {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "MII"},
                                                 _person("x' OR '1'='1"), _person("\\x00")]},
    {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "MII"},
                                                 {"name": "personIdentifier", "valueIdentifier": {
                                                     "system": PSEUDONYM, "value": "v" * 100_000}}]},
    {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {"resourceType": "Parameters"}}]},
    {"resourceType": "Patient"},
    {"resourceType": "Parameters", "parameter": [{"name": "domain", "valueString": "MII"}, _person("a\x00b")]},
]


def test_hostile_input_gets_an_outcome_and_writes_nothing(client) -> None:
    for index, body in enumerate(HOSTILE):
        for operation in ("allConsentsForPerson", "addConsent", "isConsented"):
            answer = post(client, operation, body)
            if index == 4 and operation == "allConsentsForPerson":
                assert answer.status_code == 200 and answer.json()["total"] == 0  # unknown persons
                continue
            if answer.status_code == 200 and answer.json()["type"] == "batch-response":  # $isConsented
                assert [e["response"]["status"] for e in answer.json()["entry"]] == ["400"]
                continue
            assert 400 <= answer.status_code < 500, (index, operation, answer.text)
            assert answer.json()["resourceType"] == "OperationOutcome"
    assert client.post(f"{BASE}/$addConsent", content=b"{not json",
                       headers={"Content-Type": "application/fhir+json"}).status_code == 400
    long_id = _add_consent(lambda p: p["patient"]["resource"]["identifier"][0].update(value="v" * 100_000))
    assert post(client, "addConsent", long_id).status_code == 422
    assert count_consents(client) == 6


@SQLITE_ONLY
def test_questionnaire_response_items_may_nest_and_carry_free_text(client) -> None:
    def nest(parts: dict) -> None:
        response = parts["questionnaireResponse"]["resource"]
        response["item"] = [{"linkId": "group", "item": response["item"]},
                            {"linkId": "Bemerkung", "answer": [{"valueString": "frei"}]}]
    answer = post(client, "addConsent", _add_consent(nest))
    assert answer.status_code == 200, answer.text


# --- scope and audit ----------------------------------------------------------------------------

def test_consent_domains_are_scoped_in_every_declaration() -> None:
    for op in OPERATIONS.values():
        domain = next(p for p in op.parameters if p.name == "domain")
        assert domain.scope == "consent-domains", op.name
    body = example("Parameters-IsConsented-request-example-1")
    args = bind(OPERATIONS["isConsented"].parameters, body["parameter"])
    assert list(scoped_values(OPERATIONS["isConsented"].parameters, args)) == [("consent-domains", "num")]


def test_a_key_scoped_to_a_consent_domain_uses_only_that_domain(client) -> None:
    mii_only = {"apikey": "mii-only-key"}
    assert client.post(f"{BASE}/$allConsentsForDomain", json=domain_body("MII"), headers=mii_only).status_code == 200
    refused = client.post(f"{BASE}/$allConsentsForDomain", json=domain_body("num"), headers=mii_only)
    assert refused.status_code == 401 and refused.json()["resourceType"] == "OperationOutcome"
    # in a batch, the entry naming another domain fails alone
    other = example("Parameters-IsConsented-request-example-2")  # domain num
    request = copy.deepcopy(other)
    request["parameter"][1]["valueString"] = "MII"
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": r, "request": {"method": "POST", "url": "$isConsented"}} for r in (request, other)]}
    answer = client.post(f"{BASE}/$isConsented", json=bundle, headers=mii_only).json()
    assert [e["response"]["status"] for e in answer["entry"]] == ["200", "401"]
    # nothing was written under a refused key
    opt_out = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "resource": {"resourceType": "Patient", "identifier": [{"system": PSEUDONYM,
                                                                                    "value": "p"}]}},
        {"name": "domain", "valueString": "opt-out"},
        {"name": "questionnaire", "valueCanonical": "https://ths-greifswald.de/fhir/gics/QuestionnaireComposed/"
                                                    "opt-out/Opt-Out|1.0"}]}
    assert client.post(f"{BASE}/$addConsentOptOut", json=opt_out, headers=mii_only).status_code == 401
    assert count_consents(client, "opt-out") == 0


def test_reads_and_writes_are_audited_without_content(client, monkeypatch) -> None:
    records: list[tuple[str, dict]] = []
    monkeypatch.setattr(audit_trail, "record", lambda action, facts: records.append((action, facts)))
    post(client, "addConsent", example("Parameters-Parameters-AddConsent-request-example-1"))
    post(client, "currentPolicyStatesForPerson", example("Parameters-CurrentPolicyStatesForPerson-request-example-1"))
    client.post(f"{BASE}/$allConsentsForDomain", json=domain_body())
    client.get(f"{BASE}/Consent?domain=MII&patient.identifier={PSEUDONYM}|dic_1H51T")
    post(client, "addConsent", _add_consent(lambda p: p["domain"].update(valueString="nowhere")))  # fails
    actions = [(action, facts.get("persons"), facts["client"]) for action, facts in records]
    assert actions == [("add-consent", ["Pseudonym|studypsn1"], "demo"),
                       ("currentPolicyStatesForPerson", ["Pseudonym|dic_1H51T"], "demo"),
                       ("allConsentsForDomain", None, "demo"),
                       ("search-consent", ["Pseudonym|dic_1H51T"], "demo")]
    text = repr(records)
    assert "ACCEPTED" not in text and "MDAT" not in text and "JVBERi" not in text and "permit" not in text


def test_shape_comparison_sees_a_changed_code() -> None:
    expected = example("Bundle-CurrentPolicyStatesForPerson-response-example-1")
    changed = copy.deepcopy(expected)
    changed["entry"][0]["resource"]["provision"]["code"][1]["coding"][0]["code"] += "9"
    assert shape(changed) != shape(expected)
    changed = copy.deepcopy(expected)
    changed["entry"][0]["resource"]["provision"]["type"] = "permit"
    assert shape(changed) != shape(expected)
