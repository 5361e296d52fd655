"""The consent service of one gateway: its time zone, its clock, and the catalogue as each
process keeps it.

The catalogue (domains, policies, modules, templates) is read by every request and changes
rarely, so each process keeps a snapshot read from committed data. It is read again when it is
older than `REFRESH_SECONDS`, or, at most once a second, when a request names something it
lacks: an object created by the admin command line or another worker is found within a second,
a replaced one within the refresh interval, without a store round trip per request. A unit that
writes the catalogue drops the snapshot once it has committed.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone, tzinfo
from typing import Callable, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ttp_gateway.backends.base import UnitOfWork
from ttp_gateway.core.errors import FhirError, NotFound, Unprocessable
from ttp_gateway.core.gateway import ServiceKey

from .model import (Catalogue, ConsentDomain, ConsentStatus, Key, SignedConsent, SignerId, Template, sign,
                    whole_millis)
from .states import revoked
from .store import CONSENTS, ConsentStore

DEFAULT_ZONE = "Europe/Berlin"
REFRESH_SECONDS = 10.0
MISS_RELOAD_SECONDS = 1.0


class ConflictingConsent(FhirError):
    """A consent of the same person, template and date exists with other answers."""

    status = 409
    issue_code = "duplicate"


def known_zone(name: object) -> bool:
    try:
        ZoneInfo(name)  # type: ignore[arg-type]
        return True
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return False


def zone_of(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return timezone.utc


def read_catalogue(store: ConsentStore) -> Catalogue:
    domains, policies, modules, templates = store.load_catalogue()
    return Catalogue.from_settings({"domains": domains, "policies": policies, "modules": modules,
                                    "templates": templates}, check=False)


class ConsentService:
    """What the operations, the searches and the admin commands share."""

    def __init__(self, zone: tzinfo, clock: Callable[[], datetime]) -> None:
        self.zone = zone
        self.clock = clock
        self._snapshot = Catalogue()
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    # --- the catalogue ----------------------------------------------------------------------
    def catalogue(self, unit: UnitOfWork) -> Catalogue:
        """The catalogue as of at most `REFRESH_SECONDS` ago."""
        if time.monotonic() - self._loaded_at < REFRESH_SECONDS:
            return self._snapshot
        return self._reload(unit)

    def _reload(self, unit: UnitOfWork) -> Catalogue:
        if unit.write:  # it may hold uncommitted catalogue writes: read, but do not keep
            return read_catalogue(unit[CONSENTS])
        with self._lock:
            began = time.monotonic()
            self._snapshot = read_catalogue(unit[CONSENTS])
            self._loaded_at = began
        return self._snapshot

    def _on_miss(self, unit: UnitOfWork) -> Catalogue:
        if time.monotonic() - self._loaded_at >= MISS_RELOAD_SECONDS:
            return self._reload(unit)
        return self._snapshot

    def forget(self) -> None:
        """Drop the snapshot (after a committed change of the catalogue)."""
        self._loaded_at = float("-inf")

    def domain(self, unit: UnitOfWork, name: str) -> tuple[Catalogue, ConsentDomain]:
        """The catalogue and the named domain; 404 for a domain not in storage."""
        catalogue = self.catalogue(unit)
        domain = catalogue.domain(name)
        if domain is None:
            catalogue = self._on_miss(unit)
            domain = catalogue.domain(name)
        if domain is None:
            raise NotFound(f"unknown consent domain {name!r}")
        return catalogue, domain

    def template(self, unit: UnitOfWork, domain: str, key: Key) -> tuple[Catalogue, Template]:
        catalogue = self.catalogue(unit)
        template = catalogue.template(domain, key)
        if template is None:
            catalogue = self._on_miss(unit)
            template = catalogue.template(domain, key)
        if template is None:
            raise NotFound(f"unknown template {key} in consent domain {domain!r}")
        return catalogue, template

    def store_catalogue(self, unit: UnitOfWork, catalogue: Catalogue) -> None:
        """Store every object of `catalogue` (create or replace), domains first."""
        store = unit[CONSENTS]
        store.put_domains(sorted(catalogue.domains.values(), key=lambda d: d.name))
        store.put_versions([*catalogue.policies.values(), *catalogue.modules.values(),
                            *catalogue.templates.values()])
        unit.after_commit(self.forget)

    # --- consents ---------------------------------------------------------------------------
    def signed_consent(self, catalogue: Catalogue, template: Template, signer_ids: Sequence[SignerId],
                       signed_at: datetime, answers: Mapping[Key, ConsentStatus], resources: Mapping) -> SignedConsent:
        if not signer_ids:
            raise Unprocessable("the patient carries no signer id of the domain")
        signed_at = whole_millis(signed_at)
        modules, policies = sign(template, catalogue, answers, signed_at, self.zone)
        return SignedConsent(id=str(uuid.uuid4()), domain=template.domain, template=template.key,
                             template_type=template.type, signer_ids=frozenset(signer_ids),
                             date=signed_at, recorded=whole_millis(self.clock()), modules=modules,
                             policies=policies, resources=dict(resources))

    @staticmethod
    def record(store: ConsentStore, consent: SignedConsent) -> SignedConsent:
        """Store a consent; the one stored before under the same key when it says the same
        (a client's retry), 409 when it says something else."""
        stored = store.add_consents([consent])[0]
        if stored.id != consent.id and stored.modules != consent.modules:
            raise ConflictingConsent("a consent of this person for this template and date exists "
                                     "already with other answers")
        return stored


GICS: ServiceKey[ConsentService] = ServiceKey("gics")


def opt_out_answers(template: Template) -> dict[Key, ConsentStatus]:
    return {m.module: ConsentStatus.ACCEPTED_OPT_OUT for m in template.modules}


def revoked_grants(consent: SignedConsent, persons_consents: Sequence[SignedConsent]) -> frozenset[Key]:
    """The policies this consent granted that a newer consent of the same person declined."""
    others = [c for c in persons_consents if not c.signer_ids.isdisjoint(consent.signer_ids)]
    return frozenset(p.key for p in consent.policies if p.status.accepting and revoked(consent, p, others))
