"""The MII interface as a plugin and as an endpoint: loaded like a third-party plugin through gPAS's
public API only, configured, described by generated OperationDefinitions and a
CapabilityStatement, and held to the same authentication, scoping, limits and hostile-input
behaviour as every other operation. None of this depends on the store: SQLite only."""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from conftest import ROOT, client_for
from mii_wire import BASE, bundle, call, parameter, post, status_code
from ttp_gateway.core.app import config_problems, load_gateway_plugins
from ttp_gateway.core.config import ConfigError
from ttp_gateway.plugins.mii_psn.operations import CANONICAL

OPERATIONS = ["anonymize-original", "de-pseudonymize", "delete-pseudonym", "get-pseudonym", "pseudonymize",
              "pseudonymize-multiple"]
PLUGIN = ROOT / "plugins" / "mii_psn"


@pytest.fixture(name="storage_url")
def sqlite_storage_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def issue(response) -> dict:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]


# --- a plugin like a third party's -------------------------------------------------------------

def test_loaded_through_the_entry_point_group() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="ttp_gateway")}
    assert found["mii_psn"] == "ttp_gateway.plugins.mii_psn"


def test_imports_nothing_of_gpas_but_its_public_api() -> None:
    allowed_prefixes = ("ttp_gateway.core", "ttp_gateway.backends", "ttp_gateway.plugins.gpas.api")
    imported = []
    for source in PLUGIN.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.append(node.module or "")
            elif isinstance(node, ast.Import):
                imported += [alias.name for alias in node.names]
    ours = [name for name in imported if name.startswith("ttp_gateway")]
    assert ours and all(name.startswith(allowed_prefixes) for name in ours), ours
    assert "ttp_gateway.plugins.gpas.api" in ours


def test_keeps_no_store_of_its_own() -> None:
    assert not (PLUGIN / "migrations").exists()
    assert "ttp_stores" not in (PLUGIN / "__init__.py").read_text(encoding="utf-8")


# --- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("section, problem", [
    ({"base": "gpas"}, "gPAS's own endpoint"),
    ({"base": "gpas/ v2"}, "endpoint path"),
    ({"base": 2}, "endpoint path"),
    ({"base": "mii", "draft_base": "mii/"}, "different endpoints"),
    ({"systems": {"Transfer1": "not a uri"}}, "absolute URI"),
    ({"systems": ["Transfer1"]}, "table"),
    ({"sytems": {}}, "unknown settings"),
])
def test_configuration_problems_are_reported(demo_config, section: dict, problem: str) -> None:
    config = demo_config.with_overrides(mii_psn={"base": "gpas/v2", "draft_base": "", "systems": {}, **section})
    config.data["mii_psn"] = {k: v for k, v in config.data["mii_psn"].items() if k in section or k == "base"}
    plugins, problems = load_gateway_plugins(config)
    assert any(problem in p for p in problems), problems
    with pytest.raises(ConfigError):
        client_for(config)


def test_the_demo_configuration_has_no_problems(demo_config) -> None:
    plugins, _ = load_gateway_plugins(demo_config)
    assert config_problems(demo_config, plugins) == []


def test_served_at_a_base_of_the_operators_choice(demo_config) -> None:
    config = demo_config.with_overrides(mii_psn={"base": "/mii/psn/", "draft_base": ""})
    with client_for(config) as client:
        assert post(client, "pseudonymize", call("Transfer1", "Z-1"), base="/ttp-fhir/fhir/mii/psn")[0] == 200
        assert client.post(f"{BASE}/$pseudonymize", json=call("Transfer1", "Z-1")).status_code == 404
        assert client.post("/ttp-fhir/fhir/gpas/v2-draft/$pseudonymize", json={}).status_code == 404


# --- OperationDefinitions and the CapabilityStatement -----------------------------------------------

def test_capability_statement_lists_the_six_operations(client) -> None:
    statement = client.get(f"{BASE}/metadata").json()
    operations = statement["rest"][0]["operation"]
    assert sorted(op["name"] for op in operations) == OPERATIONS
    ids = {op["name"]: op["definition"].rsplit("/", 1)[1] for op in operations}
    assert all(op["definition"] == f"{CANONICAL}/{ids[op['name']]}" for op in operations)
    assert set(ids.values()) == {"AnonymizeOriginal", "DePseudonymize", "DeletePseudonym", "GetPseudonym",
                                 "Pseudonymize", "PseudonymizeMultiple"}


