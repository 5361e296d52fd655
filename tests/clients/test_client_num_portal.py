"""NUM portal (NUM-Forschungsdatenplattform/num-portal, Java, Apache HttpClient + HAPI parser),
Pseudonymity.java.

- `POST <fttp.url>` = `[base]/ttp-fhir/fhir/dispatcher/$requestPsnWorkflow`, with
  `Content-Type: application/fhir+xml;charset=utf-8` and **no Accept header**; the body, encoded
  by HAPI's XmlParser, holds `study`, `source`, `target` = `extern_<project id>`, `apikey`,
  `event` and one `original` per CRR pseudonym (`codex_` and six characters), all valueString.
- Anything but 200 fails; the answer is parsed with HAPI's *XML* parser. Any `error` parameter
  fails the whole request. Otherwise the parameters are grouped by their `original` part, cast
  to Identifier, and each original's `pseudonym` part (Identifier) must have a value.

The portal's defaults (`requestpsnworkflow.params`): study `num`, source `codex`, target prefix
`extern_`, event `num.get_extern_psn`; the real portal also sends HTTP Basic and a client
certificate. Storage matters (a project domain is created on the first request of a project),
so these run on every backend.
"""

from __future__ import annotations

import re

import pytest

from client_wire import (DISPATCHER, wire_client, xml_body, xml_identifier, xml_name, xml_parameters,
                         xml_parts)
from conftest import DEMO_KEY

KNOWN_CRR_PSEUDONYM = "codex_WX6QAM"  # a NUM person of the demo configuration
EXTERNAL_REF_ID = re.compile(r"codex_[A-Z0-9-]{6}")


def third_level_pseudonyms(client, project_id: int, *second_level: str):
    body = xml_body(("study", "String", "num"), ("source", "String", "codex"),
                    ("target", "String", f"extern_{project_id}"), ("apikey", "String", DEMO_KEY),
                    ("event", "String", "num.get_extern_psn"),
                    *[("original", "String", o) for o in second_level if EXTERNAL_REF_ID.fullmatch(o)])
    response = client.post(f"{DISPATCHER}/$requestPsnWorkflow", content=body,
                           headers={"Content-Type": "application/fhir+xml;charset=utf-8"})
    assert response.status_code == 200, response.text
    parameters = xml_parameters(response)
    if any(xml_name(p) == "error" for p in parameters):
        return None  # ResourceNotFound: "Pseudonyms could not be retrieved"
    grouped = {}
    for parameter in parameters:
        values = {}
        for part in xml_parts(parameter):
            identifier = xml_identifier(part)
            assert identifier is not None, "the portal casts every part it reads to Identifier"
            values[xml_name(part)] = identifier[1]
        grouped[values.get("original", "")] = values.get("pseudonym", "")
    return [grouped[o] for o in second_level]


def test_a_project_gets_its_own_pseudonyms(demo_config) -> None:
    with wire_client(demo_config, api_key_header=False) as client:  # no Accept, key in the body
        first = third_level_pseudonyms(client, 7, KNOWN_CRR_PSEUDONYM)
        assert first is not None and re.fullmatch(r"extern_7_[A-Z0-9]{6}", first[0])
        assert third_level_pseudonyms(client, 7, KNOWN_CRR_PSEUDONYM) == first
        other_project = third_level_pseudonyms(client, 8, KNOWN_CRR_PSEUDONYM)
        assert other_project is not None and other_project[0].startswith("extern_8_")


def test_an_unknown_crr_pseudonym_fails_the_request_as_the_portal_expects(demo_config) -> None:
    with wire_client(demo_config, api_key_header=False) as client:
        assert third_level_pseudonyms(client, 7, KNOWN_CRR_PSEUDONYM, "codex_ZZZZZZ") is None


def test_the_event_serves_only_project_domains_from_codex(demo_config) -> None:
    with wire_client(demo_config, api_key_header=False) as client:
        body = xml_body(("study", "String", "num"), ("source", "String", "dic_erlangen"),
                        ("target", "String", "extern_7"), ("apikey", "String", DEMO_KEY),
                        ("event", "String", "num.get_extern_psn"), ("original", "String", "dic_2Q42E"))
        response = client.post(f"{DISPATCHER}/$requestPsnWorkflow", content=body,
                               headers={"Content-Type": "application/fhir+xml;charset=utf-8"})
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("application/fhir+xml")


def test_only_a_project_name_may_be_a_pattern() -> None:
    from ttp_gateway.plugins.dispatcher.studies import Study

    study = Study.from_settings("num", {"sites": ["dic_a"], "projects": ["extern_*"],
                                        "events": [{"name": "e", "target": "extern_*"}]})
    assert study.has_domain("extern_12") and study.by_pattern("extern_12")
    assert not study.has_domain("extern_") and not study.has_domain("other_1")
    assert study.events["e"].leads_to("extern_12") and not study.events["e"].leads_to("dic_a")
    assert study.domains == ("dic_a",)  # patterns are not domains to create at start-up
    for settings in ({"sites": ["dic_*"]}, {"sites": ["a"], "projects": ["x*y_*"]}, {"projects": ["*"]}):
        with pytest.raises(ValueError, match="only a project name"):
            Study.from_settings("num", settings)
