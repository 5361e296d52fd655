"""NUM CODEX data transfer (num-codex/codex-processes-ap1, Java, HAPI FHIR client),
FttpClientImpl.java and ResolvePsn.java.

Every call is a HAPI generic-client operation encoded as XML with `Accept: application/fhir+xml`
and an `apikey` parameter in the body, all parameters valueString except the Bloom filter
(valueBase64Binary). The answer is parsed as XML; the client reads the parts of the *first*
parameter and accepts a `pseudonym` only as an Identifier with the system
`https://ths-greifswald.de/dispatcher` — any other system reads as "no pseudonym".

- At a site (data send): `$requestPsnFromBfWorkflow` (study, bloomfilter, target = the site's
  domain); the site's pseudonym is remembered as "<target>/<pseudonym>". A patient without a
  Bloom filter is sent with its local identifier (an RFC 4122 UUID) instead:
  `$requestPsnWorkflow` with `source=local`, target the site's domain ("data transfer without
  record linkage"); the answer is again the site's pseudonym.
- At the hub (data translate): `$requestPsnWorkflow` (study, original = the site pseudonym,
  source = the site, target = the hub's domain, `codex` by default).
- Connection test: `capabilities()`, reading `software.name` and `software.version`.

A site sets `…codex.fttp.server.base.url` to `[base]/ttp-fhir/fhir/dispatcher`, `…fttp.study`
(default `num`), `…fttp.target` (its site domain, e.g. `dic_heidelberg`; `codex` at the hub)
and `…fttp.api.key`; the real client adds HTTP Basic and a client certificate. Storage matters
here (persons, their keys and pseudonyms), so these run on every backend.
"""

from __future__ import annotations

import random
import uuid

from lxml import etree

from client_wire import (DISPATCHER, DISPATCHER_SYSTEM, wire_client, xml_body, xml_identifier, xml_name,
                         xml_parameters, xml_parts)
from conftest import DEMO_KEY
from dispatch import b64, balanced_filter

HAPI_XML = "application/fhir+xml; charset=UTF-8"
HAPI_ACCEPT_XML = "application/fhir+xml"
# HAPI's default Accept when no encoding is forced (capabilities()).
HAPI_ACCEPT_ANY = ("application/fhir+xml;q=1.0, application/fhir+json;q=1.0, "
                   "application/xml+fhir;q=0.9, application/json+fhir;q=0.9")
STUDY, SITE, HUB = "num", "dic_heidelberg", "codex"


def codex_client(config):
    # The API key travels in the body, as `apikey` (the real client also sends Basic auth).
    return wire_client(config, accept=HAPI_ACCEPT_XML, api_key_header=False)


def operation(client, name: str, *parameters: tuple[str, str, str]):
    return client.post(f"{DISPATCHER}/${name}", content=xml_body(*parameters, ("apikey", "String", DEMO_KEY)),
                       headers={"Content-Type": HAPI_XML})


def get_pseudonym(response) -> str | None:
    """FttpClientImpl.getPseudonym: the first parameter's `pseudonym` part, an Identifier of the
    dispatcher's system."""
    assert response.status_code == 200, response.text
    parameters = xml_parameters(response)
    if not parameters:
        return None
    for part in xml_parts(parameters[0]):
        if xml_name(part) == "pseudonym":
            identifier = xml_identifier(part)
            if identifier is None or identifier[0] != DISPATCHER_SYSTEM:
                return None
            return identifier[1]
    return None


def dic_pseudonym(client, bloom_filter: str) -> str | None:
    found = get_pseudonym(operation(client, "requestPsnFromBfWorkflow", ("study", "String", STUDY),
                                    ("bloomfilter", "Base64Binary", bloom_filter), ("target", "String", SITE)))
    return None if found is None else f"{SITE}/{found}"


def dic_pseudonym_for_local(client, local_pseudonym: str) -> str | None:
    found = get_pseudonym(operation(client, "requestPsnWorkflow", ("study", "String", STUDY),
                                    ("original", "String", local_pseudonym), ("source", "String", "local"),
                                    ("target", "String", SITE)))
    return None if found is None else f"{SITE}/{found}"


def crr_pseudonym(client, dic_source_and_pseudonym: str) -> str | None:
    source, original = dic_source_and_pseudonym.split("/")  # (?<source>[^/]+)/(?<original>[^/]+)
    return get_pseudonym(operation(client, "requestPsnWorkflow", ("study", "String", STUDY),
                                   ("original", "String", original), ("source", "String", source),
                                   ("target", "String", HUB)))


def test_a_site_links_by_bloom_filter_and_the_hub_translates(demo_config) -> None:
    bloom_filter = b64(balanced_filter(random.Random(7))[0])
    with codex_client(demo_config) as client:
        dic = dic_pseudonym(client, bloom_filter)
        assert dic is not None and dic.startswith(f"{SITE}/dic_")
        assert dic_pseudonym(client, bloom_filter) == dic  # the same person again
        crr = crr_pseudonym(client, dic)
        assert crr is not None and crr.startswith("codex_")
        assert crr_pseudonym(client, dic) == crr


def test_a_site_without_bloom_filter_sends_its_local_identifier(demo_config) -> None:
    local, other = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
    with codex_client(demo_config) as client:
        dic = dic_pseudonym_for_local(client, local)
        assert dic is not None and dic.startswith(f"{SITE}/dic_")
        assert dic_pseudonym_for_local(client, local) == dic
        assert dic_pseudonym_for_local(client, other) not in (None, dic)
        crr = crr_pseudonym(client, dic)
        assert crr is not None and crr.startswith("codex_")


def test_local_identifiers_belong_to_one_site(demo_config) -> None:
    local = str(uuid.UUID(int=3))
    with codex_client(demo_config) as client:
        at_heidelberg = get_pseudonym(operation(
            client, "requestPsnWorkflow", ("study", "String", STUDY), ("original", "String", local),
            ("source", "String", "local"), ("target", "String", SITE)))
        at_erlangen = get_pseudonym(operation(
            client, "requestPsnWorkflow", ("study", "String", STUDY), ("original", "String", local),
            ("source", "String", "local"), ("target", "String", "dic_erlangen")))
        assert None not in (at_heidelberg, at_erlangen)
        # The same UUID at two sites is two patients: each site's own pseudonym, no linkage.
        back = crr_pseudonym(client, f"dic_erlangen/{at_erlangen}")
        assert back != crr_pseudonym(client, f"{SITE}/{at_heidelberg}")
        # Local identifiers lead only to a site's own domain, never to a project.
        to_hub = operation(client, "requestPsnWorkflow", ("study", "String", STUDY),
                           ("original", "String", local), ("source", "String", "local"),
                           ("target", "String", HUB))
        assert to_hub.status_code == 404


def test_an_unknown_site_pseudonym_gives_no_pseudonym(demo_config) -> None:
    with codex_client(demo_config) as client:
        assert crr_pseudonym(client, f"{SITE}/dic_ZZZZZ") is None


def test_the_connection_test_reads_the_software(demo_config) -> None:
    with wire_client(demo_config, accept=HAPI_ACCEPT_ANY) as client:
        response = client.get(f"{DISPATCHER}/metadata")
    assert response.status_code == 200
    root = etree.fromstring(response.content)  # the first of HAPI's equally preferred types: XML
    software = root.find("{http://hl7.org/fhir}software")
    assert software.find("{http://hl7.org/fhir}name").get("value")
    assert software.find("{http://hl7.org/fhir}version").get("value")
