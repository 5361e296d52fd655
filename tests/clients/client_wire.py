"""What the client-compatibility suite shares: a gateway on the demo configuration of `make run`,
HTTP clients that send exactly the headers a real client sends (and none it does not), and
readers that look at an answer the way the clients' FHIR libraries do.

Each `test_client_*.py` module re-enacts one public client: its requests (method, path, query,
headers, body shape and value types) and how its code reads the answer (parameter and part
names, value[x] types, Identifier systems, what it treats as an error). Authentication here is
the demo API key; each module says in a comment how the real client authenticates.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from lxml import etree

from conftest import client_for

GPAS = "/ttp-fhir/fhir/gpas"
DISPATCHER = "/ttp-fhir/fhir/dispatcher"
FHIR_NS = "http://hl7.org/fhir"
GPAS_SYSTEM = "https://ths-greifswald.de/gpas"
DISPATCHER_SYSTEM = "https://ths-greifswald.de/dispatcher"


@pytest.fixture(name="storage_url")
def sqlite_storage_url(tmp_path) -> str:
    """Imported by the modules of clients whose answers do not depend on the store: the demo
    gateway on SQLite only, which keeps the suite fast (every backend runs the rest of it)."""
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def wire_client(config, *, accept: str | None = None, api_key_header: bool = True, **headers: str):
    """A test client that sends `Accept` only if given (httpx would add `*/*`) and the demo API
    key in the `apikey` header unless the client under test carries it in the body."""
    client = client_for(config, **headers)
    del client.headers["accept"]
    if accept is not None:
        client.headers["accept"] = accept
    if not api_key_header:
        del client.headers["apikey"]
    return client


def media_type(response) -> str:
    return response.headers["content-type"].split(";")[0].strip()


# --- reading answers as the clients' libraries do ------------------------------------------------

def json_parameters(response) -> list[dict]:
    """Parameters.parameter of a JSON answer, as HAPI's or Firely's JSON parser reads it."""
    assert media_type(response) in ("application/fhir+json", "application/json"), media_type(response)
    resource = json.loads(response.content)
    assert resource["resourceType"] == "Parameters"
    return resource.get("parameter", [])


def value_of(part: dict) -> tuple[str, Any]:
    """(FHIR type, value) of a parameter or part's value[x], e.g. ("Identifier", {...})."""
    keys = [k for k in part if k.startswith("value")]
    assert len(keys) <= 1, part
    return (keys[0][5:], part[keys[0]]) if keys else ("", None)


def xml_parameters(response) -> list[etree._Element]:
    """The `parameter` elements of an XML answer, parsed as XML (as HAPI's XmlParser, Python's
    ElementTree and the like do)."""
    assert media_type(response) in ("application/fhir+xml", "application/xml"), media_type(response)
    root = etree.fromstring(response.content)
    assert root.tag == f"{{{FHIR_NS}}}Parameters", root.tag
    return root.findall(f"{{{FHIR_NS}}}parameter")


def xml_parts(parameter: etree._Element) -> list[etree._Element]:
    return parameter.findall(f"{{{FHIR_NS}}}part")


def xml_name(element: etree._Element) -> str:
    return element.find(f"{{{FHIR_NS}}}name").get("value")


def xml_identifier(element: etree._Element) -> tuple[str | None, str | None] | None:
    """(system, value) of a part's valueIdentifier, or None if its value is of another type."""
    identifier = element.find(f"{{{FHIR_NS}}}valueIdentifier")
    if identifier is None:
        return None
    system, value = identifier.find(f"{{{FHIR_NS}}}system"), identifier.find(f"{{{FHIR_NS}}}value")
    return (None if system is None else system.get("value"), None if value is None else value.get("value"))


def xml_body(*parameters: tuple[str, str, str]) -> bytes:
    """A Parameters body as HAPI's XmlParser encodes it: (name, value type, value) each."""
    encoded = "".join(f'<parameter><name value="{name}"/><value{kind} value="{value}"/></parameter>'
                      for name, kind, value in parameters)
    return f'<Parameters xmlns="{FHIR_NS}">{encoded}</Parameters>'.encode()
