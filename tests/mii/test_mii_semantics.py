"""What the MII interface means, on every backend: the guide's semantics where they differ from
gPAS's, each open question of the guide as `operations` decides it, Bundles (batch and
transaction), the same pseudonyms as gPAS's own endpoint, and few store round trips per Bundle."""

from __future__ import annotations

import logging

import pytest

from mii_wire import GPAS, JSON, XML, bundle, call, identifier, parameter, post, status_code
from ttp_gateway.plugins.gpas.store_mongo import MongoPseudonymStore
from ttp_gateway.plugins.gpas.store_sql import SqlPseudonymStore

SYSTEM = "https://sample/psn-system"  # Transfer1's configured system in the demo


def pseudonym_of(answer: dict) -> str:
    return parameter(answer, "pseudonym")["value"]


def gpas(client, operation: str, target: str, **values: list[str]) -> dict:
    body = {"resourceType": "Parameters", "parameter": [{"name": "target", "valueString": target}] + [
        {"name": name, "valueString": value} for name, listed in values.items() for value in listed]}
    response = client.post(f"{GPAS}/${operation}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def gpas_pseudonym(client, target: str, original: str) -> str | None:
    found = gpas(client, "pseudonymize", target, original=[original])["parameter"][0]
    return next((p["valueIdentifier"]["value"] for p in found.get("part", []) if p["name"] == "pseudonym"), None)


def issue(outcome: dict) -> dict:
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return outcome["issue"][0]


# --- $pseudonymize creates, $get-pseudonym reads ---------------------------------------------------

def test_pseudonymize_creates_once_and_get_pseudonym_reads(client) -> None:
    status, missing = post(client, "get-pseudonym", call("Transfer1", "P-1"))
    assert status == 404 and issue(missing)["code"] == "not-found"
    assert issue(missing)["expression"] == ["Parameters.parameter.where(name='original')"]
    assert gpas_pseudonym(client, "Transfer1", "P-1") is None  # the read created nothing
    status, created = post(client, "pseudonymize", call("Transfer1", "P-1"))
    assert status == 200  # a single call that created says 200, as the guide's error model lists
    again = post(client, "pseudonymize", call("Transfer1", "P-1"))[1]
    read = post(client, "get-pseudonym", call("Transfer1", "P-1"))[1]
    assert pseudonym_of(created) == pseudonym_of(again) == pseudonym_of(read)
    assert [p["name"] for p in created["parameter"]] == ["context", "original", "pseudonym"]


def test_unknown_context_is_404_naming_the_context(client) -> None:
    for operation, value in [("pseudonymize", {}), ("get-pseudonym", {}), ("de-pseudonymize", {"pseudonym": "x"}),
                             ("delete-pseudonym", {}), ("anonymize-original", {}),
                             ("pseudonymize-multiple", {"count": 1})]:
        original = None if "pseudonym" in value else "x"
        status, answer = post(client, operation, call("no-such-domain", original, **value))
        assert status == 404, (operation, answer)
        assert issue(answer)["code"] == "not-found"
        assert issue(answer)["expression"] == ["Parameters.parameter.where(name='context')"]


# --- open question 8: contexts by value, systems where configured, echoes as sent -------------------

def test_a_configured_system_must_match_when_sent(client) -> None:
    assert post(client, "pseudonymize", call(identifier("Transfer1", SYSTEM), "S-1"))[0] == 200
    status, answer = post(client, "pseudonymize", call(identifier("Transfer1", "https://other/system"), "S-1"))
    assert status == 404 and issue(answer)["expression"] == ["Parameters.parameter.where(name='context')"]
    status, answer = post(client, "pseudonymize", call("Transfer1", "S-1"))  # no system: accepted
    assert status == 200 and parameter(answer, "context") == {"value": "Transfer1"}
    assert parameter(answer, "pseudonym")["system"] == SYSTEM  # the domain's pseudonyms carry its system


def test_a_domain_without_configured_system_accepts_any(client) -> None:
    found = {post(client, "pseudonymize", call(context, "S-2"))[1]["parameter"][2]["valueIdentifier"]["value"]
             for context in ("MIRACUM", identifier("MIRACUM", "http://fts.smith.care"),
                             identifier("MIRACUM", "urn:oid:1.2.3"))}
    assert len(found) == 1
    answer = post(client, "get-pseudonym", call("MIRACUM", "S-2"))[1]
    assert "system" not in parameter(answer, "pseudonym")


def test_echoes_repeat_what_was_sent(client) -> None:
    sent_context = identifier("MIRACUM", "http://fts.smith.care")
    sent_original = {"system": "https://example.com/original-ids", "value": "E-1", "use": "official"}
    answer = post(client, "pseudonymize", call(sent_context, sent_original))[1]
    assert parameter(answer, "context") == sent_context
    assert parameter(answer, "original") == {"system": "https://example.com/original-ids", "value": "E-1"}


# --- open questions 5 and 6: de-pseudonymisation -------------------------------------------------

def test_de_pseudonymize_answers_original_with_parts(client) -> None:
    created = pseudonym_of(post(client, "pseudonymize", call("Transfer1", "D-1"))[1])
    status, answer = post(client, "de-pseudonymize", call("Transfer1", pseudonym=created))
    assert status == 200 and [p["name"] for p in answer["parameter"]] == ["original"]
    parts = {p["name"]: p["valueIdentifier"] for p in answer["parameter"][0]["part"]}
    assert parts == {"context": {"value": "Transfer1"}, "value": {"value": "D-1"}, "pseudonym": {"value": created}}
    status, answer = post(client, "de-pseudonymize", call("Transfer1", pseudonym="NOPSEUDONYM"))
    assert status == 404 and issue(answer)["expression"] == ["Parameters.parameter.where(name='pseudonym')"]


def test_anonymised_originals_are_gone_for_good(client) -> None:
    created = pseudonym_of(post(client, "pseudonymize", call("Transfer1", "A-1"))[1])
    status, answer = post(client, "anonymize-original", call("Transfer1", "A-1"))
    assert status == 200 and issue(answer)["code"] == "informational"
    assert issue(answer)["details"]["coding"][0]["code"] == "MSG_UPDATED"
    status, answer = post(client, "de-pseudonymize", call("Transfer1", pseudonym=created))
    assert status == 404 and issue(answer)["code"] == "deleted"
    assert post(client, "get-pseudonym", call("Transfer1", "A-1"))[0] == 404
    assert post(client, "anonymize-original", call("Transfer1", "A-1"))[0] == 404
    # The pseudonym stays taken: a new pseudonym for the same value is another one.
    assert pseudonym_of(post(client, "pseudonymize", call("Transfer1", "A-1"))[1]) != created


# --- open question 2: delete and anonymise answer bare OperationOutcomes ---------------------------

def test_delete_where_allowed_and_405_where_not(client) -> None:
    post(client, "pseudonymize", call("Transfer1", "X-1"))
    status, answer = post(client, "delete-pseudonym", call("Transfer1", "X-1"))
    assert status == 200 and issue(answer)["details"]["coding"][0]["code"] == "MSG_DELETED"
    assert post(client, "get-pseudonym", call("Transfer1", "X-1"))[0] == 404
    status, answer = post(client, "delete-pseudonym", call("Transfer1", "X-1"))
    assert status == 404 and issue(answer)["details"]["coding"][0] == {
        "system": "http://hl7.org/fhir/issue-type", "code": "not-found"}
    status, answer = post(client, "delete-pseudonym", call("deletion-forbidden-domain", "D1CL0CAL3"))
    assert status == 405 and issue(answer)["code"] == "not-supported"
    assert gpas_pseudonym(client, "deletion-forbidden-domain", "D1CL0CAL3") == "T9NPQ4WX2C"


# --- open question 7: single- and multi-pseudonym domains ----------------------------------------

def test_pseudonymize_multiple_returns_only_the_new_ones_and_count_0_reads_all(client) -> None:
    status, first = post(client, "pseudonymize-multiple", call("MultiPsnDomain", "M-1", count=2))
    assert status == 200
    first_values = [p["part"][2]["valueIdentifier"]["value"] for p in first["parameter"]]
    second = post(client, "pseudonymize-multiple", call("MultiPsnDomain", "M-1", count=1))[1]
    second_values = [p["part"][2]["valueIdentifier"]["value"] for p in second["parameter"]]
    assert len(first_values) == 2 and len(second_values) == 1 and not set(first_values) & set(second_values)
    every = post(client, "pseudonymize-multiple", call("MultiPsnDomain", "M-1", count=0))[1]
    assert [p["part"][2]["valueIdentifier"]["value"] for p in every["parameter"]] == first_values + second_values
    assert all([q["name"] for q in p["part"]] == ["context", "original", "value"] for p in every["parameter"])


def test_count_0_without_pseudonyms_is_404(client) -> None:
    status, answer = post(client, "pseudonymize-multiple", call("MultiPsnDomain", "M-none", count=0))
    assert status == 404 and issue(answer)["code"] == "not-found"


@pytest.mark.parametrize("operation, context, extra", [
    ("pseudonymize", "MultiPsnDomain", {}), ("get-pseudonym", "MultiPsnDomain", {}),
    ("pseudonymize-multiple", "Transfer1", {"count": 1}), ("pseudonymize-multiple", "Transfer1", {"count": 0})])
def test_the_wrong_kind_of_domain_is_422(client, operation: str, context: str, extra: dict) -> None:
    status, answer = post(client, operation, call(context, "K-1", **extra))
    assert status == 422 and issue(answer)["code"] == "business-rule"
    assert issue(answer)["expression"] == ["Parameters.parameter.where(name='context')"]


def test_count_out_of_range_is_400(client) -> None:
    status, answer = post(client, "pseudonymize-multiple", call("MultiPsnDomain", "M-2", count=-1))
    assert status == 400 and issue(answer)["expression"] == ["Parameters.parameter.where(name='count')"]


def test_count_on_pseudonymize_is_ignored(client) -> None:
    """Open question 10: stale prose speaks of `$pseudonymize` with `count`; it has none."""
    status, answer = post(client, "pseudonymize", call("Transfer1", "C-1", count=3))
    assert status == 200 and [p["name"] for p in answer["parameter"]] == ["context", "original", "pseudonym"]


# --- open questions 3, 4 and 9: Bundles ------------------------------------------------------------

@pytest.mark.parametrize("fmt", [JSON, XML], ids=["json", "xml"])
def test_bundle_entries_answer_alone_created_201_found_200(client, fmt: str) -> None:
    post(client, "pseudonymize", call("Transfer1", "B-known"))
    status, answer = post(client, "pseudonymize", bundle("pseudonymize", [
        call("Transfer1", "B-known"), call("Transfer1", "B-new"), call("Transfer1", "B-new"),
        call("no-such-domain", "B-1"), call("MultiPsnDomain", "B-2"), call("Transfer1", "B-other")]), fmt)
    assert status == 200 and answer["type"] == "batch-response"
    assert [status_code(e) for e in answer["entry"]] == ["200", "201", "200", "404", "422", "201"]
    entries = answer["entry"]
    assert pseudonym_of(entries[1]["resource"]) == pseudonym_of(entries[2]["resource"])
    for failed in entries[3:5]:  # open question 3: the failure is the entry's resource and its outcome
        assert failed["resource"]["resourceType"] == "OperationOutcome"
        assert issue(failed["resource"]) == issue(failed["response"]["outcome"])


def test_transaction_is_all_or_nothing(client) -> None:
    status, answer = post(client, "pseudonymize", bundle("pseudonymize", [
        call("Transfer1", "T-1"), call("no-such-domain", "T-2")], kind="transaction"))
    assert status == 404 and issue(answer)["expression"] == ["Parameters.parameter.where(name='context')"]
    assert gpas_pseudonym(client, "Transfer1", "T-1") is None
    status, answer = post(client, "pseudonymize", bundle("pseudonymize", [
        call("Transfer1", "T-1"), call("Transfer1", "T-3")], kind="transaction"))
    assert status == 200 and answer["type"] == "transaction-response"
    assert [status_code(e) for e in answer["entry"]] == ["201", "201"]
    assert gpas_pseudonym(client, "Transfer1", "T-1") == pseudonym_of(answer["entry"][0]["resource"])


def test_a_bundle_deleting_twice_finds_the_entry_once(client) -> None:
    post(client, "pseudonymize", call("Transfer1", "R-1"))
    answer = post(client, "delete-pseudonym", bundle("delete-pseudonym", [
        call("Transfer1", "R-1"), call("Transfer1", "R-1")]))[1]
    assert [status_code(e) for e in answer["entry"]] == ["200", "404"]


def test_pseudonymize_multiple_entries_run_in_order(client) -> None:
    answer = post(client, "pseudonymize-multiple", bundle("pseudonymize-multiple", [
        call("MultiPsnDomain", "O-1", count=0), call("MultiPsnDomain", "O-1", count=2),
        call("MultiPsnDomain", "O-1", count=0)]))[1]
    assert [status_code(e) for e in answer["entry"]] == ["404", "201", "200"]
    assert len(answer["entry"][2]["resource"]["parameter"]) == 2


def test_a_failed_entry_writes_nothing_and_the_others_commit(client) -> None:
    answer = post(client, "pseudonymize", bundle("pseudonymize", [
        call("Transfer1", "W-1"), {"resourceType": "Parameters", "parameter": [
            {"name": "context", "valueIdentifier": {"value": "Transfer1"}}]}]))[1]
    assert [status_code(e) for e in answer["entry"]] == ["201", "400"]
    assert gpas_pseudonym(client, "Transfer1", "W-1") == pseudonym_of(answer["entry"][0]["resource"])


# --- one domain, two interfaces --------------------------------------------------------------------

def test_gpas_and_mii_give_the_same_pseudonym(client) -> None:
    made_by_gpas = gpas(client, "pseudonymizeAllowCreate", "MIRACUM", original=["G-1"])
    from_gpas = made_by_gpas["parameter"][0]["part"][2]["valueIdentifier"]["value"]
    assert pseudonym_of(post(client, "get-pseudonym", call("MIRACUM", "G-1"))[1]) == from_gpas
    assert pseudonym_of(post(client, "pseudonymize", call("MIRACUM", "G-1"))[1]) == from_gpas
    from_mii = pseudonym_of(post(client, "pseudonymize", call("MIRACUM", "G-2"))[1])
    assert gpas_pseudonym(client, "MIRACUM", "G-2") == from_mii
    back = gpas(client, "dePseudonymize", "MIRACUM", pseudonym=[from_mii])["parameter"][0]["part"]
    assert next(p for p in back if p["name"] == "original")["valueIdentifier"]["value"] == "G-2"
    answer = post(client, "de-pseudonymize", call("MIRACUM", pseudonym=from_gpas))[1]
    assert answer["parameter"][0]["part"][1]["valueIdentifier"]["value"] == "G-1"
    # The guide's own demo pair, known to both.
    assert pseudonym_of(post(client, "get-pseudonym", call("MIRACUM", "1001000000022"))[1]) == "mrcm_T0TYNV21"


# --- round trips ----------------------------------------------------------------------------------

@pytest.fixture
def store_calls(monkeypatch) -> dict[str, int]:
    """How often each gPAS store method runs (one method, one round trip, by the store protocol)."""
    counted: dict[str, int] = {}
    for store in (SqlPseudonymStore, MongoPseudonymStore):
        for name in ("get_pseudonyms", "get_pseudonym_rows", "get_originals", "insert_pseudonyms",
                     "delete_originals", "anonymize_originals"):
            method = getattr(store, name)

            def counting(self, *args, _method=method, _name=name, **kwargs):
                counted[_name] = counted.get(_name, 0) + 1
                return _method(self, *args, **kwargs)

            monkeypatch.setattr(store, name, counting)
    return counted


@pytest.mark.parametrize("operation", ["pseudonymize", "get-pseudonym", "de-pseudonymize",
                                       "delete-pseudonym", "anonymize-original"])
def test_a_bundle_costs_as_many_round_trips_as_a_gpas_batch(client, store_calls, operation: str) -> None:
    def mii_bundle(size: int, prefix: str) -> int:
        store_calls.clear()
        value = "pseudonym" if operation == "de-pseudonymize" else "original"
        entries = [call("MIRACUM", **{value: f"{prefix}-{i}"}) for i in range(size)]
        status, answer = post(client, operation, bundle(operation, entries))
        assert status == 200 and len(answer["entry"]) == size
        return sum(store_calls.values())

    small, large = mii_bundle(3, "small"), mii_bundle(400, "large")
    assert 1 <= large == small <= 3
    if operation == "pseudonymize":
        store_calls.clear()
        gpas(client, "pseudonymizeAllowCreate", "MIRACUM", original=[f"gpas-{i}" for i in range(400)])
        assert large == sum(store_calls.values())


# --- audit ----------------------------------------------------------------------------------------

def test_one_audit_record_per_domain_without_originals(client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ttp_gateway.audit")
    post(client, "pseudonymize", bundle("pseudonymize", [call("Transfer1", f"secret-{i}") for i in range(5)]
                                        + [call("MIRACUM", "secret-x")]))
    records = [r for r in caplog.records if r.name == "ttp_gateway.audit"]
    facts = sorted((r.audit["domain"], r.audit["items"], r.audit["created"]) for r in records)
    assert facts == [("MIRACUM", 1, 1), ("Transfer1", 5, 5)]
    assert all(r.audit["endpoint"] == "gpas/v2" for r in records)
    assert "secret" not in caplog.text
