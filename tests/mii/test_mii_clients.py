"""The MII interface's public clients re-enacted: their requests (method, path, headers, body
shape and value types) against the demo configuration of `make run`, and their answers read as
their code reads them.

fhir-pseudonymizer (miracum/fhir-pseudonymizer, C# with the Firely SDK), `Mii/MiiFhirClient.cs`,
from 2.33.0 on (the 2026.1.0 interface):

- `PseudonymizationService = Mii`, `Mii__Url` = `[base]/ttp-fhir/fhir/gpas/v2/`; HTTP Basic or
  OAuth2 client credentials (here: the demo API key).
- `WholeSystemOperationAsync("pseudonymize", …)`: `POST {Mii__Url}$pseudonymize`, JSON, with
  `context` = Identifier(system: the rule's `mii.contextSystem` or null, value: the rule's
  domain) and `original` = Identifier(system: `mii.originalSystem` or null, value). The
  pull request that made it speaks of one global `Mii__System` for these systems instead; both
  forms are sent here. It reads the top-level `pseudonym` Identifier's value and fails on none.
- `$de-pseudonymize` with `context` and `pseudonym` = Identifier(null, value); it reads the
  first `original` parameter's part `value`, an Identifier.
- A status ≥ 500, 408, 429, 401 or 403 is retried as transient; any other 4xx rejects the value
  (`PseudonymizationRejectedException`); a de-pseudonymisation that fails returns the value
  unchanged.

DicomShield (imi-ms/DicomShield, Python, requests + ElementTree), `proxy/pseudonym_clients.py`,
class `MIIClient`: the request form of the guide's drafts before 2026.1 — `POST
{ENDPOINT_URL}/$pseudonymize` with XML written by hand, `target` and `allowCreate` ("true") as
valueString and one `original` valueString per DICOM identifier; `$de-pseudonymize` with
`target` and `pseudonym` valueStrings; `Content-Type: application/fhir+xml`, `requests`'
`Accept: */*`, HTTP Basic. It reads every parameter's parts `original` and `pseudonym` as
`valueIdentifier/value`. The 2026.1 endpoint refuses this form (one Identifier per call), so the
demo serves it at `[base]/ttp-fhir/fhir/gpas/v2-draft` (`[mii_psn] draft_base`), where a site
points `ENDPOINT_URL`; the domain is `DicomShield`, as its README has a site create.
"""

from __future__ import annotations

import json

import pytest

from conftest import client_for
from dicomshield_wire import extracted_mappings
from mii_wire import BASE, GPAS

MII_URL = BASE + "/"
DRAFT_URL = "/ttp-fhir/fhir/gpas/v2-draft"
FIRELY_CONTENT_TYPE = "application/fhir+json; charset=utf-8"
FIRELY_ACCEPT = "application/fhir+json"
TRANSIENT = {401, 403, 408, 429}


@pytest.fixture(name="storage_url")
def sqlite_storage_url(tmp_path) -> str:
    """The clients' readers do not depend on the store; the semantics run on every backend elsewhere."""
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def wire_client(config, accept: str | None):
    client = client_for(config)
    del client.headers["accept"]  # httpx would send */*; each client says what it sends
    if accept is not None:
        client.headers["accept"] = accept
    return client


# --- fhir-pseudonymizer's MiiFhirClient --------------------------------------------------------------

class PseudonymizationRejected(Exception):
    pass


class TransientFailure(Exception):
    pass


def firely_identifier(system: str | None, value: str) -> dict:
    # Firely leaves out elements that are null.
    return {"system": system, "value": value} if system is not None else {"value": value}


def firely_operation(client, operation: str, parameters: list[dict]) -> dict:
    """`FhirClient.WholeSystemOperationAsync`: POST `{base}${operation}`, the answer as a Resource;
    a failure status is classified as fhir-pseudonymizer classifies it."""
    body = json.dumps({"resourceType": "Parameters", "parameter": parameters}).encode()
    response = client.post(f"{MII_URL}${operation}", content=body, headers={"Content-Type": FIRELY_CONTENT_TYPE})
    assert response.headers["content-type"].split(";")[0] == "application/fhir+json"
    resource = json.loads(response.content)
    if response.status_code >= 500 or response.status_code in TRANSIENT:
        raise TransientFailure(response.status_code)
    if response.status_code >= 400:
        assert resource["resourceType"] == "OperationOutcome"  # Firely reads the outcome into its exception
        raise PseudonymizationRejected(response.status_code)
    return resource


