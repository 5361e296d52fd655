"""API keys: where they come from, what they allow, and that they never leak."""

from __future__ import annotations

import logging

import pytest

from conftest import DEMO_KEY, GPAS, client_for
from ttp_gateway.core.keystore import StoredApiKey
from stores import transaction
from ttp_gateway.core.auth import (Authenticator, Client, KeyRing, api_key_from_settings,
                                   client_from_settings, digest)
from ttp_gateway.core.errors import NotAuthenticated

LOOKUP = {"resourceType": "Parameters", "parameter": [
    {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": "1001000000022"}]}


def post(client, operation: str = "pseudonymize", body: dict = LOOKUP, **headers: str):
    return client.post(f"{GPAS}/${operation}", json=body, headers=headers)


@pytest.fixture
def anonymous(demo_config):
    """A client that sends no key of its own."""
    with client_for(demo_config) as client:
        client.headers.pop("apikey")
        yield client


def test_missing_and_wrong_keys_are_401(anonymous) -> None:
    response = post(anonymous)
    assert response.status_code == 401
    assert response.json()["issue"][0]["code"] == "security"
    assert post(anonymous, apikey="wrong").status_code == 401
    assert post(anonymous, **{"X-API-Key": "wrong"}).status_code == 401


@pytest.mark.parametrize("header", ["apikey", "X-API-Key", "x-api-key"])
def test_key_in_a_header(anonymous, header: str) -> None:
    assert post(anonymous, **{header: DEMO_KEY}).status_code == 200


def test_key_as_body_parameter_is_removed_before_the_operation(anonymous) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "apikey", "valueString": DEMO_KEY}, *LOOKUP["parameter"]]}
    response = post(anonymous, body=body)
    assert response.status_code == 200
    assert [p["name"] for p in response.json()["parameter"]] == ["pseudonym"]
    body["parameter"][0]["valueString"] = "wrong"
    assert post(anonymous, body=body).status_code == 401


def test_error_texts_do_not_echo_the_key(anonymous) -> None:
    response = post(anonymous, apikey="secret-key-4711")
    assert "secret-key-4711" not in response.text


def scoped_config(demo_config, **scope):
    key = {"name": "site", "key": "site-key", **scope}
    return demo_config.with_overrides(auth={"api_keys": [key], "require_api_key": True})


@pytest.mark.parametrize("scope, operation, allowed", [
    ({"domains": ["MIRACUM"]}, "pseudonymize", True),
    ({"domains": ["Datensatz-Ebene"]}, "pseudonymize", False),
    ({"operations": ["pseudonymize"]}, "pseudonymize", True),
    ({"operations": ["pseudonymize"]}, "pseudonymizeAllowCreate", False),
    ({"operations": ["gpas/pseudonymizeAllowCreate"]}, "pseudonymize-allow-create", True),
    ({"endpoints": ["dispatcher"]}, "pseudonymize", False),
    ({"endpoints": ["gpas"], "studies": []}, "pseudonymize", True),
])
def test_scopes(demo_config, scope: dict, operation: str, allowed: bool) -> None:
    with client_for(scoped_config(demo_config, **scope), apikey="site-key") as client:
        response = post(client, operation)
        assert response.status_code == (200 if allowed else 401), response.text
        if not allowed:
            assert response.json()["issue"][0]["code"] == "security"


def test_scope_applies_to_targets_inside_parts(demo_config) -> None:
    body = {"resourceType": "Parameters", "parameter": [{"name": "original", "part": [
        {"name": "target", "valueString": "Datensatz-Ebene"}, {"name": "value", "valueString": "v"},
        {"name": "count", "valueInteger": 1}]}]}
    with client_for(scoped_config(demo_config, domains=["MIRACUM"]), apikey="site-key") as client:
        assert post(client, "pseudonymize-secondary", body).status_code == 401
        with transaction(client.app.gateway.repository) as tx:
            assert tx.count_pseudonyms("Datensatz-Ebene") == 0


def test_a_key_created_in_storage_works_without_restart(client) -> None:
    client.app.keys._reload_interval = 0  # reload on every unknown key, not every 2 s
    assert post(client, apikey="made-later").status_code == 401
    with transaction(client.app.gateway.repository, write=True) as tx:
        tx.add_api_key(StoredApiKey(name="later", key_sha256=digest("made-later"), scopes={"domains": ("MIRACUM",)}))
    assert post(client, apikey="made-later").status_code == 200
    lookup_other = {"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": "Datensatz-Ebene"}, {"name": "original", "valueString": "x"}]}
    assert post(client, body=lookup_other, apikey="made-later").status_code == 401


