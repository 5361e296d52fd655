"""DicomShield (imi-ms/DicomShield, Python, requests + ElementTree), proxy/pseudonym_clients.py,
class gPASClient.

- `POST {ENDPOINT_URL}/$pseudonymizeAllowCreate` and `…/$dePseudonymize` with
  `Content-Type: application/fhir+xml` and the `Accept: */*` of `requests`; the body is XML
  written by hand (indented, with `<id value="Pseudonymization-DicomShield"/>`), one
  `original` or `pseudonym` valueString per DICOM identifier.
- `raise_for_status()`, then `ElementTree.fromstring(response.content)`: the answer must be XML.
  Per parameter it reads the parts named `original` and `pseudonym`, each
  `valueIdentifier/value`, into {original: pseudonym} (or the reverse).
- The connection test is `GET {ENDPOINT_URL}/metadata`, status only.

A site sets `PSEUDONYMIZATION_SERVER.ENDPOINT_URL` to `[base]/ttp-fhir/fhir/gpas` and `DOMAIN`
(`DicomShield` in its README); the real client authenticates with HTTP Basic (USER, PASSWORD).
"""

from __future__ import annotations

from client_wire import GPAS, sqlite_storage_url, wire_client  # noqa: F401
from dicomshield_wire import extracted_mappings

DOMAIN = "DicomShield"


def body(kind: str, values: list[str]) -> bytes:
    parameters = "".join(f"""
                <parameter>
                    <name value="{kind}" />
                    <valueString value="{value}" />
                </parameter>
                """ for value in values)
    return f"""
            <Parameters xmlns="http://hl7.org/fhir">
                <id value="Pseudonymization-DicomShield" />
                <parameter>
                    <name value="target" />
                    <valueString value="{DOMAIN}" />
                </parameter>
                {parameters}
            </Parameters>
        """.encode()


def test_pseudonymize_and_back(demo_config) -> None:
    ids = ["PAT-0001", "1.2.840.113619.2.55.3.604688119.969.1268071029.320"]
    with wire_client(demo_config, accept="*/*") as client:
        created = client.post(f"{GPAS}/$pseudonymizeAllowCreate", content=body("original", ids),
                              headers={"Content-Type": "application/fhir+xml"})
        pseudonyms = dict(extracted_mappings(created))
        assert set(pseudonyms) == set(ids) and len(set(pseudonyms.values())) == 2
        back = client.post(f"{GPAS}/$dePseudonymize", content=body("pseudonym", list(pseudonyms.values())),
                           headers={"Content-Type": "application/fhir+xml"})
        assert {p: o for o, p in extracted_mappings(back)} == {p: o for o, p in pseudonyms.items()}


def test_connection_test(demo_config) -> None:
    with wire_client(demo_config, accept="*/*") as client:
        client.get(f"{GPAS}/metadata").raise_for_status()
