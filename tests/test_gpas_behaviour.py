"""gPAS operations beyond the guide's examples: creation, idempotency, multi-psn, imports,
per-item errors, whole-request errors and batches that fail without writing anything."""

from __future__ import annotations

import pytest

from conftest import GPAS, client_for
from conftest import parameters as params
from stores import transaction
from ttp_gateway.plugins.gpas.api import GPAS as GPAS_API
from ttp_gateway.core.xmlcodec import parse_xml

MIRACUM = "MIRACUM"


def call(client, operation: str, body: dict, status: int = 200) -> dict:
    response = client.post(f"{GPAS}/${operation}", json=body)
    assert response.status_code == status, response.text
    return response.json()


def pseudonyms_of(answer: dict) -> dict[str, str]:
    """original -> pseudonym from a pseudonymize answer."""
    found = {}
    for param in answer["parameter"]:
        if param["name"] == "pseudonym":
            parts = {p["name"]: p["valueIdentifier"]["value"] for p in param["part"]}
            found[parts["original"]] = parts["pseudonym"]
    return found


def issue(answer: dict) -> dict:
    assert answer["resourceType"] == "OperationOutcome"
    return answer["issue"][0]


# --- creation and lookup ---------------------------------------------------------------------

def test_allow_create_is_idempotent_and_follows_the_domain_rules(client) -> None:
    originals = [f"patient-{i}" for i in range(500)]
    first = pseudonyms_of(call(client, "pseudonymizeAllowCreate",
                               params(("target", MIRACUM), *[("original", o) for o in originals])))
    again = pseudonyms_of(call(client, "pseudonymizeAllowCreate",
                               params(("target", MIRACUM), *[("original", o) for o in reversed(originals)])))
    assert first == again and len(first) == 500
    assert len(set(first.values())) == 500
    domain = client.app.gateway.service(GPAS_API).domain(MIRACUM)
    assert all(p.startswith("mrcm_") and domain.format.validate(p) is None for p in first.values())
    looked_up = pseudonyms_of(call(client, "pseudonymize",
                                   params(("target", MIRACUM), *[("original", o) for o in originals])))
    assert looked_up == first


def test_answers_follow_request_order_with_repeated_originals(client) -> None:
    answer = call(client, "pseudonymizeAllowCreate",
                  params(("target", MIRACUM), ("original", "b"), ("original", "a"), ("original", "b")))
    originals = [next(p["valueIdentifier"]["value"] for p in param["part"] if p["name"] == "original")
                 for param in answer["parameter"]]
    assert originals == ["b", "a", "b"]
    values = [param["part"][2]["valueIdentifier"]["value"] for param in answer["parameter"]]
    assert values[0] == values[2] != values[1]


def test_an_empty_original_fails_alone(client) -> None:
    answer = call(client, "pseudonymizeAllowCreate",
                  params(("target", MIRACUM), ("original", ""), ("original", "fine")))
    names = [p["name"] for p in answer["parameter"]]
    assert names == ["error", "pseudonym"]
    assert answer["parameter"][0]["part"][1]["valueCoding"]["code"] == "invalid"


def test_depseudonymize_reports_anonymised_pseudonyms(client) -> None:
    call(client, "anonymizeOriginals", params(("target", MIRACUM), ("original", "1001000000022")))
    answer = call(client, "dePseudonymize",
                  params(("target", MIRACUM), ("pseudonym", "mrcm_T0TYNV21"), ("pseudonym", "mrcm_9GELEUVU")))
    first, second = answer["parameter"]
    assert first["name"] == "error" and first["part"][1]["valueCoding"]["code"] == "deleted"
    assert second["name"] == "original"
    # The original is gone for good; asking for it again creates a new pseudonym.
    renewed = pseudonyms_of(call(client, "pseudonymizeAllowCreate",
                                 params(("target", MIRACUM), ("original", "1001000000022"))))
    assert renewed["1001000000022"] != "mrcm_T0TYNV21"


def test_delete_removes_the_pairs(client) -> None:
    call(client, "deletePseudonyms", params(("target", MIRACUM), ("original", "1001000000022")))
    answer = call(client, "pseudonymize", params(("target", MIRACUM), ("original", "1001000000022")))
    assert answer["parameter"][0]["name"] == "error"
    answer = call(client, "dePseudonymize", params(("target", MIRACUM), ("pseudonym", "mrcm_T0TYNV21")))
    assert answer["parameter"][0]["part"][1]["valueCoding"]["code"] == "not-found"


# --- multi-psn --------------------------------------------------------------------------------

def secondary(target: str, value: str, count: object) -> tuple[str, list]:
    count_part = {"name": "count", "valueInteger": count} if isinstance(count, int) else \
        {"name": "count", "valueString": count}
    return ("original", [{"name": "target", "valueString": target},
                         {"name": "value", "valueString": value}, count_part])