def test_configured_digest_works_and_key_ring_checks_every_key() -> None:
    ring = KeyRing([api_key_from_settings({"name": "a", "key": "alpha"}),
                    api_key_from_settings({"name": "b", "key_sha256": digest("beta").upper()})])
    assert ring.authenticate("alpha").name == "a"
    assert ring.authenticate("beta").name == "b"
    with pytest.raises(NotAuthenticated):
        ring.authenticate("gamma")
    with pytest.raises(NotAuthenticated):
        ring.authenticate("")


def test_open_mode_without_keys(demo_config) -> None:
    config = demo_config.with_overrides(auth={"require_api_key": False, "api_keys": []})
    with client_for(config) as client:
        client.headers.pop("apikey")
        assert post(client).status_code == 200


def test_logs_carry_no_keys_and_no_originals(client, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": "ORIGINAL-4711"}]}
    post(client, "pseudonymizeAllowCreate", body)
    post(client, "pseudonymize", body, apikey="bad-key-0815")
    post(client, "dePseudonymize", {"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": "MIRACUM"}, {"name": "pseudonym", "valueString": "mrcm_T0TYNV21"}]})
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "ORIGINAL-4711" not in text and "1001000000022" not in text
    assert DEMO_KEY not in text and "bad-key-0815" not in text
    audit = [r for r in caplog.records if r.name == "ttp_gateway.audit"]
    assert {r.getMessage() for r in audit} >= {"pseudonymize-allow-create", "de-pseudonymize"}
    assert all(r.audit["client"] == "demo" for r in audit)


# --- anonymous access behind an authenticating proxy ---------------------------------------------

DISPATCHER_TASKS = {"resourceType": "Parameters", "parameter": [
    {"name": "study", "valueString": "mii"}, {"name": "target", "valueString": "dic_muenster"}]}


@pytest.fixture
def behind_proxy(demo_config):
    """A gateway whose gPAS lookups in MIRACUM need no credentials; nothing else is open."""
    config = demo_config.with_overrides(auth={"anonymous": [
        {"endpoint": "gpas", "operations": ["pseudonymize"], "domains": ["MIRACUM"]}]})
    with client_for(config) as client:
        client.headers.pop("apikey")
        yield client


def test_anonymous_access_is_limited_to_its_endpoint_and_scope(behind_proxy) -> None:
    assert post(behind_proxy).status_code == 200
    other_domain = {"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": "Datensatz-Ebene"}, {"name": "original", "valueString": "x"}]}
    assert post(behind_proxy, body=other_domain).status_code == 401
    assert post(behind_proxy, "pseudonymizeAllowCreate").status_code == 401
    response = behind_proxy.post("/ttp-fhir/fhir/dispatcher/$requestTasks", json=DISPATCHER_TASKS)
    assert response.status_code == 401
    assert "credentials are required" in response.json()["issue"][0]["diagnostics"]
    assert post(behind_proxy, apikey=DEMO_KEY, body=other_domain).status_code == 200


