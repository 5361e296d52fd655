"""What every refused request must show: the right 4xx, an OperationOutcome in the negotiated
format that quotes none of the request's secrets and no stack trace, a store left as it was, and
a server that still answers."""

from __future__ import annotations

import orjson

from .generator import BadRequest, SECRET, path_of
from .harness import GatewayUnderTest, Request, Response, headers

FHIR_TYPES = {"application/fhir+json": "json", "application/json": "json", "application/fhir+xml": "xml",
              "application/xml": "xml"}
LEAKS = ("Traceback", 'File "', ".py", "Error(", "Error:", ", line ", "sqlalchemy", "psycopg", "pymongo", "orjson",
         "lxml")
GOOD = Request("POST", path_of("pseudonymize"), b"", headers(("content-type", "application/fhir+json")),
               orjson.dumps({"resourceType": "Parameters", "parameter": [
                   {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": "1001000000022"}]}))


def outcome_of(case_id: str, response: Response, expected_format: str | None = None) -> dict:
    """The OperationOutcome of a refusal, read in the format its Content-Type names."""
    fmt = FHIR_TYPES.get(response.media_type)
    assert fmt is not None, f"{case_id}: answered {response.media_type!r}, not FHIR"
    if expected_format is not None:
        assert fmt == expected_format, f"{case_id}: answered {fmt}, negotiated {expected_format}"
    resource = response.resource()
    assert resource["resourceType"] == "OperationOutcome", f"{case_id}: answered a {resource['resourceType']}"
    assert resource["issue"] and all(issue["severity"] in ("error", "fatal") for issue in resource["issue"])
    return resource


def assert_refused(gateway: GatewayUnderTest, case: BadRequest) -> None:
    before = gateway.snapshot()
    response = gateway.send(case.request)
    text = response.body.decode("utf-8", "replace")
    assert response.status in case.status, f"{case.id}: {response.status} {text[:300]}"
    for leak in LEAKS:
        assert leak not in text, f"{case.id}: the answer shows {leak!r}: {text[:300]}"
    for secret in case.secrets:
        assert secret not in text, f"{case.id}: the answer quotes a value the request sent"
    if case.request.method == "HEAD":  # the headers of the answer a GET would get
        assert response.body == b"" and int(response.header("content-length") or 0) > 0
        assert response.media_type in FHIR_TYPES
    elif case.batch:
        fmt = FHIR_TYPES.get(response.media_type)
        assert fmt is not None and (case.answer is None or fmt == case.answer)
        bundle = response.resource()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "batch-response"
        for entry in bundle["entry"]:
            assert 400 <= int(entry["response"]["status"]) < 500, f"{case.id}: an entry got {entry['response']}"
            assert entry["response"]["outcome"]["resourceType"] == "OperationOutcome"
            assert "resource" not in entry
    else:
        outcome_of(case.id, response, case.answer)
    if case.allow:
        assert response.header("allow"), f"{case.id}: a 405 without an Allow header"
    assert gateway.snapshot() == before, f"{case.id}: the store changed"
    assert SECRET not in repr(before)
    alive = gateway.send(GOOD)
    assert alive.status == 200, f"{case.id}: the next good request got {alive.status}"
