"""EyeMatics fTTP plugin (prus-springsteen/eyematics-dsf-process-plugin, Java, java.net.http),
FTTPClientImpl.java.

- `POST <server base>/ttp-fhir/fhir/dispatcher/$requestPsnFromBfWorkflow` with
  `Content-Type: application/fhir+xml` and **no Accept header**; the body, encoded by HAPI's
  XmlParser, holds `study`, `target`, `apikey` (valueString) and one `bloomfilter`
  (valueBase64Binary) per patient.
- Anything but status 200 is an error. The answer is parsed with HAPI's *XML* parser. An answer
  of exactly one parameter with exactly two parts named `all` and `error-code` is an error.
- For one filter it reads the first parameter's `pseudonym` part, an Identifier of the system
  `https://ths-greifswald.de/gpas`; for several, each parameter's `bloomfilter` part
  (Base64Binary) and `pseudonym` part of that system, as a map filter -> pseudonym.

A site configures `org.eyematics.provide.fttp.server.base.url` (the server, without path),
`…fttp.study` (default `eyematics`), `…fttp.target` (default `eyematics`) and `…fttp.api.key`;
the real client also sends HTTP Basic and a client certificate.
"""

from __future__ import annotations

import random

from client_wire import (DISPATCHER, GPAS_SYSTEM, sqlite_storage_url, wire_client, xml_body,  # noqa: F401
                         xml_identifier, xml_name, xml_parameters, xml_parts)
from conftest import DEMO_KEY
from dispatch import b64, balanced_filter, similar_filter

STUDY = TARGET = "eyematics"


def request(client, *filters: str):
    body = xml_body(("study", "String", STUDY), ("target", "String", TARGET), ("apikey", "String", DEMO_KEY),
                    *[("bloomfilter", "Base64Binary", f) for f in filters])
    response = client.post(f"{DISPATCHER}/$requestPsnFromBfWorkflow", content=body,
                           headers={"Content-Type": "application/fhir+xml"})
    assert response.status_code == 200, response.text
    parameters = xml_parameters(response)  # HAPI's XML parser: an XML answer or an exception
    if len(parameters) == 1 and [xml_name(p) for p in xml_parts(parameters[0])] == ["all", "error-code"]:
        raise AssertionError("the client reads this answer as an fTTP error")
    return parameters


def global_pseudonym(client, bloom_filter: str) -> str | None:
    for part in xml_parts(request(client, bloom_filter)[0]):
        identifier = xml_identifier(part)
        if xml_name(part) == "pseudonym" and identifier is not None and identifier[0] == GPAS_SYSTEM:
            return identifier[1]
    return None


def global_pseudonyms(client, *filters: str) -> dict[str, str]:
    found = {}
    for parameter in request(client, *filters):
        bf = psn = None
        for part in xml_parts(parameter):
            if xml_name(part) == "bloomfilter" and part.find("{http://hl7.org/fhir}valueBase64Binary") is not None:
                bf = part.find("{http://hl7.org/fhir}valueBase64Binary").get("value")
            identifier = xml_identifier(part)
            if xml_name(part) == "pseudonym" and identifier is not None and identifier[0] == GPAS_SYSTEM:
                psn = identifier[1]
        if bf is not None and psn is not None:
            found[bf] = psn
    return found


def test_one_patient(demo_config) -> None:
    bloom_filter = b64(balanced_filter(random.Random(11))[0])
    with wire_client(demo_config, api_key_header=False) as client:  # no Accept, key in the body
        pseudonym = global_pseudonym(client, bloom_filter)
        assert pseudonym is not None and pseudonym.startswith("eyematics_")
        assert global_pseudonym(client, bloom_filter) == pseudonym


def test_several_patients_and_the_same_person_again(demo_config) -> None:
    rng = random.Random(12)
    first, ones = balanced_filter(rng)
    second = balanced_filter(rng)[0]
    again = similar_filter(ones, 0.99, rng)  # the first patient, a typo apart
    filters = [b64(first), b64(second)]
    with wire_client(demo_config, api_key_header=False) as client:
        found = global_pseudonyms(client, *filters)
        assert set(found) == set(filters) and len(set(found.values())) == 2
        assert global_pseudonym(client, b64(again)) == found[b64(first)]