def test_operation_definitions_come_from_the_declarations(client) -> None:
    """Open questions 1, 2 and 6: canonical URLs of the guide; what changes state; `return`."""
    def definition(definition_id: str) -> dict:
        response = client.get(f"{BASE}/OperationDefinition/{definition_id}")
        assert response.status_code == 200
        return response.json()

    pseudonymize = definition("Pseudonymize")
    assert pseudonymize["url"] == f"{CANONICAL}/Pseudonymize" and pseudonymize["code"] == "pseudonymize"
    assert pseudonymize["system"] and not pseudonymize["type"] and not pseudonymize["instance"]
    inputs = [(p["name"], p["min"], p["max"], p["type"]) for p in pseudonymize["parameter"] if p["use"] == "in"]
    assert inputs == [("context", 1, "1", "Identifier"), ("original", 1, "1", "Identifier")]
    assert {d: definition(d)["affectsState"] for d in ("Pseudonymize", "GetPseudonym", "PseudonymizeMultiple",
                                                     "DePseudonymize", "DeletePseudonym", "AnonymizeOriginal")} == {
        "Pseudonymize": True, "GetPseudonym": False, "PseudonymizeMultiple": True, "DePseudonymize": False,
        "DeletePseudonym": True, "AnonymizeOriginal": True}
    outputs = [(p["name"], p["type"]) for p in definition("DeletePseudonym")["parameter"] if p["use"] == "out"]
    assert outputs == [("return", "OperationOutcome")]
    count = next(p for p in definition("PseudonymizeMultiple")["parameter"] if p["name"] == "count")
    assert (count["min"], count["max"], count["type"]) == (1, "1", "integer")


# --- authentication and scoping ---------------------------------------------------------------------

def scoped(demo_config, **scope):
    return demo_config.with_overrides(auth={"require_api_key": True, "api_keys": [
        {"name": "site", "key": "site-key", **scope}]})


def test_callers_need_a_key(demo_config) -> None:
    with client_for(demo_config) as client:
        client.headers.pop("apikey")
        response = client.post(f"{BASE}/$pseudonymize", json=call("Transfer1", "K-1"))
        assert response.status_code == 401 and issue(response)["code"] == "security"


def test_callers_are_scoped_to_the_endpoint(demo_config) -> None:
    with client_for(scoped(demo_config, endpoints=["gpas"]), apikey="site-key") as client:
        assert client.post(f"{BASE}/$pseudonymize", json=call("Transfer1", "K-1")).status_code == 401
    with client_for(scoped(demo_config, endpoints=["gpas/v2"], operations=["get-pseudonym"]),
                    apikey="site-key") as client:
        assert client.post(f"{BASE}/$pseudonymize", json=call("Transfer1", "K-1")).status_code == 401
        assert client.post(f"{BASE}/$get-pseudonym", json=call("Transfer1", "D1CL0CAL1")).status_code == 200


def test_callers_are_scoped_to_domains_per_call_and_per_entry(demo_config) -> None:
    with client_for(scoped(demo_config, domains=["Transfer1"]), apikey="site-key") as client:
        assert post(client, "pseudonymize", call("Transfer1", "K-2"))[0] == 200
        status, answer = post(client, "pseudonymize", call("MIRACUM", "K-2"))
        assert status == 401 and answer["issue"][0]["code"] == "security"
        # Not allowed to a domain that does not exist either: no caller learns which domains exist.
        assert post(client, "pseudonymize", call("no-such-domain", "K-2"))[0] == 401
        answer = post(client, "pseudonymize", bundle("pseudonymize", [
            call("Transfer1", "K-3"), call("MIRACUM", "K-3")]))[1]
        assert [status_code(e) for e in answer["entry"]] == ["201", "401"]


# --- limits and hostile input -------------------------------------------------------------------------

def test_bundles_are_bounded(demo_config) -> None:
    config = demo_config.with_overrides(limits={"max_items": 10, "max_created": 5})
    with client_for(config) as client:
        response = client.post(f"{BASE}/$pseudonymize", json=bundle("pseudonymize", [
            call("Transfer1", f"L-{i}") for i in range(11)]))
        assert response.status_code == 413
        response = client.post(f"{BASE}/$pseudonymize-multiple", json=bundle("pseudonymize-multiple", [
            call("MultiPsnDomain", f"L-{i}", count=2) for i in range(3)]))
        assert response.status_code == 413
        assert post(client, "get-pseudonym", call("Transfer1", "L-0"))[0] == 404  # nothing was written
    config = demo_config.with_overrides(limits={"max_body_bytes": 4096})
    with client_for(config) as client:
        response = client.post(f"{BASE}/$pseudonymize", json=bundle("pseudonymize", [
            call("Transfer1", f"L-{i}") for i in range(50)]))
        assert response.status_code == 413


