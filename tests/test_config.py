"""Configuration: the TOML file, environment overrides, and clear errors for what cannot work."""

from __future__ import annotations

import pytest

from conftest import DEMO_CONFIG
from ttp_gateway.core.config import ConfigError, load_config
from ttp_gateway.core.plugins import load_plugins
from ttp_gateway.core.app import config_problems


def test_demo_configuration_loads() -> None:
    config = load_config(DEMO_CONFIG, environ={})
    assert config.server.port == 8080 and config.server.host == "127.0.0.1"
    assert config.storage_url.startswith("sqlite:///")
    domains = [d["name"] for d in config.section("gpas")["domains"]]
    assert domains[:2] == ["MIRACUM", "Datensatz-Ebene"]
    assert {"dic_muenster", "dic_erlangen", "dic_greifswald", "eyematics"} <= set(domains)
    assert [s["name"] for s in config.section("dispatcher")["studies"]] == ["mii", "num", "MyStudy", "eyematics"]
    assert config_problems(config, load_plugins()) == []


def test_defaults_without_a_file() -> None:
    config = load_config(None, environ={})
    assert config.source == "defaults"
    assert config.server.base_path == "/ttp-fhir/fhir"
    assert config.storage_url == "sqlite:///ttp-gateway.db"


def test_environment_overrides_every_value() -> None:
    environ = {
        "TTP_GATEWAY__STORAGE__URL": "postgresql://db/ttp",
        "TTP_GATEWAY__SERVER__WORKERS": "4",
        "TTP_GATEWAY__AUTH__REQUIRE_API_KEY": "false",
        "TTP_GATEWAY__AUTH__API_KEYS__0__KEY": "rotated",
        "TTP_GATEWAY__GPAS__DOMAINS__1__LENGTH": "10",
        "TTP_GATEWAY__LOGGING__LEVEL": "DEBUG",
        "PORT": "9090",
    }
    config = load_config(DEMO_CONFIG, environ=environ)
    assert config.storage_url == "postgresql://db/ttp"
    assert config.server.workers == 4 and config.server.port == 9090
    assert config.data["auth"]["require_api_key"] is False
    assert config.data["auth"]["api_keys"][0]["key"] == "rotated"
    assert config.section("gpas")["domains"][1]["length"] == 10
    assert config.data["logging"]["level"] == "DEBUG"


def test_config_path_from_the_environment() -> None:
    config = load_config(None, environ={"TTP_GATEWAY_CONFIG": str(DEMO_CONFIG)})
    assert config.source == str(DEMO_CONFIG)


@pytest.mark.parametrize("text, message", [
    ("[server]\nport = 0", "port"),
    ("[server]\nport = 'eighty'", "[server]"),
    ("[storage]\nurl = 'oracle://x'", "[storage] url"),
    ("[storage]\ngroup_commit = 'yes'", "group_commit"),
    ("[[auth.api_keys]]\nname = 'a'", "exactly one of key or key_sha256"),
    ("[[auth.api_keys]]\nname = 'a'\nkey = 'x'\n[[auth.api_keys]]\nname = 'a'\nkey = 'y'", "used twice"),
    ("[[auth.api_keys]]\nname = 'a'\nkey = 'x'\ndomains = 'MIRACUM'", "array of strings"),
    ("[server\nport = 1", "toml"),
])
def test_invalid_core_settings(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    assert message.lower() in str(error.value).lower()


@pytest.mark.parametrize("text, expected", [("", None), ("group_commit = 'auto'", None),
                                            ("group_commit = true", True), ("group_commit = false", False)])
def test_group_commit_settings(tmp_path, text: str, expected: bool | None) -> None:
    path = tmp_path / "storage.toml"
    path.write_text("[storage]\n" + text)
    assert load_config(path, environ={}).group_commit is expected
    assert load_config(path, environ={"TTP_GATEWAY__STORAGE__GROUP_COMMIT": "false"}).group_commit is False


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nowhere/ttp.toml", environ={})


def test_unknown_environment_path_is_an_error() -> None:
    with pytest.raises(ConfigError, match="TTP_GATEWAY__AUTH__API_KEYS__9__KEY"):
        load_config(DEMO_CONFIG, environ={"TTP_GATEWAY__AUTH__API_KEYS__9__KEY": "x"})


@pytest.mark.parametrize("domain, message", [
    ({"name": "D", "alphabet": "Klingon"}, "alphabet"),
    ({"name": "D", "generator": "Damm", "alphabet": "Hex"}, "Damm"),
    ({"name": "D", "length": 0}, "length"),
    ({"name": "D", "colour": "blue"}, "unknown settings colour"),
    ({"name": "D", "multi_psn": "yes"}, "multi_psn"),
    ({"alphabet": "Numbers"}, "needs a name"),
])
def test_invalid_domains_are_reported(domain: dict, message: str) -> None:
    config = load_config(DEMO_CONFIG, environ={}).with_overrides(gpas={"domains": [domain], "pairs": []})
    problems = config_problems(config, load_plugins())
    assert problems and message.lower() in " ".join(problems).lower()


def test_pairs_must_name_a_configured_domain() -> None:
    config = load_config(DEMO_CONFIG, environ={}).with_overrides(
        gpas={"pairs": [{"domain": "ELSEWHERE", "original": "a", "pseudonym": "b"}]})
    assert any("not configured" in p for p in config_problems(config, load_plugins()))
