"""Every example instance of the MII interface's guide, replayed against the demo configuration
over HTTP, in JSON and in XML, on every backend, and compared in shape with its response example
(`mii_wire.same_shape`), in values where the demo holds the example's own pairs.

Where an example contradicts the guide's own definitions, the case says so and the answer
follows the definition; the deviation is spelt out in `expected`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import pytest

from mii_wire import (JSON, XML, EXAMPLES, bundle, call, echoes, example, parameter, post,  # noqa: F401
                      same_shape, status_code)


def create(original: str, context: str = "pseudonym-domain"):
    def prepare(client) -> None:
        status, _ = post(client, "pseudonymize", call(context, original))
        assert status == 200

    return prepare


def get_pseudonym_bundle_answer() -> dict:
    # The guide's second entry answers "201 Created" with a pseudonym, from an operation that only
    # reads: here the original exists beforehand (`prepare`), and a read answers 200.
    expected = example("Bundle-get-pseudonym-batch-response-example-1")
    expected["entry"][1]["response"]["status"] = "200 OK"
    return expected


def pseudonymize_multiple_bundle_answer() -> dict:
    # The guide's first entry asks for count 2 and lists three pseudonyms; count says two.
    expected = example("Bundle-pseudonymize-multiple-batch-response-example-1")
    del expected["entry"][0]["resource"]["parameter"][2]
    return expected


def de_pseudonymize_bundle_answer() -> dict:
    # The guide's first entry is flat (context, original, pseudonym); its OperationDefinition,
    # its single-call example and fhir-pseudonymizer's reader want `original` with parts.
    expected = example("Bundle-de-pseudonymize-batch-response-example-1")
    single = example("Parameters-de-pseudonymize-response-example-1")
    expected["entry"][0]["resource"] = single
    return expected


@dataclass
class Case:
    operation: str
    request: dict
    expected: dict
    status: int = 200
    prepare: Callable | None = None
    volatile: tuple[str, ...] = ()
    id: str = field(default="")


def cases() -> list[Case]:
    single = "Parameters-{}-request-example-1"
    return [
        Case("pseudonymize", example(single.format("pseudonymize")),
             example("Parameters-pseudonymize-response-example-1"), id="pseudonymize"),
        Case("pseudonymize", call("Transfer1", identifier_of("D1CL0CAL9")),
             example("Parameters-pseudonymize-response-example-1"), volatile=("pseudonym", "original"),
             id="pseudonymize-new"),
        Case("get-pseudonym", example(single.format("get-pseudonym")),
             example("Parameters-get-pseudonym-response-example-1"), id="get-pseudonym"),
        Case("pseudonymize-multiple", example(single.format("pseudonymize-multiple")),
             example("Parameters-pseudonymize-multiple-response-example-1"), volatile=("value",),
             id="pseudonymize-multiple"),
        Case("de-pseudonymize", example(single.format("de-pseudonymize")),
             example("Parameters-de-pseudonymize-response-example-1"), id="de-pseudonymize"),
        Case("delete-pseudonym", example(single.format("delete-pseudonym")),
             example("OperationOutcome-delete-pseudonym-response-example-1"), id="delete-pseudonym"),
        Case("delete-pseudonym", example(single.format("delete-pseudonym")),
             example("OperationOutcome-delete-pseudonym-response-example-2"), status=404,
             prepare=lambda client: post(client, "delete-pseudonym", example(single.format("delete-pseudonym"))),
             id="delete-pseudonym-not-found"),
        Case("anonymize-original", example(single.format("anonymize-original")),
             example("OperationOutcome-anonymize-original-response-example-1"), id="anonymize-original"),
        Case("pseudonymize", example("Bundle-pseudonymize-batch-request-example-1"),
             example("Bundle-pseudonymize-batch-response-example-1"), volatile=("pseudonym",),
             id="bundle-pseudonymize"),
        Case("get-pseudonym", example("Bundle-get-pseudonym-batch-request-example-1"),
             get_pseudonym_bundle_answer(), prepare=create("an-original-identifier-value"),
             volatile=("pseudonym",), id="bundle-get-pseudonym"),
        Case("pseudonymize-multiple", example("Bundle-pseudonymize-multiple-batch-request-example-1"),
             pseudonymize_multiple_bundle_answer(), volatile=("value",), id="bundle-pseudonymize-multiple"),
        Case("de-pseudonymize", example("Bundle-de-pseudonymize-batch-request-example-1"),
             de_pseudonymize_bundle_answer(), id="bundle-de-pseudonymize"),
        Case("delete-pseudonym", example("Bundle-delete-pseudonym-batch-request-example-1"),
             example("Bundle-delete-pseudonym-batch-response-example-1"), id="bundle-delete-pseudonym"),
        Case("anonymize-original", example("Bundle-anonymize-original-batch-request-example-1"),
             example("Bundle-anonymize-original-batch-response-example-1"), id="bundle-anonymize-original"),
    ]


def identifier_of(value: str) -> dict:
    return {"system": "https://sample/psn-system", "value": value}


CASES = cases()


@pytest.mark.parametrize("fmt", [JSON, XML], ids=["json", "xml"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_example_replays(client, case: Case, fmt: str) -> None:
    if case.prepare:
        case.prepare(client)
    status, answer = post(client, case.operation, copy.deepcopy(case.request), fmt)
    assert status == case.status, answer
    same_shape(answer, case.expected, case.volatile)
    requests = case.request["entry"] if case.request["resourceType"] == "Bundle" else [{"resource": case.request}]
    answers = answer["entry"] if answer["resourceType"] == "Bundle" else [{"resource": answer}]
    for sent, got in zip(requests, answers):
        check_echoes(sent["resource"], got["resource"])


BUNDLE_CASES = [c for c in CASES if c.request["resourceType"] == "Bundle"]


@pytest.mark.parametrize("fmt", [JSON, XML], ids=["json", "xml"])
@pytest.mark.parametrize("case", BUNDLE_CASES, ids=[c.id for c in BUNDLE_CASES])
def test_bundle_examples_posted_to_the_base(client, case: Case, fmt: str) -> None:
    # FHIR clients post a batch to the server's base; each entry's request.url names the operation.
    if case.prepare:
        case.prepare(client)
    status, answer = post(client, None, copy.deepcopy(case.request), fmt)
    assert status == case.status, answer
    same_shape(answer, case.expected, case.volatile)
    for sent, got in zip(case.request["entry"], answer["entry"]):
        check_echoes(sent["resource"], got["resource"])


def check_echoes(request: dict, answer: dict) -> None:
    """Every `context`, `original` and `pseudonym` an answer repeats is the request's own."""
    if answer["resourceType"] != "Parameters":
        return
    sent = {p["name"]: p["valueIdentifier"] for p in request["parameter"] if "valueIdentifier" in p}
    for item in answer["parameter"]:
        for part in item.get("part", [item]):
            name = part["name"]
            if name in ("context", "original") and name in sent and "valueIdentifier" in part:
                assert echoes(part["valueIdentifier"], sent[name]), (part, sent[name])
    if answer["parameter"][0]["name"] == "original":  # $de-pseudonymize repeats the pseudonym
        part = next(p for p in answer["parameter"][0]["part"] if p["name"] == "pseudonym")
        assert echoes(part["valueIdentifier"], sent["pseudonym"])


def test_every_example_is_replayed() -> None:
    requests = {p.stem for p in EXAMPLES.glob("*-request-example-*.json")}
    answers = {p.stem for p in EXAMPLES.glob("*-response-example-*.json")}
    replayed = {c.request["id"] for c in CASES if "id" in c.request}
    assert {example(name)["id"] for name in requests} <= replayed
    matched = {c.expected.get("id") for c in CASES}
    assert {example(name)["id"] for name in answers} <= matched
    assert len(requests) == 12 and len(answers) == 13


def test_new_pseudonyms_follow_the_domain_rules(client) -> None:
    status, answer = post(client, "pseudonymize-multiple", example("Parameters-pseudonymize-multiple-request-example-1"))
    values = [next(p["valueIdentifier"]["value"] for p in item["part"] if p["name"] == "value")
              for item in answer["parameter"]]
    assert status == 200 and len(values) == 3 == len(set(values))
    assert all(len(v) == 13 for v in values)  # MultiPsnDomain: 13 Symbol32 characters
