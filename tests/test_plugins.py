"""Plugins: a third-party package adds an operation without any change to core, and a plugin
may replace a built-in operation only when it says so."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from conftest import DEMO_CONFIG, GPAS, client_for
from ttp_gateway.core import Operation, Param, fhir, hookimpl
from ttp_gateway.core.app import create_app
from ttp_gateway.core.plugins import OperationTable

COUNT = {"resourceType": "Parameters", "parameter": [{"name": "target", "valueString": "MIRACUM"}]}


def test_the_example_plugin_is_installed_through_its_entry_point() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="ttp_gateway")}
    assert names.get("example") == "ttp_example_plugin"
    assert names.get("gpas") == "ttp_gateway.plugins.gpas"  # built-ins come the same way


def test_third_party_operation_works_end_to_end(client) -> None:
    answer = client.post(f"{GPAS}/$countPseudonyms", json=COUNT).json()
    assert answer == {"resourceType": "Parameters", "parameter": [{"name": "count", "valueInteger": 2}]}
    # The plugin's own store (a table or collection of its own, on every backend) kept the count.
    create = {"resourceType": "Parameters", "parameter": [{"name": "target", "valueString": "MIRACUM"},
                                                          {"name": "original", "valueString": "third"}]}
    assert client.post(f"{GPAS}/$pseudonymizeAllowCreate", json=create).status_code == 200
    answer = client.post(f"{GPAS}/$countPseudonyms", json=COUNT).json()
    assert answer["parameter"] == [{"name": "count", "valueInteger": 3}, {"name": "previous", "valueInteger": 2}]
    # Its declaration gives it validation, metadata and an OperationDefinition.
    assert client.post(f"{GPAS}/$countPseudonyms", json={"resourceType": "Parameters"}).status_code == 400
    names = {op["name"] for op in client.get(f"{GPAS}/metadata").json()["rest"][0]["operation"]}
    assert "countPseudonyms" in names
    definition = client.get(f"{GPAS}/OperationDefinition/CountPseudonyms").json()
    assert [(p["name"], p["use"], p["type"]) for p in definition["parameter"]] == [
        ("target", "in", "string"), ("count", "out", "integer"), ("previous", "out", "integer")]


def test_third_party_operation_is_scoped_like_built_ins(demo_config) -> None:
    key = {"name": "site", "key": "site-key", "domains": ["Datensatz-Ebene"]}
    with client_for(demo_config.with_overrides(auth={"api_keys": [key]}), apikey="site-key") as client:
        assert client.post(f"{GPAS}/$countPseudonyms", json=COUNT).status_code == 401


def test_a_plugin_can_be_disabled(demo_config) -> None:
    config = demo_config.with_overrides(plugins={"disabled": ["example"]})
    with client_for(config) as client:
        assert client.post(f"{GPAS}/$countPseudonyms", json=COUNT).status_code == 404
        assert client.post(f"{GPAS}/$pseudonymize", json={**COUNT, "parameter": COUNT["parameter"] + [
            {"name": "original", "valueString": "1001000000022"}]}).status_code == 200


class Replacement:
    """Replaces $pseudonymize, e.g. to answer from another source."""

    def __init__(self, replaces: bool) -> None:
        self.replaces = replaces

    @hookimpl
    def ttp_operations(self, gateway):
        return [Operation(endpoint="gpas", name="pseudonymize", replaces=self.replaces,
                          handler=lambda call: fhir.parameters([{"name": "replaced", "valueBoolean": True}]),
                          parameters=(Param("target", min=1), Param("original", min=1, max="*")))]


def test_replacing_a_built_in_needs_replaces(demo_config) -> None:
    with pytest.raises(ValueError, match="replaces=True"):
        create_app(demo_config, extra_plugins=(Replacement(replaces=False),))
    with client_for_app(create_app(demo_config, extra_plugins=(Replacement(replaces=True),))) as client:
        body = {**COUNT, "parameter": COUNT["parameter"] + [{"name": "original", "valueString": "x"}]}
        assert client.post(f"{GPAS}/$pseudonymize", json=body).json()["parameter"][0]["name"] == "replaced"


def client_for_app(app):
    from starlette.testclient import TestClient

    return TestClient(app, headers={"apikey": "abcdef12345"})


def test_aliases_must_not_collide() -> None:
    def handler(call):
        return {}

    first = Operation(endpoint="x", name="a", handler=handler, aliases=("b",))
    second = Operation(endpoint="x", name="b", handler=handler)
    with pytest.raises(ValueError, match="names two operations"):
        OperationTable.collect([[first], [second]])


def test_hook_tracing(demo_config, monkeypatch, caplog) -> None:
    monkeypatch.setenv("TTP_GATEWAY_TRACE_HOOKS", "1")
    caplog.set_level("INFO", logger="ttp_gateway.plugins")
    create_app(demo_config)
    assert any("ttp_operations" in r.getMessage() for r in caplog.records)


class Misspelled:
    """A plugin whose hook name has a typo: loading it must fail loudly, not ignore the hook."""

    @hookimpl
    def ttp_operation(self, gateway):  # ttp_operations
        return []


def test_a_misspelled_hook_stops_the_start(demo_config) -> None:
    from ttp_gateway.core.config import ConfigError

    with pytest.raises(ConfigError, match="ttp_operation"):
        create_app(demo_config, extra_plugins=(Misspelled(),))


def test_disabling_a_plugin_that_another_requires_is_a_clear_configuration_error(demo_config) -> None:
    from ttp_gateway.core.config import ConfigError

    config = demo_config.with_overrides(plugins={"disabled": ["gpas"]})
    with pytest.raises(ConfigError, match="requires plugin 'gpas', which is disabled"):
        create_app(config)


class Recorder:
    """Records which hooks fire, and in which order relative to gPAS."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def ttp_requires(self):
        return ["gpas"]

    @hookimpl
    def ttp_setup(self, gateway):
        from ttp_gateway.plugins.gpas.api import GPAS as GPAS_KEY

        gateway.service(GPAS_KEY)  # available: gPAS was set up first
        self.calls.append("setup")

    @hookimpl
    def ttp_startup(self, gateway):
        self.calls.append("startup")


def test_requirements_order_setup_and_admin_commands_do_not_start(demo_config) -> None:
    from ttp_gateway.core.app import build_gateway

    served, admin = Recorder(), Recorder()
    gateway, _ = build_gateway(demo_config, extra_plugins=(served,))
    gateway.repository.close()
    assert served.calls == ["setup", "startup"]
    gateway, _ = build_gateway(demo_config, extra_plugins=(admin,), start=False)
    gateway.repository.close()
    assert admin.calls == ["setup"]  # no seeding, no warm caches


def test_the_command_line_builds_gateways_without_starting_them(monkeypatch, capsys, storage_url) -> None:
    from ttp_gateway.core import app, cli

    seen: list[bool] = []
    build = app.build_gateway

    def recording(config, **options):
        seen.append(options.get("start", True))
        return build(config, **options)

    monkeypatch.setattr(app, "build_gateway", recording)
    monkeypatch.setenv("TTP_GATEWAY__STORAGE__URL", storage_url)
    assert cli.main(["--config", str(DEMO_CONFIG), "domains", "list"]) == 0
    assert seen == [False]