def test_secondary_pseudonyms_accumulate_and_stay_unique(client) -> None:
    first = call(client, "pseudonymize-secondary", params(secondary("Datensatz-Ebene", "H3RAU56A8E", 3)))
    second = call(client, "pseudonymize-secondary", params(secondary("Datensatz-Ebene", "H3RAU56A8E", 2),
                                                           secondary("Datensatz-Ebene", "OTHER", 1)))
    values = [p["part"][2]["valueIdentifier"]["value"] for p in first["parameter"] + second["parameter"]]
    assert len(values) == 6 and len(set(values)) == 6
    with transaction(client.app.gateway.repository) as tx:
        rows = tx.get_pseudonym_rows("Datensatz-Ebene", ["H3RAU56A8E"])["H3RAU56A8E"]
    assert [r.number for r in rows] == [0, 1, 2, 3, 4]


def test_secondary_errors_are_per_item(client) -> None:
    answer = call(client, "pseudonymize-secondary", params(
        secondary("MIRACUM", "x", 1),            # not multi-psn
        secondary("Datensatz-Ebene", "x", 0),    # nothing to create
        secondary("Datensatz-Ebene", "x", 1)))
    codes = [(p["name"], p["part"][-1]["valueCoding"]["code"]) for p in answer["parameter"]]
    assert codes == [("error", "business-rule"), ("error", "invalid"), ("secondarypseudonym", "MSG_CREATED")]


@pytest.mark.parametrize("count", [{"valueInteger": 2}, {"valuePositiveInt": 2}, {"valueUnsignedInt": 2},
                                   {"valueString": "2"}, {"valueString": " 2 "}])
def test_count_is_read_tolerantly(client, count: dict) -> None:
    body = params(("original", [{"name": "target", "valueCode": "Datensatz-Ebene"},
                                {"name": "value", "valueId": "H3RAU56A8E"}, {"name": "count", **count}]))
    assert len(call(client, "pseudonymize-secondary", body)["parameter"]) == 2


# --- imports ----------------------------------------------------------------------------------

def pair(target: str, original: str, value: str) -> tuple[str, list]:
    return ("pseudonym", [{"name": "target", "valueString": target},
                          {"name": "original", "valueString": original},
                          {"name": "value", "valueString": value}])


def test_insert_pairs_validates_and_reports_conflicts(client) -> None:
    answer = call(client, "insertValuePseudonymPairs", params(
        pair(MIRACUM, "new-1", "mrcm_ACDEFGH2"),     # fine
        pair(MIRACUM, "new-2", "mrcm_ACDEFGH2"),     # pseudonym taken by the pair before
        pair(MIRACUM, "1001000000022", "mrcm_ZZZZZZZ2"),  # original has another pseudonym
        pair(MIRACUM, "new-3", "xx_ACDEFGH3"),       # wrong prefix
        pair(MIRACUM, "new-4", "mrcm_ACDEFGHB"),     # B is not in Symbol32
        pair(MIRACUM, "new-5", "mrcm_ACDEF"),        # too short
        pair("Datensatz-Ebene", "rec", "ACDEFGHJKLMN"),  # breaks the Luhn check digit
        pair("Datensatz-Ebene", "rec", "ACDEFGHJKLMN" + luhn("ACDEFGHJKLMN"))))
    codes = [p["part"][-1]["valueCoding"]["code"] for p in answer["parameter"]]
    assert codes == ["MSG_CREATED", "duplicate", "duplicate", "invalid", "invalid", "invalid", "invalid",
                     "MSG_CREATED"]
    found = pseudonyms_of(call(client, "pseudonymize", params(("target", MIRACUM), ("original", "new-1"))))
    assert found == {"new-1": "mrcm_ACDEFGH2"}


def luhn(body: str) -> str:
    """The LuhnModN check character of `body` over Symbol32 (even alphabet size)."""
    alphabet = "ACDEFGHJKLMNPQRTUVWXYZ0123456789"
    n, total = len(alphabet), 0
    for position, char in enumerate(reversed(body)):
        value = alphabet.index(char) * (2 if position % 2 == 0 else 1)
        total += value // n + value % n
    return alphabet[(n - total % n) % n]


# --- whole-request errors ---------------------------------------------------------------------

