"""OAuth2 / OpenID Connect bearer tokens: JWTs signed by a configured issuer, roles mapped to scopes.

    [[auth.oidc]]
    issuer = "https://keycloak.example.org/realms/ttp"   # exactly the tokens' `iss`
    audience = "ttp-gateway"                            # one of the tokens' `aud` must match
    client_id = "ttp-gateway"                           # roles under resource_access.<client_id> count
    [[auth.oidc.roles]]
    role = "gpas-user"
    endpoints = ["gpas"]
    domains = ["MIRACUM"]

A token is accepted when its signature verifies with a key of the issuer's JWKS (an asymmetric
algorithm from the issuer's list, the key's type and curve matching it), it comes from a
configured issuer, names a configured audience (and authorised party, where configured), has
not expired (give or take `leeway_seconds`), and at least one of its roles or scopes is mapped.
Roles are read from Keycloak's `realm_access.roles`, from `resource_access.<client_id>.roles`
and from an optional `roles_claim` path; scopes from `scope` (or `scp`). A token matching
several mappings may do what any of them allows. A valid token that matches no mapping is
refused like an invalid one: the gateway knows no caller without a scope.

The JWKS is fetched from `jwks_uri`, or from the issuer's discovery document, when first needed;
it is fetched again when a token names a key it does not hold, at most once per
`jwks_refresh_seconds`, so that a flood of forged key ids cannot make the gateway hammer the
issuer, and when it is older than `jwks_max_age_seconds`, so that withdrawn keys stop working.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

import jwt
from jwt.exceptions import ExpiredSignatureError, InvalidKeyError, PyJWKError, PyJWTError

from ..errors import FhirError, NotAuthenticated
from .scopes import Client, client_from_settings

log = logging.getLogger("ttp_gateway.auth")

INVALID = "invalid credentials"
EXPIRED = "expired token"
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_ALGORITHMS = ASYMMETRIC_ALGORITHMS[:9]
MAX_TOKEN_CHARS = 16 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "EdDSA": "Ed25519"}
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


class IssuerUnavailable(FhirError):
    """The issuer's keys cannot be fetched, so no token of it can be checked now (503)."""

    status = 503
    issue_code = "transient"


def url_problem(url: object) -> str | None:
    """Why a URL cannot name an issuer or its keys: only https, or http to this host."""
    if not isinstance(url, str):
        return "must be a URL"
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS:
        return None
    return "must be an https URL (http only for localhost)"


@dataclass(frozen=True)
class RoleMapping:
    """A role and/or an OAuth2 scope that a token must carry, and the scope it then grants."""

    role: str | None
    scope: str | None
    grant: Client

    def matches(self, roles: set[str], scopes: set[str]) -> bool:
        return ((self.role is None or self.role in roles)
                and (self.scope is None or self.scope in scopes))


