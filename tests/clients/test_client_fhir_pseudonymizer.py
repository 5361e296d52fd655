"""fhir-pseudonymizer (miracum/fhir-pseudonymizer, C# with the Firely SDK), GPasFhirClient.cs.

The client picks one of three code paths by the gPAS version it is configured for
(`gPAS__Version`, default "1.10.1"), and each reads a different answer shape:

- before 1.10.2 (the default): `GET $pseudonymize-allow-create?domain=…&original=…` and
  `GET $de-pseudonymize?domain=…&pseudonym=…` with a bare HttpClient (no Accept header),
  parsed as FHIR JSON; the value is `GetSingleValue<FhirString>(<the value sent>)`; an original
  that comes back without it is returned unchanged (de-pseudonymisation only);
- 1.10.2: Firely's FhirClient posts Parameters (target, original | pseudonym as valueString,
  JSON, `Accept: application/fhir+json`) to `$pseudonymize-allow-create` / `$de-pseudonymize`;
  it reads the first parameter's part `pseudonym` and the part `original` of the first
  `pseudonym-result-set` with `Value.ToString()` — which for an Identifier is the literal text
  "Hl7.Fhir.Model.Identifier", so this shape must carry primitives;
- later versions: `$pseudonymizeAllowCreate` / `$dePseudonymize`, parts read as Identifier.

A site points `gPAS__Url` at `[base]/ttp-fhir/fhir/gpas/` and sets `gPAS__Version`; the real
client authenticates with HTTP Basic or OAuth2 client credentials (here: the demo API key).
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from client_wire import GPAS, GPAS_SYSTEM, json_parameters, sqlite_storage_url, value_of, wire_client  # noqa: F401

DOMAIN = "PATIENT"  # the domain of the client's README rule example
FHIR_JSON = "application/fhir+json; charset=utf-8"
FIRELY_ACCEPT = "application/fhir+json"
# Firely's Base.ToString(): a primitive's value, any other type's class name.
FIRELY_PRIMITIVES = {"String", "Code", "Id", "Uri", "Url", "Canonical", "Oid", "Uuid", "Markdown",
                     "Base64Binary", "Instant", "Date", "DateTime", "Time", "Integer", "PositiveInt",
                     "UnsignedInt", "Decimal", "Boolean"}


def firely_to_string(part: dict) -> str:
    kind, value = value_of(part)
    return str(value) if kind in FIRELY_PRIMITIVES else f"Hl7.Fhir.Model.{kind}"


def get_single_string(parameters: list[dict], name: str) -> str | None:
    """`Parameters.GetSingleValue<FhirString>(name)`: the one parameter of that name (more than
    one is an error) as a FhirString, else null."""
    named = [p for p in parameters if p.get("name") == name]
    assert len(named) <= 1, f"SingleOrDefault: {len(named)} parameters named {name!r}"
    if not named:
        return None
    kind, value = value_of(named[0])
    return value if kind == "String" else None


def parameters_body(**values: str) -> dict:
    return {"resourceType": "Parameters",
            "parameter": [{"name": name, "valueString": value} for name, value in values.items()]}


def current_pseudonym(config, original: str) -> str | None:
    """The pseudonym the service holds for an original, through today's `$pseudonymize`."""
    with wire_client(config, accept="application/fhir+json") as client:
        answer = client.post(f"{GPAS}/$pseudonymize", json=parameters_body(target=DOMAIN, original=original))
    first = json_parameters(answer)[0]
    return next((p["valueIdentifier"]["value"] for p in first["part"] if p["name"] == "pseudonym"), None)


# --- gPAS before 1.10.2: GET, a parameter named after the value ----------------------------------

def v1_get(client, operation: str, **query: str):
    # QueryHelpers.AddQueryString percent-encodes each name and value.
    encoded = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items())
    return client.get(f"{GPAS}/${operation}?{encoded}")


@pytest.mark.parametrize("original", ["1001000000022-new", "a b+c/ä?&=#"])
def test_before_1_10_2_pseudonymizes_with_get(demo_config, original: str) -> None:
    with wire_client(demo_config) as client:  # HttpClient.GetAsync: no Accept header
        response = v1_get(client, "pseudonymize-allow-create", domain=DOMAIN, original=original)
        response.raise_for_status()  # EnsureSuccessStatusCode
        pseudonym = get_single_string(json_parameters(response), original)
        assert pseudonym is not None and pseudonym != original
        assert pseudonym == current_pseudonym(demo_config, original)
        again = v1_get(client, "pseudonymize-allow-create", domain=DOMAIN, original=original)
        assert get_single_string(json_parameters(again), original) == pseudonym


def test_before_1_10_2_de_pseudonymizes_with_get(demo_config) -> None:
    with wire_client(demo_config) as client:
        created = v1_get(client, "pseudonymize-allow-create", domain=DOMAIN, original="4711")
        pseudonym = get_single_string(json_parameters(created), "4711")
        response = v1_get(client, "de-pseudonymize", domain=DOMAIN, pseudonym=pseudonym)
        response.raise_for_status()
        assert get_single_string(json_parameters(response), pseudonym) == "4711"
        # An unknown pseudonym has no parameter: the client keeps the value (its fallback).
        unknown = v1_get(client, "de-pseudonymize", domain=DOMAIN, pseudonym="NOT-A-PSEUDONYM")
        unknown.raise_for_status()
        assert get_single_string(json_parameters(unknown), "NOT-A-PSEUDONYM") is None


