"""mtb-to-kafka (diz-unimr/mtb-to-kafka, Java, Spring RestTemplate + HAPI parser),
PseudonymizerService.java and RestForMtb.java.

`POST {mtb2kafka.pseudonym.gPasUrl}/ttp-fhir/fhir/gpas/$pseudonymizeAllowCreate`, a HAPI-encoded
JSON body (`target`, `original` valueString), `Content-Type: application/json`, RestTemplate's
Accept for a String answer. It parses FHIR JSON, casts the first parameter's part `pseudonym` to
Identifier and replaces the patient id with "<system>|<value>".

A site sets `mtb2kafka.pseudonym.gPasUrl` to the server (without path) and
`mtb2kafka.pseudonym.target` (default `demo.study.demo`); the client sends no credentials of
its own (here: the demo API key, which a deployment puts in front of it).
"""

from __future__ import annotations

from client_wire import GPAS, GPAS_SYSTEM, json_parameters, sqlite_storage_url, value_of, wire_client  # noqa: F401

REST_TEMPLATE_ACCEPT = "text/plain, application/json, application/*+json, */*"


def test_patient_id_becomes_system_and_pseudonym(demo_config) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": "demo.study.demo"}, {"name": "original", "valueString": "12345"}]}
    with wire_client(demo_config, accept=REST_TEMPLATE_ACCEPT) as client:
        response = client.post(f"{GPAS}/$pseudonymizeAllowCreate", json=body,
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    kind, identifier = value_of(next(p for p in json_parameters(response)[0]["part"] if p["name"] == "pseudonym"))
    assert kind == "Identifier"
    patient_id = f"{identifier['system']}|{identifier['value']}"
    assert patient_id.startswith(f"{GPAS_SYSTEM}|") and identifier["value"] != "12345"
