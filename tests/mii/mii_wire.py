"""What the MII interface's tests share: the endpoint, requests in JSON and XML, and a comparison
of answers with the guide's examples that holds what the guide holds normative.

The guide's examples use Identifier systems as illustrations (`https://sample/...`,
`https://example.com/...`, or none, for the same context in different examples), so systems are
not compared with the examples'; what the guide does require of them — an echoed `context`,
`original` or `pseudonym` equals what the request sent — is checked against the request instead.
Entry statuses are compared by their code ("201" for "201 Created"); an answer may carry more
`issue.details` codings, an `expression` where the example has none, and a `response.outcome`
beside the entry's resource.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson

from conftest import DEMO_KEY, client_for  # noqa: F401
from fhirshape import SPEC, shape
from ttp_gateway.core.xmlcodec import parse_xml, to_xml

BASE = "/ttp-fhir/fhir/gpas/v2"
GPAS = "/ttp-fhir/fhir/gpas"
JSON = "application/fhir+json"
XML = "application/fhir+xml"
EXAMPLES = SPEC / "ig" / "mii-psn"


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


def identifier(value: str, system: str | None = None) -> dict:
    return {"value": value} if system is None else {"system": system, "value": value}


def call(context: str | dict, original: str | dict | None = None, *, pseudonym: str | dict | None = None,
         count: int | None = None) -> dict:
    """A Parameters of one call; plain strings become value-only Identifiers."""
    def named(name: str, value: str | dict) -> dict:
        return {"name": name, "valueIdentifier": identifier(value) if isinstance(value, str) else value}

    parameter = [named("context", context)]
    if original is not None:
        parameter.append(named("original", original))
    if pseudonym is not None:
        parameter.append(named("pseudonym", pseudonym))
    if count is not None:
        parameter.append({"name": "count", "valueInteger": count})
    return {"resourceType": "Parameters", "parameter": parameter}


def bundle(operation: str, calls: list[dict], kind: str = "batch") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": [
        {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{index:012d}", "resource": resource,
         "request": {"method": "POST", "url": f"${operation}"}} for index, resource in enumerate(calls)]}


def post(client, operation: str | None, resource: dict, fmt: str = JSON, base: str = BASE) -> tuple[int, dict]:
    """POST a resource in JSON or XML to `$operation`, or to the base itself when None (a Bundle
    whose entries name their operations); the status and the answer, read in the same format."""
    body = to_xml(resource) if fmt == XML else orjson.dumps(resource)
    url = base if operation is None else f"{base}/${operation}"
    response = client.post(url, content=body, headers={"Content-Type": fmt, "Accept": fmt})
    assert response.headers["content-type"].startswith(fmt), response.headers["content-type"]
    return response.status_code, parse_xml(response.content) if fmt == XML else response.json()


def parameter(answer: dict, name: str) -> Any:
    """The value[x] of the first top-level parameter of that name."""
    found = next(p for p in answer["parameter"] if p["name"] == name)
    return next(v for k, v in found.items() if k.startswith("value"))


def status_code(entry: dict) -> str:
    return entry["response"]["status"].split()[0]


# --- comparing with the guide's examples ---------------------------------------------------------

def _without_systems(resource: dict) -> dict:
    stripped = copy.deepcopy(resource)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            identifier_value = node.get("valueIdentifier")
            if isinstance(identifier_value, dict):
                identifier_value.pop("system", None)
            for child in node.values():
                visit(child)
        elif isinstance(node, list):
            for child in node:
                visit(child)

    visit(stripped)
    return stripped


def _outcome_shape(outcome: dict) -> list:
    return [(i.get("severity"), i.get("code"), tuple(i.get("expression", ())),
             {(c.get("system"), c.get("code")) for c in (i.get("details") or {}).get("coding", [])})
            for i in outcome.get("issue", [])]


def same_shape(answer: dict, expected: dict, volatile: tuple[str, ...] = ("pseudonym", "value")) -> None:
    """Assert that an answer (Parameters, OperationOutcome or Bundle) has the example's shape."""
    kind = expected["resourceType"]
    assert answer["resourceType"] == kind, (answer, expected)
    if kind == "Bundle":
        assert answer["type"] == expected["type"]
        assert len(answer["entry"]) == len(expected["entry"])
        for got, want in zip(answer["entry"], expected["entry"]):
            assert status_code(got) == status_code(want), (got, want)
            assert "resource" in got, got
            same_shape(got["resource"], want["resource"], volatile)
        return
    if kind == "OperationOutcome":
        got, want = _outcome_shape(answer), _outcome_shape(expected)
        assert len(got) == len(want), (answer, expected)
        for (severity, code, where, codings), (w_severity, w_code, w_where, w_codings) in zip(got, want):
            assert (severity, code) == (w_severity, w_code), (answer, expected)
            assert where == w_where or not w_where, (answer, expected)
            assert w_codings <= codings, (answer, expected)
        return
    got = shape(_without_systems(answer), values=True, volatile=volatile)
    want = shape(_without_systems(expected), values=True, volatile=volatile)
    assert got == want, f"\nanswer:   {got}\nexpected: {want}"


def echoes(answer_identifier: dict, sent: dict) -> bool:
    """Whether an echoed Identifier is what the request sent: the same system (or none) and value."""
    return (answer_identifier.get("system"), answer_identifier["value"]) == (sent.get("system"), sent["value"])
