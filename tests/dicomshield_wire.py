"""How DicomShield (imi-ms/DicomShield, `proxy/pseudonym_clients.py`) reads an answer, for both
of its clients (gPAS and the MII draft interface): `PseudonymMapper._extract_mappings`."""

from __future__ import annotations

from xml.etree import ElementTree

NS = {"f": "http://hl7.org/fhir"}


def extracted_mappings(response) -> list[tuple[str, str]]:
    """(original, pseudonym) of every parameter that has both parts, read as valueIdentifier/value."""
    response.raise_for_status()
    tree = ElementTree.fromstring(response.content)
    result = []
    for param in tree.findall("f:parameter", NS):
        orig = pseudonym = None
        for part in param.findall("f:part", NS):
            name = part.find("f:name", NS).get("value")
            if name == "original":
                orig = part.find("f:valueIdentifier/f:value", NS).get("value")
            elif name == "pseudonym":
                pseudonym = part.find("f:valueIdentifier/f:value", NS).get("value")
        if orig and pseudonym:
            result.append((orig, pseudonym))
    return result
