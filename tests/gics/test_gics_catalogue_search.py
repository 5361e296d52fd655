"""The catalogue as FHIR resources, and the searches: `GET [base]/Consent` with the MII consent
search parameters (paged, with total and links), and the catalogue's ResearchStudy,
Questionnaire and ActivityDefinition searches, compared in shape with the guide's examples."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from gics_helpers import BASE, SQLITE_ONLY, assert_shape, demo_settings, example, gateway
from ttp_gateway.plugins.gics import resources as fr
from ttp_gateway.plugins.gics.model import (Catalogue, Key, domain_from_settings, module_from_settings,
                                            policy_from_settings)

# What the service does not keep: creation times, gICS-internal configuration, HTML texts of
# forms and their display-only items.
NOT_KEPT = ("ResearchStudy.meta.extension", "ActivityDefinition.extension[https://ths-greifswald.de/fhir/"
            "StructureDefinition/gics/Created]", "Questionnaire.meta.extension", "Questionnaire.date",
            "Questionnaire.item._text", "ResearchStudy.extension[https://ths-greifswald.de/fhir/StructureDefinition/"
            "gics/ConfigurationProperties]")
PUBLIC = "http://server:8080/ttp-fhir/fhir"
SEARCH_BASE = PUBLIC + "/gics"
PSEUDONYM = "https://ths-greifswald.de/fhir/gics/identifiers/Pseudonym"


def searching(storage_url: str, gics: dict | None = None):
    """A gateway whose links and full URLs start with a public base URL."""
    return gateway(storage_url, gics, server={"public_base_url": PUBLIC})


def _search(client, query: dict[str, list[str]] | str, key: str | None = None, status: int = 200,
            resource_type: str = "Consent") -> dict:
    url = f"{BASE}/{resource_type}" + (("?" + query) if isinstance(query, str) else "")
    answer = client.get(url, params=None if isinstance(query, str) else query,
                        headers={"apikey": key} if key else None)
    assert answer.status_code == status, answer.text
    return answer.json()


# --- the catalogue as the guide shows it ----------------------------------------------------------

def test_domain_as_research_study() -> None:
    domain = domain_from_settings({"name": "MIRACUM", "description": "Test-Domäne",
                                   "signer_id_types": ["CaseId", "SapId"], "valid_from": "2020-01-01",
                                   "properties": {"containsHtml": "true"}})
    assert_shape(fr.research_study(domain), example("ResearchStudy-ConsentDomain-example-1"), NOT_KEPT)


def test_policy_as_activity_definition() -> None:
    domain = domain_from_settings({"name": "MIRACUM"})
    policy = policy_from_settings({"name": "MDAT_erheben", "version": "1.0", "label": "Medizinische Daten erheben",
                                   "description": "Beispiel", "properties": {"semantic_code": "12345"}}, domain)
    assert_shape(fr.activity_definition(policy), example("ActivityDefinition-ConsentPolicy-example-1"), NOT_KEPT)


def _demo_catalogue() -> Catalogue:
    return Catalogue.from_settings(demo_settings())


def test_module_and_templates_as_questionnaires() -> None:
    catalogue = _demo_catalogue()
    domain = catalogue.domain("MII")
    module = module_from_settings({"name": "BIOMAT_erheben_lagern_nutzen", "version": "1.6",
                                   "policies": ["BIOMAT_erheben|1.1", "BIOMAT_lagern_verarbeiten|1.1"],
                                   "properties": {"mii_question_oid": "2.16.840.1.113883.3.1937.777.24.5.3.18"}},
                                  domain)
    # gICS marks a module not yet used in a finalised template as draft; every module here is active.
    assert_shape(fr.module_questionnaire(module), example("Questionnaire-ConsentModule-example-1"),
                 NOT_KEPT + ("Questionnaire.status", "Questionnaire.item.extension[http://hl7.org/fhir/"
                                                     "StructureDefinition/designNote]"))
    template = catalogue.template("MII", Key("Patienteneinwilligung MII", "1.6.f"))
    display_items = ("Questionnaire.item.type",)
    assert_shape(fr.template_questionnaire(template, catalogue), example("Questionnaire-ConsentTemplate-example-1"),
                 NOT_KEPT + display_items)
    assert_shape(fr.template_questionnaire(template, catalogue, composed=True),
                 example("Questionnaire-QuestionnaireComposed-example-1"), NOT_KEPT + display_items)
    assert fr.template_questionnaire(template, catalogue, composed=True)["url"] == \
        example("Questionnaire-QuestionnaireComposed-example-1")["url"]


@pytest.mark.parametrize("path, expected", [
    ("ResearchStudy", ["MII", "num", "opt-out"]),
    ("ResearchStudy?identifier=https://ths-greifswald.de/fhir/gics/|MII", ["MII"]),
    ("ActivityDefinition?useContextIdentifier=num", ["MDAT_erheben", "MDAT_speichern_verarbeiten"]),
    ("ActivityDefinition?useContextIdentifier=MII&code=urn:oid:2.16.840.1.113883.3.1937.777.24.5.3|"
     "2.16.840.1.113883.3.1937.777.24.5.3.8", ["MDAT_wissenschaftlich_nutzen_EU_DSGVO_NIVEAU",
                                                "MDAT_wissenschaftlich_nutzen_EU_DSGVO_konform"]),
    ("Questionnaire?useContextIdentifier=MII&context-type=TemplateFrame&name=Patienteneinwilligung MII",
     ["Patienteneinwilligung MII"] * 3),
    ("Questionnaire?useContextIdentifier=num&context-type=TemplateModule", ["MDAT_NUM"]),
    ("Questionnaire?useContextIdentifier=MII&context-type=QuestionnaireComposed&name=Widerruf MII", ["Widerruf MII"]),
])
def test_catalogue_searches(storage_url, path: str, expected: list[str]) -> None:
    """The catalogue as the store holds it after start-up, on every backend."""
    resource_type, _, query = path.partition("?")
    with searching(storage_url) as client:
        bundle = _search(client, parse_qs(query), resource_type=resource_type)
    assert bundle["type"] == "searchset" and bundle["total"] == len(expected)
    names = [e["resource"].get("name") or e["resource"]["identifier"][0]["value"] for e in bundle["entry"]]
    assert names == expected
    assert all(e["fullUrl"].startswith(f"{SEARCH_BASE}/{resource_type}/") for e in bundle["entry"])


@SQLITE_ONLY
def test_catalogue_search_pages(storage_url) -> None:
    with searching(storage_url) as client:
        first = _search(client, {"useContextIdentifier": ["MII"], "_count": ["20"]}, resource_type="ActivityDefinition")
        second = _search(client, parse_qs(urlsplit(first["link"][1]["url"]).query), resource_type="ActivityDefinition")
        refused = _search(client, {"context-type": ["Everything"]}, status=400, resource_type="Questionnaire")
    assert first["total"] == second["total"] == 34 and len(first["entry"]) == 20 and len(second["entry"]) == 14
    assert refused["resourceType"] == "OperationOutcome"


@SQLITE_ONLY
def test_catalogue_search_sees_only_the_clients_domains(storage_url) -> None:
    with searching(storage_url) as client:
        bundle = _search(client, {}, key="mii-only-key", resource_type="ResearchStudy")
        assert [e["resource"]["title"] for e in bundle["entry"]] == ["MII"]
        _search(client, {"useContextIdentifier": ["num"]}, key="mii-only-key", status=401,
                resource_type="ActivityDefinition")


@SQLITE_ONLY
def test_searches_are_in_the_capability_statement(storage_url) -> None:
    with searching(storage_url) as client:
        statement = client.get(f"{BASE}/metadata").json()
    types = {r["type"]: r for r in statement["rest"][0].get("resource", [])}
    assert {"Consent", "ResearchStudy", "Questionnaire", "ActivityDefinition"} <= set(types)
    assert "mii-provision-provision-code-type" in {p["name"] for p in types["Consent"].get("searchParam", [])}


# --- Consent search -------------------------------------------------------------------------------

CODE_8 = "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3|2.16.840.1.113883.3.1937.777.24.5.3.8"


def _two_mii_consents():
    """Two persons who granted MDAT_wissenschaftlich_nutzen_EU_DSGVO_konform (form 1.6.d)."""
    base = next(c for c in demo_settings()["consents"] if c["signer_ids"] == ["Pseudonym|dic_812MT"])
    return demo_settings(persons=["Pseudonym|dic_812MT"], extra_consents=[
        {**base, "signer_ids": ["Pseudonym|dic_1H51T"], "date": "2023-04-27"}])


def test_search_by_policy_code_answers_one_consent_per_signed_policy(storage_url) -> None:
    with searching(storage_url, _two_mii_consents()) as client:
        bundle = _search(client, {"provisionCode": [CODE_8]})
    assert bundle["total"] == 2
    assert_shape(bundle, example("Bundle-Consent-Bundle-example-1"))


def test_search_with_provenance(storage_url) -> None:
    with searching(storage_url, _two_mii_consents()) as client:
        bundle = _search(client, {"domain:identifier": ["MII"], "provisionCode": [CODE_8],
                                  "patient.identifier": [f"{PSEUDONYM}|dic_1H51T"],
                                  "_revinclude": ["Provenance:target"]})
    assert bundle["total"] == 1
    assert [e["search"]["mode"] for e in bundle["entry"]] == ["match", "include"]
    # This example names the MII policies and the signature location under other URLs than the
    # guide's other examples; the policy codes are held to the first search example.
    assert_shape(bundle, example("Bundle-Consent-Bundle-example-2"), (
        "Provenance.signature.data", "Provenance.signature._data", "Consent.policyRule", "Consent.provision.code",
        "Provenance.signature.extension"))


def test_consent_status_is_the_current_permits_of_a_person(storage_url) -> None:
    with searching(storage_url, demo_settings(persons=["Pseudonym|dic_1H51T"])) as client:
        bundle = _search(client, {"domain": ["MII"], "category": [f"{fr.RESULT_TYPE}|consent-status"],
                                  "patient.identifier": [f"{PSEUDONYM}|dic_1H51T"]})
    assert bundle["total"] == 1
    assert_shape(bundle["entry"][0]["resource"], example("Consent-Consent-example-3"), ("Consent.meta.extension",))


# The demo's dic_812MT signed the 1.6.d form on 2017-03-01: its 8 patient data policies accepted
# (collecting medical data for five years: expired since), its 19 other policies declined.
CRITERIA = [
    ({}, 27),
    ({"mii-provision-provision-type": ["permit"]}, 7),
    ({"mii-provision-provision-type": ["deny"]}, 20),
    ({"mii-provision-provision-code-type": [f"{CODE_8}$permit"]}, 1),
    ({"mii-provision-provision-code-type": [f"{CODE_8}$deny"]}, 0),
    ({"mii-provision-provision-code": ["MDAT_erheben"], "mii-provision-provision-type": ["deny"]}, 1),
    ({"mii-provision-provision-code": ["MDAT_erheben"], "mii-provision-provision-type": ["permit"]}, 0),
    ({"mii-provision-provision-code": ["MDAT_erheben", "IDAT_erheben"]}, 0),  # AND: no policy is both
    ({"mii-provision-provision-type": ["permit"], "provisionType": ["deny"]}, 0),
    ({"mii-provision-provision-period": ["ge2040-01-01"]}, 22),
    ({"mii-provision-provision-period": ["le2017-02-28"]}, 0),
    ({"mii-provision-provision-period": ["le2017-03-01"]}, 27),
    ({"mii-provision-provision-period": ["lt2017-03-01"]}, 0),
    ({"mii-provision-provision-period": ["eb2022-03-02"]}, 5),
    ({"mii-provision-provision-period": ["sa2017-03-01"]}, 0),
    ({"mii-provision-provision-period": ["2020-01-01"]}, 27),
    ({"mii-provision-provision-period": ["ne2030-01-01"]}, 5),
    ({"mii-provision-provision-period": ["gt2022-03-01", "lt2018-01-01"]}, 22),
    ({"mii-provision-provision-code-period": [f"{CODE_8}$le2017-03-01"]}, 1),
    ({"patient.identifier": [f"{PSEUDONYM}|someone_else"]}, 0),
    ({"patient.identifier": [f"{PSEUDONYM}|dic_812MT"], "mii-provision-provision-type": ["permit"]}, 7),
    ({"category": ["document"]}, 1),
    ({"category": ["document"], "mii-provision-provision-code": ["MDAT_erheben"]}, 1),
    ({"category": ["document"], "mii-provision-provision-code": ["no_such_policy"]}, 0),
    ({"category": ["document"], "mii-provision-provision-type": ["permit"],
      "mii-provision-provision-period": ["eb2022-03-02"]}, 0),
    ({"category": ["document"], "mii-provision-provision-period": ["eb2022-03-02"]}, 1),
]


def test_search_criteria(storage_url) -> None:
    with searching(storage_url, demo_settings(persons=["Pseudonym|dic_812MT"])) as client:
        for query, total in CRITERIA:
            bundle = _search(client, {"domain": ["MII"], **query})
            assert bundle["total"] == total, query
            assert len(bundle["entry"]) == min(total, 100), query


def test_search_pages_with_links(storage_url) -> None:
    with searching(storage_url, demo_settings(persons=["Pseudonym|dic_812MT"])) as client:
        first = _search(client, {"domain:identifier": ["MII"], "_count": ["10"]})
        pages = [first]
        while any(link["relation"] == "next" for link in pages[-1]["link"]):
            url = next(link["url"] for link in pages[-1]["link"] if link["relation"] == "next")
            assert url.startswith(SEARCH_BASE + "/Consent?")
            pages.append(_search(client, url.split("?", 1)[1]))
        back_url = next(link["url"] for link in pages[-1]["link"] if link["relation"] == "previous")
        back = _search(client, back_url.split("?", 1)[1])
    assert [len(p["entry"]) for p in pages] == [10, 10, 7]
    assert all(p["total"] == 27 for p in pages)
    ids = [e["resource"]["id"] for p in pages for e in p["entry"]]
    assert len(set(ids)) == 27
    assert [e["resource"]["id"] for e in back["entry"]] == [e["resource"]["id"] for e in pages[1]["entry"]]
    assert not any(link["relation"] == "previous" for link in first["link"])
    assert first["link"][0]["url"].startswith(SEARCH_BASE + "/Consent?domain%3Aidentifier=MII")


def test_search_across_domains_runs_on_into_the_next(storage_url) -> None:
    """Without a domain every domain the caller may use is searched, one after another."""
    with searching(storage_url, demo_settings(persons=["Pseudonym|dic_1H51T"])) as client:
        everything = _search(client, {"_count": ["1000"]})
        paged = [_search(client, {"_count": ["10"], "_offset": [str(offset)]})
                 for offset in range(0, everything["total"], 10)]
    domains = [e["resource"]["organization"][0]["display"] for e in everything["entry"]]
    assert set(domains) == {"MII", "num"} and domains == sorted(domains)
    assert [e["resource"]["id"] for p in paged for e in p["entry"]] == [e["resource"]["id"]
                                                                        for e in everything["entry"]]


MALFORMED = [
    {"_count": ["-1"]}, {"_offset": ["x"]}, {"category": ["nonsense"]},
    {"mii-provision-provision-type": ["maybe"]}, {"mii-provision-provision-period": ["ge31.12.2020"]},
    {"patient.identifier": ["http://other/system|x"]}, {"_revinclude": ["Patient:link"]},
    {"mii-provision-provision-code-type": ["no-dollar"]}, {"domain": ["MII", "num"]},
    {"mii-provision-provision-period": ["ge2020-01-01"] * 9}, {"category": ["consent-status"]},
]


@SQLITE_ONLY
def test_search_refuses_malformed_parameters(storage_url) -> None:
    with searching(storage_url) as client:
        for query in MALFORMED:
            outcome = _search(client, query, status=400)
            assert outcome["resourceType"] == "OperationOutcome", query


def test_search_respects_domain_scopes(storage_url) -> None:
    with searching(storage_url) as client:
        _search(client, {"domain": ["MII"]}, key="num-only-key", status=401)
        everything = _search(client, {}, key="num-only-key")
    assert everything["total"] == 2
    assert {e["resource"]["organization"][0]["display"] for e in everything["entry"]} == {"num"}
