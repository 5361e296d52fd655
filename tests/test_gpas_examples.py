"""Every gPAS example of the implementation guide, replayed over HTTP in JSON and in XML.

Each case names the guide's request (or builds it from the items of a response example that has
no request of its own), the state the example presupposes, and the response example the answer
must match in shape — and in values, except pseudonyms the service draws anew.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import pytest

from conftest import GPAS
from fhirshape import SPEC, example, match
from ttp_gateway.core.xmlcodec import parse_xml, to_xml
from stores import transaction
from ttp_gateway.plugins.gpas.api import GPAS as GPAS_API

JSON = "application/fhir+json"
XML = "application/fhir+xml"


def forget_033(repository) -> None:
    """The state of the delete and anonymise examples: 1001000000033 is not in MIRACUM."""
    with transaction(repository, write=True) as tx:
        tx.delete_originals("MIRACUM", ["1001000000033"])


def forget_022(repository) -> None:
    """A MIRACUM without 1001000000022, so that importing its pair creates it anew."""
    with transaction(repository, write=True) as tx:
        tx.delete_originals("MIRACUM", ["1001000000022"])


def parameters(*params: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(params)}


def string(name: str, value: str) -> dict:
    return {"name": name, "valueString": value}


@dataclass
class Case:
    operation: str
    request: dict
    response: dict
    prepare: Callable | None = None
    volatile: tuple[str, ...] = ()
    notes: str = ""
    id: str = field(default="")


def cases() -> list[Case]:
    ex = lambda name: example("gpas", name)  # noqa: E731
    depsn_2 = ex("Parameters-Parameters-DePseudonymize-response-example-2")
    # The guide's second dePseudonymize example names the found item "pseudonym"; its first
    # example and the OperationDefinition name it "original", which is what we answer.
    depsn_2["parameter"][0]["name"] = "original"
    return [
        Case("pseudonymize", ex("Parameters-Parameters-Pseudonymize-request-example-1"),
             ex("Parameters-Parameters-Pseudonymize-response-example-1"), id="pseudonymize-1"),
        Case("pseudonymize", parameters(string("target", "MIRACUM"), string("original", "1001000000022"),
                                        string("original", "10010000000XX")),
             ex("Parameters-Parameters-Pseudonymize-response-example-2"), id="pseudonymize-2"),
        Case("pseudonymizeAllowCreate", ex("Parameters-Parameters-PseudonymizeAllowCreate-request-example-1"),
             ex("Parameters-Parameters-PseudonymizeAllowCreate-response-example-1"), id="allow-create-1"),
        Case("pseudonymizeAllowCreate", ex("Parameters-Parameters-PseudonymizeAllowCreate-request-example-1"),
             ex("Parameters-Parameters-PseudonymizeAllowCreate-response-example-1"),
             prepare=lambda repo: (forget_022(repo), forget_033(repo)), volatile=("pseudonym",),
             id="allow-create-new"),
        Case("dePseudonymize", ex("Parameters-Parameters-DePseudonymize-request-example-1"),
             ex("Parameters-Parameters-DePseudonymize-response-example-1"), id="de-pseudonymize-1"),
        Case("dePseudonymize", parameters(string("target", "MIRACUM"), string("pseudonym", "mrcm_T0TYNV21"),
                                          string("pseudonym", "mrcm_UNKPSN123")),
             depsn_2, id="de-pseudonymize-2"),
        Case("pseudonymize-secondary", ex("Parameters-Parameters-PseudonymizeSecondary-request-example-1"),
             ex("Parameters-Parameters-PseudonymizeSecondary-response-example-1"), volatile=("value",),
             id="secondary-1"),
        Case("pseudonymize-secondary", parameters({"name": "original", "part": [
            string("target", "DOMAINXY"), string("value", "H3RAU56A8E"), string("count", "2")]}),
             ex("Parameters-Parameters-PseudonymizeSecondary-response-example-2"), id="secondary-2"),
        Case("deletePseudonyms", ex("Parameters-Parameters-DeletePseudonyms-request-example-1"),
             ex("Parameters-Parameters-DeletePseudonyms-response-example-1"), prepare=forget_033,
             id="delete-1"),
        Case("anonymizeOriginals", ex("Parameters-Parameters-AnonymizeOriginals-request-example-1"),
             ex("Parameters-Parameters-AnonymizeOriginals-response-example-1"), prepare=forget_033,
             id="anonymize-1"),
        Case("insertValuePseudonymPairs", ex("Parameters-Parameters-InsertValuePseudonymPairs-request-example-1"),
             ex("Parameters-Parameters-InsertValuePseudonymPairs-response-example-1"), prepare=forget_022,
             id="insert-1"),
        Case("insertValuePseudonymPairs", ex("Parameters-Parameters-InsertValuePseudonymPairs-request-example-1"),
             ex("Parameters-Parameters-InsertValuePseudonymPairs-response-example-1"),
             notes="the demo holds this very pair already: importing it again succeeds", id="insert-again"),
        Case("insertValuePseudonymPairs", parameters({"name": "pseudonym", "part": [
            string("target", "DOMAINXY"), string("original", "1001000000022"), string("value", "mrcm_T0TYNV21")]}),
             ex("Parameters-Parameters-InsertValuePseudonymPairs-response-example-2"), id="insert-2"),
    ]


CASES = cases()


def post(client, operation: str, resource: dict, fmt: str) -> tuple[int, dict]:
    body = to_xml(resource) if fmt == XML else __import__("orjson").dumps(resource)
    response = client.post(f"{GPAS}/${operation}", content=body,
                           headers={"Content-Type": fmt, "Accept": fmt})
    assert response.headers["content-type"].startswith(fmt)
    answer = parse_xml(response.content) if fmt == XML else response.json()
    return response.status_code, answer


@pytest.mark.parametrize("fmt", [JSON, XML], ids=["json", "xml"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_example_replays(client, case: Case, fmt: str) -> None:
    if case.prepare:
        case.prepare(client.app.gateway.repository)
    status, answer = post(client, case.operation, case.request, fmt)
    assert status == 200, answer
    match(answer, case.response, values=True, volatile=case.volatile)


def test_every_gpas_request_example_is_replayed() -> None:
    requests = sorted(p.stem for p in (SPEC / "ig" / "gpas").glob("Parameters-*-request-example-*.json"))
    replayed = {c.request.get("id") for c in CASES}
    assert requests and all(r.removeprefix("Parameters-") in replayed for r in requests)
    responses = sorted(p.stem for p in (SPEC / "ig" / "gpas").glob("Parameters-*-response-example-*.json"))
    matched = {c.response.get("id") for c in CASES}
    assert all(r.removeprefix("Parameters-") in matched for r in responses)


def test_created_pseudonyms_follow_the_domain_rules(client) -> None:
    gateway = client.app.gateway
    domain = gateway.service(GPAS_API).domain("Datensatz-Ebene")
    status, answer = post(client, "pseudonymize-secondary",
                          example("gpas", "Parameters-Parameters-PseudonymizeSecondary-request-example-1"), JSON)
    values = [p["valueIdentifier"]["value"] for param in answer["parameter"] for p in param["part"]
              if p["name"] == "value"]
    assert len(values) == 2 and len(set(values)) == 2
    assert all(domain.format.validate(v) is None for v in values)
    assert all(len(v) == 13 for v in values)  # 12 random symbols and one Luhn check digit


def _seed_body(seed: str, root: str, occurrence: int) -> bytes:
    text = (SPEC / "seeds" / seed).read_text(encoding="utf-8")
    bodies = re.findall(rf"<{root} xmlns=\"http://hl7.org/fhir\">.*?</{root}>", text, re.S)
    return bodies[occurrence].encode()


def test_seed_004_delete_request_in_xml(client) -> None:
    """The seed page's own XML request body, sent as it stands, answers its XML response."""
    forget_033(client.app.gateway.repository)
    seed = next(p.name for p in (SPEC / "seeds").glob("004_*.txt"))
    response = client.post(f"{GPAS}/$deletePseudonyms", content=_seed_body(seed, "Parameters", 0),
                           headers={"Content-Type": "application/fhir+xml; charset=utf-8", "Accept": XML})
    assert response.status_code == 200
    expected = parse_xml(_seed_body(seed, "Parameters", 1))
    match(parse_xml(response.content), expected, values=True)

