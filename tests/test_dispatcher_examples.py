"""Every dispatcher example of the implementation guide and of the seed pages, replayed over HTTP
in JSON and in XML against the demo configuration.

Where a response example names items that its request example does not send, the replayed
request sends them too (built from the response example's items), and the state the example
presupposes is made with the service's own operations.
"""

from __future__ import annotations

import copy
import random
import re

import orjson
import pytest
from starlette.testclient import TestClient

from dispatch import DISPATCHER, Clock, Site, b64, balanced_filter, idat_patient, similar_filter
from fhirshape import SPEC, example, match
from ttp_gateway.core.app import create_app
from ttp_gateway.core.xmlcodec import parse_xml, to_xml

JSON = "application/fhir+json"
XML = "application/fhir+xml"
FORMATS = pytest.mark.parametrize("fmt", [JSON, XML], ids=["json", "xml"])


def ex(name: str) -> dict:
    return example("dispatcher", name)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gateway(demo_config, clock):
    with TestClient(create_app(demo_config, clock=clock), headers={"apikey": "abcdef12345"}) as client:
        yield client


def post(client, operation: str, resource: dict, fmt: str = JSON, status: int = 200) -> dict:
    body = to_xml(resource) if fmt == XML else orjson.dumps(resource)
    response = client.post(f"{DISPATCHER}/${operation}", content=body, headers={"Content-Type": fmt, "Accept": fmt})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(fmt)
    return parse_xml(response.content) if fmt == XML else response.json()


@FORMATS
def test_request_psn_from_bf_workflow(gateway, fmt) -> None:
    request = ex("Parameters-Parameters-RequestPsnFromBfWorkflow-request-example-1")
    # The response example also answers a filter "ZHVtbXk=" with not-found: a filter of a version
    # the study does not have.
    request["parameter"].insert(2, {"name": "bloomfilter", "part": [
        {"name": "bloomfilter", "valueBase64Binary": "ZHVtbXk="}, {"name": "version", "valueString": "9"}]})
    answer = post(gateway, "requestPsnFromBfWorkflow", request, fmt)
    match(answer, ex("Parameters-Parameters-RequestPsnFromBfWorkflow-response-example-1"), values=True)


@FORMATS
def test_request_psn_workflow(gateway, fmt) -> None:
    request = ex("Parameters-Parameters-RequestPsnWorkflow-request-example-1")
    request["parameter"].insert(2, {"name": "original", "valueString": "dic_2Q42E"})
    answer = post(gateway, "requestPsnWorkflow", request, fmt)
    match(answer, ex("Parameters-Parameters-RequestPsnWorkflow-response-example-1"), values=True)


@FORMATS
def test_update_bf(gateway, fmt) -> None:
    answer = post(gateway, "updateBf", ex("Parameters-Parameters-UpdateBf-request-example-1"), fmt)
    match(answer, ex("OperationOutcome-OperationOutcome-UpdateBf-response-example-1"))
    assert answer["issue"][0]["diagnostics"] == "Bloomfilter updated."


@FORMATS
def test_provide_patient_data(gateway, fmt) -> None:
    """The demo holds the pending clearing whose task the guide's example answers."""
    answer = post(gateway, "providePatientData", ex("Parameters-Parameters-ProvidePatientData-request-example-1"), fmt)
    assert answer["resourceType"] == "Bundle"
    assert answer["entry"][0]["resource"]["issue"][0]["severity"] == "information"
    # The same answer again (a retry after a lost response) gets the same success; other data a conflict.
    again = post(gateway, "providePatientData", ex("Parameters-Parameters-ProvidePatientData-request-example-1"), fmt)
    assert again == answer
    other = ex("Parameters-Parameters-ProvidePatientData-request-example-1")
    patient = next(p for p in other["parameter"] if p["name"] == "patient")["resource"]
    patient["birthDate"] = "1970-01-01"
    post(gateway, "providePatientData", other, fmt, status=409)


@FORMATS
def test_request_tasks(demo_config, clock, fmt) -> None:
    """A state with one task of each kind for eyematics, made through the workflow itself."""
    config = demo_config.with_overrides(dispatcher={"clearings": []})
    rng = random.Random(3)
    person = dict(given="Martin", family="Mustermann", birth_date="1965-12-03", gender="male",
                  birth_place="Musterhausen", degree="Dr. med.")
    with TestClient(create_app(config, clock=clock), headers={"apikey": "abcdef12345"}) as client:
        eyematics, muenster = Site(client, "eyematics"), Site(client, "dic_muenster")
        # repeat_request: a clearing of eyematics that expires.
        data, ones = balanced_filter(rng)
        muenster.request_psn(b64(data))
        assert eyematics.request_psn(b64(similar_filter(ones, 0.88, rng)))[0][1] == "incomplete"
        clock.advance(days=15)
        # dic_psn_available: a clearing of eyematics that is decided.
        data, ones = balanced_filter(rng)
        muenster.request_psn(b64(data))
        assert eyematics.request_psn(b64(similar_filter(ones, 0.88, rng)))[0][1] == "incomplete"
        for site in (eyematics, muenster):
            task = next(t for t in site.tasks() if t["kind"] == "send_idat")
            site.provide(task["taskId"], idat_patient(**person))
        # send_idat naming a pseudonym: eyematics holds the candidate of dic_muenster's clearing.
        data, ones = balanced_filter(rng)
        eyematics.request_psn(b64(data))
        assert muenster.request_psn(b64(similar_filter(ones, 0.88, rng)))[0][1] == "incomplete"

        answer = post(client, "requestTasks", ex("Parameters-Parameters-RequestTasks-request-example-1"), fmt)
    expected = copy.deepcopy(ex("Parameters-Parameters-RequestTasks-response-example-1"))
    # Tasks name the target with the site's pseudonyms of this service, not the example's.
    match(answer, expected)
    assert [p["name"] for p in answer["parameter"]] == ["dic_psn_available", "send_idat", "repeat_request"]