def get_or_create_pseudonym_for(client, value: str, domain: str, context_system: str | None = None,
                                original_system: str | None = None) -> str:
    answer = firely_operation(client, "pseudonymize", [
        {"name": "context", "valueIdentifier": firely_identifier(context_system, domain)},
        {"name": "original", "valueIdentifier": firely_identifier(original_system, value)}])
    if answer["resourceType"] != "Parameters":
        raise AssertionError("MII backend did not return a response of type 'Parameters'")
    # MiiPseudonymizeResponse.FromFhirParameters(...).Pseudonym?.Value
    found = [p for p in answer["parameter"] if p["name"] == "pseudonym"]
    assert len(found) == 1 and set(found[0]) == {"name", "valueIdentifier"}
    pseudonym = found[0]["valueIdentifier"].get("value")
    assert pseudonym  # ArgumentException.ThrowIfNullOrEmpty
    return pseudonym


def get_original_value_for(client, pseudonym: str, domain: str, context_system: str | None = None) -> str:
    try:
        answer = firely_operation(client, "de-pseudonymize", [
            {"name": "context", "valueIdentifier": firely_identifier(context_system, domain)},
            {"name": "pseudonym", "valueIdentifier": firely_identifier(None, pseudonym)}])
    except PseudonymizationRejected:
        return pseudonym  # "if de-pseudonymization of a value fails, then the original value is returned"
    assert answer["resourceType"] == "Parameters"
    originals = [p for p in answer["parameter"] if p["name"] == "original"]  # List<MiiOriginal>
    value = next(part for part in originals[0]["part"] if part["name"] == "value")["valueIdentifier"]["value"]
    assert value
    return value


@pytest.mark.parametrize("systems", [
    {},  # a rule without `mii` settings: value-only Identifiers
    {"context_system": "http://fts.smith.care", "original_system": "http://fts.smith.care"},  # Mii__System
    {"context_system": "https://example.org/contexts", "original_system": "https://example.org/patient-ids"},
], ids=["no-systems", "global-system", "rule-systems"])
def test_fhir_pseudonymizer_pseudonymizes_and_back(demo_config, systems: dict) -> None:
    with wire_client(demo_config, FIRELY_ACCEPT) as client:
        pseudonym = get_or_create_pseudonym_for(client, "patient-4711", "PATIENT", **systems)
        assert get_or_create_pseudonym_for(client, "patient-4711", "PATIENT", **systems) == pseudonym
        context_system = systems.get("context_system")
        assert get_original_value_for(client, pseudonym, "PATIENT", context_system) == "patient-4711"
        # The same domain through gPAS's endpoint holds the same pseudonym.
        found = client.post(f"{GPAS}/$pseudonymize", json={"resourceType": "Parameters", "parameter": [
            {"name": "target", "valueString": "PATIENT"}, {"name": "original", "valueString": "patient-4711"}]})
        assert found.json()["parameter"][0]["part"][2]["valueIdentifier"]["value"] == pseudonym


def test_fhir_pseudonymizer_reads_the_guides_own_examples(demo_config) -> None:
    """Its tests use the guide's response examples as fixtures: the demo answers them with the
    example's own values."""
    with wire_client(demo_config, FIRELY_ACCEPT) as client:
        assert get_or_create_pseudonym_for(client, "D1CL0CAL1", "Transfer1", "https://sample/psn-system",
                                           "https://sample/psn-system") == "H3RAU56A8E"
        assert get_original_value_for(client, "H3RAU56A8E", "Transfer1", "https://sample/psn-system") == "D1CL0CAL1"


def test_fhir_pseudonymizer_sees_rejections_and_transient_failures(demo_config) -> None:
    with wire_client(demo_config, FIRELY_ACCEPT) as client:
        # An unknown domain rejects the value: it is not retried.
        with pytest.raises(PseudonymizationRejected):
            get_or_create_pseudonym_for(client, "patient-1", "no-such-domain")
        # A multi-pseudonym domain is the wrong kind for $pseudonymize: rejected, not retried.
        with pytest.raises(PseudonymizationRejected):
            get_or_create_pseudonym_for(client, "patient-1", "MultiPsnDomain")
        # An unknown pseudonym comes back unchanged.
        assert get_original_value_for(client, "UNKNOWNPSN", "PATIENT") == "UNKNOWNPSN"
        # A wrong key is retried (the credentials may be rotating).
        client.headers["apikey"] = "wrong"
        with pytest.raises(TransientFailure):
            get_or_create_pseudonym_for(client, "patient-1", "PATIENT")


def test_fhir_pseudonymizer_with_the_old_string_form_is_refused_as_400(demo_config) -> None:
    """Versions 2.25 to 2.32 sent `target`, `original` and `allowCreate` as strings; the 2026.1
    interface takes Identifiers only (so does the reference gateway's)."""
    with wire_client(demo_config, FIRELY_ACCEPT) as client:
        with pytest.raises(PseudonymizationRejected):
            firely_operation(client, "pseudonymize", [
                {"name": "target", "valueString": "PATIENT"}, {"name": "original", "valueString": "p-1"},
                {"name": "allowCreate", "valueBoolean": True}])


