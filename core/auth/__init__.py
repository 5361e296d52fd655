"""Who a request comes from, and what it may do.

Callers authenticate with an API key (`keys`), HTTP Basic (`passwords`) or an OAuth2/OIDC
bearer token (`oidc`), or come anonymously to endpoints configured for it (behind an
authenticating proxy); `Authenticator` chooses among them. Whichever way, the caller is a
`Client` whose scope (`scopes`) says which endpoints, operations, domains and studies it may use.
Secrets and tokens never reach logs, error texts or metrics; callers' names do.
"""

from .authenticator import Authenticator
from .keys import ApiKey, KeyRing, api_key_from_settings, digest, new_secret
from .oidc import IssuerUnavailable, OidcVerifier
from .passwords import PasswordBook, hash_password
from .scopes import ANONYMOUS, WILDCARD, Client, ScopeKinds, client_from_settings, scope_keys

__all__ = [
    "ANONYMOUS", "WILDCARD", "ApiKey", "Authenticator", "Client", "ScopeKinds", "scope_keys",
    "IssuerUnavailable", "KeyRing", "OidcVerifier", "PasswordBook", "api_key_from_settings",
    "client_from_settings", "digest", "hash_password", "new_secret",
]