@FORMATS
def test_pseudonymize_patient_batch(gateway, fmt) -> None:
    request = ex("Bundle-PseudonymizePatient-Bundle-request-example-1")
    answer = post(gateway, "pseudonymizePatient", request, fmt)
    expected = copy.deepcopy(ex("Bundle-PseudonymizePatient-Bundle-response-example-1"))
    # The guide's second entry answers an unknown domain with a pseudonym value, an outcome of
    # type "security" and another domain name than the request's; we answer the request's domain
    # without a value, with a not-found outcome.
    failed = expected["entry"][1]
    failed["response"]["outcome"]["issue"][0].update(severity="error", code="not-found")
    failed["resource"]["parameter"][1]["part"] = [
        {"name": "target", "valueIdentifier": {"system": "https://sample/domains", "value": "NotMyStudy-Domain15"}}]
    match(answer, expected)
    first = answer["entry"][0]["resource"]["parameter"]
    assert first[0] == {"name": "externalPatientId", "valueId": "aaaaaaaa-8a1e-4442-af99-50abc27d6f52"}
    assert [p["part"][0]["valueIdentifier"]["value"] for p in first[1:]] == ["MyStudy-Domain1", "MyStudy-Domain2"]
    # The same Patient again: the same pseudonyms (linked by KVID).
    again = post(gateway, "pseudonymizePatient", request, fmt)
    assert again["entry"][0]["resource"] == answer["entry"][0]["resource"]


def test_every_dispatcher_request_example_is_replayed() -> None:
    names = {p.stem for p in (SPEC / "ig" / "dispatcher").glob("*-request-example-*.json")}
    source = open(__file__, encoding="utf-8").read()
    assert names and all(name in source for name in names)


def _seed_bodies(seed: str, root: str) -> list[bytes]:
    path = next((SPEC / "seeds").glob(f"{seed}_*.txt"))
    text = path.read_text(encoding="utf-8")
    return [m.encode() for m in re.findall(rf"<{root} xmlns=\"http://hl7.org/fhir\">.*?</{root}>", text, re.S)]


def test_seed_001_update_bf_with_the_key_in_the_body(demo_config) -> None:
    """The seed page's XML request, key and all, against the demo: study num, dic_erlangen."""
    with TestClient(create_app(demo_config)) as client:  # no key header: the body carries it
        [request] = _seed_bodies("001", "Parameters")
        response = client.post(f"{DISPATCHER}/$updateBf", content=request,
                               headers={"Content-Type": "application/fhir+xml", "Accept": XML})
        assert response.status_code == 200, response.text
        [expected] = _seed_bodies("001", "OperationOutcome")
        match(parse_xml(response.content), parse_xml(expected))


def test_seed_000_request_tasks_answers_in_xml(gateway) -> None:
    """Seed 000 shows the request as XML: the demo's pending clearing gives eyematics a task."""
    body = to_xml(ex("Parameters-Parameters-RequestTasks-request-example-1"))
    response = gateway.post(f"{DISPATCHER}/$requestTasks", content=body,
                            headers={"Content-Type": XML, "Accept": XML})
    assert response.status_code == 200
    [task] = parse_xml(response.content)["parameter"]
    assert task["name"] == "send_idat"
    assert {"name": "taskId", "valueId": "064ddebf-b20e-468a-97fd-88097bcdbc11"} in task["part"]


@pytest.mark.parametrize("operation", ["requestPsnFromBfWorkflow", "requestTasks", "providePatientData",
                                       "updateBf", "requestPsnWorkflow", "pseudonymizePatient"])
def test_operation_definitions_match_the_guide(gateway, operation) -> None:
    guide = next(orjson.loads(p.read_bytes()) for p in (SPEC / "ig" / "dispatcher").glob("OperationDefinition-*.json")
                 if orjson.loads(p.read_bytes())["code"] == operation)
    ours = gateway.get(f"{DISPATCHER}/OperationDefinition/{guide['id']}").json()
    assert ours["code"] == operation and ours["url"] == guide["url"]

    def signature(parameters: list[dict], use: str | None = None) -> list:
        # A part has its parameter's direction (the guide marks the parts of the input
        # `bloomfilter` "out" and leaves their types out, so input parts are compared untyped).
        return sorted((p["name"], use or p["use"], p["min"], p["max"],
                       None if use == "in" else p.get("type"), signature(p.get("part", []), use or p["use"]))
                      for p in parameters)

    assert signature(ours["parameter"]) == signature(guide["parameter"])
