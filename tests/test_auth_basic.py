"""HTTP Basic users: argon2id hashes from the configuration, scopes like API keys, and a short
memory of verified pairs so that argon2 is not paid on every request."""

from __future__ import annotations

import base64
import io
import logging

import pytest
from argon2 import PasswordHasher

from conftest import DEMO_CONFIG, GPAS, client_for
from ttp_gateway.core.auth import Authenticator, Client, PasswordBook
from ttp_gateway.core.auth.passwords import User, user_from_settings
from ttp_gateway.core.cli import main
from ttp_gateway.core.config import ConfigError, load_config
from ttp_gateway.core.errors import NotAuthenticated

# Cheap parameters keep the suite fast; the gateway verifies whatever parameters a hash names.
HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
SITE_PASSWORD = "Pässwort:mit Doppelpunkt"
LOOKUP = {"resourceType": "Parameters", "parameter": [
    {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": "1001000000022"}]}
OTHER_DOMAIN = {"resourceType": "Parameters", "parameter": [
    {"name": "target", "valueString": "Datensatz-Ebene"}, {"name": "original", "valueString": "x"}]}


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def users() -> list[dict]:
    return [
        {"name": "fhir-pseudonymizer", "password_hash": HASHER.hash(SITE_PASSWORD),
         "endpoints": ["gpas"], "domains": ["MIRACUM"]},
        {"name": "trust-center-agent", "password_hash": HASHER.hash("agent-secret"),
         "endpoints": ["dispatcher"]},
    ]


@pytest.fixture
def gateway(tmp_path, users):
    config = load_config(DEMO_CONFIG, environ={}).with_overrides(
        storage={"url": f"sqlite:///{tmp_path / 'gateway.db'}"}, auth={"users": users})
    with client_for(config) as client:
        client.headers.pop("apikey")
        yield client


def post(client, headers: dict, body: dict = LOOKUP, operation: str = "pseudonymizeAllowCreate"):
    return client.post(f"{GPAS}/${operation}", json=body, headers=headers)


def test_a_user_with_the_right_password_is_a_caller(gateway, caplog) -> None:
    caplog.set_level(logging.INFO)
    response = post(gateway, basic("fhir-pseudonymizer", SITE_PASSWORD))
    assert response.status_code == 200, response.text
    audit = [r for r in caplog.records if r.name == "ttp_gateway.audit"]
    assert [r.audit["client"] for r in audit] == ["fhir-pseudonymizer"]
    assert all(SITE_PASSWORD not in f"{r.getMessage()} {vars(r)}" for r in caplog.records)


@pytest.mark.parametrize("headers", [
    basic("fhir-pseudonymizer", "wrong"),
    basic("fhir-pseudonymizer", SITE_PASSWORD.upper()),
    basic("nobody", SITE_PASSWORD),
    basic("", SITE_PASSWORD),
    {"Authorization": "Basic not*base64"},
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    {"Authorization": "Basic " + base64.b64encode(b"fhir-pseudonymizer:\xff").decode()},
    {"Authorization": "Digest username=\"fhir-pseudonymizer\""},
])
def test_wrong_passwords_unknown_users_and_malformed_headers_are_401(gateway, headers) -> None:
    response = post(gateway, headers)
    assert response.status_code == 401
    assert response.json()["issue"][0]["diagnostics"] == "invalid credentials"
    assert response.headers["www-authenticate"] == 'Basic realm="ttp-gateway", charset="UTF-8"'


def test_users_are_scoped_like_api_keys(gateway) -> None:
    site = basic("fhir-pseudonymizer", SITE_PASSWORD)
    assert post(gateway, site, OTHER_DOMAIN).status_code == 401
    agent = basic("trust-center-agent", "agent-secret")
    assert post(gateway, agent).status_code == 401  # a dispatcher user at the gPAS endpoint
    tasks = {"resourceType": "Parameters", "parameter": [
        {"name": "study", "valueString": "mii"}, {"name": "target", "valueString": "dic_muenster"}]}
    assert gateway.post("/ttp-fhir/fhir/dispatcher/$requestTasks", json=tasks, headers=agent).status_code == 200


def test_basic_comes_before_api_keys(gateway) -> None:
    good, bad = basic("fhir-pseudonymizer", SITE_PASSWORD), basic("fhir-pseudonymizer", "wrong")
    assert post(gateway, {**good, "apikey": "wrong"}).status_code == 200
    assert post(gateway, {**bad, "apikey": "abcdef12345"}).status_code == 401
    with_body_key = {"resourceType": "Parameters", "parameter": [
        {"name": "apikey", "valueString": "abcdef12345"}, *LOOKUP["parameter"]]}
    assert post(gateway, bad, with_body_key).status_code == 401


# --- the password book on its own -----------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def counted(users, monkeypatch):
    """A password book on a fake clock that counts its argon2 verifications."""
    clock = Clock()
    book = PasswordBook([user_from_settings(u) for u in users], remember_seconds=30, clock=clock)
    verifications: list[str] = []

    class CountingHasher:
        def verify(self, password_hash: str, password: str) -> bool:
            verifications.append(password)
            return HASHER.verify(password_hash, password)

    monkeypatch.setattr(book, "_hasher", CountingHasher())
    return book, clock, verifications


def test_verified_pairs_are_remembered_briefly(counted) -> None:
    book, clock, verifications = counted
    assert not book.remembers("fhir-pseudonymizer", SITE_PASSWORD)
    for _ in range(5):
        assert book.authenticate("fhir-pseudonymizer", SITE_PASSWORD).name == "fhir-pseudonymizer"
    assert len(verifications) == 1 and book.remembers("fhir-pseudonymizer", SITE_PASSWORD)
    clock.now += 31
    assert not book.remembers("fhir-pseudonymizer", SITE_PASSWORD)
    book.authenticate("fhir-pseudonymizer", SITE_PASSWORD)
    assert len(verifications) == 2


def test_a_wrong_password_is_never_remembered(counted) -> None:
    book, _, verifications = counted
    for _ in range(3):
        with pytest.raises(NotAuthenticated):
            book.authenticate("fhir-pseudonymizer", "wrong")
    assert len(verifications) == 3 and not book.remembers("fhir-pseudonymizer", "wrong")
    book.authenticate("fhir-pseudonymizer", SITE_PASSWORD)
    with pytest.raises(NotAuthenticated):  # a remembered pair does not vouch for another password
        book.authenticate("fhir-pseudonymizer", SITE_PASSWORD + "x")


def test_unknown_users_cost_a_verification_too(counted) -> None:
    book, _, verifications = counted
    with pytest.raises(NotAuthenticated):
        book.authenticate("nobody", "guess")
    assert verifications == ["guess"]


def test_the_authenticator_says_when_basic_would_block(users) -> None:
    auth = Authenticator.from_settings({"users": users})
    headers = {"authorization": basic("trust-center-agent", "agent-secret")["Authorization"]}
    assert auth.header_credentials(headers) and auth.blocking(headers)
    assert auth.authenticate(headers, None, "dispatcher").name == "trust-center-agent"
    assert not auth.blocking(headers)
    assert auth.blocking({"authorization": basic("trust-center-agent", "wrong")["Authorization"]})


# --- command line and configuration ---------------------------------------------------------------

def test_hash_password_needs_no_configuration(capsys, monkeypatch) -> None:
    monkeypatch.setenv("TTP_GATEWAY_CONFIG", "/nowhere/missing.toml")
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery staple\n"))
    assert main(["users", "hash-password"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("$argon2id$")
    assert PasswordHasher().verify(printed, "correct horse battery staple")
    book = PasswordBook([User(Client(name="x"), printed)])
    assert book.authenticate("x", "correct horse battery staple").name == "x"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["users", "hash-password"]) == 1


def _config_error(tmp_path, text: str) -> str:
    path = tmp_path / "auth.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    return str(error.value)


def test_users_in_the_configuration_load(tmp_path, users) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(f'[[auth.users]]\nname = "site"\npassword_hash = "{users[0]["password_hash"]}"\n'
                    'domains = ["MIRACUM"]\n')
    assert load_config(path, environ={}).data["auth"]["users"][0]["name"] == "site"


@pytest.mark.parametrize("user, message", [
    ('name = "a"\npassword_hash = "geheim"', "argon2id hash"),
    ('name = "a"\npassword_hash = "$argon2i$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"',
     "argon2id hash"),
    ('name = "a"\npassword_hash = "$argon2id$v=19$m=1024,t=1,p=1$garbage"', "not a well-formed"),
    ('name = "a:b"\npassword_hash = "HASH"', "cannot contain ':'"),
    ('password_hash = "HASH"', "needs a name"),
    ('name = "a"\npassword_hash = "HASH"\npassword = "x"', "unknown setting password"),
    ('name = "a"\npassword_hash = "HASH"\ndomains = "MIRACUM"', "array of strings"),
])
def test_invalid_users(tmp_path, users, user: str, message: str) -> None:
    text = "[[auth.users]]\n" + user.replace("HASH", users[0]["password_hash"])
    assert message in _config_error(tmp_path, text)


def test_a_user_and_a_key_may_not_share_a_name(tmp_path, users) -> None:
    text = (f'[[auth.api_keys]]\nname = "site"\nkey = "k"\n'
            f'[[auth.users]]\nname = "site"\npassword_hash = "{users[0]["password_hash"]}"\n')
    assert "used twice" in _config_error(tmp_path, text)
