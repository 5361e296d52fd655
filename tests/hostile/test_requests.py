"""Bad requests that parse: wrong credentials, limits, broken Bundles, things that do not exist."""

from __future__ import annotations

import pytest

from ttp_gateway.core.xmlcodec import to_xml

from .checks import assert_refused, outcome_of
from .generator import (JSON, KEY_OF, OPERATIONS, TASK, XML, _json, _resource, auth_cases, bundle_cases, generate,
                        limit_cases, parameters, path_of, refusal_cases)
from .harness import GatewayUnderTest, Request, headers, hostile_config

CASES = generate(auth_cases, limit_cases, bundle_cases, refusal_cases)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request_is_refused(gateway, case) -> None:
    assert_refused(gateway, case)


def test_another_studys_task_answers_like_a_task_that_does_not_exist(gateway) -> None:
    """A key of another study learns nothing of a task's existence: the same status, the same text."""
    key = KEY_OF["num-site"]
    answers = []
    for task_id in (TASK, "00000000-0000-4000-8000-000000000000"):
        params = [p if p["name"] != "taskId" else {"name": "taskId", "valueId": task_id}
                  for p in parameters("providePatientData")]
        response = gateway.send(Request("POST", path_of("providePatientData"), b"",
                                        headers(("content-type", JSON), key=key), _json(_resource(params))))
        answers.append((response.status, response.body.replace(task_id.encode(), b"<id>")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 404


def test_deleting_in_a_domain_that_forbids_it_is_the_reference_500(gateway) -> None:
    """The reference gateway's business rule (clients rely on its status): a 500 OperationOutcome
    of type business-rule, and nothing deleted."""
    before = gateway.snapshot()
    body = _json(_resource([{"name": "target", "valueString": "dic_muenster"},
                            {"name": "original", "valueString": "anything"}]))
    response = gateway.send(Request("POST", path_of("deletePseudonyms"), b"", headers(("content-type", JSON)), body))
    assert response.status == 500
    assert outcome_of("delete", response, "json")["issue"][0]["code"] == "business-rule"
    assert gateway.snapshot() == before


def test_every_baseline_request_succeeds(storage_url) -> None:
    """The requests the suite breaks are good ones: each of them, unbroken, succeeds."""
    under_test = GatewayUnderTest(hostile_config(storage_url))
    try:
        for op in OPERATIONS:
            for fmt, content_type in (("json", JSON), ("xml", XML)):
                body = _json(_resource(parameters(op))) if fmt == "json" else to_xml(_resource(parameters(op)))
                response = under_test.send(Request("POST", path_of(op), b"", headers(("content-type", content_type)),
                                                   body))
                assert response.status == 200, f"{op} ({fmt}): {response.status} {response.body[:300]!r}"
                assert response.media_type == content_type
    finally:
        under_test.close()
