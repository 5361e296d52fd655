"""What the gICS plugin asks of storage, in the consent domain's language and in batches.

`ConsentStore.transaction()` gives a `ConsentUnit`, one unit of work: everything it writes is
committed together when the block ends, or not at all. Every method takes and returns batches,
so that one request costs a few round trips whatever its size; pages are read by a keyset
(`after`, the `seq` the store gives each consent in insertion order) and never load a domain.

Consents are self-contained: a stored consent carries the statuses and expiries of every policy
it signed (computed when it was recorded), so a later change of the catalogue never changes what
a signed consent says. Uniqueness is the store's: one consent per (domain, template name and
version, signer ids, date); `add_consents` skips what conflicts and returns the stored one, so
that a client's retry or a racing writer reads back the first.

Intended layout for the SQL store (SQLAlchemy Core, an Alembic branch of its own) and MongoDB:

    gics_domain      (name PK, settings JSON)
    gics_policy      (domain, name, version, settings JSON)              PK (domain, name, version)
    gics_module      (domain, name, version, settings JSON)              PK (domain, name, version)
    gics_template    (domain, name, version, settings JSON)              PK (domain, name, version)
    gics_consent     (seq BIGINT identity PK, id UUID UNIQUE, domain, template_name,
                      template_version, template_type, person_key, signed_at, recorded_at,
                      modules JSON, policies JSON)
                     UNIQUE (domain, template_name, template_version, person_key, signed_at)
                     INDEX  (domain, seq)                        -- $allConsentsForDomain pages
                     INDEX  (domain, template_name, template_version, seq)   -- ...ForTemplate
    gics_consent_resources (seq PK -> gics_consent, resources JSON)  -- QR, Patient, Provenance,
                     scans as given; read only for pages that show them, never for states
    gics_signer_id   (domain, id_type, id_value, seq -> gics_consent)
                     PK (domain, id_type, id_value, seq)   -- person lookups, signer id pages
    gics_signed_policy (seq -> gics_consent, domain, policy_name, policy_version, status,
                      signed_at, expires_at)
                     PK (seq, policy_name, policy_version)
                     INDEX (domain, policy_name, policy_version, seq)  -- Consent search by code

MongoDB: collections of the same names; a consent document embeds its signer ids
(`signer_ids: [{type, value}]`, multikey index {domain, "signer_ids.type", "signer_ids.value"}),
its signed policies (multikey index {domain, "policies.name", seq}) and `seq` from a counter
document (`$inc` in the same write); resources in `gics_consent_resources` by seq.
"""

from __future__ import annotations

import bisect
import threading
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Iterator, Sequence

from .model import (OPEN_END, Catalogue, ConsentDomain, Key, Module, Policy, SignedConsent,
                    SignedPolicy, SignerId, Template)
from .states import effective_status


@dataclass(frozen=True)
class PolicyFilter:
    """What a Consent search asks for; every given criterion must hold (FHIR AND).

    `policies` are policy names (the search resolves codes through the catalogue); `permit`
    keeps signed policies that permit (True) or deny (False) at `at`; `periods` are FHIR date
    comparisons on the provision period [consent date, expiry): (prefix, lower, upper) with the
    bounds of the searched value."""

    domain: str | None = None
    signer_ids: tuple[SignerId, ...] = ()
    policies: frozenset[str] | None = None
    permit: bool | None = None
    at: datetime | None = None
    periods: tuple[tuple[str, datetime, datetime], ...] = ()
    template: Key | None = None

    def admits_consent(self, consent: SignedConsent) -> bool:
        if self.domain is not None and consent.domain != self.domain:
            return False
        if self.template is not None and consent.template != self.template:
            return False
        return not self.signer_ids or not consent.signer_ids.isdisjoint(self.signer_ids)

    def admits(self, consent: SignedConsent, signed: SignedPolicy) -> bool:
        if self.policies is not None and signed.name not in self.policies:
            return False
        if self.permit is not None:
            permits = effective_status(signed, self.at or OPEN_END).accepting
            if permits != self.permit:
                return False
        end = signed.expires or OPEN_END
        return all(_period_admits(prefix, low, high, consent.date, end) for prefix, low, high in self.periods)


def _period_admits(prefix: str, low: datetime, high: datetime, start: datetime, end: datetime) -> bool:
    """FHIR date search on a period [start, end) against the searched value's range [low, high)."""
    if prefix == "eq":
        return start <= low and end >= high  # the period covers the whole searched range
    if prefix == "ne":
        return not (start <= low and end >= high)
    if prefix == "gt":
        return end > high
    if prefix == "ge":
        return end > low
    if prefix == "lt":
        return start < low
    if prefix == "le":
        return start < high
    if prefix == "sa":
        return start >= high
    if prefix == "eb":
        return end <= low
    raise ValueError(f"unknown date prefix {prefix!r}")


