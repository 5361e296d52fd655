"""OAuth2/OIDC bearer tokens, end to end: a local issuer serves its discovery document and JWKS,
the tests mint Keycloak-shaped access tokens and call the gateway with them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from conftest import DEMO_CONFIG, GPAS, client_for
from ttp_gateway.core.auth import Authenticator, IssuerUnavailable
from ttp_gateway.core.auth.oidc import Issuer, OidcVerifier
from ttp_gateway.core.config import ConfigError, load_config
from ttp_gateway.core.errors import NotAuthenticated

REALM_PATH = "/realms/ttp"
AUDIENCE = "ttp-gateway"
LOOKUP = {"resourceType": "Parameters", "parameter": [
    {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": "1001000000022"}]}
OTHER_DOMAIN = {"resourceType": "Parameters", "parameter": [
    {"name": "target", "valueString": "Datensatz-Ebene"}, {"name": "original", "valueString": "x"}]}


class SigningKey:
    """A key pair of the issuer: the private half signs, the public half is published."""

    def __init__(self, kid: str, algorithm: str, private) -> None:
        self.kid, self.algorithm, self.private = kid, algorithm, private

    @classmethod
    def rsa(cls, kid: str, algorithm: str = "RS256") -> "SigningKey":
        return cls(kid, algorithm, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> "SigningKey":
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict:
        family = ECAlgorithm if self.algorithm.startswith("ES") else RSAAlgorithm
        return {**family.to_jwk(self.private.public_key(), as_dict=True),
                "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, claims: dict, **header: object) -> str:
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **header})


class LocalIssuer:
    """An identity provider on 127.0.0.1 that serves what Keycloak serves to resource servers."""

    def __init__(self) -> None:
        self.keys: list[SigningKey] = []
        self.fetches: dict[str, int] = {}
        self.broken = False
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                issuer.fetches[self.path] = issuer.fetches.get(self.path, 0) + 1
                document = issuer.document(self.path)
                if document is None or issuer.broken:
                    self.send_response(404 if document is None else 500)
                    self.end_headers()
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{REALM_PATH}"
        self.jwks_uri = f"{self.url}/protocol/openid-connect/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def document(self, path: str) -> dict | None:
        if path == f"{REALM_PATH}/.well-known/openid-configuration":
            return {"issuer": self.url, "jwks_uri": self.jwks_uri,
                    "token_endpoint": f"{self.url}/protocol/openid-connect/token",
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"]}
        if path == f"{REALM_PATH}/protocol/openid-connect/certs":
            # Keycloak also publishes an encryption key; it must never verify a signature, even
            # where an issuer leaves out its algorithm.
            encryption = {**self.keys[0].jwk(), "kid": "enc-1", "use": "enc"} \
                if self.keys and self.keys[0].algorithm == "RS256" else None
            if encryption:
                del encryption["alg"]
            return {"keys": [k.jwk() for k in self.keys] + ([encryption] if encryption else [])}
        return None

    def jwks_fetches(self) -> int:
        return self.fetches.get(f"{REALM_PATH}/protocol/openid-connect/certs", 0)

    def claims(self, **overrides: object) -> dict:
        """An access token's claims as Keycloak issues them for a client-credentials grant."""
        now = int(time.time())
        claims = {
            "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()), "iss": self.url,
            "aud": [AUDIENCE, "account"], "sub": "5b0f8a52-1d1e-4c43-9c31-3a1d7c6b0e11", "typ": "Bearer",
            "azp": "fhir-pseudonymizer", "preferred_username": "service-account-fhir-pseudonymizer",
            "realm_access": {"roles": ["default-roles-ttp", "offline_access", "gpas-user"]},
            "resource_access": {"account": {"roles": ["manage-account"]}},
            "scope": "profile email", "clientId": "fhir-pseudonymizer",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.rsa("rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey.ec("ec-1")


@pytest.fixture
def issuer(rsa_key, ec_key) -> Iterator[LocalIssuer]:
    served = LocalIssuer()
    served.keys = [rsa_key, ec_key]
    yield served
    served.close()


def issuer_settings(issuer: LocalIssuer, **overrides: object) -> dict:
    settings = {
        "issuer": issuer.url,
        "audience": AUDIENCE,
        "client_id": AUDIENCE,
        "algorithms": ["RS256", "ES256"],
        "roles": [
            {"role": "gpas-user", "endpoints": ["gpas"], "domains": ["MIRACUM"]},
            {"role": "dispatcher-site", "endpoints": ["dispatcher"], "studies": ["mii"],
             "domains": ["dic_muenster"]},
            {"scope": "gpas:all", "endpoints": ["gpas"]},
        ],
    }
    settings.update(overrides)
    return settings


@pytest.fixture
def gateway_config(tmp_path, issuer):
    """The demo configuration on SQLite, trusting the local issuer (authentication does not
    depend on the storage backend)."""
    def make(**overrides: object):
        return load_config(DEMO_CONFIG, environ={}).with_overrides(
            storage={"url": f"sqlite:///{tmp_path / 'gateway.db'}"},
            auth={"oidc": [issuer_settings(issuer, **overrides)]})
    return make


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def post(client, token: str, body: dict = LOOKUP, operation: str = "pseudonymize", endpoint: str = GPAS):
    return client.post(f"{endpoint}/${operation}", json=body, headers=bearer(token))


@pytest.fixture
def gateway(gateway_config):
    with client_for(gateway_config()) as client:
        client.headers.pop("apikey")
        yield client


# --- end to end -----------------------------------------------------------------------------------

def test_a_valid_token_is_a_caller_with_its_roles_scope(gateway, issuer, rsa_key, caplog) -> None:
    caplog.set_level(logging.INFO)
    token = rsa_key.sign(issuer.claims())
    response = post(gateway, token, operation="pseudonymizeAllowCreate")
    assert response.status_code == 200, response.text
    assert response.json()["parameter"][0]["name"] == "pseudonym"
    audit = [r for r in caplog.records if r.name == "ttp_gateway.audit"]
    assert [r.audit["client"] for r in audit] == ["oidc:5b0f8a52-1d1e-4c43-9c31-3a1d7c6b0e11"]
    assert all(token not in f"{r.getMessage()} {vars(r)}" for r in caplog.records)


def test_an_ec_signed_token_works_too(gateway, issuer, ec_key) -> None:
    assert post(gateway, ec_key.sign(issuer.claims())).status_code == 200


def _unsigned(claims: dict, header: dict, signer=None) -> str:
    """A token put together by hand, for the forgeries no JOSE library will make."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = signer(signing_input.encode()) if signer else b""
    return f"{signing_input}.{b64(signature)}"


def _forgeries(issuer: LocalIssuer, rsa_key: SigningKey) -> dict[str, str]:
    now = int(time.time())
    impostor = SigningKey("rsa-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    public_pem = rsa_key.public_pem()
    return {
        "expired": rsa_key.sign(issuer.claims(exp=now - 120, iat=now - 600)),
        "wrong issuer": rsa_key.sign(issuer.claims(iss="https://idp.example.org/realms/other")),
        "issuer with a trailing slash": rsa_key.sign(issuer.claims(iss=issuer.url + "/")),
        "wrong audience": rsa_key.sign(issuer.claims(aud="account")),
        "no audience": rsa_key.sign(issuer.claims(aud=None)),
        "no expiry": rsa_key.sign(issuer.claims(exp=None)),
        "issued in the future": rsa_key.sign(issuer.claims(iat=now + 3600, exp=now + 4000)),
        "bad signature": impostor.sign(issuer.claims()),
        "unknown kid": rsa_key.sign(issuer.claims(), kid="rsa-unknown"),
        "encryption key's kid": rsa_key.sign(issuer.claims(), kid="enc-1"),
        "alg none": _unsigned(issuer.claims(), {"alg": "none", "kid": "rsa-1", "typ": "JWT"}),
        "HS256 keyed with the public key": _unsigned(
            issuer.claims(), {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"},
            lambda data: hmac.new(public_pem, data, hashlib.sha256).digest()),
        "RS256 header on the EC key": _unsigned(issuer.claims(), {"alg": "RS256", "kid": "ec-1"},
                                                lambda data: b"\x00" * 256),
        "not allowed PS256": SigningKey("rsa-1", "PS256", rsa_key.private).sign(issuer.claims()),
        "ID token": rsa_key.sign(issuer.claims(typ="ID", aud=AUDIENCE)),
        "no mapped role": rsa_key.sign(issuer.claims(realm_access={"roles": ["offline_access"]})),
        "role of another client": rsa_key.sign(issuer.claims(
            realm_access={"roles": []}, resource_access={"account": {"roles": ["gpas-user"]}})),
        "tampered claims": rsa_key.sign(issuer.claims()).rsplit(".", 2)[0] + "."
        + base64.urlsafe_b64encode(json.dumps(issuer.claims(sub="admin")).encode()).rstrip(b"=").decode()
        + "." + rsa_key.sign(issuer.claims()).rsplit(".", 1)[1],
        "garbage": "not-a-jwt",
    }


FORGERIES = ["expired", "wrong issuer", "issuer with a trailing slash", "wrong audience", "no audience",
             "no expiry", "issued in the future", "bad signature", "unknown kid", "encryption key's kid",
             "alg none", "HS256 keyed with the public key", "RS256 header on the EC key",
             "not allowed PS256", "ID token", "no mapped role", "role of another client",
             "tampered claims", "garbage"]


def test_every_forgery_and_invalid_token_is_401(gateway, issuer, rsa_key) -> None:
    forgeries = _forgeries(issuer, rsa_key)
    assert sorted(forgeries) == sorted(FORGERIES)
    for name, token in forgeries.items():
        response = post(gateway, token)
        assert response.status_code == 401, f"{name}: {response.text}"
        outcome = response.json()["issue"][0]
        assert outcome["code"] == "security"
        assert outcome["diagnostics"] == ("expired token" if name == "expired" else "invalid credentials"), name
        assert token not in response.text
        assert 'Bearer realm="ttp-gateway"' in response.headers["www-authenticate"]


def test_roles_scope_endpoints_and_domains(gateway, issuer, rsa_key) -> None:
    gpas_user = rsa_key.sign(issuer.claims())
    assert post(gateway, gpas_user, OTHER_DOMAIN).status_code == 401  # domain not granted
    site = rsa_key.sign(issuer.claims(realm_access={"roles": []},
                                      resource_access={AUDIENCE: {"roles": ["dispatcher-site"]}}))
    assert post(gateway, site).status_code == 401  # a dispatcher role at the gPAS endpoint
    tasks = {"resourceType": "Parameters", "parameter": [
        {"name": "study", "valueString": "mii"}, {"name": "target", "valueString": "dic_muenster"}]}
    assert post(gateway, site, tasks, "requestTasks", "/ttp-fhir/fhir/dispatcher").status_code == 200
    tasks["parameter"][0]["valueString"] = "num"
    assert post(gateway, site, tasks, "requestTasks", "/ttp-fhir/fhir/dispatcher").status_code == 401
    by_scope = rsa_key.sign(issuer.claims(realm_access=None, scope="profile gpas:all"))
    assert post(gateway, by_scope, OTHER_DOMAIN, "pseudonymizeAllowCreate").status_code == 200


def test_several_roles_never_combine_one_roles_domains_with_anothers_operations(gateway_config, issuer,
                                                                                 rsa_key) -> None:
    config = gateway_config(roles=[
        {"role": "reader", "operations": ["pseudonymize"]},
        {"role": "creator", "operations": ["pseudonymizeAllowCreate"], "domains": ["Datensatz-Ebene"]},
    ])
    token = rsa_key.sign(issuer.claims(realm_access={"roles": ["reader", "creator"]}))
    with client_for(config) as client:
        client.headers.pop("apikey")
        assert post(client, token).status_code == 200
        assert post(client, token, OTHER_DOMAIN, "pseudonymizeAllowCreate").status_code == 200
        assert post(client, token, LOOKUP, "pseudonymizeAllowCreate").status_code == 401


def test_key_rotation_a_new_kid_is_fetched(gateway_config, issuer, rsa_key) -> None:
    rotated = SigningKey.rsa("rsa-2")
    with client_for(gateway_config(jwks_refresh_seconds=0)) as client:
        client.headers.pop("apikey")
        assert post(client, rsa_key.sign(issuer.claims())).status_code == 200
        assert post(client, rotated.sign(issuer.claims())).status_code == 401
        issuer.keys = [rotated, *issuer.keys]
        assert post(client, rotated.sign(issuer.claims())).status_code == 200
        assert post(client, rsa_key.sign(issuer.claims())).status_code == 200


def test_unknown_kids_do_not_make_the_gateway_hammer_the_issuer(gateway, issuer, rsa_key) -> None:
    assert post(gateway, rsa_key.sign(issuer.claims())).status_code == 200
    for index in range(20):
        assert post(gateway, rsa_key.sign(issuer.claims(), kid=f"forged-{index}")).status_code == 401
    assert issuer.jwks_fetches() == 1


def test_an_unreachable_issuer_answers_503_not_401(gateway, issuer, rsa_key) -> None:
    issuer.broken = True
    response = post(gateway, rsa_key.sign(issuer.claims()))
    assert response.status_code == 503
    assert response.json()["issue"][0]["code"] == "transient"


def test_configured_jwks_uri_skips_discovery(gateway_config, issuer, rsa_key) -> None:
    with client_for(gateway_config(jwks_uri=issuer.jwks_uri)) as client:
        client.headers.pop("apikey")
        assert post(client, rsa_key.sign(issuer.claims())).status_code == 200
    assert not any("well-known" in path for path in issuer.fetches)


def test_bearer_comes_before_api_keys(gateway, issuer, rsa_key) -> None:
    good = rsa_key.sign(issuer.claims())
    assert gateway.post(f"{GPAS}/$pseudonymize", json=LOOKUP,
                        headers={**bearer(good), "apikey": "wrong"}).status_code == 200
    bad = rsa_key.sign(issuer.claims(aud="account"))
    assert gateway.post(f"{GPAS}/$pseudonymize", json=LOOKUP,
                        headers={**bearer(bad), "apikey": "abcdef12345"}).status_code == 401


# --- the verifier on its own ----------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier(issuer: LocalIssuer, clock: FakeClock, **overrides: object) -> OidcVerifier:
    return OidcVerifier([Issuer.from_settings(issuer_settings(issuer, **overrides), clock=clock)])


def test_refetching_is_rate_limited_and_old_keys_expire(issuer, rsa_key) -> None:
    clock = FakeClock()
    tokens = verifier(issuer, clock, jwks_refresh_seconds=60, jwks_max_age_seconds=600)
    assert tokens.authenticate(rsa_key.sign(issuer.claims())).name.startswith("oidc:")
    rotated = SigningKey.rsa("rsa-3")
    issuer.keys = [rotated]
    with pytest.raises(NotAuthenticated):
        tokens.authenticate(rotated.sign(issuer.claims()))  # a new kid, but fetched a moment ago
    assert issuer.jwks_fetches() == 1
    clock.now += 61
    assert tokens.authenticate(rotated.sign(issuer.claims())).name.startswith("oidc:")
    assert issuer.jwks_fetches() == 2
    clock.now += 600  # the withdrawn rsa-1 goes with the next fetch once the set is old
    with pytest.raises(NotAuthenticated):
        tokens.authenticate(rsa_key.sign(issuer.claims()))
    assert issuer.jwks_fetches() == 3


def test_an_old_key_set_serves_on_while_the_issuer_is_down(issuer, rsa_key) -> None:
    clock = FakeClock()
    tokens = verifier(issuer, clock, jwks_max_age_seconds=600)
    tokens.authenticate(rsa_key.sign(issuer.claims()))
    issuer.broken = True
    clock.now += 700
    assert tokens.authenticate(rsa_key.sign(issuer.claims())).name.startswith("oidc:")
    with pytest.raises(IssuerUnavailable):
        tokens.authenticate(rsa_key.sign(issuer.claims(), kid="rsa-new"))


def test_discovery_must_name_the_configured_issuer(issuer, rsa_key, monkeypatch) -> None:
    original = issuer.document
    monkeypatch.setattr(issuer, "document", lambda path: {**original(path), "issuer": "https://evil.example"}
                        if "well-known" in path else original(path))
    with pytest.raises(IssuerUnavailable):
        verifier(issuer, FakeClock()).authenticate(rsa_key.sign(issuer.claims()))


def test_a_token_without_kid_needs_a_single_fitting_key(issuer, rsa_key, ec_key) -> None:
    issuer.keys = [rsa_key]
    token = jwt.encode(issuer.claims(), rsa_key.private, algorithm="RS256")
    assert verifier(issuer, FakeClock()).authenticate(token).name.startswith("oidc:")
    issuer.keys = [rsa_key, SigningKey.rsa("rsa-4")]
    with pytest.raises(NotAuthenticated):
        verifier(issuer, FakeClock()).authenticate(token)


def test_caller_names_audience_lists_authorised_parties_and_leeway(issuer, rsa_key) -> None:
    clock = FakeClock()
    tokens = verifier(issuer, clock, name_claim="azp", audience=["other", AUDIENCE],
                      authorized_parties=["fhir-pseudonymizer"], leeway_seconds=60)
    now = int(time.time())
    assert tokens.authenticate(rsa_key.sign(issuer.claims(exp=now - 30))).name == "oidc:fhir-pseudonymizer"
    with pytest.raises(NotAuthenticated, match="expired token"):
        tokens.authenticate(rsa_key.sign(issuer.claims(exp=now - 90)))
    with pytest.raises(NotAuthenticated, match="invalid credentials"):
        tokens.authenticate(rsa_key.sign(issuer.claims(azp="fts-trust-center-agent")))


def test_authenticator_interface_for_bearer_tokens(issuer, rsa_key) -> None:
    auth = Authenticator.from_settings({"oidc": [issuer_settings(issuer)]})
    headers = {"authorization": f"Bearer {rsa_key.sign(issuer.claims())}"}
    assert auth.header_credentials(headers) and auth.blocking(headers)
    client = auth.authenticate(headers, None, "gpas")
    assert client.may_call("gpas", "pseudonymize") and not client.may_call("dispatcher", "requestTasks")
    assert client.may_use("domains", "MIRACUM") and not client.may_use("domains", "Datensatz-Ebene")
    assert auth.challenge() == 'Bearer realm="ttp-gateway"'
    with pytest.raises(NotAuthenticated):
        auth.authenticate({"authorization": "Bearer"}, None, "gpas")
    with pytest.raises(NotAuthenticated):  # Basic is not configured here
        auth.authenticate({"authorization": "Basic dXNlcjpwYXNz"}, None, "gpas")


# --- configuration --------------------------------------------------------------------------------

def _oidc_config_error(tmp_path, issuer_toml: str) -> str:
    path = tmp_path / "auth.toml"
    path.write_text(issuer_toml)
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    return str(error.value)


GOOD_ISSUER = ('[[auth.oidc]]\nissuer = "https://kc.example.org/realms/ttp"\naudience = "ttp-gateway"\n'
               '[[auth.oidc.roles]]\nrole = "gpas-user"\nendpoints = ["gpas"]\n')


def test_a_keycloak_issuer_configuration_loads(tmp_path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(GOOD_ISSUER + '[[auth.oidc]]\nissuer = "http://localhost:8180/realms/dev"\n'
                    'audience = ["ttp-gateway"]\nalgorithms = ["ES256"]\n[[auth.oidc.roles]]\nscope = "gpas"\n')
    assert len(load_config(path, environ={}).data["auth"]["oidc"]) == 2


@pytest.mark.parametrize("change, message", [
    (("https://kc.example.org", "http://kc.example.org"), "https"),
    (('audience = "ttp-gateway"\n', ""), "needs an audience"),
    (('audience = "ttp-gateway"\n', 'audience = "ttp-gateway"\nalgorithms = ["HS256"]\n'), "never none or HS"),
    (('audience = "ttp-gateway"\n', 'audience = "ttp-gateway"\nalgorithms = ["none"]\n'), "never none or HS"),
    (('audience = "ttp-gateway"\n', 'audience = "ttp-gateway"\njwks_uri = "http://kc.example.org/c"\n'),
     "jwks_uri must be an https"),
    (('audience = "ttp-gateway"\n', 'audience = "ttp-gateway"\nleeway = 30\n'), "unknown setting leeway"),
    (('role = "gpas-user"\n', ''), "needs a role or a scope"),
    (('[[auth.oidc.roles]]\nrole = "gpas-user"\nendpoints = ["gpas"]\n', ''), "needs [[auth.oidc.roles]]"),
    (('endpoints = ["gpas"]', 'endpoints = "gpas"'), "array of strings"),
])
def test_invalid_issuer_settings(tmp_path, change: tuple[str, str], message: str) -> None:
    assert message in _oidc_config_error(tmp_path, GOOD_ISSUER.replace(*change))


def test_an_issuer_configured_twice(tmp_path) -> None:
    assert "configured twice" in _oidc_config_error(tmp_path, GOOD_ISSUER + GOOD_ISSUER)
