"""The fTTP workflow end to end: linkage, clearing, tasks, expiry and the deletion of IDAT."""

from __future__ import annotations

import random

import pytest

from conftest import client_for
from dispatch import (Clock, Site, b64, balanced_filter, idat_patient, parameters,
                      similar_filter)
from storage_dump import stored_text
from stores import transaction

MARTIN = dict(given="Martin", family="Mustermann", birth_date="1965-12-03", gender="male", degree="Dr. med.")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dispatcher(demo_config, clock):
    """A gateway on the demo configuration without its demo clearing, on a test clock."""
    config = demo_config.with_overrides(dispatcher={"clearings": []})
    from starlette.testclient import TestClient

    from ttp_gateway.core.app import create_app

    with TestClient(create_app(config, clock=clock), headers={"apikey": "abcdef12345"}) as client:
        yield client


@pytest.fixture
def rng() -> random.Random:
    return random.Random(7)


def test_the_same_filter_from_two_sites_is_one_person(dispatcher, rng) -> None:
    muenster, erlangen = Site(dispatcher, "dic_muenster"), Site(dispatcher, "dic_erlangen")
    data, _ = balanced_filter(rng)
    [(kind, at_muenster)] = muenster.request_psn(b64(data))
    assert kind == "pseudonym" and at_muenster.startswith("dic_")
    assert muenster.request_psn(b64(data)) == [("pseudonym", at_muenster)]  # idempotent
    [(kind, at_erlangen)] = erlangen.request_psn(b64(data))
    assert kind == "pseudonym" and at_erlangen != at_muenster
    assert muenster.project_pseudonym(at_muenster) == erlangen.project_pseudonym(at_erlangen) is not None


def test_a_close_filter_links_and_a_distant_one_is_new(dispatcher, rng) -> None:
    site = Site(dispatcher, "dic_muenster")
    data, ones = balanced_filter(rng)
    [(_, first)] = site.request_psn(b64(data))
    [(_, typo)] = site.request_psn(b64(similar_filter(ones, 0.95, rng)))
    [(_, other)] = site.request_psn(b64(similar_filter(ones, 0.6, rng)))
    assert typo == first and other != first


def test_duplicates_within_one_batch_are_one_person(dispatcher, rng) -> None:
    site = Site(dispatcher, "dic_greifswald")
    data, ones = balanced_filter(rng)
    results = site.request_psn(b64(data), b64(similar_filter(ones, 0.97, rng)), b64(data))
    assert len({value for _, value in results}) == 1


def start_clearing(dispatcher, rng) -> tuple[Site, Site, str, str, str]:
    """dic_muenster registers a person; dic_erlangen sends a filter that may be the same one."""
    muenster, erlangen = Site(dispatcher, "dic_muenster"), Site(dispatcher, "dic_erlangen")
    data, ones = balanced_filter(rng)
    [(_, held)] = muenster.request_psn(b64(data))
    uncertain = b64(similar_filter(ones, 0.88, rng))
    assert erlangen.request_psn(uncertain) == [("error", "incomplete")]
    return muenster, erlangen, held, uncertain, b64(data)


def test_clearing_round_trip_for_two_sites(dispatcher, rng) -> None:
    muenster, erlangen, held, uncertain, _ = start_clearing(dispatcher, rng)
    # Asking again while the clearing runs opens no second case.
    assert erlangen.request_psn(uncertain) == [("error", "incomplete")]
    [requested] = erlangen.tasks()
    assert requested["kind"] == "send_idat" and requested["bloomfilter"] == uncertain
    assert requested["elements"] == ["given", "family", "birthdate", "gender", "birthplace", "degree"]
    [holder] = muenster.tasks()
    assert holder["kind"] == "send_idat" and holder["pseudonym"] == held
    # Tasks come on every call until done: a lost response loses nothing.
    assert muenster.tasks() == [holder]

    erlangen.provide(requested["taskId"], idat_patient(**{**MARTIN, "family": "Musterman"}))  # a typo
    assert erlangen.tasks() == []
    assert erlangen.request_psn(uncertain) == [("error", "incomplete")]
    muenster.provide(holder["taskId"], idat_patient(**MARTIN))

    [available] = erlangen.tasks()
    assert available["kind"] == "dic_psn_available" and available["bloomfilter"] == uncertain
    pseudonym = available["pseudonym"]
    assert erlangen.project_pseudonym(pseudonym) == muenster.project_pseudonym(held)
    # Asking again now answers directly, and the task is done.
    assert erlangen.request_psn(uncertain) == [("pseudonym", pseudonym)]
    assert erlangen.tasks() == []
    assert muenster.tasks() == []