# --- DicomShield's MIIClient -------------------------------------------------------------------------

DOMAIN = "DicomShield"


def dicomshield_body(kind: str, values: list[str], allow_create: bool) -> bytes:
    parameters = "".join(f"""
                <parameter>
                    <name value="{kind}" />
                    <valueString value="{value}" />
                </parameter>
                """ for value in values)
    allow = """
                <parameter>
                    <name value="allowCreate" />
                    <valueString value="true" />
                </parameter>""" if allow_create else ""
    return f"""
            <Parameters xmlns="http://hl7.org/fhir">
                <id value="Pseudonymization-DicomShield" />
                <parameter>
                    <name value="target" />
                    <valueString value="{DOMAIN}" />
                </parameter>{allow}
                {parameters}
            </Parameters>
        """.encode()


def dicomshield_post(client, endpoint_url: str, operation: str, body: bytes) -> list[tuple[str, str]]:
    """PseudonymClient.post, then PseudonymMapper._extract_mappings."""
    return extracted_mappings(client.post(f"{endpoint_url}/${operation}", content=body,
                                          headers={"Content-Type": "application/fhir+xml"}))


def test_dicomshield_pseudonymizes_and_back(demo_config) -> None:
    ids = {"PatientID": "PAT-0001", "StudyInstanceUID": "1.2.840.113619.2.55.3.604688119.969.1268071029.320"}
    with wire_client(demo_config, "*/*") as client:
        pseudonyms = dict(dicomshield_post(client, DRAFT_URL, "pseudonymize",
                                           dicomshield_body("original", list(ids.values()), True)))
        assert set(pseudonyms) == set(ids.values()) and len(set(pseudonyms.values())) == 2
        again = dict(dicomshield_post(client, DRAFT_URL, "pseudonymize",
                                      dicomshield_body("original", list(ids.values()), True)))
        assert again == pseudonyms
        originals = {p: o for o, p in dicomshield_post(client, DRAFT_URL, "de-pseudonymize",
                                                       dicomshield_body("pseudonym", list(pseudonyms.values()), False))}
        assert originals == {p: o for o, p in pseudonyms.items()}
        # The same pseudonyms through the 2026.1 interface.
        answer = client.post(f"{BASE}/$get-pseudonym", json={"resourceType": "Parameters", "parameter": [
            {"name": "context", "valueIdentifier": {"value": DOMAIN}},
            {"name": "original", "valueIdentifier": {"value": "PAT-0001"}}]}, headers={"Accept": "application/fhir+json"})
        assert answer.json()["parameter"][2]["valueIdentifier"]["value"] == pseudonyms["PAT-0001"]


def test_dicomshield_unknown_values_map_to_nothing(demo_config) -> None:
    with wire_client(demo_config, "*/*") as client:
        assert dicomshield_post(client, DRAFT_URL, "de-pseudonymize",
                                dicomshield_body("pseudonym", ["UNKNOWN"], False)) == []
        # Without allowCreate the drafts only read.
        assert dicomshield_post(client, DRAFT_URL, "pseudonymize",
                                dicomshield_body("original", ["never-seen"], False)) == []


def test_dicomshield_connection_test(demo_config) -> None:
    with wire_client(demo_config, None) as client:
        client.get(f"{DRAFT_URL}/metadata").raise_for_status()


def test_the_2026_endpoint_refuses_the_drafts_form(demo_config) -> None:
    with wire_client(demo_config, "*/*") as client:
        response = client.post(f"{BASE}/$pseudonymize", content=dicomshield_body("original", ["PAT-1"], True),
                               headers={"Content-Type": "application/fhir+xml"})
        assert response.status_code == 400 and response.headers["content-type"].startswith("application/fhir+xml")


def test_draft_operations_are_declared_as_they_are(demo_config) -> None:
    with wire_client(demo_config, "application/fhir+json") as client:
        definition = client.get(f"{DRAFT_URL}/OperationDefinition/Pseudonymize").json()
        inputs = [(p["name"], p["min"], p["max"], p["type"]) for p in definition["parameter"] if p["use"] == "in"]
        assert inputs == [("target", 1, "1", "string"), ("original", 1, "*", "string"),
                          ("allowCreate", 0, "1", "string")]
        response = client.post(f"{DRAFT_URL}/$pseudonymize", json={"resourceType": "Parameters", "parameter": [
            {"name": "target", "valueString": DOMAIN}, {"name": "original", "valueString": "x"},
            {"name": "allowCreate", "valueString": "maybe"}]})
        assert response.status_code == 400 and "allowCreate" in response.json()["issue"][0]["diagnostics"]