def test_before_1_10_2_unknown_domain_fails_the_request(demo_config) -> None:
    with wire_client(demo_config) as client:
        response = v1_get(client, "pseudonymize-allow-create", domain="NO-SUCH-DOMAIN", original="1")
        assert response.status_code == 404  # EnsureSuccessStatusCode throws: no silent value


# --- gPAS 1.10.2: POST to the old names, primitive parts -------------------------------------------

def test_1_10_2_pseudonymizes_into_primitive_parts(demo_config) -> None:
    with wire_client(demo_config, accept=FIRELY_ACCEPT) as client:
        response = client.post(f"{GPAS}/$pseudonymize-allow-create",
                               json=parameters_body(target=DOMAIN, original="patient-17"),
                               headers={"Content-Type": FHIR_JSON})
        assert response.status_code == 200
        first = json_parameters(response)[0]
        pseudonym_part = next(p for p in first["part"] if p["name"] == "pseudonym")
        # pseudonym.Value.ToString(): an Identifier would give the text "Hl7.Fhir.Model.Identifier"
        # for every patient; a primitive gives the pseudonym.
        pseudonym = firely_to_string(pseudonym_part)
        assert pseudonym == current_pseudonym(demo_config, "patient-17")
        assert not pseudonym.startswith("Hl7.Fhir.Model.")


def test_1_10_2_de_pseudonymizes_from_the_result_set(demo_config) -> None:
    with wire_client(demo_config, accept=FIRELY_ACCEPT) as client:
        created = client.post(f"{GPAS}/$pseudonymize-allow-create",
                              json=parameters_body(target=DOMAIN, original="patient-18"))
        pseudonym = firely_to_string(next(p for p in json_parameters(created)[0]["part"]
                                          if p["name"] == "pseudonym"))
        response = client.post(f"{GPAS}/$de-pseudonymize",
                               json=parameters_body(target=DOMAIN, pseudonym=pseudonym),
                               headers={"Content-Type": FHIR_JSON})
        assert response.status_code == 200
        result_sets = [p for p in json_parameters(response) if p["name"] == "pseudonym-result-set"]
        original = next(p for p in result_sets[0]["part"] if p["name"] == "original")
        assert firely_to_string(original) == "patient-18"
        # Unknown: no result set, so `.First()` throws and the client keeps the value.
        unknown = client.post(f"{GPAS}/$de-pseudonymize",
                              json=parameters_body(target=DOMAIN, pseudonym="NOT-A-PSEUDONYM"))
        assert unknown.status_code == 200
        assert not [p for p in json_parameters(unknown) if p["name"] == "pseudonym-result-set"]


def test_1_10_2_from_an_older_client_build_without_accept(demo_config) -> None:
    # Releases before the FhirClient rewrite posted with HttpClient: Content-Type only.
    with wire_client(demo_config) as client:
        response = client.post(f"{GPAS}/$pseudonymize-allow-create",
                               content=b'{"resourceType":"Parameters","parameter":[{"name":"target",'
                                       b'"valueString":"PATIENT"},{"name":"original","valueString":"p-19"}]}',
                               headers={"Content-Type": "application/fhir+json"})
        first = json_parameters(response)[0]
        assert firely_to_string(next(p for p in first["part"] if p["name"] == "pseudonym")) == \
            current_pseudonym(demo_config, "p-19")


# --- later gPAS versions: today's names, Identifier parts --------------------------------------------

def test_current_versions_read_identifiers(demo_config) -> None:
    with wire_client(demo_config, accept=FIRELY_ACCEPT) as client:
        response = client.post(f"{GPAS}/$pseudonymizeAllowCreate",
                               json=parameters_body(target=DOMAIN, original="patient-20"),
                               headers={"Content-Type": FHIR_JSON})
        kind, identifier = value_of(next(p for p in json_parameters(response)[0]["part"]
                                         if p["name"] == "pseudonym"))
        assert kind == "Identifier" and identifier["system"] == GPAS_SYSTEM
        back = client.post(f"{GPAS}/$dePseudonymize",
                           json=parameters_body(target=DOMAIN, pseudonym=identifier["value"]))
        kind, original = value_of(next(p for p in json_parameters(back)[0]["part"] if p["name"] == "original"))
        assert kind == "Identifier" and original["value"] == "patient-20"


@pytest.mark.parametrize("operation", ["pseudonymizeAllowCreate", "pseudonymize-allow-create"])
def test_unknown_domain_is_a_rejection_not_a_value(demo_config, operation: str) -> None:
    # 400, 404 and 422 become PseudonymizationRejectedException; 401/403/503 are transient.
    with wire_client(demo_config, accept=FIRELY_ACCEPT) as client:
        response = client.post(f"{GPAS}/${operation}",
                               json=parameters_body(target="NO-SUCH-DOMAIN", original="1"))
        assert response.status_code == 404
        assert response.json()["resourceType"] == "OperationOutcome"


def test_only_the_old_name_creates_with_get(demo_config) -> None:
    # FHIR allows GET for operations that change nothing; gPAS before 1.10.2 served
    # $pseudonymize-allow-create with GET, so that name keeps it, today's name does not.
    with wire_client(demo_config) as client:
        refused = client.get(f"{GPAS}/$pseudonymizeAllowCreate?target={DOMAIN}&original=x")
        assert refused.status_code == 405 and refused.json()["issue"][0]["code"] == "not-supported"
        read = client.get(f"{GPAS}/$pseudonymize?target=MIRACUM&original=1001000000022")
        assert read.status_code == 200
        assert read.json()["parameter"][0]["part"][2]["valueIdentifier"]["value"] == "mrcm_T0TYNV21"
