"""Settings real clients need. Identifier.system of the answers: the guide's
`https://ths-greifswald.de/gpas` unless the configuration names another for an endpoint
(`[gpas]`, `[dispatcher] identifier_system`) or a study (`identifier_system` of
`[[dispatcher.studies]]`), since clients filter on it; and the settings of project domains a
study makes on demand, checked at start rather than in the first request that needs one."""

from __future__ import annotations

import pytest

from conftest import GPAS, client_for, parameters
from ttp_gateway.core.app import config_problems
from ttp_gateway.core.plugins import load_plugins

DISPATCHER = "/ttp-fhir/fhir/dispatcher"
OTHER = "urn:example:psn"


@pytest.fixture
def storage_url(tmp_path) -> str:  # configuration, not storage
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def systems(answer: dict) -> set[str]:
    return {part["valueIdentifier"]["system"] for p in answer["parameter"] for part in p.get("part", [])
            if "valueIdentifier" in part}


def test_gpas_endpoint_system(demo_config) -> None:
    lookup = parameters(("target", "MIRACUM"), ("original", "1001000000022"), ("original", "unknown"))
    with client_for(demo_config) as client:
        assert systems(client.post(f"{GPAS}/$pseudonymize", json=lookup).json()) == \
            {"https://ths-greifswald.de/gpas"}
    with client_for(demo_config.with_overrides(gpas={"identifier_system": OTHER})) as client:
        assert systems(client.post(f"{GPAS}/$pseudonymize", json=lookup).json()) == {OTHER}
        back = parameters(("target", "MIRACUM"), ("pseudonym", "mrcm_T0TYNV21"))
        assert systems(client.post(f"{GPAS}/$dePseudonymize", json=back).json()) == {OTHER}


def test_dispatcher_endpoint_and_study_systems(demo_config) -> None:
    mii = parameters(("study", "mii"), ("original", "dic_1H51T"), ("source", "dic_muenster"),
                     ("target", "eyematics"), ("event", "fttp.getMiiPsn_eyematics"))
    num = parameters(("study", "num"), ("original", "dic_2Q42E"), ("source", "dic_erlangen"), ("target", "codex"))
    with client_for(demo_config.with_overrides(dispatcher={"identifier_system": OTHER})) as client:
        assert systems(client.post(f"{DISPATCHER}/$requestPsnWorkflow", json=mii).json()) == {OTHER}
        # The demo's NUM study names the system its sites accept; the study wins.
        assert systems(client.post(f"{DISPATCHER}/$requestPsnWorkflow", json=num).json()) == \
            {"https://ths-greifswald.de/dispatcher"}


def test_a_system_must_be_an_absolute_uri(demo_config) -> None:
    plugins = load_plugins()
    for section in ("gpas", "dispatcher"):
        problems = config_problems(demo_config.with_overrides(**{section: {"identifier_system": "not a uri"}}),
                                   plugins)
        assert any(f"[{section}] identifier_system" in p for p in problems)
    studies = demo_config.data["dispatcher"]["studies"]
    broken = [dict(studies[0], identifier_system="gpas")] + studies[1:]
    assert any("identifier_system" in p for p in config_problems(
        demo_config.with_overrides(dispatcher={"studies": broken}), plugins))


def test_settings_of_domains_made_on_demand_are_checked_at_start(demo_config) -> None:
    config = demo_config.with_overrides(dispatcher={"domain_defaults": {"alphabet": "A"}})
    assert any("[dispatcher] domain_defaults" in p for p in config_problems(config, load_plugins()))
