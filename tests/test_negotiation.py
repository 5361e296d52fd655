"""Content negotiation, as HAPI FHIR servers (the reference gateway among them) do it:
`_format` first, then the FHIR media types in Accept (highest q, the first of equals), then —
where the client states no usable preference (no Accept, wildcards, only non-FHIR types) — the
format of the request body, then JSON. One row per (Content-Type, Accept, `_format`)."""

from __future__ import annotations

from urllib.parse import quote

import orjson
import pytest

from conftest import GPAS, client_for
from ttp_gateway.core.xmlcodec import parse_xml, to_xml

JSON, XML = "application/fhir+json", "application/fhir+xml"
LOOKUP = {"resourceType": "Parameters", "parameter": [
    {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": "1001000000022"}]}


@pytest.fixture
def storage_url(tmp_path) -> str:  # negotiation does not depend on the store
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def plain_client(demo_config):
    """A client that sends only the headers a row names (no default Accept)."""
    with client_for(demo_config) as client:
        del client.headers["accept"]
        yield client


POST_ROWS = [
    # Content-Type, Accept, _format -> the answer's media type
    (JSON, None, None, JSON),
    (XML, None, None, XML),
    ("application/xml", None, None, XML),
    ("text/xml", None, None, XML),
    ("application/json", None, None, JSON),
    (f"{XML};charset=UTF-8", None, None, XML),
    (None, None, None, XML),  # body sniffed
    (XML, "*/*", None, XML),
    (XML, "application/*", None, XML),
    (XML, "application/fhir+*", None, XML),
    (XML, "text/*", None, XML),
    (JSON, "*/*", None, JSON),
    (XML, "text/html", None, XML),
    (XML, "image/*", None, XML),
    (JSON, "text/html", None, JSON),
    (XML, JSON, None, JSON),
    (JSON, XML, None, XML),
    (JSON, "application/xml", None, "application/xml"),
    (XML, "application/json", None, "application/json"),
    (JSON, "application/xml+fhir", None, "application/xml+fhir"),
    (JSON, f"{XML}; fhirVersion=4.0", None, XML),
    (XML, f"text/html, {JSON};q=0.9", None, JSON),
    (JSON, f"{JSON};q=0.5, {XML}", None, XML),
    (JSON, f"{XML};q=0.8, {JSON};q=0.8", None, XML),
    (XML, f"{JSON};Q=0.2, */*", None, JSON),
    (XML, f"{XML};q=0, */*", None, JSON),
    (JSON, f"{JSON};q=0, application/*", None, XML),
    (XML, "*/*;q=0.1, text/html", None, XML),
    (XML, None, "json", JSON),
    (JSON, XML, "json", JSON),
    (JSON, JSON, "xml", XML),
    (JSON, None, XML, XML),
    (JSON, None, "application/xml", "application/xml"),
    (XML, None, "application/json", "application/json"),
    (XML, None, f"{JSON};charset=utf-8", JSON),
    (XML, None, "html", XML),
    (JSON, XML, "text/html", XML),
]


@pytest.mark.parametrize("content_type, accept, format_, expected", POST_ROWS)
def test_operation_answers(plain_client, content_type, accept, format_, expected) -> None:
    xml_body = content_type is None or "xml" in content_type
    headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v is not None}
    query = f"?_format={quote(format_, safe='')}" if format_ else ""
    response = plain_client.post(f"{GPAS}/$pseudonymize{query}", headers=headers,
                                 content=to_xml(LOOKUP) if xml_body else orjson.dumps(LOOKUP))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == expected
    answer = parse_xml(response.content) if "xml" in expected else orjson.loads(response.content)
    assert answer["parameter"][0]["part"][2]["valueIdentifier"]["value"] == "mrcm_T0TYNV21"


GET_ROWS = [
    # path, Content-Type, Accept, _format -> the answer's media type
    ("metadata", None, None, None, JSON),
    ("metadata", XML, None, None, XML),
    ("metadata", None, "*/*", None, JSON),
    ("metadata", None, XML, None, XML),
    ("metadata", None, None, "xml", XML),
    ("$dePseudonymize?target=MIRACUM&pseudonym=mrcm_T0TYNV21", None, None, None, JSON),
    ("$dePseudonymize?target=MIRACUM&pseudonym=mrcm_T0TYNV21", None, XML, None, XML),
    ("$dePseudonymize?target=MIRACUM&pseudonym=mrcm_T0TYNV21", XML, None, None, XML),
    ("$dePseudonymize?target=MIRACUM&pseudonym=mrcm_T0TYNV21", None, JSON, "xml", XML),
]


@pytest.mark.parametrize("path, content_type, accept, format_, expected", GET_ROWS)
def test_reads_without_a_body(plain_client, path, content_type, accept, format_, expected) -> None:
    headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v is not None}
    separator = "&" if "?" in path else "?"
    query = f"{separator}_format={format_}" if format_ else ""
    response = plain_client.get(f"{GPAS}/{path}{query}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == expected
    answer = parse_xml(response.content) if "xml" in expected else orjson.loads(response.content)
    assert answer["resourceType"] in ("CapabilityStatement", "Parameters")


def test_errors_before_the_body_is_read_use_the_declared_format(plain_client) -> None:
    response = plain_client.post(f"{GPAS}/$noSuchOperation", content=to_xml(LOOKUP),
                                 headers={"Content-Type": XML})
    assert response.status_code == 404
    assert parse_xml(response.content)["resourceType"] == "OperationOutcome"