@pytest.mark.parametrize("body, named", [
    ({"resourceType": "Parameters", "parameter": [{"name": "context", "valueString": "Transfer1"},
                                                  {"name": "original", "valueString": "V-1"}]}, "context"),
    ({"resourceType": "Parameters", "parameter": [{"name": "context", "valueIdentifier": {"value": "Transfer1"}}]},
     "original"),
    ({"resourceType": "Parameters", "parameter": [
        {"name": "context", "valueIdentifier": {"value": "Transfer1"}},
        {"name": "context", "valueIdentifier": {"value": "MIRACUM"}},
        {"name": "original", "valueIdentifier": {"value": "V-1"}}]}, "context"),
    (call({"system": "https://sample/psn-system"}, "V-1"), "context"),
    (call("Transfer1", {"value": ""}), "original"),
    (call("Transfer1", {"value": 17}), "original"),
    (call({"system": ["x"], "value": "Transfer1"}, "V-1"), "context"),
    (call("Transfer1", "V\u0001-1"), "original"),
    ({"resourceType": "Patient"}, "Parameters"),
])
def test_malformed_calls_are_400_naming_the_parameter(client, body: dict, named: str) -> None:
    response = client.post(f"{BASE}/$pseudonymize", json=body)
    assert response.status_code == 400, response.text
    assert named in issue(response)["diagnostics"]
    assert "V-1" not in response.text and "V\u0001-1" not in response.text


def test_malformed_bundles(client) -> None:
    assert client.post(f"{BASE}/$pseudonymize", json={"resourceType": "Bundle", "type": "collection"}).status_code == 400
    assert client.post(f"{BASE}/$pseudonymize", json={"resourceType": "Bundle", "type": "batch",
                                                      "entry": {"resource": {}}}).status_code == 400
    answer = client.post(f"{BASE}/$pseudonymize", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": call("Transfer1", "H-1"), "request": {"method": "POST", "url": "$get-pseudonym"}},
        {"request": {"method": "POST", "url": "$pseudonymize"}},
        "not an entry",
        {"resource": call("Transfer1", "H-1"), "request": {"method": "POST", "url": "$pseudonymize"}}]}).json()
    assert [status_code(e) for e in answer["entry"]] == ["400", "400", "400", "201"]
    assert client.post(f"{BASE}/$pseudonymize", content=b"{not json",
                       headers={"Content-Type": "application/fhir+json"}).status_code == 400
    assert client.post(f"{BASE}/$pseudonymize", content=b"<Parameters xmlns='http://hl7.org/fhir'><!ENTITY",
                       headers={"Content-Type": "application/fhir+xml"}).status_code == 400


def test_nested_identifier_content_is_not_repeated(client) -> None:
    nested: dict = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(30):
        nested = {"url": "http://example.org/x", "extension": [nested]}
    original = {"value": "N-1", "extension": [nested]}
    status, answer = post(client, "pseudonymize", call("Transfer1", original))
    assert status == 200
    assert answer["parameter"][1]["valueIdentifier"] == {"value": "N-1"}


def test_errors_never_quote_originals_or_pseudonyms(client) -> None:
    for operation, sent in [("get-pseudonym", call("Transfer1", "SECRET-ORIGINAL")),
                            ("delete-pseudonym", call("Transfer1", "SECRET-ORIGINAL")),
                            ("anonymize-original", call("Transfer1", "SECRET-ORIGINAL")),
                            ("de-pseudonymize", call("Transfer1", pseudonym="SECRET-PSEUDONYM"))]:
        response = client.post(f"{BASE}/${operation}", json=sent)
        assert response.status_code == 404
        assert "SECRET" not in response.text


def test_reads_are_not_writes_over_get(client) -> None:
    """FHIR allows GET only with primitive parameters; Identifiers cannot travel in a query."""
    assert client.get(f"{BASE}/$get-pseudonym?context=Transfer1&original=D1CL0CAL1").status_code == 400
    assert client.get(f"{BASE}/$pseudonymize?context=Transfer1&original=D1CL0CAL1").status_code == 405


# --- Bundles posted to the endpoint's base ------------------------------------------------------------

def entries(*calls: tuple[str, dict], method: str = "POST") -> list[dict]:
    return [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{index:012d}", "resource": resource,
             "request": {"method": method, "url": url}} for index, (url, resource) in enumerate(calls)]


