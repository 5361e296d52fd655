"""The repository interface: what plugins may ask of storage, in the domain's language.

Every method takes and returns batches, so that one request costs a few round trips whatever
its size. Work happens inside a transaction (`Repository.transaction()`): everything a request
writes is committed together when the `with` block ends, before the response is sent, or not at
all. Uniqueness is carried by the store's own unique keys; methods that insert skip what
conflicts with them and say what they stored, so that a caller racing another writer — in
another process or on another replica — reads back what the other one stored.

A domain's pseudonyms are numbered per original: number 0 is the original's pseudonym, numbers
1, 2, ... are further pseudonyms in a multi-psn domain. The store keeps unique keys on
(domain, pseudonym) and on (domain, original, number); anonymising removes the original and
keeps the pseudonym.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence


class StorageError(Exception):
    """A store that cannot be reached or used; the message never carries patient data."""


class UnknownDomain(StorageError):
    """A domain that is not in the store."""


@dataclass(frozen=True)
class DomainRecord:
    """A pseudonymisation domain as stored; `settings` holds its rules for the plugin."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class StoredApiKey:
    """An API key created in storage (by the admin CLI): only the digest of its secret."""

    name: str
    key_sha256: str
    endpoints: tuple[str, ...] = ("*",)
    operations: tuple[str, ...] = ("*",)
    domains: tuple[str, ...] = ("*",)
    studies: tuple[str, ...] = ("*",)

    def as_settings(self) -> dict[str, Any]:
        return {"name": self.name, "key_sha256": self.key_sha256, "endpoints": list(self.endpoints),
                "operations": list(self.operations), "domains": list(self.domains),
                "studies": list(self.studies)}


class PseudonymRow(NamedTuple):
    """One stored pseudonym: `number` 0 is the original's pseudonym, higher ones are further
    pseudonyms of a multi-psn domain; `original` is None once anonymised. (A tuple: batches
    hold tens of thousands of them.)"""

    original: str | None
    number: int
    pseudonym: str


class Transaction(ABC):
    """One unit of work. Obtained from `Repository.transaction()`, never built directly."""

    # --- domains --------------------------------------------------------------------------
    @abstractmethod
    def get_domains(self) -> list[DomainRecord]:
        """All domains, by name."""

    @abstractmethod
    def put_domain(self, domain: DomainRecord) -> bool:
        """Create the domain or replace its settings; True if it was created."""

    # --- pseudonyms -----------------------------------------------------------------------
    @abstractmethod
    def get_pseudonyms(self, domain: str, originals: Sequence[str]) -> dict[str, str]:
        """The pseudonym (number 0) of each original that has one."""

    @abstractmethod
    def get_pseudonym_rows(self, domain: str, originals: Sequence[str]) -> dict[str, list[PseudonymRow]]:
        """Every pseudonym of each original that has any, ordered by number."""

    @abstractmethod
    def get_originals(self, domain: str, pseudonyms: Sequence[str]) -> dict[str, str | None]:
        """The original of each known pseudonym; None where it was anonymised."""

    @abstractmethod
    def insert_pseudonyms(self, domain: str, rows: Sequence[PseudonymRow]) -> set[PseudonymRow]:
        """Store the rows that conflict with no stored one and no earlier row of the batch;
        return the rows stored. Rows are taken in the order given; callers sort them so that
        concurrent writers meet in the same order."""

    @abstractmethod
    def delete_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        """Delete every pseudonym of these originals; return the originals that had any."""

    @abstractmethod
    def anonymize_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        """Remove these originals from their pseudonyms for good; return those that had any."""

    @abstractmethod
    def count_pseudonyms(self, domain: str) -> int:
        """How many pseudonyms the domain holds."""

    # --- API keys -------------------------------------------------------------------------
    @abstractmethod
    def get_api_keys(self) -> list[StoredApiKey]:
        """All API keys created in storage."""

    @abstractmethod
    def add_api_key(self, key: StoredApiKey) -> bool:
        """Store a new key; False if its name is taken."""


class Repository(ABC):
    """A store chosen by URL (`backends.open_repository`)."""

    url: str
    # False for embedded stores whose reads take microseconds and never wait for a lock; the
    # core then runs small read-only operations without a thread hop.
    reads_block: bool = True

    @abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema (tables, indexes); safe to call from every process."""

    @abstractmethod
    def transaction(self, write: bool = False) -> AbstractContextManager[Transaction]:
        """A unit of work, committed when the block ends without an exception.

        `write=True` announces writes, so that stores which serialise writers (SQLite) take
        the write lock at the start rather than failing half-way."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StorageError when the store cannot serve requests."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
