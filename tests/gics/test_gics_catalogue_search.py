"""The catalogue as FHIR resources, and the searches: `GET [base]/Consent` with the MII consent
search parameters (paged, with total and links), and the catalogue's ResearchStudy,
Questionnaire and ActivityDefinition searches, compared in shape with the guide's examples."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from gics_helpers import BASE, assert_shape, demo_settings, example, gateway
from ttp_gateway.core.auth import Client
from ttp_gateway.core.errors import InvalidRequest, NotAuthenticated
from ttp_gateway.plugins.gics import resources as fr
from ttp_gateway.plugins.gics.model import (Catalogue, Key, domain_from_settings, module_from_settings,
                                            policy_from_settings)
from ttp_gateway.plugins.gics.search import search_catalogue, search_consents

EVERYONE = Client(name="test")
# What the service does not keep: creation times, gICS-internal configuration, HTML texts of
# forms and their display-only items.
NOT_KEPT = ("ResearchStudy.meta.extension", "ActivityDefinition.extension[https://ths-greifswald.de/fhir/"
            "StructureDefinition/gics/Created]", "Questionnaire.meta.extension", "Questionnaire.date",
            "Questionnaire.item._text", "ResearchStudy.extension[https://ths-greifswald.de/fhir/StructureDefinition/"
            "gics/ConfigurationProperties]")
SEARCH_BASE = "http://server:8080" + BASE


def _service(client):
    return client.app.state.gateway.service("gics")


def _search(client, query: dict[str, list[str]], who: Client = EVERYONE) -> dict:
    audited = []
    bundle = search_consents(query, _service(client), SEARCH_BASE, who, lambda *a, **k: audited.append((a, k)))
    assert audited, "every search is audited"
    return bundle


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
])
def test_catalogue_searches(tmp_path, path: str, expected: list[str]) -> None:
    resource_type, _, query = path.partition("?")
    with gateway(tmp_path) as client:
        bundle = search_catalogue(resource_type, parse_qs(query), _service(client), SEARCH_BASE, EVERYONE)
    assert bundle["type"] == "searchset" and bundle["total"] == len(expected)
    names = [e["resource"].get("name") or e["resource"]["identifier"][0]["value"] for e in bundle["entry"]]
    assert names == expected


def test_catalogue_search_sees_only_the_clients_domains(tmp_path) -> None:
    scoped = Client(name="mii-only", scopes={"consent-domains": frozenset({"MII"})})
    with gateway(tmp_path) as client:
        bundle = search_catalogue("ResearchStudy", {}, _service(client), SEARCH_BASE, scoped)
        assert [e["resource"]["title"] for e in bundle["entry"]] == ["MII"]
        with pytest.raises(NotAuthenticated):
            search_catalogue("ActivityDefinition", {"useContextIdentifier": ["num"]}, _service(client),
                             SEARCH_BASE, scoped)


# --- Consent search -------------------------------------------------------------------------------

CODE_8 = "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3|2.16.840.1.113883.3.1937.777.24.5.3.8"


def _two_mii_consents():
    """Two persons who granted MDAT_wissenschaftlich_nutzen_EU_DSGVO_konform (form 1.6.d)."""
    base = next(c for c in demo_settings()["consents"] if c["signer_ids"] == ["Pseudonym|dic_812MT"])
    return demo_settings(persons=["Pseudonym|dic_812MT"], extra_consents=[
        {**base, "signer_ids": ["Pseudonym|dic_1H51T"], "date": "2023-04-27"}])


def test_search_by_policy_code_answers_one_consent_per_signed_policy(tmp_path) -> None:
    with gateway(tmp_path, _two_mii_consents()) as client:
        bundle = _search(client, {"provisionCode": [CODE_8]})
    assert bundle["total"] == 2
    assert_shape(bundle, example("Bundle-Consent-Bundle-example-1"))


def test_search_with_provenance(tmp_path) -> None:
    with gateway(tmp_path, _two_mii_consents()) as client:
        bundle = _search(client, {"domain:identifier": ["MII"], "provisionCode": [CODE_8],
                                  "patient.identifier": ["https://ths-greifswald.de/fhir/gics/identifiers/Pseudonym|"
                                                         "dic_1H51T"], "_revinclude": ["Provenance:target"]})
    assert bundle["total"] == 1
    assert [e["search"]["mode"] for e in bundle["entry"]] == ["match", "include"]
    # This example names the MII policies and the signature location under other URLs than the
    # guide's other examples; the policy codes are held to the first search example.
    assert_shape(bundle, example("Bundle-Consent-Bundle-example-2"), (
        "Provenance.signature.data", "Provenance.signature._data", "Consent.policyRule", "Consent.provision.code",
        "Provenance.signature.extension"))


def test_consent_status_is_the_current_permits_of_a_person(tmp_path) -> None:
    with gateway(tmp_path, demo_settings(persons=["Pseudonym|dic_1H51T"])) as client:
        bundle = _search(client, {"domain": ["MII"], "category": [f"{fr.RESULT_TYPE}|consent-status"],
                                  "patient.identifier": ["https://ths-greifswald.de/fhir/gics/identifiers/Pseudonym|"
                                                         "dic_1H51T"]})
    assert bundle["total"] == 1
    assert_shape(bundle["entry"][0]["resource"], example("Consent-Consent-example-3"), ("Consent.meta.extension",))


@pytest.mark.parametrize("query, total", [
    ({}, 27),
    ({"mii-provision-provision-type": ["permit"]}, 7),
    ({"mii-provision-provision-code-type": [f"{CODE_8}$permit"]}, 1),
    ({"mii-provision-provision-code-type": [f"{CODE_8}$deny"]}, 0),
    ({"mii-provision-provision-code": ["MDAT_erheben"], "mii-provision-provision-type": ["deny"]}, 1),
    ({"mii-provision-provision-code": ["MDAT_erheben"], "mii-provision-provision-type": ["permit"]}, 0),
    ({"mii-provision-provision-type": ["permit"], "provisionType": ["deny"]}, 0),
    ({"mii-provision-provision-period": ["ge2040-01-01"]}, 22),
    ({"mii-provision-provision-period": ["le2017-02-28"]}, 0),
    ({"mii-provision-provision-code-period": [f"{CODE_8}$le2017-03-01"]}, 1),
    ({"patient.identifier": ["https://ths-greifswald.de/fhir/gics/identifiers/Pseudonym|someone_else"]}, 0),
    ({"category": ["document"]}, 1),
    ({"category": ["document"], "mii-provision-provision-code": ["MDAT_erheben"]}, 1),
    ({"category": ["document"], "mii-provision-provision-code": ["no_such_policy"]}, 0),
])
def test_search_criteria(tmp_path, query: dict, total: int) -> None:
    """The demo's dic_812MT signed the 1.6.d form on 2017-03-01: its 8 patient data policies
    accepted (collecting medical data for five years: expired since), its 19 other policies
    declined."""
    with gateway(tmp_path, demo_settings(persons=["Pseudonym|dic_812MT"])) as client:
        bundle = _search(client, {"domain": ["MII"], **query})
    assert bundle["total"] == total
    assert len(bundle["entry"]) == min(total, 100)


def test_search_pages_with_links(tmp_path) -> None:
    with gateway(tmp_path, demo_settings(persons=["Pseudonym|dic_812MT"])) as client:
        first = _search(client, {"domain:identifier": ["MII"], "_count": ["10"]})
        pages = [first]
        while any(link["relation"] == "next" for link in pages[-1]["link"]):
            url = next(link["url"] for link in pages[-1]["link"] if link["relation"] == "next")
            pages.append(_search(client, parse_qs(urlsplit(url).query)))
        back_url = next(link["url"] for link in pages[-1]["link"] if link["relation"] == "previous")
        back = _search(client, parse_qs(urlsplit(back_url).query))
    assert [len(p["entry"]) for p in pages] == [10, 10, 7]
    assert all(p["total"] == 27 for p in pages)
    ids = [e["resource"]["id"] for p in pages for e in p["entry"]]
    assert len(set(ids)) == 27
    assert [e["resource"]["id"] for e in back["entry"]] == [e["resource"]["id"] for e in pages[1]["entry"]]
    assert not any(link["relation"] == "previous" for link in first["link"])
    assert first["link"][0]["url"].startswith(SEARCH_BASE + "/Consent?domain%3Aidentifier=MII")


@pytest.mark.parametrize("query", [
    {"_count": ["-1"]}, {"_offset": ["x"]}, {"category": ["nonsense"]},
    {"mii-provision-provision-type": ["maybe"]}, {"mii-provision-provision-period": ["ge31.12.2020"]},
    {"patient.identifier": ["http://other/system|x"]}, {"_revinclude": ["Patient:link"]},
    {"mii-provision-provision-code-type": ["no-dollar"]}, {"domain": ["MII", "num"]},
])
def test_search_refuses_malformed_parameters(tmp_path, query: dict) -> None:
    with gateway(tmp_path) as client, pytest.raises(InvalidRequest):
        _search(client, query)


def test_search_respects_domain_scopes(tmp_path) -> None:
    scoped = Client(name="num-only", scopes={"consent-domains": frozenset({"num"})})
    with gateway(tmp_path) as client:
        with pytest.raises(NotAuthenticated):
            _search(client, {"domain": ["MII"]}, scoped)
        everything = _search(client, {}, scoped)
    assert {e["resource"]["organization"][0]["display"] for e in everything["entry"]} == {"num"}