def test_clearing_keeps_twins_apart_and_deletes_the_idat(dispatcher, rng) -> None:
    muenster, erlangen, held, uncertain, _ = start_clearing(dispatcher, rng)
    [requested], [holder] = erlangen.tasks(), muenster.tasks()
    twin = {**MARTIN, "given": "Moritz"}
    erlangen.provide(requested["taskId"], idat_patient(**twin))
    muenster.provide(holder["taskId"], idat_patient(**MARTIN))
    [available] = erlangen.tasks()
    assert erlangen.project_pseudonym(available["pseudonym"]) != muenster.project_pseudonym(held)
    stored = stored_text(dispatcher.app.gateway.repository)
    for value in ("Martin", "Moritz", "Mustermann", "1965-12-03", "Musterhausen", "Dr. med."):
        assert value not in stored, f"{value!r} is still stored"


def test_idat_is_kept_only_while_the_case_is_open(dispatcher, rng) -> None:
    _, erlangen, _, _, _ = start_clearing(dispatcher, rng)
    [requested] = erlangen.tasks()
    erlangen.provide(requested["taskId"], idat_patient(**MARTIN))
    # Kept while the case is open, but sealed: no file of the store holds the name in clear.
    repository = dispatcher.app.gateway.repository
    with transaction(repository) as tx:
        case = tx.get_task(requested["taskId"]).case
        assert len(tx.get_idat(case)) == 1
    assert "Mustermann" not in stored_text(repository) and "Martin" not in stored_text(repository)


def test_an_expired_clearing_is_aborted_with_a_repeat_request(dispatcher, clock, rng) -> None:
    muenster, erlangen, _, uncertain, _ = start_clearing(dispatcher, rng)
    [requested], [holder] = erlangen.tasks(), muenster.tasks()
    muenster.provide(holder["taskId"], idat_patient(**MARTIN))
    clock.advance(days=14, seconds=1)
    [repeat] = erlangen.tasks()
    assert repeat == {"kind": "repeat_request", "elements": [], "study": "mii", "bloomfilter": uncertain,
                      "target": "dic_erlangen"}
    assert muenster.tasks() == []
    answer = erlangen.provide(requested["taskId"], idat_patient(**MARTIN), status=404)
    assert answer["issue"][0]["code"] == "expired"
    assert "Mustermann" not in stored_text(dispatcher.app.gateway.repository)
    # Repeating the request starts a new clearing, and the repeat task is done.
    assert erlangen.request_psn(uncertain) == [("error", "incomplete")]
    assert [t["kind"] for t in erlangen.tasks()] == ["send_idat"]
    # Tasks expire as well.
    clock.advance(days=15)
    assert [t["kind"] for t in erlangen.tasks()] == ["repeat_request"]
    clock.advance(days=15)
    assert erlangen.tasks() == []


