"""fts-next trust-center agent (medizininformatik-initiative/fts-next, Java, Spring WebClient),
GpasClient.java, GpasParameterResponse.java, TtpFhirGatewayUtil.java, FhirClientUtils.java.

- `POST [base]/$pseudonymizeAllowCreate`, `Content-Type` and `Accept: application/fhir+json`, a
  Parameters of `target` and one or more `original`, all valueString (the agent batches).
- The answer is bound with Jackson to records: every parameter is (name, part), every part is
  (name, valueIdentifier) and the Identifier's `value` is read; the records of parameter and
  part ignore no unknown property, and every parameter must have `original` and `pseudonym`
  parts (`Optional.get()`), so an answer of anything else fails the whole batch.
- On a 4xx it fetches `GET [base]/metadata?_elements=rest.operation` (no Accept header), decodes
  a CapabilityStatement with its FHIR JSON decoder (`application/fhir+json`, `application/json`)
  and requires an operation named `pseudonymizeAllowCreate`; then it reads the OperationOutcome
  and maps the status: 404 is an unknown domain.

A site sets `deIdentification.gpas.fhir.baseUrl: http://<host>/ttp-fhir/fhir/gpas` and the
domains of its project (`MII`, `MII-ID-Salt`, `MII-DateShift-Salt` in the example project). The
real agent authenticates with OAuth2, client certificates (mTLS) or Basic; here: the demo key.
"""

from __future__ import annotations

import pytest

from client_wire import GPAS, json_parameters, media_type, sqlite_storage_url, wire_client  # noqa: F401

FHIR_JSON = "application/fhir+json"
DOMAINS = ("MII", "MII-ID-Salt", "MII-DateShift-Salt")


def fetch_or_create(client, domain: str, ids: list[str]):
    body = {"resourceType": "Parameters", "parameter": [{"name": "target", "valueString": domain}] +
            [{"name": "original", "valueString": i} for i in ids]}
    return client.post(f"{GPAS}/$pseudonymizeAllowCreate", json=body, headers={"Content-Type": FHIR_JSON})


def mapped_ids(response) -> dict[str, str]:
    """GpasParameterResponse.getMappedID(), with Jackson failing on unknown properties."""
    mapping = {}
    for parameter in json_parameters(response):
        assert set(parameter) <= {"name", "part"}, parameter           # record Parameter(name, part)
        parts = {}
        for part in parameter["part"]:
            assert set(part) <= {"name", "valueIdentifier"}, part        # record Part(name, valueIdentifier)
            parts.setdefault(part["name"], part)
        original, pseudonym = parts["original"], parts["pseudonym"]      # Optional.get()
        mapping[original["valueIdentifier"]["value"]] = pseudonym["valueIdentifier"]["value"]
    return mapping


@pytest.mark.parametrize("domain", DOMAINS)
def test_pseudonymize_allow_create_in_the_example_domains(demo_config, domain: str) -> None:
    ids = ["Patient/1", "id-2", "salt:Observation/3"]
    with wire_client(demo_config, accept=FHIR_JSON) as client:
        first = fetch_or_create(client, domain, ids)
        assert first.status_code == 200 and media_type(first) == FHIR_JSON
        mapping = mapped_ids(first)
        assert set(mapping) == set(ids) and len(set(mapping.values())) == len(ids)
        assert mapped_ids(fetch_or_create(client, domain, ids[:1])) == {ids[0]: mapping[ids[0]]}


def test_an_unknown_domain_is_recognised_as_such(demo_config) -> None:
    with wire_client(demo_config, accept=FHIR_JSON) as client:
        failed = fetch_or_create(client, "NO-SUCH-DOMAIN", ["1"])
        assert failed.status_code == 404  # FhirUnknownDomainException
        with wire_client(demo_config) as probe:  # WebClient get(): no Accept header
            metadata = probe.get(f"{GPAS}/metadata?_elements=rest.operation")
        assert metadata.status_code == 200
        assert media_type(metadata) in ("application/fhir+json", "application/json")
        statement = metadata.json()
        assert statement["resourceType"] == "CapabilityStatement"
        names = {op["name"] for rest in statement["rest"] for op in rest.get("operation", [])}
        assert "pseudonymizeAllowCreate" in names  # requireOperations(...)
        outcome = failed.json()
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]


def test_the_reduced_capability_statement_is_marked_subsetted(demo_config) -> None:
    with wire_client(demo_config) as client:
        statement = client.get(f"{GPAS}/metadata?_elements=rest.operation").json()
    tags = statement["meta"]["tag"]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} \
        .items() <= tags[0].items()
    assert set(statement) == {"resourceType", "meta", "status", "date", "kind", "fhirVersion", "format", "rest"}
    assert all(set(rest) == {"mode", "operation"} for rest in statement["rest"])
