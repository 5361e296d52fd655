"""`ttp-gateway gics ...` admin commands on the real store of every backend, the checks of the
`[gics]` configuration, and seeding it at start-up."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from gics_helpers import BASE, DEMO_CONFIG, EXAMPLES, demo_config, demo_settings, gateway, person, post
from ttp_gateway.core.app import create_app
from ttp_gateway.core.cli import main
from ttp_gateway.core.config import load_config
from ttp_gateway.plugins.gics import service as gics_service
from ttp_gateway.plugins.gics import ttp_check_config


@pytest.fixture
def config_file(tmp_path, monkeypatch, storage_url):
    """The demo configuration on the backend under test, whose store a server has seeded once
    (admin commands themselves do not seed)."""
    with gateway(storage_url):
        pass
    path = tmp_path / "gateway.toml"
    path.write_text(DEMO_CONFIG.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv("TTP_GATEWAY__STORAGE__URL", storage_url)
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_accepts_the_demo(capsys) -> None:
    code, out, _ = run(capsys, "check-config", "--config", str(DEMO_CONFIG))
    assert code == 0, out


def test_listing(capsys, config_file) -> None:
    code, out, _ = run(capsys, "--config", config_file, "gics", "list")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["MII", "num", "opt-out"]
    code, out, _ = run(capsys, "--config", config_file, "gics", "list", "num")
    assert code == 0 and out.splitlines() == [
        "policy    MDAT_erheben|1.1  https://ths-greifswald.de/fhir/CodeSystem/gics/Policy  "
        "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3|2.16.840.1.113883.3.1937.777.24.5.3.6",
        "policy    MDAT_speichern_verarbeiten|1.1  https://ths-greifswald.de/fhir/CodeSystem/gics/Policy  "
        "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3|2.16.840.1.113883.3.1937.777.24.5.3.7",
        "module    MDAT_NUM|1.0  grants MDAT_erheben|1.1, MDAT_speichern_verarbeiten|1.1",
        "template  Einwilligung NUM|1.0  CONSENT  modules MDAT_NUM|1.0!"]
    code, _, err = run(capsys, "--config", config_file, "gics", "list", "nowhere")
    assert code == 1 and "unknown consent domain" in err
    code, out, _ = run(capsys, "--config", config_file, "gics", "count", "MII")
    assert (code, out.strip()) == (0, "6")


def test_admin_commands_do_not_seed(capsys, tmp_path, monkeypatch) -> None:
    """A set-up gateway, no start-up: on an empty store there is nothing to list."""
    monkeypatch.setenv("TTP_GATEWAY__STORAGE__URL", f"sqlite:///{tmp_path / 'empty.db'}")
    code, out, _ = run(capsys, "--config", str(DEMO_CONFIG), "gics", "list")
    assert (code, out) == (0, "")


def test_creating_versions(capsys, config_file) -> None:
    gics = ("--config", config_file, "gics")
    assert run(capsys, *gics, "create-domain", "study", "--signer-id-types", "Pseudonym", "CaseId")[0] == 0
    assert run(capsys, *gics, "create-domain", "MII")[0] == 1  # exists
    assert run(capsys, *gics, "create-domain", "MII", "--replace")[0] == 0
    assert run(capsys, *gics, "create-policy", "num", "BIOMAT_erheben", "1.0",
               "--code", "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3|2.16.840.1.113883.3.1937.777.24.5.3.19")[0] == 0
    code, _, err = run(capsys, *gics, "create-policy", "num", "MDAT_erheben", "1.1")
    assert code == 1 and "a change is a new version" in err
    code, _, err = run(capsys, *gics, "create-module", "num", "BIOMAT", "1.0", "--policy", "Unbekannt|1.0")
    assert code == 1 and "unknown policy" in err
    code, _, err = run(capsys, *gics, "create-module", "num", "BIOMAT", "1.0", "--policy", "MDAT_erheben|1.1@fünf Jahre")
    assert code == 1 and "duration" in err
    code, out, _ = run(capsys, *gics, "create-template", "num", "Einwilligung NUM", "2.0", "--module", "MDAT_NUM|1.0!",
                       "--expires-after", "P30Y")
    assert code == 0 and "Einwilligung NUM|2.0" in out
    code, _, err = run(capsys, *gics, "create-template", "num", "Widerruf", "1.0", "--type", "SOMETIMES",
                       "--module", "MDAT_NUM|1.0")
    assert code == 1 and "type must be one of" in err


def test_import_and_add_consent(capsys, config_file, tmp_path) -> None:
    catalogue = tmp_path / "more.toml"
    catalogue.write_text('[[gics.domains]]\nname = "extra"\n\n[[gics.policies]]\ndomain = "extra"\nname = "P"\n'
                         'version = "1"\n', encoding="utf-8")
    code, out, _ = run(capsys, "--config", config_file, "gics", "import", str(catalogue))
    assert code == 0 and out.startswith("stored 1 domains, 1 policies")
    broken = tmp_path / "broken.toml"
    broken.write_text('[[gics.modules]]\ndomain = "MII"\nname = "M"\nversion = "1"\npolicies = ["Nope|1"]\n')
    more = tmp_path / "more-modules.toml"
    more.write_text('[[gics.modules]]\ndomain = "MII"\nname = "M"\nversion = "1"\npolicies = ["IDAT_erheben|1.1"]\n')
    assert run(capsys, "--config", config_file, "gics", "import", str(more))[0] == 0
    code, _, err = run(capsys, "--config", config_file, "gics", "import", str(broken))
    assert code == 1 and "unknown policy" in err
    request = EXAMPLES / "Parameters-Parameters-AddConsent-request-example-1.json"
    code, out, _ = run(capsys, "--config", config_file, "gics", "add-consent", str(request))
    assert code == 0 and out.startswith("recorded consent ")
    assert run(capsys, "--config", config_file, "gics", "count", "MII")[1].strip() == "7"
    not_parameters = tmp_path / "patient.json"
    not_parameters.write_text(json.dumps({"resourceType": "Patient"}))
    assert run(capsys, "--config", config_file, "gics", "add-consent", str(not_parameters))[0] == 1
    wrong_domain = json.loads(request.read_text())
    next(p for p in wrong_domain["parameter"] if p["name"] == "domain")["valueString"] = "extra"
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(wrong_domain))
    code, _, err = run(capsys, "--config", config_file, "gics", "add-consent", str(wrong))
    assert code == 1 and "another domain" in err
    assert run(capsys, "--config", config_file, "gics", "count", "MII")[1].strip() == "7"


def test_a_running_server_sees_what_the_command_line_created(capsys, config_file, storage_url, monkeypatch) -> None:
    monkeypatch.setattr(gics_service, "MISS_RELOAD_SECONDS", 0.0)
    gics = ("--config", config_file, "gics")
    with gateway(storage_url) as client:
        assert post(client, "allConsentsForDomain", {"resourceType": "Parameters", "parameter": [
            {"name": "domain", "valueString": "study"}]}).status_code == 404
        assert run(capsys, *gics, "create-domain", "study")[0] == 0
        assert run(capsys, *gics, "create-policy", "study", "P", "1")[0] == 0
        assert run(capsys, *gics, "create-module", "study", "M", "1", "--policy", "P|1")[0] == 0
        assert run(capsys, *gics, "create-template", "study", "T", "1", "--module", "M|1!")[0] == 0
        check = {"resourceType": "Parameters", "parameter": [
            person("x"), {"name": "domain", "valueString": "study"},
            {"name": "policy", "valueCoding": {"code": "P"}}, {"name": "version", "valueString": "1"}]}
        answer = post(client, "isConsented", check)
        assert answer.status_code == 200 and answer.json()["parameter"][0]["valueBoolean"] is False
        assert client.get(f"{BASE}/Questionnaire?useContextIdentifier=study").json()["total"] == 1


def _problems(**changes) -> list[str]:
    settings = demo_settings()
    for key, value in changes.items():
        settings[key] = value(settings[key]) if callable(value) else value
    config = load_config(DEMO_CONFIG, environ={}).with_overrides(gics=settings)
    return ttp_check_config(config)


@pytest.mark.parametrize("changes, problem", [
    ({}, None),
    ({"timezone": "Mars/Olympus"}, "not a known time zone"),
    ({"domains": lambda d: d + [d[0]]}, "configured twice"),
    ({"domains": lambda d: [{**d[0], "signer_id_types": []}] + d[1:]}, "signer_id_types"),
    ({"domains": lambda d: [{**d[0], "colour": "blue"}] + d[1:]}, "unknown settings colour"),
    ({"policies": lambda p: p + [{"domain": "nowhere", "name": "X", "version": "1"}]}, "unknown domain"),
    ({"policies": lambda p: p + [{"domain": "MII", "name": "X|Y", "version": "1"}]}, "must not contain"),
    ({"policies": lambda p: p + [{"domain": "MII", "name": "X" * 256, "version": "1"}]}, "longer than"),
    ({"policies": lambda p: p + [{"domain": "MII", "name": "X", "version": "1", "codes": ["no-separator"]}]},
     "system|code"),
    ({"modules": lambda m: m + [{"domain": "MII", "name": "X", "version": "1", "policies": ["Missing|1"]}]},
     "unknown policy"),
    ({"modules": lambda m: m + [{"domain": "MII", "name": "X", "version": "1",
                                 "policies": [{"policy": "MDAT_erheben|1.1", "expires_after": "5 years"}]}]},
     "duration"),
    ({"templates": lambda t: t + [{"domain": "MII", "name": "X", "version": "1", "modules": ["Missing|1"]}]},
     "unknown module"),
    ({"templates": lambda t: t + [{"domain": "MII", "name": "X", "version": "1", "modules": []}]},
     "at least one module"),
    ({"templates": lambda t: t + [{"domain": "MII", "name": "X", "version": "1", "type": "MAYBE",
                                   "modules": ["PATDAT_erheben_speichern_nutzen|1.8"]}]}, "type must be one of"),
    ({"consents": lambda c: c + [{**c[0], "template": "Unbekannt|1"}]}, "unknown template"),
    ({"consents": lambda c: c + [{**c[0], "signer_ids": ["CaseId|1"]}]}, "not a signer id type"),
    ({"consents": lambda c: c + [{**c[0], "answers": {"Fremd|1": "ACCEPTED"}}]}, "not a module of the template"),
    ({"consents": lambda c: c + [{**c[0], "answers": {"PATDAT_erheben_speichern_nutzen|1.6": "PERHAPS"}}]},
     "not a valid ConsentStatus"),
    ({"consents": lambda c: c + [{**c[0], "date": "gestern"}]}, "not a date"),
])
def test_configuration_problems(changes: dict, problem: str | None) -> None:
    problems = _problems(**changes)
    if problem is None:
        assert problems == []
    else:
        assert problems and problem in problems[0], problems


def test_workers_starting_together_seed_once(storage_url) -> None:
    """Every worker stores the configured catalogue and consents at start-up; started together
    on one store, they leave one catalogue and each configured consent once."""
    def start(_: int):
        app = create_app(demo_config(storage_url))
        app.gateway.repository.close()

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(start, range(3)))
    with gateway(storage_url) as client:  # and once more, later
        answer = post(client, "allConsentsForDomain", {"resourceType": "Parameters", "parameter": [
            {"name": "domain", "valueString": "MII"}]}).json()
        studies = client.get(f"{BASE}/ResearchStudy").json()
    assert answer["total"] == 6 and len({e["resource"]["id"] for e in answer["entry"]}) == 6
    assert studies["total"] == 3
