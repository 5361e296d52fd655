"""API keys: where they come from, what they allow, and that they never leak."""

from __future__ import annotations

import logging

import pytest

from conftest import DEMO_KEY, GPAS, client_for
from ttp_gateway.backends.base import StoredApiKey
from ttp_gateway.core.auth import KeyRing, api_key_from_settings, digest
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
        with client.app.state.gateway.repository.transaction() as tx:
            assert tx.count_pseudonyms("Datensatz-Ebene") == 0


def test_a_key_created_in_storage_works_without_restart(client) -> None:
    client.app.state.keys._reload_interval = 0  # reload on every unknown key, not every 2 s
    assert post(client, apikey="made-later").status_code == 401
    with client.app.state.gateway.repository.transaction(write=True) as tx:
        tx.add_api_key(StoredApiKey(name="later", key_sha256=digest("made-later"), domains=("MIRACUM",)))
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