def test_a_bundle_at_the_base_runs_each_entry_as_its_url_names(demo_config) -> None:
    with client_for(demo_config) as client:
        status, answer = post(client, None, {"resourceType": "Bundle", "type": "batch", "entry": entries(
            ("$pseudonymize", call("Transfer1", "B-1")),
            (f"{BASE}/$get-pseudonym", call("Transfer1", "D1CL0CAL2")),  # a URL with the base, as some send it
            ("$get-pseudonym", call("Transfer1", "D1CL0CAL1")),
            ("$de-pseudonymize", call("Transfer1", pseudonym="H3RAU56A8E")),
            ("$no-such-operation", call("Transfer1", "B-1")),
            ("pseudonymize", call("Transfer1", "B-2")),  # not an operation's URL
        )})
        assert status == 200 and answer["type"] == "batch-response"
        assert [status_code(e) for e in answer["entry"]] == ["201", "200", "200", "200", "404", "400"]
        created = next(p for p in answer["entry"][0]["resource"]["parameter"] if p["name"] == "pseudonym")
        looked_up = post(client, "get-pseudonym", call("Transfer1", "B-1"))[1]
        assert parameter(looked_up, "pseudonym")["value"] == created["valueIdentifier"]["value"]
        assert parameter(answer["entry"][1]["resource"], "pseudonym")["value"] == "K7MWQ2XZ4P"
        assert answer["entry"][4]["response"]["outcome"]["issue"][0]["code"] == "not-supported"
        assert post(client, "get-pseudonym", call("Transfer1", "B-2"))[0] == 404


def test_a_transaction_at_the_base_is_all_or_nothing(demo_config) -> None:
    with client_for(demo_config) as client:
        status, answer = post(client, None, {"resourceType": "Bundle", "type": "transaction", "entry": entries(
            ("$pseudonymize", call("Transfer1", "T-1")),
            ("$pseudonymize", call("no-such-domain", "T-2")),
        )})
        assert status == 404 and answer["resourceType"] == "OperationOutcome"
        assert post(client, "get-pseudonym", call("Transfer1", "T-1"))[0] == 404  # nothing was written
        status, answer = post(client, None, {"resourceType": "Bundle", "type": "transaction", "entry": entries(
            ("$pseudonymize", call("Transfer1", "T-1")),
            ("$pseudonymize-multiple", call("MultiPsnDomain", "T-1", count=2)),
        )})
        assert status == 200 and answer["type"] == "transaction-response"
        assert post(client, "get-pseudonym", call("Transfer1", "T-1"))[0] == 200


def test_entries_at_the_base_are_scoped_each_to_its_operation(demo_config) -> None:
    config = scoped(demo_config, endpoints=["gpas/v2"], operations=["get-pseudonym"])
    with client_for(config, apikey="site-key") as client:
        status, answer = post(client, None, {"resourceType": "Bundle", "type": "batch", "entry": entries(
            ("$pseudonymize", call("Transfer1", "S-1")),
            ("$get-pseudonym", call("Transfer1", "D1CL0CAL1")),
        )})
        assert status == 200 and [status_code(e) for e in answer["entry"]] == ["401", "200"]
    with client_for(scoped(demo_config, endpoints=["gpas"]), apikey="site-key") as client:
        status, answer = post(client, None, {"resourceType": "Bundle", "type": "batch", "entry": entries(
            ("$get-pseudonym", call("Transfer1", "D1CL0CAL1")))})
        assert status == 401
    with client_for(demo_config) as client:
        assert post(client, "get-pseudonym", call("Transfer1", "S-1"))[0] == 404


def test_the_base_takes_only_batch_and_transaction_bundles(demo_config) -> None:
    with client_for(demo_config) as client:
        status, answer = post(client, None, call("Transfer1", "P-1"))
        assert status == 400 and answer["resourceType"] == "OperationOutcome"
        status, _ = post(client, None, {"resourceType": "Bundle", "type": "collection", "entry": entries(
            ("$pseudonymize", call("Transfer1", "P-1")))})
        assert status == 400
        status, answer = post(client, None, {"resourceType": "Bundle", "type": "batch", "entry": entries(
            ("$get-pseudonym", call("Transfer1", "D1CL0CAL1")), method="GET")})
        assert status == 200 and status_code(answer["entry"][0]) == "400"
        response = client.post("/ttp-fhir/fhir/no-such-endpoint", json={"resourceType": "Bundle", "type": "batch"})
        assert response.status_code == 404 and issue(response)["code"] == "not-found"
        response = client.post("/ttp-fhir/fhir/gics/Consent", json={"resourceType": "Bundle", "type": "batch"})
        assert response.status_code == 405 and "POST" not in response.headers["allow"]
        assert post(client, "get-pseudonym", call("Transfer1", "P-1"))[0] == 404


def test_the_capability_statement_offers_batch_and_transaction(demo_config) -> None:
    with client_for(demo_config) as client:
        statement = client.get(f"{BASE}/metadata").json()
        assert {i["code"] for i in statement["rest"][0]["interaction"]} == {"batch", "transaction"}
        assert "interaction" not in client.get("/ttp-fhir/fhir/gpas/metadata").json()["rest"][0]
