"""API keys.

A key is known by the SHA-256 digest of its secret only, whether it comes from the configuration
(`key` or `key_sha256`) or from storage (created with `ttp-gateway keys create`). A presented
key is hashed and compared with every known digest in constant time, so neither the position nor
the existence of a match shows in the timing. A key that matched is then remembered in a small
table so that its next requests skip the digest; that table is found by Python's randomly keyed
string hash and holds only keys already presented successfully. Keys never reach logs; the
key's *name* does.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..errors import NotAuthenticated
from .scopes import ANONYMOUS, Client, client_from_settings


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    client: Client
    sha256: str  # hex digest of the secret


def api_key_from_settings(settings: Mapping[str, Any]) -> ApiKey:
    """An ApiKey from a `[[auth.api_keys]]` table or a stored record of the same shape."""
    sha = settings.get("key_sha256") or digest(settings["key"])
    return ApiKey(client=client_from_settings(settings["name"], settings), sha256=sha.lower())


class KeyRing:
    """The keys a gateway accepts: those of the configuration plus those in storage.

    Stored keys are loaded when the app starts and again, at most once per `reload_interval`
    seconds, when a presented key matches none, so a key created by the admin CLI works within
    seconds in every worker without a restart.
    """

    def __init__(self, configured: Iterable[ApiKey], load_stored: Callable[[], list[ApiKey]] | None = None,
                 *, require_key: bool = True, reload_interval: float = 2.0) -> None:
        self._configured = list(configured)
        self._load_stored = load_stored
        self._stored: list[ApiKey] = []
        self._require_key = require_key
        self._reload_interval = reload_interval
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()
        # Keys that matched recently, so that their digest is not computed on every request.
        self._recent: dict[str, Client] = {}

    def reload(self) -> None:
        if self._load_stored is not None:
            self._stored = self._load_stored()
        self._recent = {}
        self._loaded_at = time.monotonic()

    def authenticate(self, presented: str | None) -> Client:
        if not presented:
            if self._require_key:
                raise NotAuthenticated("an API key is required (header 'apikey' or 'X-API-Key', "
                                       "or an 'apikey' parameter)")
            return ANONYMOUS
        client = self._recent.get(presented)
        if client is not None:
            return client
        wanted = digest(presented).encode()
        client = self._match(wanted)
        if client is None and self._load_stored is not None:
            with self._lock:
                if time.monotonic() - self._loaded_at >= self._reload_interval:
                    self.reload()
            client = self._match(wanted)
        if client is None:
            raise NotAuthenticated("the API key is not valid")
        if len(self._recent) >= 256:
            self._recent.clear()
        self._recent[presented] = client  # only keys that matched; a reload forgets them
        return client

    def _match(self, wanted: bytes) -> Client | None:
        found = None
        for key in (*self._configured, *self._stored):
            if hmac.compare_digest(key.sha256.encode(), wanted):
                found = key.client  # no early exit: the loop takes as long for every key
        return found