def test_provide_patient_data_errors(dispatcher, rng) -> None:
    muenster, erlangen, _, _, _ = start_clearing(dispatcher, rng)
    [requested] = erlangen.tasks()
    assert erlangen.provide("no-such-task", idat_patient(**MARTIN), status=404)["issue"][0]["code"] == "not-found"
    # Another site's task is answered as if unknown: a caller learns nothing of others' tasks.
    assert muenster.provide(requested["taskId"], idat_patient(**MARTIN), status=404)["issue"][0]["code"] == "not-found"
    lacking = idat_patient(**MARTIN)
    del lacking["birthDate"]
    answer = erlangen.provide(requested["taskId"], lacking, status=422)
    assert "birthdate" in answer["issue"][0]["diagnostics"]
    wrong = idat_patient(**{**MARTIN, "gender": "xyz"})
    answer = erlangen.provide(requested["taskId"], wrong, status=422)
    assert "xyz" not in answer["issue"][0]["diagnostics"]
    not_a_patient = parameters(("taskId", {"valueId": requested["taskId"]}), ("target", "dic_erlangen"),
                               ("patient", {"resource": {"resourceType": "Observation"}}))
    erlangen.post("providePatientData", not_a_patient, status=400)
    # None of this counted: the task is still open.
    assert [t["taskId"] for t in erlangen.tasks()] == [requested["taskId"]]


def test_per_item_errors_and_whole_request_errors(dispatcher, rng) -> None:
    site = Site(dispatcher, "dic_muenster")
    data, _ = balanced_filter(rng)
    answer = site.post("requestPsnFromBfWorkflow", parameters(
        ("study", "mii"), ("bloomfilter", {"valueBase64Binary": b64(data)}),
        ("bloomfilter", {"valueBase64Binary": "not base64!"}),
        ("bloomfilter", [{"name": "bloomfilter", "valueBase64Binary": b64(data)},
                         {"name": "version", "valueString": "9"}]),
        ("bloomfilter", {"valueBase64Binary": b64(b"\xff" * 300)}),  # longer than 1600 bits
        ("target", "dic_muenster")))
    kinds = [(p["name"], p["part"][-1].get("valueCoding", {}).get("code")) for p in answer["parameter"]]
    assert kinds == [("pseudonym-bf", None), ("error", "invalid"), ("error", "not-found"), ("error", "invalid")]
    for body, status in [
        (parameters(("study", "nope"), ("bloomfilter", {"valueBase64Binary": "AQ=="}), ("target", "dic_muenster")), 404),
        (parameters(("study", "mii"), ("bloomfilter", {"valueBase64Binary": "AQ=="}), ("target", "nowhere")), 404),
        (parameters(("study", "mii"), ("target", "dic_muenster")), 400),
        (parameters(("study", "mii"), ("bloomfilter", {"valueInteger": 3}), ("target", "dic_muenster")), 400),
    ]:
        assert site.post("requestPsnFromBfWorkflow", body, status)["resourceType"] == "OperationOutcome"


def test_update_bf_replaces_the_filter(dispatcher, rng) -> None:
    muenster, erlangen = Site(dispatcher, "dic_muenster"), Site(dispatcher, "dic_erlangen")
    old, _ = balanced_filter(rng)
    new, _ = balanced_filter(rng)
    [(_, pseudonym)] = muenster.request_psn(b64(old))
    muenster.post("updateBf", parameters(("study", "mii"), ("bloomfilter", {"valueBase64Binary": b64(new)}),
                                         ("source", "dic_muenster"), ("pseudonym", pseudonym), ("bfVersion", "1")))
    [(_, by_new)] = erlangen.request_psn(b64(new))
    [(_, by_old)] = erlangen.request_psn(b64(old))
    assert erlangen.project_pseudonym(by_new) == muenster.project_pseudonym(pseudonym)
    assert erlangen.project_pseudonym(by_old) != muenster.project_pseudonym(pseudonym)
    for changes, status in [({"pseudonym": "dic_XXXXX"}, 404), ({"bfVersion": "7"}, 404),
                            ({"source": "nowhere"}, 404), ({"bloomfilter": "%%%"}, 400)]:
        body = {"study": "mii", "bloomfilter": b64(new), "source": "dic_muenster", "pseudonym": pseudonym,
                "bfVersion": "1", **changes}
        muenster.post("updateBf", parameters(*body.items()), status)


