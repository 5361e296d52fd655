"""The consent service of one gateway: its store, the catalogue cached per process, its clock.

The catalogue (domains, policies, modules, templates) is read on every request and changes
rarely, so each process keeps a snapshot and reloads it, at most once a second, when a request
names something the snapshot lacks: an object created by the admin command line or another
worker is found within a second without a store round trip per request.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone, tzinfo
from typing import Callable, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ttp_gateway.core.errors import FhirError, NotFound, Unprocessable

from .model import Catalogue, ConsentDomain, ConsentStatus, Key, SignedConsent, SignerId, Template, sign
from .states import revoked
from .store import ConsentStore, ConsentUnit

DEFAULT_ZONE = "Europe/Berlin"


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


class CatalogueCache:
    def __init__(self, store: ConsentStore, reload_interval: float = 1.0) -> None:
        self._store = store
        self._interval = reload_interval
        self._snapshot = Catalogue()
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def current(self) -> Catalogue:
        if self._loaded_at == float("-inf"):
            self.reload()
        return self._snapshot

    def reload(self) -> Catalogue:
        with self._lock, self._store.transaction() as unit:
            self._snapshot = unit.load_catalogue()
            self._loaded_at = time.monotonic()
        return self._snapshot

    def fresher(self) -> Catalogue:
        """The snapshot, reloaded first if the last load is older than the interval."""
        if time.monotonic() - self._loaded_at >= self._interval:
            return self.reload()
        return self._snapshot


class ConsentService:
    """What the operations, the search and the admin commands share."""

    def __init__(self, store: ConsentStore, zone: tzinfo, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.zone = zone
        self.clock = clock
        self.catalogues = CatalogueCache(store)

    def catalogue(self) -> Catalogue:
        return self.catalogues.current()

    def domain(self, name: str) -> tuple[Catalogue, ConsentDomain]:
        """The catalogue and the named domain; 404 for a domain not in storage."""
        catalogue = self.catalogues.current()
        domain = catalogue.domain(name)
        if domain is None:
            catalogue = self.catalogues.fresher()
            domain = catalogue.domain(name)
        if domain is None:
            raise NotFound(f"unknown consent domain {name!r}")
        return catalogue, domain

    def template(self, domain: str, key: Key) -> tuple[Catalogue, Template]:
        catalogue = self.catalogues.current()
        template = catalogue.template(domain, key)
        if template is None:
            catalogue = self.catalogues.fresher()
            template = catalogue.template(domain, key)
        if template is None:
            raise NotFound(f"unknown template {key} in consent domain {domain!r}")
        return catalogue, template

    def put_catalogue(self, catalogue: Catalogue) -> None:
        """Store every object of `catalogue` (create or replace)."""
        with self.store.transaction(write=True) as unit:
            unit.put_domains(list(catalogue.domains.values()))
            unit.put_policies(list(catalogue.policies.values()))
            unit.put_modules(list(catalogue.modules.values()))
            unit.put_templates(list(catalogue.templates.values()))
        self.catalogues.reload()

    def signed_consent(self, catalogue: Catalogue, template: Template, signer_ids: Sequence[SignerId],
                       signed_at: datetime, answers: Mapping[Key, ConsentStatus],
                       resources: Mapping) -> SignedConsent:
        if not signer_ids:
            raise Unprocessable("the patient carries no signer id of the domain")
        modules, policies = sign(template, catalogue, answers, signed_at, self.zone)
        return SignedConsent(id=str(uuid.uuid4()), domain=template.domain, template=template.key,
                             template_type=template.type, signer_ids=frozenset(signer_ids),
                             date=signed_at, recorded=self.clock(), modules=modules, policies=policies,
                             resources=dict(resources))

    def record(self, unit: ConsentUnit, consent: SignedConsent) -> SignedConsent:
        """Store a consent; the one stored before under the same key when it says the same
        (a client's retry), 409 when it says something else."""
        stored = unit.add_consents([consent])[0]
        if stored.id != consent.id and stored.modules != consent.modules:
            raise ConflictingConsent("a consent of this person for this template and date exists "
                                     "already with other answers")
        return stored


def opt_out_answers(template: Template) -> dict[Key, ConsentStatus]:
    return {m.module: ConsentStatus.ACCEPTED_OPT_OUT for m in template.modules}


def revoked_grants(consent: SignedConsent, persons_consents: Sequence[SignedConsent]) -> frozenset[Key]:
    """The policies this consent granted that a newer consent of the same person declined."""
    others = [c for c in persons_consents if not c.signer_ids.isdisjoint(consent.signer_ids)]
    return frozenset(p.key for p in consent.policies if p.status.accepting and revoked(consent, p, others))