class KeySet:
    """An issuer's signing keys as its JWKS lists them, fetched when needed."""

    def __init__(self, issuer: str, jwks_uri: str | None, *, refresh_seconds: float = 60.0,
                 max_age_seconds: float = 3600.0, timeout_seconds: float = 5.0,
                 ca_file: str | None = None, clock: Callable[[], float] = time.monotonic,
                 fetch: Callable[[str], Any] | None = None) -> None:
        self._issuer = issuer
        self._jwks_uri = jwks_uri
        self._refresh_seconds = refresh_seconds
        self._max_age_seconds = max_age_seconds
        self._timeout = timeout_seconds
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._clock = clock
        self._fetch = fetch or self._fetch_json
        self._lock = threading.Lock()
        self._keys: list[dict[str, Any]] = []
        self._prepared: dict[tuple[str | None, str], jwt.PyJWK | None] = {}
        self._fetched_at: float | None = None  # last success
        self._tried_at = float("-inf")  # last attempt, successful or not
        self._failed = False

    def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        """The key that verifies a token with this header, or None when the JWKS has none."""
        if self._fresh():
            key = self._find(kid, algorithm)
            if key is not None:
                return key
        with self._lock:
            key = self._find(kid, algorithm) if self._fresh() else None
            if key is None and self._clock() - self._tried_at >= self._refresh_seconds:
                self._refresh()
                key = self._find(kid, algorithm)
            elif key is None and self._fetched_at is not None and not self._fresh():
                key = self._find(kid, algorithm)  # too old, but the issuer cannot be asked yet
        if key is None and self._failed:
            raise IssuerUnavailable("the token issuer's keys cannot be fetched")
        return key

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._max_age_seconds

    def _refresh(self) -> None:
        self._tried_at = self._clock()
        try:
            jwks_uri = self._jwks_uri or self._discover()
            document = self._fetch(jwks_uri)
            keys = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(keys, list):
                raise ValueError("the JWKS has no 'keys' array")
        except Exception as error:  # noqa: BLE001 - any failure leaves the keys we had
            self._failed = True
            log.warning("fetching the token issuer's keys failed",
                        extra={"issuer": self._issuer, "error": type(error).__name__})
            return
        # Only public signing keys count: Keycloak's JWKS also lists encryption keys.
        self._keys = [k for k in keys if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP")
                      and k.get("use", "sig") == "sig"
                      and "verify" in k.get("key_ops", ["verify"])]
        self._prepared = {}
        self._fetched_at = self._tried_at
        self._failed = False

    def _discover(self) -> str:
        document = self._fetch(self._issuer.rstrip("/") + "/.well-known/openid-configuration")
        if not isinstance(document, dict) or document.get("issuer") != self._issuer:
            raise ValueError("the discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or url_problem(jwks_uri):
            raise ValueError("the discovery document's jwks_uri is not usable")
        self._jwks_uri = jwks_uri
        return jwks_uri

    def _find(self, kid: str | None, algorithm: str) -> jwt.PyJWK | None:
        cached = (kid, algorithm)
        if cached in self._prepared:
            return self._prepared[cached]
        candidates = [k for k in self._keys if _fits(k, algorithm) and (kid is None or k.get("kid") == kid)]
        key = None
        if len(candidates) == 1:  # a token without kid only when the choice is clear
            try:
                key = jwt.PyJWK(candidates[0], algorithm=algorithm)
            except (PyJWKError, InvalidKeyError):
                key = None
        if key is not None or len(self._prepared) < 64:  # unknown kids are not all remembered
            self._prepared[cached] = key
        return key

    def _fetch_json(self, url: str) -> Any:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        opener = urllib.request.build_opener(_SafeRedirects, urllib.request.HTTPSHandler(context=self._ssl))
        with opener.open(request, timeout=self._timeout) as response:
            body = response.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ValueError("the document is too large")
        return json.loads(body)


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to URLs an issuer could have been configured with."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Any:
        if url_problem(newurl):
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fits(jwk: Mapping[str, Any], algorithm: str) -> bool:
    """Whether a JWK may verify a signature made with `algorithm` (never across key types)."""
    if jwk.get("alg") not in (None, algorithm):
        return False
    if jwk.get("kty") != _KEY_TYPE.get(algorithm[:2]):
        return False
    return algorithm not in _CURVE or jwk.get("crv") == _CURVE[algorithm]


@dataclass
class Issuer:
    """One configured token issuer: how to check its tokens and what their roles allow."""

    issuer: str
    audience: tuple[str, ...]
    authorized_parties: tuple[str, ...]
    algorithms: tuple[str, ...]
    leeway_seconds: float
    client_id: str | None
    roles_claim: str | None
    name_claim: str
    mappings: tuple[RoleMapping, ...]
    keys: KeySet

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, clock: Callable[[], float] = time.monotonic) -> "Issuer":
        issuer = settings["issuer"]
        mappings = []
        for index, mapping in enumerate(settings.get("roles", [])):
            label = mapping.get("role") or mapping.get("scope") or str(index + 1)
            mappings.append(RoleMapping(role=mapping.get("role"), scope=mapping.get("scope"),
                                        grant=client_from_settings(label, mapping)))
        return cls(
            issuer=issuer,
            audience=tuple(_strings(settings.get("audience"))),
            authorized_parties=tuple(_strings(settings.get("authorized_parties"))),
            algorithms=tuple(settings.get("algorithms", DEFAULT_ALGORITHMS)),
            leeway_seconds=float(settings.get("leeway_seconds", 30)),
            client_id=settings.get("client_id"),
            roles_claim=settings.get("roles_claim"),
            name_claim=settings.get("name_claim", "sub"),
            mappings=tuple(mappings),
            keys=KeySet(issuer, settings.get("jwks_uri"),
                        refresh_seconds=float(settings.get("jwks_refresh_seconds", 60)),
                        max_age_seconds=float(settings.get("jwks_max_age_seconds", 3600)),
                        timeout_seconds=float(settings.get("fetch_timeout_seconds", 5)),
                        ca_file=settings.get("ca_file"), clock=clock),
        )

    def client_for(self, token: str, header: Mapping[str, Any]) -> Client:
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise _Refused("algorithm")
        kid = header.get("kid")
        key = self.keys.key_for(kid if isinstance(kid, str) else None, algorithm)
        if key is None:
            raise _Refused("unknown-key")
        try:
            claims = jwt.decode(token, key.key, algorithms=[algorithm], audience=list(self.audience),
                                issuer=self.issuer, leeway=self.leeway_seconds,
                                options={"require": ["exp", "iss", "aud"],
                                         "enforce_minimum_key_length": True})
        except ExpiredSignatureError:
            raise NotAuthenticated(EXPIRED) from None
        except PyJWTError as error:
            raise _Refused(type(error).__name__) from None
        # Keycloak marks its token kinds; only access tokens are credentials for an API.
        if str(claims.get("typ", "Bearer")).lower() != "bearer":
            raise _Refused("token-type")
        if self.authorized_parties and claims.get("azp") not in self.authorized_parties:
            raise _Refused("authorized-party")
        roles, scopes = self._roles(claims), _scopes(claims)
        grants = [m.grant for m in self.mappings if m.matches(roles, scopes)]
        if not grants:
            raise _Refused("no-mapped-role")
        return Client.union(_caller_name(claims, self.name_claim), grants)

    def _roles(self, claims: Mapping[str, Any]) -> set[str]:
        roles = set(_strings(_claim(claims, "realm_access.roles")))
        if self.client_id:
            resource_access = claims.get("resource_access")
            if isinstance(resource_access, dict):
                roles.update(_strings(_claim(resource_access.get(self.client_id, {}), "roles")))
        if self.roles_claim:
            roles.update(_strings(_claim(claims, self.roles_claim)))
        return roles


