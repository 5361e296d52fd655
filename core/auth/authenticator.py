"""One place that turns a request's credentials into a caller, whichever way it authenticates.

Which credentials count, when a request carries several: the `Authorization` header (Basic or
Bearer), else the `apikey` header, else the `X-API-Key` header, else the `apikey` body
parameter. Only the first present is checked; the others are ignored. A request without any
gets the scope configured for anonymous access to its endpoint, if any; a request whose
credentials fail is refused, never treated as anonymous.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ..errors import NotAuthenticated
from .keys import ApiKey, KeyRing, api_key_from_settings
from .oidc import INVALID, Issuer, OidcVerifier
from .passwords import PasswordBook, basic_credentials, user_from_settings
from .scopes import ANONYMOUS, WILDCARD, Client, client_from_settings

DEFAULT_REALM = "ttp-gateway"


class Authenticator:
    """The configured ways in: API keys, Basic users, token issuers, anonymous endpoints.

    Header names are looked up in lower case, as ASGI delivers them."""

    def __init__(self, keys: KeyRing, passwords: PasswordBook, tokens: OidcVerifier,
                 anonymous: Mapping[str, Client], *, realm: str = DEFAULT_REALM) -> None:
        self.keys = keys
        self.passwords = passwords
        self.tokens = tokens
        self._anonymous = dict(anonymous)
        self._realm = realm.replace("\\", "").replace('"', "")

    @classmethod
    def from_settings(cls, auth: Mapping[str, Any],
                      load_stored_keys: Callable[[], list[ApiKey]] | None = None) -> "Authenticator":
        """From the `[auth]` section; `load_stored_keys` reads the API keys kept in storage."""
        keys = KeyRing((api_key_from_settings(k) for k in auth.get("api_keys", [])), load_stored_keys)
        passwords = PasswordBook((user_from_settings(u) for u in auth.get("users", [])),
                                 remember_seconds=float(auth.get("basic_remember_seconds", 60)))
        tokens = OidcVerifier(Issuer.from_settings(i) for i in auth.get("oidc", []))
        anonymous = {entry["endpoint"]: client_from_settings(f"anonymous:{entry['endpoint']}", entry)
                     for entry in auth.get("anonymous", [])}
        if not auth.get("require_api_key", True):
            anonymous[WILDCARD] = ANONYMOUS  # the open mode of earlier versions: anyone, anything
        return cls(keys, passwords, tokens, anonymous, realm=str(auth.get("realm", DEFAULT_REALM)))

    def allows_anonymous(self, endpoint: str) -> bool:
        """Whether callers without credentials are let in at `endpoint`."""
        return endpoint in self._anonymous or WILDCARD in self._anonymous

    def header_credentials(self, headers: Mapping[str, str]) -> bool:
        """Whether the headers carry credentials, so that the body need not be read first."""
        return bool(headers.get("authorization") or headers.get("apikey") or headers.get("x-api-key"))

    def blocking(self, headers: Mapping[str, str]) -> bool:
        """Whether authenticating these headers may take a while: a bearer token (its issuer's
        keys may have to be fetched) or Basic credentials not verified lately (argon2)."""
        scheme, _, value = headers.get("authorization", "").strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return bool(self.tokens)
        if scheme == "basic" and self.passwords:
            try:
                return not self.passwords.remembers(*basic_credentials(value))
            except NotAuthenticated:
                return False
        return False

    def authenticate(self, headers: Mapping[str, str], body_key: str | None, endpoint: str) -> Client:
        """The caller of a request at `endpoint`; raises NotAuthenticated (401) when there is
        none. Messages say only that credentials are missing, invalid or expired."""
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            scheme = scheme.lower()
            if scheme == "basic" and self.passwords:
                return self.passwords.authenticate(*basic_credentials(value))
            if scheme == "bearer" and self.tokens:
                return self.tokens.authenticate(value.strip())
            raise NotAuthenticated(INVALID)
        key = headers.get("apikey") or headers.get("x-api-key") or body_key
        if key:
            return self.keys.authenticate(key)
        client = self._anonymous.get(endpoint) or self._anonymous.get(WILDCARD)
        if client is None:
            raise NotAuthenticated(f"credentials are required: {self._methods()}")
        return client

    def challenge(self) -> str | None:
        """The `WWW-Authenticate` value of a 401 answer: the HTTP schemes configured."""
        schemes = []
        if self.passwords:
            schemes.append(f'Basic realm="{self._realm}", charset="UTF-8"')
        if self.tokens:
            schemes.append(f'Bearer realm="{self._realm}"')
        return ", ".join(schemes) or None

    def _methods(self) -> str:
        methods = ["an API key (header 'apikey' or 'X-API-Key', or an 'apikey' parameter)"]
        if self.passwords:
            methods.append("HTTP Basic")
        if self.tokens:
            methods.append("a bearer token")
        return ", or ".join(methods)
