"""The consent store's contract, held on every backend (`repository`: SQLite, PostgreSQL,
mongomock): the catalogue, recording consents (unique keys, batches, unknown domains), person
lookups, pages, signer id pages, and the Consent search's criteria compared with a reference
computed here from the consents themselves."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest

from gics_helpers import demo_settings
from ttp_gateway.backends.base import NotFound, Repository
from ttp_gateway.plugins.gics.model import (OPEN_END, Catalogue, ConsentStatus, Key, SignedConsent, SignerId,
                                            catalogue_settings, domain_from_settings, policy_from_settings)
from ttp_gateway.plugins.gics.service import ConsentService, read_catalogue
from ttp_gateway.plugins.gics.states import effective_status
from ttp_gateway.plugins.gics.store import CONSENTS, ConsentStore, PolicyFilter

ZONE = ZoneInfo("Europe/Berlin")
CATALOGUE = Catalogue.from_settings({**demo_settings(), "consents": []})
SERVICE = ConsentService(ZONE, lambda: datetime(2025, 6, 2, 10, 0, 0, 123456, tzinfo=timezone.utc))
FORM = Key("Patienteneinwilligung MII", "1.6.d")
NUM = Key("Einwilligung NUM", "1.0")


def write(repository: Repository, work: Callable[[ConsentStore], Any]) -> Any:
    return repository.write(lambda unit: work(unit[CONSENTS]))


def read(repository: Repository, work: Callable[[ConsentStore], Any]) -> Any:
    with repository.read() as unit:
        return work(unit[CONSENTS])


def store_catalogue(repository: Repository) -> None:
    repository.write(lambda unit: SERVICE.store_catalogue(unit, CATALOGUE))


def signed(signers: list[str], day: str, domain: str = "MII", template: Key = FORM,
           answers: dict[Key, ConsentStatus] | None = None, hour: int = 9, scans: int = 0) -> SignedConsent:
    form = CATALOGUE.template(domain, template)
    assert form is not None
    if answers is None:
        answers = {m.module: ConsentStatus.ACCEPTED for m in form.modules}
    ids = [SignerId(*text.split("|")) for text in signers]
    moment = datetime.fromisoformat(day).replace(hour=hour, microsecond=654321, tzinfo=ZONE)
    resources = {"patient": {"resourceType": "Patient", "id": "p"},
                 "documentReference": [{"resourceType": "DocumentReference", "content": [
                     {"attachment": {"data": "JVBERi0=" * 10}}]}] * scans}
    return SERVICE.signed_consent(CATALOGUE, form, ids, moment, answers, resources)


# --- the catalogue --------------------------------------------------------------------------------

def test_the_catalogue_is_kept_as_configured(repository) -> None:
    assert read(repository, read_catalogue) == Catalogue()
    store_catalogue(repository)
    assert read(repository, read_catalogue) == CATALOGUE
    # again: every object exists, nothing is created, nothing changes
    domains = sorted(CATALOGUE.domains.values(), key=lambda d: d.name)
    assert write(repository, lambda s: s.put_domains(domains)) == [False] * len(domains)
    policies = list(CATALOGUE.policies.values())[:3]
    assert write(repository, lambda s: s.put_versions(policies)) == [False] * 3
    assert read(repository, read_catalogue) == CATALOGUE


def test_a_version_is_created_beside_others_and_replaced_in_place(repository) -> None:
    store_catalogue(repository)
    policy = CATALOGUE.policy("num", Key("MDAT_erheben", "1.1"))
    settings = {**catalogue_settings(policy), "version": "2.0", "label": "neu"}
    newer = policy_from_settings(settings, CATALOGUE.domain("num"))
    relabelled = policy_from_settings({**catalogue_settings(policy), "label": "anders"}, CATALOGUE.domain("num"))
    assert write(repository, lambda s: s.put_versions([newer, relabelled])) == [True, False]
    stored = read(repository, read_catalogue)
    assert [p.version for p in stored.policies_of("num") if p.name == "MDAT_erheben"] == ["1.1", "2.0"]
    assert stored.policy("num", Key("MDAT_erheben", "1.1")).label == "anders"


def test_versions_of_an_unknown_domain_are_refused(repository) -> None:
    store_catalogue(repository)
    stray = policy_from_settings({"name": "P", "version": "1"}, domain_from_settings({"name": "nowhere"}))
    with pytest.raises(NotFound):
        write(repository, lambda s: s.put_versions([stray]))


# --- recording ------------------------------------------------------------------------------------

def test_a_consent_comes_back_as_it_was_stored(repository) -> None:
    store_catalogue(repository)
    given = signed(["Pseudonym|a"], "2021-03-04", scans=2)
    (stored,) = write(repository, lambda s: s.add_consents([given]))
    assert stored.seq > 0 and stored.id == given.id
    (found,) = read(repository, lambda s: s.consents_of_persons("MII", [SignerId("Pseudonym", "a")], resources=True))
    assert found == stored and found.seq == stored.seq
    assert (found.date, found.recorded) == (given.date, given.recorded)  # kept to the millisecond
    assert found.date.microsecond == 654000
    assert found.policies == given.policies and found.modules == given.modules
    assert dict(found.resources) == dict(given.resources)
    (light,) = read(repository, lambda s: s.consents_of_persons("MII", [SignerId("Pseudonym", "a")]))
    assert light.resources == {}


def test_the_same_consent_is_stored_once(repository) -> None:
    store_catalogue(repository)
    first = signed(["Pseudonym|a"], "2021-03-04")
    again = signed(["Pseudonym|a"], "2021-03-04")  # another id, the same person, form and moment
    other = signed(["Pseudonym|b"], "2021-03-04")
    stored = write(repository, lambda s: s.add_consents([first, again, other]))
    assert [c.id for c in stored] == [first.id, first.id, other.id]
    assert stored[0].seq == stored[1].seq != stored[2].seq
    later = write(repository, lambda s: s.add_consents([again]))
    assert later[0].id == first.id and later[0].seq == stored[0].seq
    assert read(repository, lambda s: s.count_consents("MII")) == 2


def test_a_consent_of_an_unknown_domain_writes_nothing(repository) -> None:
    store_catalogue(repository)
    good = signed(["Pseudonym|a"], "2021-03-04")
    stray = replace(good, domain="nowhere", id="x")
    with pytest.raises(NotFound):
        write(repository, lambda s: s.add_consents([good, stray]))
    assert read(repository, lambda s: s.count_consents("MII")) == 0


def test_what_a_unit_rolled_back_is_not_there(repository) -> None:
    store_catalogue(repository)
    unit = repository.begin()
    unit[CONSENTS].add_consents([signed(["Pseudonym|a"], "2021-03-04")])
    unit.rollback()
    assert read(repository, lambda s: s.count_consents("MII")) == 0
    assert read(repository, lambda s: s.consents_of_persons("MII", [SignerId("Pseudonym", "a")])) == []


# --- reading --------------------------------------------------------------------------------------

def test_persons_by_any_of_their_ids(repository) -> None:
    store_catalogue(repository)
    both = signed(["Pseudonym|a", "Pseudonym|a2"], "2020-01-01")
    alone = signed(["Pseudonym|a2"], "2021-01-01")
    other = signed(["Pseudonym|b"], "2021-01-01")
    elsewhere = signed(["Pseudonym|a"], "2021-01-01", domain="num", template=NUM)
    write(repository, lambda s: s.add_consents([both, alone, other, elsewhere]))

    def ids(*signers: str) -> list[str]:
        found = read(repository, lambda s: s.consents_of_persons("MII", [SignerId(*x.split("|")) for x in signers]))
        return [c.id for c in found]

    assert ids("Pseudonym|a") == [both.id]
    assert ids("Pseudonym|a2") == [both.id, alone.id]
    assert ids("Pseudonym|a", "Pseudonym|a2", "Pseudonym|b") == [both.id, alone.id, other.id]
    assert ids("Pseudonym|nobody") == [] and ids() == []


def test_pages_in_the_order_consents_were_recorded(repository) -> None:
    store_catalogue(repository)
    consents = [signed([f"Pseudonym|p{i:02d}"], "2020-01-01", template=FORM if i % 3 else Key(
        "Patienteneinwilligung MII", "1.7.2"), answers={}) for i in range(25)]
    for start in range(0, 25, 10):  # recorded in several units
        write(repository, lambda s, part=consents[start:start + 10]: s.add_consents(part))
    everything = [c.id for c in consents]
    of_form = [c.id for c in consents if c.template == FORM]

    def page(offset: int, limit: int, template: Key | None = None) -> list[str]:
        return [c.id for c in read(repository, lambda s: s.consents_page("MII", offset=offset, limit=limit,
                                                                          template=template))]

    assert page(0, 100) == everything and page(5, 7) == everything[5:12] and page(24, 10) == everything[24:]
    assert page(25, 10) == [] and page(0, 0) == [] and page(10 ** 6, 10) == []
    assert page(3, 4, FORM) == of_form[3:7]
    assert read(repository, lambda s: s.count_consents("MII")) == 25
    assert read(repository, lambda s: s.count_consents("MII", FORM)) == len(of_form)
    assert read(repository, lambda s: s.count_consents("num")) == 0
    with_resources = read(repository, lambda s: s.consents_page("MII", limit=1))[0]
    assert with_resources.resources["patient"]["id"] == "p"


def test_signer_id_pages(repository) -> None:
    store_catalogue(repository)
    consents = [signed([f"Pseudonym|v{i:02d}"], "2020-01-01") for i in range(12)]
    # v03 signed three times, one of them together with a CaseId
    consents += [signed(["Pseudonym|v03"], f"202{n}-01-01") for n in (1, 2)]
    write(repository, lambda s: s.add_consents(consents))
    seen: list[tuple[str, int]] = []
    after = ""
    while True:
        page = read(repository, lambda s: s.signers_page("MII", "Pseudonym", after=after, limit=2))
        if not page:
            break
        assert len(page) <= 2
        seen += [(value, len(found)) for value, found in page]
        after = page[-1][0]
    assert [v for v, _ in seen] == [f"v{i:02d}" for i in range(12)]
    assert dict(seen)["v03"] == 3
    # a value with more consents than a page holds comes whole
    (only,) = read(repository, lambda s: s.signers_page("MII", "Pseudonym", after="v02", limit=1))
    assert only[0] == "v03" and len(only[1]) == 3
    assert read(repository, lambda s: s.signers_page("MII", "CaseId", limit=10)) == []


# --- the Consent search against a reference -------------------------------------------------------

def _admits_consent(wanted: PolicyFilter, consent: SignedConsent) -> bool:
    return (consent.domain == wanted.domain
            and (wanted.template is None or consent.template == wanted.template)
            and (not wanted.signer_ids or not consent.signer_ids.isdisjoint(wanted.signer_ids)))


def _admits(wanted: PolicyFilter, consent: SignedConsent, policy) -> bool:
    """What the search criteria mean, computed from one signed policy."""
    if not _admits_consent(wanted, consent):
        return False
    if wanted.policies is not None and policy.name not in wanted.policies:
        return False
    if wanted.permit is not None and effective_status(policy, wanted.at).accepting != wanted.permit:
        return False
    start, end = consent.date, policy.expires or OPEN_END
    for prefix, low, high in wanted.periods:
        covers = start <= low and end >= high
        holds = {"eq": covers, "ne": not covers, "gt": end > high, "ge": end > low, "lt": start < low,
                 "le": start < high, "sa": start >= high, "eb": end <= low}[prefix]
        if not holds:
            return False
    return True


def _history() -> list[SignedConsent]:
    chance = random.Random(7)
    form = CATALOGUE.template("MII", FORM)
    found = []
    for index in range(16):
        answers = {m.module: chance.choice([ConsentStatus.ACCEPTED, ConsentStatus.DECLINED]) for m in form.modules
                   if chance.random() < 0.8}
        signers = [f"Pseudonym|s{index % 12:02d}"] + (["Pseudonym|shared"] if index % 7 == 0 else [])
        template = FORM if index % 4 else Key("Patienteneinwilligung MII", "1.7.2")
        if template != FORM:
            answers = {}
        found.append(signed(signers, f"{2015 + index % 9}-0{1 + index % 9}-1{index % 10}", template=template,
                            answers=answers, hour=index % 24))
    found.append(signed(["Pseudonym|n1"], "2020-02-02", domain="num", template=NUM))
    return found


def _filters() -> list[PolicyFilter]:
    at = datetime(2024, 6, 1, tzinfo=timezone.utc)
    day = datetime(2021, 3, 1, tzinfo=ZONE)
    later = datetime(2040, 1, 1, tzinfo=ZONE)
    found = [PolicyFilter("MII"), PolicyFilter("num"), PolicyFilter("nowhere"),
             PolicyFilter("MII", policies=frozenset()),
             PolicyFilter("MII", policies=frozenset({"MDAT_erheben", "IDAT_erheben"})),
             PolicyFilter("MII", permit=True, at=at), PolicyFilter("MII", permit=False, at=at),
             PolicyFilter("MII", policies=frozenset({"MDAT_erheben"}), permit=True, at=at),
             PolicyFilter("MII", policies=frozenset({"MDAT_erheben"}), permit=True,
                          at=datetime(2019, 6, 1, tzinfo=timezone.utc)),
             PolicyFilter("MII", signer_ids=(SignerId("Pseudonym", "shared"), SignerId("Pseudonym", "s03"))),
             PolicyFilter("MII", signer_ids=(SignerId("Pseudonym", "s05"),), permit=False, at=at),
             PolicyFilter("MII", template=FORM, policies=frozenset({"BIOMAT_erheben"})),
             PolicyFilter("MII", template=Key("Patienteneinwilligung MII", "1.7.2"))]
    for prefix in ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb"):
        found.append(PolicyFilter("MII", periods=((prefix, day, day + timedelta(days=1)),)))
    found.append(PolicyFilter("MII", periods=(("ge", later, later + timedelta(days=1)),
                                              ("lt", day, day + timedelta(days=1))), permit=True, at=at))
    return found


def test_search_criteria_mean_what_the_reference_says(repository) -> None:
    store_catalogue(repository)
    history = write(repository, lambda s: s.add_consents(_history()))
    for wanted in _filters():
        expected = sorted(((c.seq, position), c.id) for c in history for position, p in enumerate(c.policies)
                          if _admits(wanted, c, p))
        documents = sorted((c.seq, c.id) for c in history
                           if (any(_admits(wanted, c, p) for p in c.policies) if wanted.on_policies
                               else _admits_consent(wanted, c)))
        assert read(repository, lambda s: s.count_signed_policies(wanted)) == len(expected), wanted
        assert read(repository, lambda s: s.count_matching_consents(wanted)) == len(documents), wanted
        page = read(repository, lambda s: s.signed_policies_page(wanted, offset=3, limit=11))
        assert [((c.seq, c.policies.index(p)), c.id) for c, p in page] == expected[3:14], wanted
        consents = read(repository, lambda s: s.matching_consents_page(wanted, offset=1, limit=5))
        assert [(c.seq, c.id) for c in consents] == documents[1:6], wanted
    assert any(read(repository, lambda s: s.count_signed_policies(w)) for w in _filters()[4:])  # not vacuous


def test_search_pages_carry_resources_only_when_asked(repository) -> None:
    store_catalogue(repository)
    write(repository, lambda s: s.add_consents([signed(["Pseudonym|a"], "2021-01-01")]))
    wanted = PolicyFilter("MII", policies=frozenset({"MDAT_erheben"}))
    (bare,) = read(repository, lambda s: s.signed_policies_page(wanted, limit=5))
    (full,) = read(repository, lambda s: s.signed_policies_page(wanted, limit=5, resources=True))
    assert bare[0].resources == {} and full[0].resources["patient"]["id"] == "p"
    assert bare[1].name == "MDAT_erheben" and bare[1].expires is not None