class OidcVerifier:
    """Turns bearer tokens of the configured issuers into callers."""

    def __init__(self, issuers: Iterable[Issuer]) -> None:
        self._issuers = {issuer.issuer: issuer for issuer in issuers}

    def __bool__(self) -> bool:
        return bool(self._issuers)

    def authenticate(self, token: str) -> Client:
        try:
            if len(token) > MAX_TOKEN_CHARS:
                raise _Refused("size")
            try:
                header = jwt.get_unverified_header(token)
                # Only to choose the issuer whose keys and rules then check the token.
                claimed = jwt.decode(token, options={"verify_signature": False}).get("iss")
            except PyJWTError:
                raise _Refused("malformed") from None
            issuer = self._issuers.get(claimed) if isinstance(claimed, str) else None
            if issuer is None:
                raise _Refused("issuer")
            return issuer.client_for(token, header)
        except _Refused as refusal:
            log.info("bearer token refused", extra={"reason": refusal.reason})
            raise NotAuthenticated(INVALID) from None


class _Refused(Exception):
    """Why a token was refused, for the log; the client learns only that it was."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _claim(claims: Any, path: str) -> Any:
    node = claims
    for segment in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(segment)
    return node


def _strings(value: Any) -> list[str]:
    """A claim or setting that holds one string, a space-separated string list, or an array."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _scopes(claims: Mapping[str, Any]) -> set[str]:
    return set(_strings(claims.get("scope"))) | set(_strings(claims.get("scp")))


def _caller_name(claims: Mapping[str, Any], name_claim: str) -> str:
    """`oidc:` and the caller's subject (or the claim configured), printable and short, for logs
    and the audit trail."""
    value = claims.get(name_claim) or claims.get("sub") or claims.get("azp") or "unknown"
    text = "".join(c for c in str(value) if c.isprintable())[:128]
    return f"oidc:{text}"