def test_request_psn_workflow_events(dispatcher, rng) -> None:
    site = Site(dispatcher, "dic_muenster")
    data, _ = balanced_filter(rng)
    [(_, pseudonym)] = site.request_psn(b64(data))
    lookup = parameters(("study", "mii"), ("original", pseudonym), ("source", "dic_muenster"),
                        ("target", "eyematics"), ("event", "fttp.getMiiPsn_eyematics"))
    assert site.post("requestPsnWorkflow", lookup)["parameter"][0]["name"] == "error"  # a lookup only
    created = site.project_pseudonym(pseudonym)
    answer = site.post("requestPsnWorkflow", lookup)
    assert answer["parameter"][0]["part"][2]["valueIdentifier"]["value"] == created
    site.post("requestPsnWorkflow", parameters(*[(k, v) for k, v in
              [("study", "mii"), ("original", pseudonym), ("source", "dic_muenster"), ("target", "eyematics"),
               ("event", "unknown.event")]]), 404)
    site.post("requestPsnWorkflow", parameters(("study", "mii"), ("original", pseudonym), ("source", "dic_muenster"),
                                               ("target", "dic_erlangen"), ("event", "fttp.getMiiPsn_eyematics")), 400)


def test_a_site_key_is_limited_to_its_site(demo_config, rng) -> None:
    key = {"name": "erlangen", "key": "erlangen-key", "domains": ["dic_erlangen", "eyematics"], "studies": ["mii"]}
    config = demo_config.with_overrides(auth={"api_keys": [key]}, dispatcher={"clearings": []})
    with client_for(config, apikey="erlangen-key") as client:
        erlangen, muenster = Site(client, "dic_erlangen"), Site(client, "dic_muenster")
        data, _ = balanced_filter(rng)
        assert erlangen.request_psn(b64(data))[0][0] == "pseudonym"
        muenster.request_psn(b64(data), status=401)
        Site(client, "dic_erlangen", study="num").request_psn(b64(data), status=401)


def test_a_filter_stored_by_one_process_is_seen_by_another(demo_config, rng) -> None:
    """Two gateways on one store, as two workers or replicas: each index follows the other's writes."""
    config = demo_config.with_overrides(dispatcher={"clearings": []})
    with client_for(config) as first, client_for(config) as second:
        warm, _ = balanced_filter(rng)
        Site(second, "dic_greifswald").request_psn(b64(warm))  # the second's index is loaded and current
        data, ones = balanced_filter(rng)
        [(_, at_muenster)] = Site(first, "dic_muenster").request_psn(b64(data))
        [(_, at_erlangen)] = Site(second, "dic_erlangen").request_psn(b64(similar_filter(ones, 0.97, rng)))
        assert Site(second, "dic_erlangen").project_pseudonym(at_erlangen) == \
            Site(first, "dic_muenster").project_pseudonym(at_muenster)
        # A replaced filter leaves the other process's index too.
        lone, _ = balanced_filter(rng)
        [(_, lone_pseudonym)] = Site(first, "dic_muenster").request_psn(b64(lone))
        Site(second, "dic_greifswald").request_psn(b64(balanced_filter(rng)[0]))  # second catches up
        replacement, _ = balanced_filter(rng)
        Site(first, "dic_muenster").post("updateBf", parameters(
            ("study", "mii"), ("bloomfilter", {"valueBase64Binary": b64(replacement)}), ("source", "dic_muenster"),
            ("pseudonym", lone_pseudonym), ("bfVersion", "1")))
        person = Site(first, "dic_muenster").project_pseudonym(lone_pseudonym)
        [(_, by_old)] = Site(second, "dic_greifswald").request_psn(b64(lone))
        [(_, by_new)] = Site(second, "dic_erlangen").request_psn(b64(replacement))
        assert Site(second, "dic_greifswald").project_pseudonym(by_old) != person
        assert Site(second, "dic_erlangen").project_pseudonym(by_new) == person
