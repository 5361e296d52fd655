"""Pseudonym logic on top of the store: look up, create, add further pseudonyms, import.

Each method works inside the caller's unit of work, so an operation — or another plugin, such as
the dispatcher, which draws site and project pseudonyms from gPAS domains — composes them into
one unit. New pseudonyms are random candidates offered to the store, which keeps the first it
sees per original and rejects any that another original holds; losers draw again.
"""

from __future__ import annotations

import enum
import logging
from itertools import repeat
from typing import Iterable, Sequence

from ttp_gateway.backends.base import UnitOfWork
from ttp_gateway.core.errors import NotFound, ServerError

from .domains import Domain, DomainRegistry
from .store import PSEUDONYMS, PseudonymRow, PseudonymStore

log = logging.getLogger("ttp_gateway.gpas")

# Rounds of drawing before a domain counts as (nearly) full. At 50% occupancy the chance that
# one pseudonym still collides after 24 rounds is 6e-8.
MAX_DRAWS = 24
PROBE = 32  # originals looked up to tell a batch of new originals from one of known ones


class PairOutcome(enum.Enum):
    CREATED = "created"
    EXISTS = "exists"                  # the same pair was stored already
    INVALID = "invalid"                # the pseudonym breaks the domain's rules
    PSEUDONYM_TAKEN = "pseudonym-taken"
    ORIGINAL_TAKEN = "original-taken"  # the original has another pseudonym (not multi-psn)


