"""What the gPAS plugin keeps: domains and their pseudonyms, behind one protocol per backend.

A domain's pseudonyms are numbered per original: number 0 is the original's pseudonym, numbers
1, 2, ... are further pseudonyms in a multi-psn domain. The store keeps unique keys on
(domain, pseudonym) and on (domain, original, number); anonymising removes the original and
keeps the pseudonym. Every method takes and returns batches; inserting skips what conflicts with
a unique key and says what it stored, so a caller racing another writer reads back the other's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from ttp_gateway.backends.base import StoreDefinition, StoreKey


@dataclass(frozen=True)
class DomainRecord:
    """A pseudonymisation domain as stored; `settings` holds its rules."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


class PseudonymRow(NamedTuple):
    """One stored pseudonym: `number` 0 is the original's pseudonym, higher ones are further
    pseudonyms of a multi-psn domain; `original` is None once anonymised. (A tuple: batches
    hold tens of thousands of them.)"""

    original: str | None
    number: int
    pseudonym: str


class PseudonymStore(ABC):
    """The domains and pseudonyms in storage. Methods naming a domain that is not in the store
    raise `backends.base.NotFound`."""

    @abstractmethod
    def get_domains(self) -> list[DomainRecord]:
        """All domains, by name."""

    @abstractmethod
    def put_domain(self, domain: DomainRecord) -> bool:
        """Create the domain or replace its settings; True if it was created."""

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


PSEUDONYMS: StoreKey[PseudonymStore] = StoreKey("gpas")


def definition() -> StoreDefinition[PseudonymStore]:
    from . import store_mongo, store_sql
    from ttp_gateway.backends.mongo import MongoStore
    from ttp_gateway.backends.sql import SqlStore

    return StoreDefinition(
        key=PSEUDONYMS,
        sql=SqlStore(metadata=store_sql.metadata, migrations=Path(__file__).parent / "migrations",
                     open=store_sql.SqlPseudonymStore),
        mongo=MongoStore(indexes=store_mongo.INDEXES, open=store_mongo.MongoPseudonymStore),
    )
