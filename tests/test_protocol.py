"""The wire protocol around every operation: formats, negotiation, limits, metadata, health."""

from __future__ import annotations

import orjson
import pytest

from conftest import GPAS, client_for
from fhirshape import SPEC
from ttp_gateway.core.xmlcodec import parse_xml, to_xml
from stores import transaction

LOOKUP = {"resourceType": "Parameters", "parameter": [
    {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": "1001000000022"}]}


def found_pseudonym(answer: dict) -> str:
    return answer["parameter"][0]["part"][2]["valueIdentifier"]["value"]


@pytest.mark.parametrize("content_type", ["application/fhir+json", "application/json",
                                          "application/fhir+json; charset=utf-8",
                                          "application/json;charset=UTF-8", "application/fhir+json; fhirVersion=4.0"])
def test_json_request_types(client, content_type: str) -> None:
    response = client.post(f"{GPAS}/$pseudonymize", content=orjson.dumps(LOOKUP),
                           headers={"Content-Type": content_type})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert found_pseudonym(response.json()) == "mrcm_T0TYNV21"


@pytest.mark.parametrize("content_type", ["application/fhir+xml", "application/xml", "text/xml",
                                          "application/fhir+xml; charset=UTF-8"])
def test_xml_request_types(client, content_type: str) -> None:
    # The test client sends `Accept: */*`, no usable preference: the answer is XML like the body.
    response = client.post(f"{GPAS}/$pseudonymize", content=to_xml(LOOKUP),
                           headers={"Content-Type": content_type})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+xml"
    assert found_pseudonym(parse_xml(response.content)) == "mrcm_T0TYNV21"


@pytest.mark.parametrize("query, accept, expected", [
    ("", "application/fhir+xml", "application/fhir+xml"),
    ("", "application/xml", "application/xml"),
    ("", "text/html, application/fhir+xml;q=0.9", "application/fhir+xml"),
    ("", "application/fhir+json;q=0.5, application/fhir+xml", "application/fhir+xml"),
    ("", "*/*", "application/fhir+json"),
    ("", "text/html", "application/fhir+json"),
    ("?_format=xml", "application/fhir+json", "application/fhir+xml"),
    ("?_format=json", "application/fhir+xml", "application/fhir+json"),
    ("?_format=application/fhir%2Bxml", "", "application/fhir+xml"),
    ("?_format=application/xml", "", "application/xml"),
])
def test_response_format_negotiation(client, query: str, accept: str, expected: str) -> None:
    response = client.post(f"{GPAS}/$pseudonymize{query}", json=LOOKUP, headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == expected
    answer = parse_xml(response.content) if "xml" in expected else response.json()
    assert found_pseudonym(answer) == "mrcm_T0TYNV21"


def test_errors_come_in_the_negotiated_format(client) -> None:
    response = client.post(f"{GPAS}/$pseudonymize", content=b"{broken",
                           headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+xml"})
    assert response.status_code == 400
    assert parse_xml(response.content)["resourceType"] == "OperationOutcome"


def test_unsupported_content_type_is_415(client) -> None:
    response = client.post(f"{GPAS}/$pseudonymize", content=b"target=MIRACUM",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert response.json()["issue"][0]["code"] == "not-supported"


def test_body_over_the_limit_is_413(demo_config) -> None:
    config = demo_config.with_overrides(limits={"max_body_bytes": 2048})
    with client_for(config) as client:
        big = {"resourceType": "Parameters", "parameter": [{"name": "target", "valueString": "MIRACUM"}] + [
            {"name": "original", "valueString": f"{i:020d}"} for i in range(100)]}
        response = client.post(f"{GPAS}/$pseudonymizeAllowCreate", json=big)
        assert response.status_code == 413
        assert response.json()["resourceType"] == "OperationOutcome"

        def chunks():  # no Content-Length: the limit holds while streaming
            body = orjson.dumps(big)
            for start in range(0, len(body), 512):
                yield body[start:start + 512]

        response = client.post(f"{GPAS}/$pseudonymizeAllowCreate", content=chunks(),
                               headers={"Content-Type": "application/fhir+json"})
        assert response.status_code == 413
        with transaction(client.app.gateway.repository) as tx:
            assert tx.count_pseudonyms("MIRACUM") == 2


def test_xml_with_entities_is_refused(client) -> None:
    body = (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            b'<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="target"/>'
            b'<valueString value="&e;"/></parameter></Parameters>')
    response = client.post(f"{GPAS}/$pseudonymize", content=body, headers={"Content-Type": "application/fhir+xml"})
    assert response.status_code == 400
    assert "root:" not in response.text


# --- metadata ---------------------------------------------------------------------------------

GPAS_OPERATIONS = {"pseudonymize", "pseudonymizeAllowCreate", "dePseudonymize", "pseudonymize-secondary",
                   "deletePseudonyms", "anonymizeOriginals", "insertValuePseudonymPairs"}


def test_capability_statement_lists_every_operation(client) -> None:
    statement = client.get(f"{GPAS}/metadata").json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    names = {op["name"] for op in statement["rest"][0]["operation"]}
    assert GPAS_OPERATIONS <= names
    xml = parse_xml(client.get(f"{GPAS}/metadata", headers={"Accept": "application/fhir+xml"}).content)
    assert xml == statement


def _signature(parameters: list[dict]) -> list:
    return [(p["name"], p["use"], p["min"], p["max"], p.get("type"), _signature(p.get("part", [])))
            for p in parameters]


@pytest.mark.parametrize("path", sorted((SPEC / "ig" / "gpas").glob("OperationDefinition-*.json")),
                         ids=lambda p: p.stem)
def test_operation_definitions_match_the_guide(client, path) -> None:
    """Generated from our declarations, each definition has the guide's parameters."""
    guide = orjson.loads(path.read_bytes())
    ours = client.get(f"{GPAS}/OperationDefinition/{guide['id']}").json()
    assert ours["resourceType"] == "OperationDefinition"
    assert ours["code"] == guide["code"]
    assert ours["affectsState"] == guide["affectsState"]
    assert _signature(ours["parameter"]) == _signature(guide["parameter"])
    assert ours["url"] == guide["url"]


def test_unknown_definition_and_endpoint_are_404(client) -> None:
    assert client.get(f"{GPAS}/OperationDefinition/Nope").status_code == 404
    assert client.get("/ttp-fhir/fhir/nowhere/metadata").status_code == 404
    response = client.post("/ttp-fhir/fhir/nowhere/$pseudonymize", json=LOOKUP)
    assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"


def test_health_readiness_and_metrics(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client.post(f"{GPAS}/$pseudonymize", json=LOOKUP)
    metrics = client.get("/metrics").text
    assert 'ttp_requests_total{endpoint="gpas",operation="pseudonymize",status="2xx"} 1.0' in metrics
    assert "ttp_request_seconds_bucket" in metrics


def test_readiness_fails_when_storage_is_gone(client) -> None:
    client.app.gateway.repository.close()
    gateway = client.app.gateway
    broken = type("Broken", (), {"ping": lambda self: (_ for _ in ()).throw(RuntimeError("down")),
                                 "close": lambda self: None})()
    gateway.repository = broken
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["status"] == "unavailable"