@pytest.mark.parametrize("headers", [
    {"apikey": "wrong"}, {"X-API-Key": "wrong"}, {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer not-a-token"}, {"Authorization": "Negotiate abc"},
])
def test_wrong_credentials_never_fall_back_to_anonymous(behind_proxy, headers) -> None:
    assert post(behind_proxy, **headers).status_code == 401


def test_a_wrong_body_key_never_falls_back_to_anonymous(behind_proxy) -> None:
    body = {"resourceType": "Parameters", "parameter": [{"name": "apikey", "valueString": "wrong"},
                                                        *LOOKUP["parameter"]]}
    assert post(behind_proxy, body=body).status_code == 401


def test_anonymous_access_is_off_unless_configured(anonymous) -> None:
    response = post(anonymous)
    assert response.status_code == 401
    assert "www-authenticate" not in response.headers  # API keys have no HTTP challenge scheme


# --- which credentials count ----------------------------------------------------------------------

def test_header_keys_come_before_the_body_key(anonymous) -> None:
    body = {"resourceType": "Parameters", "parameter": [{"name": "apikey", "valueString": "wrong"},
                                                        *LOOKUP["parameter"]]}
    response = post(anonymous, body=body, apikey=DEMO_KEY)
    assert response.status_code == 200
    assert [p["name"] for p in response.json()["parameter"]] == ["pseudonym"]
    body["parameter"][0]["valueString"] = DEMO_KEY
    assert post(anonymous, body=body, apikey="wrong").status_code == 401
    assert post(anonymous, body=body, **{"X-API-Key": "wrong"}).status_code == 401
    assert post(anonymous, apikey=DEMO_KEY, **{"X-API-Key": "wrong"}).status_code == 200


def test_a_refused_header_credential_is_answered_before_the_body_is_read(anonymous) -> None:
    response = anonymous.post(f"{GPAS}/$pseudonymize", content=b"{not json",
                              headers={"content-type": "application/fhir+json", "apikey": "wrong"})
    assert response.status_code == 401
    response = anonymous.post(f"{GPAS}/$pseudonymize", content=b"{not json",
                              headers={"content-type": "application/fhir+json", "apikey": DEMO_KEY})
    assert response.status_code == 400


def test_authenticator_without_credentials() -> None:
    auth = Authenticator.from_settings({"api_keys": [{"name": "a", "key": "alpha"}]})
    assert not auth.header_credentials({"accept": "application/fhir+json"})
    assert auth.header_credentials({"x-api-key": "alpha"})
    assert auth.authenticate({}, "alpha", "gpas").name == "a"
    with pytest.raises(NotAuthenticated, match="credentials are required"):
        auth.authenticate({}, None, "gpas")
    assert auth.challenge() is None
    legacy_open = Authenticator.from_settings({"require_api_key": False})
    assert legacy_open.authenticate({}, None, "dispatcher").name == "anonymous"
    with pytest.raises(NotAuthenticated):
        legacy_open.authenticate({"apikey": "wrong"}, None, "dispatcher")


# --- scopes of callers with several roles ---------------------------------------------------------

def test_a_union_of_grants_keeps_each_grants_combinations() -> None:
    reader = client_from_settings("reader", {"operations": ["pseudonymize"]})
    deleter = client_from_settings("deleter", {"operations": ["deletePseudonyms"], "domains": ["TEST"]})
    both = Client.union("oidc:someone", [reader, deleter])
    assert both.may_call("gpas", "pseudonymize") and both.may_call("gpas", "deletePseudonyms")
    assert not both.may_call("gpas", "dePseudonymize")
    deleting = both.for_call("gpas", "deletePseudonyms")
    assert deleting.name == "oidc:someone"
    assert deleting.may_use("domains", "TEST") and not deleting.may_use("domains", "MIRACUM")
    assert both.for_call("gpas", "pseudonymize").may_use("domains", "MIRACUM")
    nothing = Client.union("oidc:nobody", [])
    assert not nothing.may_call("gpas", "pseudonymize") and not nothing.may_use("domains", "MIRACUM")
    assert reader.for_call("gpas", "pseudonymize") is reader


@pytest.mark.parametrize("anonymous_entries, message", [
    ([{"operations": ["pseudonymize"]}], "needs an endpoint"),
    ([{"endpoint": "gpas"}, {"endpoint": "gpas"}], "listed twice"),
    ([{"endpoint": "gpas", "domains": "MIRACUM"}], "array of strings"),
])
def test_invalid_anonymous_settings(anonymous_entries, message: str) -> None:
    from ttp_gateway.core.auth.checks import auth_problems

    assert any(message in problem for problem in auth_problems({"anonymous": anonymous_entries}))


def test_scope_kinds_come_from_the_loaded_plugins(demo_config) -> None:
    """A misspelled scope kind (an array under a name no plugin declared) is a configuration error."""
    from ttp_gateway.core.app import config_problems
    from ttp_gateway.core.plugins import load_plugins

    config = demo_config.with_overrides(auth={"anonymous": [{"endpoint": "gpas", "domain": ["MIRACUM"]}],
                                              "api_keys": [{"name": "k", "key": "x", "studie": ["mii"]}]})
    problems = config_problems(config, load_plugins())
    assert any("'domain' is not a scope kind" in p for p in problems)
    assert any("'studie' is not a scope kind" in p for p in problems)
    assert config_problems(demo_config, load_plugins()) == []


def test_unknown_auth_settings_are_problems(tmp_path) -> None:
    from ttp_gateway.core.config import ConfigError, load_config

    path = tmp_path / "auth.toml"
    path.write_text("[auth]\nrequire_apikey = false\n")
    with pytest.raises(ConfigError, match="unknown setting require_apikey"):
        load_config(path, environ={})