@pytest.mark.parametrize("body, status, code", [
    (params(("target", "NOPE"), ("original", "x")), 404, "not-found"),
    (params(("original", "x")), 400, "invalid"),
    (params(("target", MIRACUM)), 400, "invalid"),
    (params(("target", MIRACUM), ("target", MIRACUM), ("original", "x")), 400, "invalid"),
    (params(("target", {"valueInteger": 7}), ("original", "x")), 400, "invalid"),
    ({"resourceType": "Patient"}, 400, "invalid"),
    ({"resourceType": "Parameters", "parameter": {"name": "target"}}, 400, "invalid"),
    ({"resourceType": "Parameters", "parameter": [{"valueString": "x"}]}, 400, "invalid"),
])
def test_invalid_requests_fail_as_a_whole(client, body: dict, status: int, code: str) -> None:
    answer = call(client, "pseudonymizeAllowCreate", body, status)
    assert issue(answer)["code"] == code and issue(answer)["severity"] == "error"
    with transaction(client.app.gateway.repository) as tx:
        assert tx.count_pseudonyms(MIRACUM) == 2  # nothing was written


def test_malformed_bodies_are_400(client) -> None:
    for content, media in ((b"{not json", "application/fhir+json"), (b"<Parameters", "application/fhir+xml"),
                           (b"", "application/fhir+json"), (b"[1, 2]", "application/json")):
        response = client.post(f"{GPAS}/$pseudonymize", content=content, headers={"Content-Type": media})
        assert response.status_code == 400
        # The outcome comes in the format the client sent (it states no preference otherwise).
        xml = "xml" in media
        assert response.headers["content-type"].endswith("xml" if xml else "json")
        answer = parse_xml(response.content) if xml else response.json()
        assert answer["resourceType"] == "OperationOutcome"


def test_count_must_be_an_integer(client) -> None:
    body = params(secondary("Datensatz-Ebene", "x", "two"))
    assert "count" in issue(call(client, "pseudonymize-secondary", body, 400))["diagnostics"]


def test_delete_in_a_domain_that_forbids_it_is_500(client) -> None:
    answer = call(client, "deletePseudonyms", params(("target", "Datensatz-Ebene"), ("original", "x")), 500)
    assert issue(answer)["code"] == "business-rule"
    assert "Datensatz-Ebene" in issue(answer)["diagnostics"]


def test_a_full_domain_fails_without_writing_half_a_batch(demo_config) -> None:
    config = demo_config.with_overrides(gpas={"domains": [
        {"name": "TINY", "alphabet": "Numbers", "length": 1}], "pairs": []})
    with client_for(config) as client:
        body = params(("target", "TINY"), *[("original", f"o{i}") for i in range(11)])
        answer = call(client, "pseudonymizeAllowCreate", body, 500)
        assert "no new pseudonym could be drawn" in issue(answer)["diagnostics"]
        assert "o1" not in issue(answer)["diagnostics"]
        with transaction(client.app.gateway.repository) as tx:
            assert tx.count_pseudonyms("TINY") == 0
        # Half of the domain is quickly found free.
        answer = call(client, "pseudonymizeAllowCreate", params(("target", "TINY"),
                                                                *[("original", f"o{i}") for i in range(5)]))
        assert len(set(pseudonyms_of(answer).values())) == 5


@pytest.mark.parametrize("alias, canonical", [("pseudonymize-allow-create", "pseudonymizeAllowCreate"),
                                              ("de-pseudonymize", "dePseudonymize"),
                                              ("pseudonymizeSecondary", "pseudonymize-secondary")])
def test_aliases_of_older_gateways(client, alias: str, canonical: str) -> None:
    bodies = {"pseudonymizeAllowCreate": params(("target", MIRACUM), ("original", "1001000000022")),
              "dePseudonymize": params(("target", MIRACUM), ("pseudonym", "mrcm_T0TYNV21")),
              "pseudonymize-secondary": params(secondary("Datensatz-Ebene", "v", 1))}
    answer = call(client, alias, bodies[canonical])
    assert answer["resourceType"] == "Parameters" and answer["parameter"]
    assert answer["parameter"][0]["name"] != "error"


def test_unknown_operation_is_404(client) -> None:
    answer = call(client, "noSuchThing", params(("target", MIRACUM)), 404)
    assert issue(answer)["code"] == "not-supported"


def test_known_originals_hidden_in_a_large_new_batch_keep_their_pseudonyms(client) -> None:
    """A batch that looks new (its probe finds nothing) still answers known originals with
    their pseudonyms: the insert's conflicts name them."""
    originals = [f"bulk-{i}" for i in range(100)]
    known = pseudonyms_of(call(client, "pseudonymizeAllowCreate",
                               params(("target", MIRACUM), ("original", originals[1]), ("original", originals[2]))))
    answer = pseudonyms_of(call(client, "pseudonymizeAllowCreate",
                                params(("target", MIRACUM), *[("original", o) for o in originals])))
    assert answer[originals[1]] == known[originals[1]] and answer[originals[2]] == known[originals[2]]
    assert len(set(answer.values())) == 100
