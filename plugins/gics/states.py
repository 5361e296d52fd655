"""Policy states: what a person's signed consents say about a policy at a moment.

Pure functions over signed consents (`model.SignedConsent`); no storage, no FHIR.

The rules, each held by the tests in `tests/gics/test_states.py`:

- *Which consents count.* Those of the domain whose signer ids match the ids asked about
  (`IdMatching`): AT_LEAST_ONE (default) — they share one id; AT_LEAST_ALL — the consent carries
  every id asked about; EXACT — the consent carries exactly those ids. Consents dated after the
  moment of the question do not count yet.
- *Which signed policy wins.* Per policy (name and version; name alone with
  `ignore_version`) the one from the newest consent: latest date, then the higher template
  version, then the one recorded last. So a newer consent of any template replaces what an
  older one said, and of two consents of one template version the newer wins.
- *Unknown states.* NOT_ASKED, NOT_CHOSEN and UNKNOWN say nothing about the person's will: by
  default they are passed over and the newest known state wins; with
  `unknown_as_decline` they count, as a decline.
- *Validity.* A granted policy is valid from its consent's date until it expires (the earliest
  of the template's, module's and policy's expiry); past that it is EXPIRED, which declines.
  Withdrawal, refusal, revocation and objection are newer consents whose statuses decline.
- *The answer.* A policy is consented exactly when the winning state accepts and has not
  expired; `current_states` and `is_consented` are computed by the same function, so they
  always agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from enum import Enum
from typing import Iterable, NamedTuple, Sequence

from .model import (ConsentStatus, Key, SignedConsent, SignedPolicy, SignerId, version_order)


class IdMatching(str, Enum):
    AT_LEAST_ONE = "AT_LEAST_ONE"
    AT_LEAST_ALL = "AT_LEAST_ALL"
    EXACT = "EXACT"


@dataclass(frozen=True)
class CheckConfig:
    """The `config` parameter of the state operations."""

    id_matching: IdMatching = IdMatching.AT_LEAST_ONE
    ignore_version: bool = False
    unknown_as_decline: bool = False
    request_date: date | None = None

    def moment(self, now: datetime, zone: tzinfo) -> datetime:
        """The moment the question is about: the last moment of the request date, else now.
        So what was signed on the request date counts, and what ends at midnight after it
        was still valid on it."""
        if self.request_date is None:
            return now
        return datetime.combine(self.request_date + timedelta(days=1), time(), zone) - timedelta(microseconds=1)


DEFAULT = CheckConfig()


def ids_match(signed_by: frozenset[SignerId], asked: frozenset[SignerId], matching: IdMatching) -> bool:
    if matching is IdMatching.EXACT:
        return signed_by == asked
    if matching is IdMatching.AT_LEAST_ALL:
        return asked <= signed_by
    return not signed_by.isdisjoint(asked)


def consents_of(consents: Iterable[SignedConsent], asked: Iterable[SignerId],
                matching: IdMatching = IdMatching.AT_LEAST_ONE,
                until: datetime | None = None) -> list[SignedConsent]:
    """The consents that count for a person (by its ids) up to a moment, oldest first."""
    wanted = frozenset(asked)
    found = [c for c in consents
             if ids_match(c.signer_ids, wanted, matching) and (until is None or c.date <= until)]
    found.sort(key=SignedConsent.order)
    return found


class PolicyState(NamedTuple):
    """A policy's state for one person: the signed policy that decides it, from which consent,
    and the status it has at the moment asked about (EXPIRED where its time is over)."""

    policy: Key
    status: ConsentStatus
    signed: SignedPolicy
    consent: SignedConsent
    start: datetime
    end: datetime | None

    @property
    def permits(self) -> bool:
        return self.status.accepting


def effective_status(signed: SignedPolicy, at: datetime) -> ConsentStatus:
    if signed.status.accepting and signed.expires is not None and signed.expires <= at:
        return ConsentStatus.EXPIRED
    return signed.status


def _state(consent: SignedConsent, signed: SignedPolicy, at: datetime) -> PolicyState:
    return PolicyState(signed.key, effective_status(signed, at), signed, consent, consent.date, signed.expires)


def current_states(consents: Iterable[SignedConsent], asked: Iterable[SignerId], at: datetime,
                   config: CheckConfig = DEFAULT,
                   policies: Sequence[Key] | None = None) -> dict[Key | str, PolicyState]:
    """The winning state of every policy the person ever signed (or of `policies` only), by
    policy key, or by name with `ignore_version`. A policy with only unknown states is shown
    with its newest unknown state."""
    wanted_names = {p.name for p in policies} if policies is not None else None
    wanted_keys = set(policies) if policies is not None else None
    newest: dict[Key | str, PolicyState] = {}
    newest_unknown: dict[Key | str, PolicyState] = {}
    # Oldest first: a later consent overwrites what an earlier one said.
    for consent in consents_of(consents, asked, config.id_matching, at):
        for signed in consent.policies:
            if wanted_names is not None and signed.name not in wanted_names:
                continue
            if not config.ignore_version and wanted_keys is not None and signed.key not in wanted_keys:
                continue
            group: Key | str = signed.name if config.ignore_version else signed.key
            state = _state(consent, signed, at)
            if signed.status.unknown and not config.unknown_as_decline:
                newest_unknown[group] = state
            else:
                newest[group] = state
    for group, state in newest_unknown.items():
        newest.setdefault(group, state)
    return newest


def decides(state: PolicyState | None) -> bool:
    """Whether a winning state means: consented. (An unknown state never does, whether or not
    it counts as a decline.)"""
    return state is not None and state.permits


def is_consented(consents: Iterable[SignedConsent], asked: Iterable[SignerId], policy: Key, at: datetime,
                 config: CheckConfig = DEFAULT) -> bool:
    states = current_states(consents, asked, at, config, [policy])
    group: Key | str = policy.name if config.ignore_version else policy
    return decides(states.get(group))


def all_states(consents: Iterable[SignedConsent], asked: Iterable[SignerId], at: datetime,
               matching: IdMatching = IdMatching.AT_LEAST_ONE) -> list[PolicyState]:
    """Every policy every matching consent ever signed, each with its status at `at`."""
    return [_state(consent, signed, at)
            for consent in consents_of(consents, asked, matching)
            for signed in consent.policies]


def current_consent(consents: Iterable[SignedConsent], asked: Iterable[SignerId], template: Key,
                    ignore_version: bool = False) -> SignedConsent | None:
    """The person's current consent of a template: the newest of that template version, or,
    with `ignore_version`, the newest of any version of the template."""
    found = [c for c in consents_of(consents, asked)
             if c.template.name == template.name and (ignore_version or c.template.version == template.version)]
    if not found:
        return None
    if ignore_version:
        return max(found, key=lambda c: (c.date, c.recorded, c.seq))
    return max(found, key=lambda c: (version_order(c.template.version), c.date, c.recorded, c.seq))


def revoked(consent: SignedConsent, signed: SignedPolicy, others: Iterable[SignedConsent]) -> bool:
    """Whether a newer consent of the person declined what `consent` granted for this policy
    (a withdrawal, a refusal, a new form answered no) while the grant was in force."""
    for other in others:
        if other.order() <= consent.order() or (signed.expires is not None and other.date >= signed.expires):
            continue
        if any(p.key == signed.key and p.status.declining for p in other.policies):
            return True
    return False
