"""Policy states against hand-worked cases: expiry, withdrawal, refusal, several consents and
template versions, unknown answers, id matching, request dates, opt-out; and, for random
consent histories, `is_consented` and `current_states` agreeing on every policy.

The catalogue of these cases: domain D; policies A|1.0, B|1.0, A|2.0; module M1|1 grants A|1.0
(for five years) and B|1.0, module M2|1 grants A|2.0; consent forms T|1.0 (M1) and T|2.0 (M1,
M2), valid thirty years; a withdrawal W|1.0, a refusal R|1.0, an opt-out O|1.0 and an objection
X|1.0, each over M1. Times are in Europe/Berlin.
"""

from __future__ import annotations

from datetime import date, datetime
from itertools import count
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from ttp_gateway.plugins.gics.model import Catalogue, ConsentStatus as S, Key, SignedConsent, SignerId, sign
from ttp_gateway.plugins.gics.service import revoked_grants
from ttp_gateway.plugins.gics.states import (CheckConfig, IdMatching, all_states, current_consent,
                                            current_states, decides, is_consented)

ZONE = ZoneInfo("Europe/Berlin")
A1, B1, A2 = Key("A", "1.0"), Key("B", "1.0"), Key("A", "2.0")
M1, M2 = Key("M1", "1"), Key("M2", "1")
P1 = SignerId("Pseudonym", "p1")
C1 = SignerId("CaseId", "c1")

CATALOGUE = Catalogue.from_settings({
    "domains": [{"name": "D", "signer_id_types": ["Pseudonym", "CaseId"]}],
    "policies": [{"domain": "D", "name": n, "version": v} for n, v in (("A", "1.0"), ("B", "1.0"), ("A", "2.0"))],
    "modules": [{"domain": "D", "name": "M1", "version": "1",
                 "policies": [{"policy": "A|1.0", "expires_after": "P5Y"}, "B|1.0"]},
                {"domain": "D", "name": "M2", "version": "1", "policies": ["A|2.0"]}],
    "templates": [
        {"domain": "D", "name": "T", "version": "1.0", "expires_after": "P30Y", "modules": ["M1|1"]},
        {"domain": "D", "name": "T", "version": "2.0", "expires_after": "P30Y", "modules": ["M1|1", "M2|1"]},
        {"domain": "D", "name": "W", "version": "1.0", "type": "WITHDRAWAL", "modules": ["M1|1"]},
        {"domain": "D", "name": "R", "version": "1.0", "type": "REFUSAL", "modules": ["M1|1"]},
        {"domain": "D", "name": "O", "version": "1.0", "type": "CONSENT_OPT_OUT", "modules": ["M1|1"]},
        {"domain": "D", "name": "X", "version": "1.0", "type": "OBJECTION", "modules": ["M1|1"]},
    ]})
_seq = count(1)


def at(day: str, hour: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=ZONE)


def consent(template: str, day: str, answers: dict[Key, S], signers=(P1,), hour: int = 0) -> SignedConsent:
    name, version = template.split("|")
    form = CATALOGUE.template("D", Key(name, version))
    signed_at = at(day, hour)
    modules, policies = sign(form, CATALOGUE, answers, signed_at, ZONE)
    seq = next(_seq)
    return SignedConsent(id=f"c{seq}", domain="D", template=form.key, template_type=form.type,
                         signer_ids=frozenset(signers), date=signed_at, recorded=signed_at, modules=modules,
                         policies=policies, seq=seq)


def consented(history, policy: Key = A1, day: str = "2025-06-01", ids=(P1,), **config) -> bool:
    check = CheckConfig(request_date=date.fromisoformat(day), **config)
    return is_consented(history, ids, policy, check.moment(at(day), ZONE), check)


# --- validity and expiry ------------------------------------------------------------------------

def test_a_policy_is_valid_from_the_day_of_signing_until_it_expires() -> None:
    history = [consent("T|1.0", "2020-01-15", {M1: S.ACCEPTED})]
    a, b = history[0].policies
    assert (a.key, a.expires) == (A1, at("2025-01-15")) and (b.key, b.expires) == (B1, at("2050-01-15"))
    assert not consented(history, day="2020-01-14")
    assert consented(history, day="2020-01-15")            # signed that day
    assert consented(history, day="2025-01-14")            # the last day of five years
    assert not consented(history, day="2025-01-15")        # expired
    assert consented(history, B1, day="2049-06-01") and not consented(history, B1, day="2050-01-15")
    expired = current_states(history, [P1], at("2025-02-01"))[A1]
    assert expired.status is S.EXPIRED and not decides(expired)