class ConsentUnit(ABC):
    """One unit of work on the consent store."""

    # --- the catalogue ----------------------------------------------------------------------
    @abstractmethod
    def load_catalogue(self) -> Catalogue:
        """Every domain with its policies, modules and templates."""

    @abstractmethod
    def put_domains(self, domains: Sequence[ConsentDomain]) -> list[bool]:
        """Create or replace domains; per domain, True if it was created."""

    @abstractmethod
    def put_policies(self, policies: Sequence[Policy]) -> list[bool]:
        """Create or replace policy versions; True where created."""

    @abstractmethod
    def put_modules(self, modules: Sequence[Module]) -> list[bool]:
        """Create or replace module versions; True where created."""

    @abstractmethod
    def put_templates(self, templates: Sequence[Template]) -> list[bool]:
        """Create or replace template versions; True where created."""

    # --- consents ---------------------------------------------------------------------------
    @abstractmethod
    def add_consents(self, consents: Sequence[SignedConsent]) -> list[SignedConsent]:
        """Store consents; for each, the stored one: itself with its `seq`, or the consent
        already stored under the same unique key."""

    @abstractmethod
    def consents_of_persons(self, domain: str, signer_ids: Sequence[SignerId], *,
                            resources: bool = False) -> list[SignedConsent]:
        """Every consent of the domain that carries any of these signer ids, by seq; with the
        resources as given only when asked (states never need them)."""

    @abstractmethod
    def consents_page(self, domain: str, *, after: int = 0, offset: int = 0, limit: int,
                      template: Key | None = None, resources: bool = True) -> list[SignedConsent]:
        """Consents of the domain (of one template version) with seq above `after`, by seq,
        skipping `offset` of them, at most `limit`."""

    @abstractmethod
    def count_consents(self, domain: str, template: Key | None = None) -> int:
        """How many consents the domain (one template version of it) holds."""

    @abstractmethod
    def signers_page(self, domain: str, id_type: str, *, after: str = "",
                     limit: int) -> list[tuple[str, list[SignedConsent]]]:
        """Signer id values of one type above `after`, in order, at most `limit`, each with
        every consent that carries it (without resources)."""

    # --- search -------------------------------------------------------------------------------
    @abstractmethod
    def signed_policies_page(self, wanted: PolicyFilter, *, offset: int = 0, limit: int,
                             resources: bool = False) -> list[tuple[SignedConsent, SignedPolicy]]:
        """Signed policies that `wanted` admits, by (seq, policy name, version), skipping
        `offset`, at most `limit`; their consents with resources only when asked."""

    @abstractmethod
    def count_signed_policies(self, wanted: PolicyFilter) -> int:
        """How many signed policies `wanted` admits."""

    @abstractmethod
    def matching_consents_page(self, wanted: PolicyFilter, *, offset: int = 0,
                               limit: int) -> list[SignedConsent]:
        """Consents with at least one signed policy that `wanted` admits (or, without policy
        criteria, every consent it admits), by seq, with resources."""

    @abstractmethod
    def count_matching_consents(self, wanted: PolicyFilter) -> int:
        """How many consents `matching_consents_page` would list in all."""


class ConsentStore(ABC):
    """Where the plugin keeps its catalogue and consents."""

    @abstractmethod
    def transaction(self, write: bool = False) -> AbstractContextManager[ConsentUnit]:
        """A unit of work, committed when the block ends without an exception; `write=True`
        announces writes."""


