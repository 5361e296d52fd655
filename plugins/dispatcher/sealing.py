"""Identifying data sealed for the store: AES-256-GCM under the dispatcher's `idat_key`.

IDAT wait in the store only while their clearing runs. Sealed, the database file, its journal or
WAL, dead tuples, replicas and backups hold ciphertext only; the key lives in the configuration
or the environment (`TTP_GATEWAY__DISPATCHER__IDAT_KEY`), not in the store. Each record is bound
to its case and task as associated data, so a sealed record cannot be moved to another task.

`IdatDigest` keeps a keyed digest of what a site sent for a task after the IDAT themselves are
gone, so that a repeated `$providePatientData` (a retry after a lost answer) can be recognised.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
KEY_BYTES = 32


def parse_key(text: str) -> bytes:
    """A 256-bit key from its base64 (standard or URL-safe) or hex text; ValueError otherwise."""
    text = text.strip()
    candidates = []
    if len(text) == 2 * KEY_BYTES:
        try:
            candidates.append(bytes.fromhex(text))
        except ValueError:
            pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            candidates.append(decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError):
            pass
    for key in candidates:
        if len(key) == KEY_BYTES:
            return key
    raise ValueError("idat_key must be 32 random bytes, as base64 or hex (e.g. `openssl rand -base64 32`)")


def new_key() -> str:
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


class IdatSeal:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, case_id: str, task_id: str, document: dict[str, Any]) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, orjson.dumps(document), _bound_to(case_id, task_id))

    def open(self, case_id: str, task_id: str, sealed: bytes) -> dict[str, Any]:
        try:
            plain = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _bound_to(case_id, task_id))
        except InvalidTag:
            raise ValueError("sealed identifying data do not open with this key") from None
        document: dict[str, Any] = orjson.loads(plain)
        return document


class IdatDigest:
    """A keyed digest of a task's identifying data: equal data, equal digest; nothing readable."""

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"ttp-gateway idat digest\x00" + key).digest()

    def of(self, task_id: str, document: dict[str, Any]) -> str:
        message = task_id.encode() + b"\x00" + orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


def _bound_to(case_id: str, task_id: str) -> bytes:
    return f"{case_id}\x1f{task_id}".encode()