def test_a_fixed_end_and_a_duration_give_the_earlier_end() -> None:
    template = Catalogue.from_settings({
        "domains": [{"name": "D"}], "policies": [{"domain": "D", "name": "A", "version": "1"}],
        "modules": [{"domain": "D", "name": "M", "version": "1",
                     "policies": [{"policy": "A|1", "expires_after": "P10Y", "expires_on": "2024-12-31"}]}],
        "templates": [{"domain": "D", "name": "T", "version": "1", "modules": ["M|1"]}]})
    form = template.template("D", Key("T", "1"))
    _, policies = sign(form, template, {Key("M", "1"): S.ACCEPTED}, at("2020-02-29"), ZONE)
    assert policies[0].expires == at("2024-12-31")
    _, policies = sign(form, template, {Key("M", "1"): S.ACCEPTED}, at("2010-02-28"), ZONE)
    assert policies[0].expires == at("2020-02-28")


# --- withdrawal, refusal, objection -------------------------------------------------------------

def test_a_withdrawal_ends_consent_from_its_date() -> None:
    history = [consent("T|1.0", "2020-01-15", {M1: S.ACCEPTED}),
               consent("W|1.0", "2021-03-01", {M1: S.WITHDRAWN})]
    assert consented(history, day="2021-02-28")
    assert not consented(history, day="2021-03-01") and not consented(history, B1, day="2021-03-01")
    states = all_states(history, [P1], at("2021-06-01"))
    assert [(s.policy, s.status, s.permits) for s in states] == [
        (A1, S.ACCEPTED, True), (B1, S.ACCEPTED, True), (A1, S.WITHDRAWN, False), (B1, S.WITHDRAWN, False)]
    # the document of 2020 no longer grants what was withdrawn
    assert revoked_grants(history[0], history) == {A1, B1}
    assert revoked_grants(history[0], history[:1]) == set()


def test_a_statement_not_accepted_changes_nothing() -> None:
    history = [consent("T|1.0", "2020-01-15", {M1: S.ACCEPTED}),
               consent("W|1.0", "2021-03-01", {M1: S.NOT_CHOSEN}),
               consent("R|1.0", "2021-04-01", {M1: S.DECLINED})]
    assert history[1].policies == () and history[2].policies == ()
    assert consented(history, day="2021-06-01")
    assert consented(history, day="2021-06-01", unknown_as_decline=True)


def test_a_refusal_refuses() -> None:
    history = [consent("T|1.0", "2020-01-15", {M1: S.ACCEPTED}), consent("R|1.0", "2021-04-01", {M1: S.ACCEPTED})]
    state = current_states(history, [P1], at("2021-06-01"))[A1]
    assert state.status is S.REFUSED and not consented(history, day="2021-06-01")


def test_opt_out_consents_until_an_objection() -> None:
    history = [consent("O|1.0", "2020-01-15", {M1: S.ACCEPTED_OPT_OUT})]
    assert consented(history, day="2020-06-01")
    history.append(consent("X|1.0", "2021-01-01", {M1: S.OBJECTED}))
    assert not consented(history, day="2021-06-01") and consented(history, day="2020-12-31")


# --- several consents and versions --------------------------------------------------------------

def test_the_newest_consent_of_a_template_version_wins() -> None:
    history = [consent("T|1.0", "2020-01-15", {M1: S.ACCEPTED}), consent("T|1.0", "2021-01-15", {M1: S.DECLINED})]
    assert not consented(history, day="2021-06-01") and consented(history, day="2021-01-14")
    history.append(consent("T|1.0", "2022-01-15", {M1: S.ACCEPTED}))
    assert consented(history, day="2022-06-01")
    # the order they were recorded in does not matter
    assert consented(list(reversed(history)), day="2022-06-01")


def test_on_one_day_the_higher_template_version_wins() -> None:
    older_form = consent("T|1.0", "2021-01-15", {M1: S.ACCEPTED}, hour=12)
    newer_form = consent("T|2.0", "2021-01-15", {M1: S.DECLINED, M2: S.ACCEPTED}, hour=12)
    for history in ([older_form, newer_form], [newer_form, older_form]):
        assert not consented(history, day="2021-06-01")
        assert consented(history, A2, day="2021-06-01")


def test_policy_versions_are_apart_unless_versions_are_ignored() -> None:
    history = [consent("T|1.0", "2020-01-15", {M1: S.ACCEPTED}),
               consent("T|2.0", "2021-01-15", {M1: S.ACCEPTED, M2: S.DECLINED})]
    assert consented(history, A1, day="2021-06-01") and not consented(history, A2, day="2021-06-01")
    # by name, the newest signed A decides: A|2.0, declined, dated after A|1.0 (same consent)
    states = current_states(history, [P1], at("2021-06-01"), CheckConfig(ignore_version=True))
    assert set(states) == {"A", "B"}
    assert consented(history, A1, day="2021-06-01", ignore_version=True) == decides(states["A"])


def test_unknown_answers_are_passed_over_unless_they_count_as_decline() -> None:
    history = [consent("T|1.0", "2020-01-15", {M1: S.ACCEPTED}), consent("T|1.0", "2021-01-15", {})]
    assert history[1].modules == ((M1, S.NOT_ASKED),)
    assert consented(history, day="2021-06-01")
    assert not consented(history, day="2021-06-01", unknown_as_decline=True)
    only_unknown = [consent("T|1.0", "2021-01-15", {M1: S.UNKNOWN})]
    state = current_states(only_unknown, [P1], at("2021-06-01"))[A1]
    assert state.status is S.UNKNOWN and not consented(only_unknown, day="2021-06-01")