class MemoryConsentStore(ConsentStore):
    """A store in this process's memory, for tests and demos. Writes are applied at once (no
    rollback)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.domains: dict[str, ConsentDomain] = {}
        self.policies: dict[tuple[str, Key], Policy] = {}
        self.modules: dict[tuple[str, Key], Module] = {}
        self.templates: dict[tuple[str, Key], Template] = {}
        self.consents: dict[int, SignedConsent] = {}  # by seq, in insertion order
        self.unique: dict[tuple, int] = {}
        self.by_signer: dict[tuple[str, SignerId], list[int]] = {}
        # seqs in ascending order per domain and per (domain, template): pages are slices
        self.by_domain: dict[str, list[int]] = {}
        self.by_template: dict[tuple[str, Key], list[int]] = {}
        self.next_seq = 1

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[ConsentUnit]:
        with self._lock:
            yield _MemoryUnit(self)


class _MemoryUnit(ConsentUnit):
    def __init__(self, store: MemoryConsentStore) -> None:
        self.s = store

    def load_catalogue(self) -> Catalogue:
        return Catalogue(dict(self.s.domains), dict(self.s.policies), dict(self.s.modules),
                         dict(self.s.templates))

    def put_domains(self, domains: Sequence[ConsentDomain]) -> list[bool]:
        created = []
        for domain in domains:
            created.append(domain.name not in self.s.domains)
            self.s.domains[domain.name] = domain
        return created

    def _put(self, target: dict, items: Sequence) -> list[bool]:
        created = []
        for item in items:
            created.append((item.domain, item.key) not in target)
            target[(item.domain, item.key)] = item
        return created

    def put_policies(self, policies: Sequence[Policy]) -> list[bool]:
        return self._put(self.s.policies, policies)

    def put_modules(self, modules: Sequence[Module]) -> list[bool]:
        return self._put(self.s.modules, modules)

    def put_templates(self, templates: Sequence[Template]) -> list[bool]:
        return self._put(self.s.templates, templates)

    def add_consents(self, consents: Sequence[SignedConsent]) -> list[SignedConsent]:
        stored = []
        for consent in consents:
            unique = (consent.domain, consent.template, consent.person_key, consent.date)
            existing = self.s.unique.get(unique)
            if existing is not None:
                stored.append(self.s.consents[existing])
                continue
            kept = replace(consent, seq=self.s.next_seq)
            self.s.next_seq += 1
            self.s.consents[kept.seq] = kept
            self.s.unique[unique] = kept.seq
            for signer in kept.signer_ids:
                self.s.by_signer.setdefault((kept.domain, signer), []).append(kept.seq)
            self.s.by_domain.setdefault(kept.domain, []).append(kept.seq)
            self.s.by_template.setdefault((kept.domain, kept.template), []).append(kept.seq)
            stored.append(kept)
        return stored

    @staticmethod
    def _light(consent: SignedConsent, resources: bool) -> SignedConsent:
        return consent if resources else replace(consent, resources={})

    def consents_of_persons(self, domain: str, signer_ids: Sequence[SignerId], *,
                            resources: bool = False) -> list[SignedConsent]:
        seqs = sorted({seq for signer in signer_ids for seq in self.s.by_signer.get((domain, signer), ())})
        return [self._light(self.s.consents[seq], resources) for seq in seqs]

    def consents_page(self, domain: str, *, after: int = 0, offset: int = 0, limit: int,
                      template: Key | None = None, resources: bool = True) -> list[SignedConsent]:
        seqs = self.s.by_template.get((domain, template), []) if template else self.s.by_domain.get(domain, [])
        start = bisect.bisect_right(seqs, after) + offset
        return [self._light(self.s.consents[seq], resources) for seq in seqs[start:start + limit]]

    def count_consents(self, domain: str, template: Key | None = None) -> int:
        return len(self.s.by_template.get((domain, template), []) if template else self.s.by_domain.get(domain, []))

    def signers_page(self, domain: str, id_type: str, *, after: str = "",
                     limit: int) -> list[tuple[str, list[SignedConsent]]]:
        values = sorted(signer.value for (d, signer) in self.s.by_signer
                        if d == domain and signer.type == id_type and signer.value > after)[:limit]
        return [(value, [self._light(self.s.consents[seq], False)
                         for seq in self.s.by_signer[(domain, SignerId(id_type, value))]])
                for value in values]

    def _admitted(self, wanted: PolicyFilter) -> Iterator[tuple[SignedConsent, SignedPolicy]]:
        for consent in self.s.consents.values():
            if not wanted.admits_consent(consent):
                continue
            for signed in consent.policies:
                if wanted.admits(consent, signed):
                    yield consent, signed

    def signed_policies_page(self, wanted: PolicyFilter, *, offset: int = 0, limit: int,
                             resources: bool = False) -> list[tuple[SignedConsent, SignedPolicy]]:
        found = []
        for index, (consent, signed) in enumerate(self._admitted(wanted)):
            if index >= offset:
                found.append((self._light(consent, resources), signed))
                if len(found) >= limit:
                    break
        return found

    def count_signed_policies(self, wanted: PolicyFilter) -> int:
        return sum(1 for _ in self._admitted(wanted))

    def _matching(self, wanted: PolicyFilter) -> Iterator[SignedConsent]:
        policy_criteria = wanted.policies is not None or wanted.permit is not None or wanted.periods
        for consent in self.s.consents.values():
            if not wanted.admits_consent(consent):
                continue
            if not policy_criteria or any(wanted.admits(consent, p) for p in consent.policies):
                yield consent

    def matching_consents_page(self, wanted: PolicyFilter, *, offset: int = 0,
                               limit: int) -> list[SignedConsent]:
        found = []
        for index, consent in enumerate(self._matching(wanted)):
            if index >= offset:
                found.append(consent)
                if len(found) >= limit:
                    break
        return found

    def count_matching_consents(self, wanted: PolicyFilter) -> int:
        return sum(1 for _ in self._matching(wanted))