class Pseudonymizer:
    """gPAS's public API for other plugins (`api.GPAS`): domains, and pseudonyms inside the
    caller's unit of work."""

    def __init__(self, domains: DomainRegistry) -> None:
        self.domains = domains

    def domain(self, name: str) -> Domain:
        """The domain of that name; 404 when there is none."""
        domain = self.domains.get(name)
        if domain is None:
            raise NotFound(f"domain {name!r} is not known")
        return domain

    def ensure_domain(self, name: str, settings: dict | None = None) -> Domain:
        """The domain of that name, created with `settings` (gPAS defaults otherwise) if absent."""
        domain = self.domains.get(name)
        if domain is None:
            domain = Domain.from_settings(name, settings or {})
            self.domains.put(domain)
        return domain

    @staticmethod
    def store(unit: UnitOfWork) -> PseudonymStore:
        return unit[PSEUDONYMS]

    def lookup(self, unit: UnitOfWork, domain: Domain, originals: Sequence[str]) -> dict[str, str]:
        """The pseudonym of each original that has one."""
        return unit[PSEUDONYMS].get_pseudonyms(domain.name, originals)

    def all_pseudonyms(self, unit: UnitOfWork, domain: Domain,
                       originals: Sequence[str]) -> dict[str, list[str]]:
        """Every pseudonym of each original that has any (its own first, then further ones)."""
        rows = unit[PSEUDONYMS].get_pseudonym_rows(domain.name, originals)
        return {original: [row.pseudonym for row in found] for original, found in rows.items()}

    def originals(self, unit: UnitOfWork, domain: Domain, pseudonyms: Sequence[str]) -> dict[str, str | None]:
        """The original of each known pseudonym; None where it was anonymised."""
        return unit[PSEUDONYMS].get_originals(domain.name, pseudonyms)

    def count(self, unit: UnitOfWork, domain: Domain) -> int:
        """How many pseudonyms the domain holds."""
        return unit[PSEUDONYMS].count_pseudonyms(domain.name)

    def delete(self, unit: UnitOfWork, domain: Domain, originals: Sequence[str]) -> set[str]:
        """Delete the entries of these originals; the originals that had any."""
        return unit[PSEUDONYMS].delete_originals(domain.name, sorted(set(originals)))

    def anonymize(self, unit: UnitOfWork, domain: Domain, originals: Sequence[str]) -> set[str]:
        """Cut these originals from their pseudonyms for good; the originals that had any."""
        return unit[PSEUDONYMS].anonymize_originals(domain.name, sorted(set(originals)))

    def get_or_create(self, unit: UnitOfWork, domain: Domain, originals: Iterable[str], *,
                      created: set[str] | None = None) -> dict[str, str]:
        """The pseudonym of every original, created where there is none. Where `created` is
        given, the originals whose pseudonym this call created are added to it (interfaces that
        answer "created" apart from "found" need to know; the rest are found ones)."""
        store = unit[PSEUDONYMS]
        wanted = list(dict.fromkeys(originals))
        # Large batches are mostly all new (an import) or mostly all known (a repeat): a probe
        # of a few tells which, and new ones go straight to the insert, whose conflicts say
        # which were known after all, instead of being looked up first.
        probe = wanted[::max(1, len(wanted) // PROBE)] if len(wanted) > PROBE else wanted
        found = store.get_pseudonyms(domain.name, probe)
        if len(wanted) > PROBE and not found:
            missing = wanted
        else:
            if len(probe) < len(wanted):
                found = store.get_pseudonyms(domain.name, wanted)
            missing = [o for o in wanted if o not in found]
        # Sorted, so that two writers racing over the same originals lock them in one order.
        missing.sort()
        for _ in range(MAX_DRAWS):
            if not missing:
                return found
            candidates = domain.format.generate(len(missing))
            rows = list(map(PseudonymRow, missing, repeat(0), candidates))
            stored = store.insert_pseudonyms(domain.name, rows)
            if len(stored) == len(rows):  # the usual case: every candidate was free
                found.update(zip(missing, candidates))
                if created is not None:
                    created.update(missing)
                return found
            lost = [row.original for row in rows if row not in stored]
            found.update((row.original, row.pseudonym) for row in rows if row in stored)
            if created is not None:
                created.update(row.original for row in rows if row in stored)
            if lost:
                # Either another writer gave the original a pseudonym first (read it back), or
                # our candidate was taken (draw again).
                found.update(store.get_pseudonyms(domain.name, lost))
            missing = [o for o in lost if o not in found]
        if missing:
            raise self._exhausted(store, domain)
        return found

    def add_further(self, unit: UnitOfWork, domain: Domain,
                    requests: Sequence[tuple[str, int]]) -> list[tuple[str, str]]:
        """`count` new pseudonyms for each (original, count) of a multi-psn domain, in order."""
        store = unit[PSEUDONYMS]
        originals = sorted({original for original, _ in requests})
        existing = store.get_pseudonym_rows(domain.name, originals)
        next_number = {o: (existing[o][-1].number + 1 if o in existing else 0) for o in originals}
        created: dict[str, list[str]] = {o: [] for o in originals}
        pending = [(original, count) for original, count in requests]
        for _ in range(MAX_DRAWS):
            wanted = [(o, n) for o, n in pending if n > 0]
            if not wanted:
                break
            rows = []
            for original, count in sorted(wanted):
                for _ in range(count):
                    rows.append(PseudonymRow(original, next_number[original], ""))
                    next_number[original] += 1
            candidates = domain.format.generate(len(rows))
            rows = [PseudonymRow(r.original, r.number, p) for r, p in zip(rows, candidates)]
            stored = store.insert_pseudonyms(domain.name, rows)
            short: dict[str, int] = {}
            for row in rows:
                if row in stored:
                    created[row.original].append(row.pseudonym)
                else:
                    short[row.original] = short.get(row.original, 0) + 1
            if short:
                # A number taken by a concurrent writer: continue after the highest one stored.
                latest = store.get_pseudonym_rows(domain.name, sorted(short))
                for original in short:
                    next_number[original] = max(next_number[original], latest[original][-1].number + 1)
            pending = list(short.items())
        if any(n > 0 for _, n in pending):
            raise self._exhausted(store, domain)
        # Hand out the new pseudonyms per request, in request order.
        handed: list[tuple[str, str]] = []
        cursor = {o: 0 for o in originals}
        for original, count in requests:
            start = cursor[original]
            handed += [(original, p) for p in created[original][start:start + count]]
            cursor[original] = start + count
        return handed

    def insert_pairs(self, unit: UnitOfWork, domain: Domain,
                     pairs: Sequence[tuple[str, str]]) -> list[PairOutcome]:
        """Import existing (original, pseudonym) pairs, one outcome per pair."""
        store = unit[PSEUDONYMS]
        outcomes: list[PairOutcome | None] = []
        is_valid = [bool(o) and domain.format.validate(p) is None for o, p in pairs]
        valid = [pair for pair, ok in zip(pairs, is_valid) if ok]
        owners: dict[str, str | None] = store.get_originals(domain.name, sorted({p for _, p in valid}))
        rows_of = store.get_pseudonym_rows(domain.name, sorted({o for o, _ in valid}))
        planned: list[tuple[int, PseudonymRow]] = []
        for index, (original, pseudonym) in enumerate(pairs):
            if not is_valid[index]:
                outcomes.append(PairOutcome.INVALID)
                continue
            if pseudonym in owners:
                same = owners[pseudonym] == original
                outcomes.append(PairOutcome.EXISTS if same else PairOutcome.PSEUDONYM_TAKEN)
                continue
            held = rows_of.get(original, [])
            if held and not domain.multi_psn:
                outcomes.append(PairOutcome.ORIGINAL_TAKEN)
                continue
            row = PseudonymRow(original, held[-1].number + 1 if held else 0, pseudonym)
            owners[pseudonym] = original
            rows_of.setdefault(original, []).append(row)
            planned.append((index, row))
            outcomes.append(None)
        stored = store.insert_pseudonyms(domain.name, sorted((r for _, r in planned),
                                                           key=lambda r: (r.original, r.number)))
        raced = [row for _, row in planned if row not in stored]
        owners_now = store.get_originals(domain.name, [r.pseudonym for r in raced]) if raced else {}
        for index, row in planned:
            if row in stored:
                outcomes[index] = PairOutcome.CREATED
            elif owners_now.get(row.pseudonym) == row.original:
                outcomes[index] = PairOutcome.EXISTS
            elif row.pseudonym in owners_now:
                outcomes[index] = PairOutcome.PSEUDONYM_TAKEN
            else:
                outcomes[index] = PairOutcome.ORIGINAL_TAKEN
        return outcomes  # type: ignore[return-value]

    @staticmethod
    def _exhausted(store: PseudonymStore, domain: Domain) -> ServerError:
        # The operator learns how full the domain is; the caller does not.
        log.error("pseudonym domain exhausted", extra={
            "domain": domain.name, "used": store.count_pseudonyms(domain.name), "capacity": domain.format.capacity})
        return ServerError(f"no new pseudonym could be drawn in domain {domain.name!r}; "
                           "its operator must configure a longer pseudonym length or another alphabet")