def test_a_module_accepted_elsewhere_in_the_form_grants_its_policy() -> None:
    shared = Catalogue.from_settings({
        "domains": [{"name": "D"}], "policies": [{"domain": "D", "name": "A", "version": "1"}],
        "modules": [{"domain": "D", "name": "M", "version": "1", "policies": [{"policy": "A|1", "expires_after": "P1Y"}]},
                    {"domain": "D", "name": "N", "version": "1", "policies": [{"policy": "A|1", "expires_after": "P2Y"}]},
                    {"domain": "D", "name": "L", "version": "1", "policies": ["A|1"]}],
        "templates": [{"domain": "D", "name": "T", "version": "1", "modules": ["M|1", "N|1", "L|1"]}]})
    form = shared.template("D", Key("T", "1"))
    _, (policy,) = sign(form, shared, {Key("M", "1"): S.DECLINED, Key("N", "1"): S.ACCEPTED,
                                       Key("L", "1"): S.ACCEPTED}, at("2020-01-01"), ZONE)
    assert (policy.status, policy.expires) == (S.ACCEPTED, at("2022-01-01"))  # the stricter grant


# --- whose consents -----------------------------------------------------------------------------

def test_id_matching() -> None:
    history = [consent("T|1.0", "2020-01-15", {M1: S.ACCEPTED}, signers=(P1, C1))]
    other = SignerId("CaseId", "c2")
    table = {
        (P1,): (True, True, False),
        (P1, other): (True, False, False),
        (P1, C1): (True, True, True),
        (other,): (False, False, False),
    }
    for ids, expected in table.items():
        got = tuple(consented(history, ids=ids, day="2021-01-01", id_matching=m)
                    for m in (IdMatching.AT_LEAST_ONE, IdMatching.AT_LEAST_ALL, IdMatching.EXACT))
        assert got == expected, ids


def test_current_consent_of_a_template() -> None:
    newer_version_older_date = consent("T|2.0", "2020-01-15", {M1: S.ACCEPTED})
    older_version_newer_date = consent("T|1.0", "2021-01-15", {M1: S.ACCEPTED})
    newest_of_v1 = consent("T|1.0", "2022-01-15", {M1: S.DECLINED})
    history = [newer_version_older_date, older_version_newer_date, newest_of_v1]
    assert current_consent(history, [P1], Key("T", "1.0")) is newest_of_v1
    assert current_consent(history, [P1], Key("T", "2.0")) is newer_version_older_date
    assert current_consent(history, [P1], Key("T", "1.0"), ignore_version=True) is newest_of_v1
    assert current_consent(history, [C1], Key("T", "1.0")) is None


# --- the current views and the yes/no answer agree ----------------------------------------------

TEMPLATES = ["T|1.0", "T|2.0", "W|1.0", "R|1.0", "O|1.0", "X|1.0"]
PEOPLE = [SignerId("Pseudonym", "p1"), SignerId("Pseudonym", "p2"), SignerId("CaseId", "c1")]
answer = st.sampled_from([S.ACCEPTED, S.DECLINED, S.NOT_ASKED, S.NOT_CHOSEN, S.UNKNOWN, S.WITHDRAWN,
                          S.ACCEPTED_OPT_OUT, S.OBJECTED, S.INVALIDATED])
signed = st.tuples(st.sampled_from(TEMPLATES), st.dates(date(2015, 1, 1), date(2030, 1, 1)),
                   st.fixed_dictionaries({}, optional={M1: answer, M2: answer}),
                   st.sets(st.sampled_from(PEOPLE), min_size=1, max_size=2))
configs = st.builds(CheckConfig, id_matching=st.sampled_from(list(IdMatching)), ignore_version=st.booleans(),
                    unknown_as_decline=st.booleans(), request_date=st.dates(date(2014, 1, 1), date(2060, 1, 1)))


@given(st.lists(signed, max_size=8), configs, st.sets(st.sampled_from(PEOPLE), min_size=1, max_size=2))
def test_is_consented_agrees_with_the_current_states(history, config, asked) -> None:
    consents = []
    for template, day, answers, signers in history:
        form = CATALOGUE.template("D", Key(*template.split("|")))
        answers = {k: v for k, v in answers.items() if k in form.module_keys()}
        consents.append(consent(template, day.isoformat(), answers, signers=tuple(signers)))
    moment = config.moment(at("2025-01-01"), ZONE)
    states = current_states(consents, asked, moment, config)
    for policy in (A1, B1, A2):
        group = policy.name if config.ignore_version else policy
        assert is_consented(consents, asked, policy, moment, config) == decides(states.get(group))
