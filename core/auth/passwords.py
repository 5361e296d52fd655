"""HTTP Basic users: names with argon2id password hashes, each with a scope.

Users come from `[[auth.users]]` (`name`, `password_hash`, and the scope keys of API keys);
`ttp-gateway users hash-password` prints the hash of a password. argon2 is slow and
memory-hungry on purpose, which a client sending Basic on every request would pay every time:
so a verified `user:password` pair is remembered for `remember_seconds`, found by an HMAC of
the pair under a key that lives only in this process. A pair that failed is never remembered.
The number of verifications running at once is bounded, which bounds their memory too.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

from ..errors import NotAuthenticated
from .scopes import Client, client_from_settings

INVALID = "invalid credentials"
REMEMBERED_PAIRS = 256


def hash_password(password: str) -> str:
    """The argon2id hash of a password in PHC string format, with argon2-cffi's default
    (RFC 9106 low-memory) parameters."""
    return PasswordHasher().hash(password)


def password_hash_problem(password_hash: object) -> str | None:
    """Why a configured hash cannot be used, or None."""
    if not isinstance(password_hash, str) or not password_hash.startswith("$argon2id$"):
        return "password_hash must be an argon2id hash ($argon2id$...; see `ttp-gateway users hash-password`)"
    try:
        extract_parameters(password_hash)
    except InvalidHashError:
        return "password_hash is not a well-formed argon2id hash"
    return None


@dataclass(frozen=True)
class User:
    client: Client
    password_hash: str


def user_from_settings(settings: Mapping[str, Any]) -> User:
    """A User from a `[[auth.users]]` table."""
    return User(client=client_from_settings(settings["name"], settings),
                password_hash=settings["password_hash"])


def basic_credentials(value: str) -> tuple[str, str]:
    """The (user, password) of an `Authorization: Basic` value (RFC 7617, UTF-8)."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise NotAuthenticated(INVALID) from None
    name, colon, password = decoded.partition(":")
    if not colon or not name:
        raise NotAuthenticated(INVALID)
    return name, password


class PasswordBook:
    """The users a gateway accepts, and the pairs it verified lately."""

    def __init__(self, users: Iterable[User], *, remember_seconds: float = 60.0,
                 parallel: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._users = {user.client.name: user for user in users}
        self._remember_seconds = remember_seconds
        self._clock = clock
        self._pepper = secrets.token_bytes(32)  # makes the remembered digests useless elsewhere
        self._remembered: dict[bytes, tuple[Client, float]] = {}
        self._verifying = threading.BoundedSemaphore(parallel or os.cpu_count() or 2)
        self._hasher = PasswordHasher()
        self._decoy: str | None = None

    def __bool__(self) -> bool:
        return bool(self._users)

    def remembers(self, name: str, password: str) -> bool:
        """Whether this pair was verified lately, i.e. authenticating it costs no argon2."""
        return self._recall(self._pair_digest(name, password)) is not None

    def authenticate(self, name: str, password: str) -> Client:
        pair = self._pair_digest(name, password)
        client = self._recall(pair)
        if client is not None:
            return client
        user = self._users.get(name)
        # An unknown name costs a verification too, so that timing does not tell which names exist.
        verified = self._verify(user.password_hash if user else self._decoy_hash(), password)
        if user is None or not verified:
            raise NotAuthenticated(INVALID)
        if len(self._remembered) >= REMEMBERED_PAIRS:
            self._remembered.clear()
        self._remembered[pair] = (user.client, self._clock() + self._remember_seconds)
        return user.client

    def _recall(self, pair: bytes) -> Client | None:
        found = self._remembered.get(pair)
        if found is None:
            return None
        client, until = found
        if self._clock() >= until:
            self._remembered.pop(pair, None)
            return None
        return client

    def _verify(self, password_hash: str, password: str) -> bool:
        with self._verifying:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    def _pair_digest(self, name: str, password: str) -> bytes:
        # Basic forbids ':' in names, so "name:password" is unambiguous.
        return hmac.new(self._pepper, f"{name}:{password}".encode("utf-8"), "sha256").digest()

    def _decoy_hash(self) -> str:
        """A hash of a random password with the parameters of a configured user, made once."""
        if self._decoy is None:
            some_user = next(iter(self._users.values()), None)
            params = extract_parameters(some_user.password_hash) if some_user else None
            hasher = PasswordHasher.from_parameters(params) if params and params.type is Type.ID \
                else self._hasher
            self._decoy = hasher.hash(secrets.token_urlsafe(16))
        return self._decoy
