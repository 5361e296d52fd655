"""What the gICS plugin asks of storage, in the consent domain's language and in batches.

`unit[CONSENTS]` gives a `ConsentStore` inside a unit of work. Every method takes and returns
batches, so that one request costs a few round trips whatever its size; pages are read by the
store's insertion order (`seq`) from an offset found in an index, and never load a domain.

Consents are self-contained: a stored consent carries the statuses and expiries of every policy
it signed (computed when it was recorded), so a later change of the catalogue never changes what
a signed consent says. Uniqueness is the store's: one consent per domain, template version,
signer ids and moment of signing (`SignedConsent.fingerprint`); `add_consents` skips what
conflicts and returns the stored one, so that a client's retry or a racing writer reads back
the first.

Layout (SQL tables; MongoDB collections of the same prefix hold the same in documents):

    gics_domain, gics_policy, gics_module, gics_template    the catalogue: settings per object
    gics_consent         one row per signed consent, its signer ids, modules and policies as JSON
    gics_consent_resources   what the consent came with (QuestionnaireResponse, Patient,
                         Provenance, scans), read only for answers that show them
    gics_signer_id       (domain, type, value, seq): whose consents, for person lookups
    gics_signed_policy   (seq, policy, status, start, end): for the Consent search
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

from ttp_gateway.backends.base import StoreDefinition, StoreKey

from .model import (OPEN_END, ConsentDomain, ConsentStatus, Key, Module, Policy, SignedConsent,
                    SignedPolicy, SignerId, Template, TemplateType, from_millis, to_millis)

# The statuses with which a signed policy permits (until it ends).
PERMITTING = (ConsentStatus.ACCEPTED.value, ConsentStatus.ACCEPTED_OPT_OUT.value)
DATE_PREFIXES = ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb")


@dataclass(frozen=True)
class PolicyFilter:
    """What a Consent search asks for in one domain; every given criterion must hold (FHIR AND).

    `policies` are policy names (the search resolves codes through the catalogue); `permit`
    keeps signed policies that permit (True) or deny (False) at `at`; `periods` are FHIR date
    comparisons on a signed policy's period [consent date, end): (prefix, lower, upper) with
    the bounds of the searched value."""

    domain: str
    signer_ids: tuple[SignerId, ...] = ()
    policies: frozenset[str] | None = None
    permit: bool | None = None
    at: datetime | None = None
    periods: tuple[tuple[str, datetime, datetime], ...] = ()
    template: Key | None = None

    @property
    def on_policies(self) -> bool:
        """Whether any criterion concerns the signed policies (not only the consents)."""
        return self.policies is not None or self.permit is not None or bool(self.periods)

    def __post_init__(self) -> None:
        if self.permit is not None and self.at is None:
            raise ValueError("a permit criterion needs the moment it is asked about")
        for prefix, _, _ in self.periods:
            if prefix not in DATE_PREFIXES:
                raise ValueError(f"unknown date prefix {prefix!r}")


class ConsentStore(ABC):
    """The catalogue and the signed consents, inside one unit of work."""

    # --- the catalogue ----------------------------------------------------------------------
    @abstractmethod
    def load_catalogue(self) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
        """The settings of every domain, policy, module and template (`model.catalogue_settings`)."""

    @abstractmethod
    def put_domains(self, domains: Sequence[ConsentDomain]) -> list[bool]:
        """Create or replace domains; per domain, True if it was created."""

    @abstractmethod
    def put_versions(self, items: Sequence[Policy | Module | Template]) -> list[bool]:
        """Create or replace policy, module and template versions; True where created. Their
        domains must be stored (NotFound otherwise)."""

    # --- consents ---------------------------------------------------------------------------
    @abstractmethod
    def add_consents(self, consents: Sequence[SignedConsent]) -> list[SignedConsent]:
        """Store consents; for each, the stored one: itself with its `seq`, or the consent
        stored before under the same fingerprint (also one earlier in the same batch). Their
        domains must be stored (NotFound otherwise)."""

    @abstractmethod
    def consents_of_persons(self, domain: str, signer_ids: Sequence[SignerId], *,
                            resources: bool = False) -> list[SignedConsent]:
        """Every consent of the domain that carries any of these signer ids, by seq; with the
        resources as given only when asked (states never need them)."""

    @abstractmethod
    def consents_page(self, domain: str, *, offset: int = 0, limit: int, template: Key | None = None,
                      resources: bool = True) -> list[SignedConsent]:
        """The consents of the domain (of one template version), by seq, from position `offset`
        on, at most `limit`."""

    @abstractmethod
    def count_consents(self, domain: str, template: Key | None = None) -> int:
        """How many consents the domain (one template version of it) holds."""

    @abstractmethod
    def signers_page(self, domain: str, id_type: str, *, after: str = "",
                     limit: int) -> list[tuple[str, list[SignedConsent]]]:
        """Signer id values of one type above `after`, in order, at most `limit`, each with
        every consent of the domain that carries it (without resources)."""

    # --- search -------------------------------------------------------------------------------
    @abstractmethod
    def signed_policies_page(self, wanted: PolicyFilter, *, offset: int = 0, limit: int,
                             resources: bool = False) -> list[tuple[SignedConsent, SignedPolicy]]:
        """Signed policies that `wanted` admits, by (seq, policy name, version), from `offset`
        on, at most `limit`; their consents with resources only when asked."""

    @abstractmethod
    def count_signed_policies(self, wanted: PolicyFilter) -> int:
        """How many signed policies `wanted` admits."""

    @abstractmethod
    def matching_consents_page(self, wanted: PolicyFilter, *, offset: int = 0,
                               limit: int) -> list[SignedConsent]:
        """Consents that `wanted` admits with at least one signed policy (without criteria on
        policies: every consent it admits), by seq, with resources."""

    @abstractmethod
    def count_matching_consents(self, wanted: PolicyFilter) -> int:
        """How many consents `matching_consents_page` would list in all."""


CONSENTS: StoreKey[ConsentStore] = StoreKey("gics")


# --- what both implementations store of a consent ---------------------------------------------

def signer_rows(signer_ids: frozenset[SignerId] | Sequence[SignerId]) -> list[list[str]]:
    return [[s.type, s.value] for s in sorted(signer_ids)]


def module_rows(consent: SignedConsent) -> list[list[str]]:
    return [[key.name, key.version, status.value] for key, status in consent.modules]


def policy_rows(consent: SignedConsent) -> list[list]:
    return [[p.name, p.version, p.status.value, None if p.expires is None else to_millis(p.expires)]
            for p in consent.policies]


def policy_end(policy: SignedPolicy) -> int:
    """Where a signed policy's period ends, for searches: its expiry, or the open end."""
    return to_millis(policy.expires or OPEN_END)


