"""Every gICS example of the implementation guide, replayed over HTTP against the demo consent
data and compared in shape with the guide's answer.

Each case names the guide's request, the demo consents the example presupposes (by signer id;
the guide's examples come from different states of one database, so each case starts from the
demo catalogue with only its own consents), the answer it must match, and the paths where our
answer knowingly differs from the example, with the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest

from gics_helpers import BASE, SQLITE_ONLY, assert_shape, demo_settings, example, gateway, post, shape
from ttp_gateway.core.xmlcodec import parse_xml, to_xml

# The guide's signatures carry images; the demo's consents were signed on paper only.
SIGNATURE_IMAGES = ("Provenance.signature.data", "Provenance.signature._data")


@dataclass
class Case:
    operation: str
    request: str
    response: str
    persons: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    values: bool = False  # compare the Parameters' values too
    extra_consents: tuple[dict, ...] = ()
    adapt: object = None
    wrap: bool = False
    id: str = field(default="")


# dic_1H51T's consent of 2022-01-13 in the MII form 1.7.2: the state the guide's
# $currentPolicyStatesForPerson example shows (in the demo, dic_810MT signed it).
FORM_172 = next(c for c in demo_settings()["consents"] if c["signer_ids"] == ["Pseudonym|dic_810MT"])


def _opt_out_domain(request: dict) -> dict:
    """The guide's opt-out request names domain MII and the MII form, while its answer comes
    from an opt-out domain; the demo has that domain, and the request is sent there."""
    request = copy.deepcopy(request)
    for parameter in request["parameter"]:
        if parameter["name"] == "domain":
            parameter["valueString"] = "opt-out"
        if parameter["name"] == "questionnaire":
            parameter["valueCanonical"] = "https://ths-greifswald.de/fhir/gics/QuestionnaireComposed/opt-out/Opt-Out|1.0"
    return request


CASES = [
    Case("addConsent", "Parameters-Parameters-AddConsent-request-example-1", "Bundle-AddConsent-response-example-1"),
    Case("addConsentOptOut", "Parameters-Parameters-AddConsentOptOut-request-example-1",
         "Bundle-AddConsentOptOut-response-example-1", adapt=_opt_out_domain),
    # The guide's example shows the resources of one consent; the operation's description,
    # and fts-next, have one Bundle per consent.
    Case("allConsentsForDomain", "Parameters-AllConsentsForDomain-request-example-1",
         "Bundle-AllConsentsForDomain-response-example-1", persons=("dic_1H51T",), ignore=SIGNATURE_IMAGES,
         wrap=True),
    # The guide's example also holds the E-PIX Person of the patient; this service has no E-PIX.
    Case("allConsentsForPerson", "Parameters-AllConsentsForPerson-request-example-1",
         "Bundle-AllConsentsForPerson-response-example-1", persons=("dic_1H51T",),
         ignore=SIGNATURE_IMAGES + ("Person",)),
    Case("allConsentsForTemplate", "Parameters-AllConsentsForTemplate-request-example-1",
         "Bundle-AllConsentsForTemplate-response-example-1", persons=("dic_1H51T",), ignore=SIGNATURE_IMAGES),
    # No answer example: the current consent of dic_1H51T is the one all its consents show.
    Case("currentConsentForPersonAndTemplate", "Parameters-CurrentConsentForPersonAndTemplate-request-example-1",
         "Bundle-AllConsentsForPerson-response-example-1", persons=("dic_1H51T",),
         ignore=SIGNATURE_IMAGES + ("Person",)),
    Case("allPolicyStatesForPerson", "Parameters-AllPolicyStatesForPerson-request-example-1",
         "Bundle-AllPolicyStatesForPerson-response-example-1", persons=("dic_GCC83",)),
    Case("currentPolicyStatesForPerson", "Parameters-CurrentPolicyStatesForPerson-request-example-1",
         "Bundle-CurrentPolicyStatesForPerson-response-example-1",
         extra_consents=({**FORM_172, "signer_ids": ["Pseudonym|dic_1H51T"]},)),
    Case("isConsented", "Parameters-IsConsented-request-example-1", "Parameters-IsConsented-response-example-1",
         persons=("dic_1H51T",), values=True),
    Case("isConsented", "Parameters-IsConsented-request-example-2", "Parameters-IsConsented-response-example-1",
         persons=("dic_1H51T",), values=True, id="isConsented-mii-oid-code"),
    Case("getAllConsentedIdsFor", "Parameters-GetAllConsentedIdsFor-request-example-1",
         "Parameters-GetAllConsentedIdsFor-response-example-1", persons=("dic_1H51T",), values=True),
]


def _id(case: Case) -> str:
    return case.id or case.operation


def _wrapped(bundle: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": {**bundle, "entry": bundle["entry"]}}]}


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_example_in_json(case: Case, storage_url) -> None:
    settings = demo_settings(persons=[f"Pseudonym|{p}" for p in case.persons], extra_consents=case.extra_consents)
    with gateway(storage_url, settings) as client:
        request = example(case.request)
        if case.adapt:
            request = case.adapt(request)  # type: ignore[operator]
        answer = post(client, case.operation, request)
    assert answer.status_code == 200, answer.text
    expected = example(case.response)
    if case.wrap:
        expected = _wrapped(expected)
    if case.values:
        got, want = answer.json(), expected
        assert [(p["name"], p.get("valueBoolean"), p.get("valueIdentifier")) for p in got["parameter"]] == \
               [(p["name"], p.get("valueBoolean"), p.get("valueIdentifier")) for p in want["parameter"]]
    else:
        assert_shape(answer.json(), expected, case.ignore)


@SQLITE_ONLY
@pytest.mark.parametrize("case", [c for c in CASES if c.operation in ("isConsented", "currentPolicyStatesForPerson",
                                                                      "addConsent")], ids=_id)
def test_example_in_xml(case: Case, storage_url) -> None:
    """XML in, XML out: the same answer as in JSON."""
    settings = demo_settings(persons=[f"Pseudonym|{p}" for p in case.persons], extra_consents=case.extra_consents)
    with gateway(storage_url, settings) as client:
        body = to_xml(example(case.request))
        answer = client.post(f"{BASE}/${case.operation}", content=body,
                             headers={"Content-Type": "application/fhir+xml", "Accept": "application/fhir+xml"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+xml")
    resource = parse_xml(answer.content)
    if case.values:
        assert resource["parameter"][0]["valueBoolean"] is True
    else:
        assert shape(resource, case.ignore) == shape(example(case.response), case.ignore)


@SQLITE_ONLY
def test_operation_definitions_are_the_guides(storage_url) -> None:
    """Names, uses, cardinalities and types of every parameter, as the guide declares them."""
    names = ["AddConsent", "AddConsentOptOut", "AllConsentsForDomain", "AllConsentsForPerson",
             "AllConsentsForTemplate", "AllPolicyStatesForPerson", "CurrentConsentForPersonAndTemplate",
             "CurrentPolicyStatesForPerson", "GetAllConsentedIdsFor", "IsConsented"]
    with gateway(storage_url) as client:
        operations = {o["name"] for o in client.get(f"{BASE}/metadata").json()["rest"][0]["operation"]}
        assert operations == {n[0].lower() + n[1:] for n in names}
        for name in names:
            ours = client.get(f"{BASE}/OperationDefinition/{name}").json()
            guide = example(f"OperationDefinition-{name}")

            def signature(definition: dict) -> list:
                return sorted((p["name"], p["use"], p["min"], p["max"], p.get("type"))
                              for p in definition["parameter"])

            assert signature(ours) == signature(guide), name
            assert (ours["code"], ours["system"], ours["type"], ours["instance"]) == \
                   (guide["code"], guide["system"], guide["type"], guide["instance"])
