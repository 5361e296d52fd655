"""dnpm-etl (pcvolkmer/mv64e-etl-processor, Java, Spring RestTemplate + HAPI parser),
GpasPseudonymGenerator.java and the gPAS connection check.

- `POST {app.pseudonymize.gpas.uri}/$pseudonymizeAllowCreate` with a HAPI-encoded JSON body
  (`target`, `original` as valueString), `Content-Type: application/json` and RestTemplate's
  Accept for a String answer; the answer is parsed as FHIR JSON, the first parameter's
  `pseudonym` part cast to Identifier and its value used (characters unfit for file names are
  replaced).
- The genomDE TAN: `POST …/$pseudonymize-secondary` with one `original` of parts `target`,
  `value` and `count` — count as valueString "1"; it reads the first parameter's part `value`
  as Identifier.
- The connection check: `GET {uri}/metadata`, status only.

A site sets `app.pseudonymize.gpas.uri` to `[base]/ttp-fhir/fhir/gpas` and uses the default
domains `etl-processor` (patients) and `ccdn` (TANs, multi-psn); the real client sends HTTP
Basic (username, password).
"""

from __future__ import annotations

import re

from client_wire import GPAS, json_parameters, sqlite_storage_url, value_of, wire_client  # noqa: F401

REST_TEMPLATE_ACCEPT = "text/plain, application/json, application/*+json, */*"


def first_identifier(response, part_name: str) -> str:
    """GpasPseudonymGenerator.unwrapPseudonym."""
    assert response.status_code == 200, response.text
    first = json_parameters(response)[0]
    kind, identifier = value_of(next(p for p in first["part"] if p["name"] == part_name))
    assert kind == "Identifier"
    return re.sub(r'[\\/:*?"<>|;]', "_", identifier["value"])


def test_patient_pseudonym_and_genomde_tan(demo_config) -> None:
    headers = {"Content-Type": "application/json"}
    with wire_client(demo_config, accept=REST_TEMPLATE_ACCEPT) as client:
        single = {"resourceType": "Parameters", "parameter": [
            {"name": "target", "valueString": "etl-processor"}, {"name": "original", "valueString": "P-123"}]}
        patient = first_identifier(client.post(f"{GPAS}/$pseudonymizeAllowCreate", json=single, headers=headers),
                                   "pseudonym")
        assert patient == first_identifier(
            client.post(f"{GPAS}/$pseudonymizeAllowCreate", json=single, headers=headers), "pseudonym")
        multi = {"resourceType": "Parameters", "parameter": [{"name": "original", "part": [
            {"name": "target", "valueString": "ccdn"}, {"name": "value", "valueString": "P-123"},
            {"name": "count", "valueString": "1"}]}]}
        tans = {first_identifier(client.post(f"{GPAS}/$pseudonymize-secondary", json=multi, headers=headers),
                                 "value") for _ in range(2)}
        assert len(tans) == 2  # a new TAN per submission
        client.get(f"{GPAS}/metadata").raise_for_status()