_STATUS = {status.value: status for status in ConsentStatus}


def consent_of(*, seq: int, id: str, domain: str, template_name: str, template_version: str,
               template_type: str, signed_at: int, recorded_at: int, signer_ids: list, modules: list,
               policies: list, resources: dict | None = None) -> SignedConsent:
    """A stored consent from the values both implementations keep."""
    return SignedConsent(
        id=id, domain=domain, template=Key(template_name, template_version),
        template_type=TemplateType(template_type),
        signer_ids=frozenset(SignerId(t, v) for t, v in signer_ids),
        date=from_millis(signed_at), recorded=from_millis(recorded_at),
        modules=tuple((Key(n, v), _STATUS[s]) for n, v, s in modules),
        policies=tuple(SignedPolicy(n, v, _STATUS[s], None if e is None else from_millis(e))
                       for n, v, s, e in policies),
        resources=resources or {}, seq=seq)


def definition() -> StoreDefinition[ConsentStore]:
    from ttp_gateway.backends.mongo import MongoStore
    from ttp_gateway.backends.sql import SqlStore

    from . import store_mongo, store_sql

    return StoreDefinition(
        key=CONSENTS,
        sql=SqlStore(metadata=store_sql.metadata, migrations=Path(__file__).parent / "migrations",
                     open=store_sql.SqlConsentStore),
        mongo=MongoStore(indexes=store_mongo.INDEXES, collections=store_mongo.COLLECTIONS,
                         open=store_mongo.MongoConsentStore),
    )
