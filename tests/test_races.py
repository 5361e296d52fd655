"""Two processes racing on the same originals get the same pseudonyms (PostgreSQL).

Each process runs its own gateway (own engine, own connections) on one database, as replicas
would; they wait at a barrier and then send `$pseudonymizeAllowCreate` with the same originals in
different orders.
"""

from __future__ import annotations

import multiprocessing

import pytest

from conftest import DEMO_CONFIG, GPAS, all_stores
from stores import transaction

ROUNDS = 3
ORIGINALS = 2000


def _race(storage_url: str, originals: list[str], barrier, results) -> None:
    from starlette.testclient import TestClient

    from ttp_gateway.core.app import create_app
    from ttp_gateway.core.config import load_config

    config = load_config(DEMO_CONFIG, environ={}).with_overrides(storage={"url": storage_url})
    with TestClient(create_app(config), headers={"apikey": "abcdef12345"}) as client:
        for round_ in range(ROUNDS):
            body = {"resourceType": "Parameters", "parameter": [{"name": "target", "valueString": "MIRACUM"}] + [
                {"name": "original", "valueString": f"r{round_}-{o}"} for o in originals]}
            barrier.wait(timeout=60)
            answer = client.post(f"{GPAS}/$pseudonymizeAllowCreate", json=body).json()
            mapping = {}
            for param in answer["parameter"]:
                parts = {p["name"]: p["valueIdentifier"]["value"] for p in param["part"]}
                mapping[parts["original"]] = parts["pseudonym"]
            results.put(mapping)


@pytest.mark.postgres
def test_two_processes_racing_get_the_same_pseudonyms(postgres_database) -> None:
    from conftest import _empty_postgres

    _empty_postgres(postgres_database)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    originals = [f"{i:06d}" for i in range(ORIGINALS)]
    workers = [context.Process(target=_race, args=(postgres_database, order, barrier, results))
               for order in (originals, originals[::-1])]
    for worker in workers:
        worker.start()
    mappings = [results.get(timeout=120) for _ in range(2 * ROUNDS)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    by_round: dict[str, list[dict]] = {}
    for mapping in mappings:
        by_round.setdefault(next(iter(mapping)).split("-")[0], []).append(mapping)
    assert len(by_round) == ROUNDS
    for first, second in by_round.values():
        assert len(first) == ORIGINALS and first == second
        assert len(set(first.values())) == ORIGINALS

    from ttp_gateway.backends import open_repository

    repository = open_repository(postgres_database, all_stores())
    with transaction(repository) as tx:
        assert tx.count_pseudonyms("MIRACUM") == 2 + ROUNDS * ORIGINALS
    repository.close()


def _race_linkage(storage_url: str, site: str, filters: list[list[str]], barrier, results) -> None:
    from starlette.testclient import TestClient

    from ttp_gateway.core.app import create_app
    from ttp_gateway.core.config import load_config

    config = load_config(DEMO_CONFIG, environ={}).with_overrides(storage={"url": storage_url},
                                                                 dispatcher={"clearings": []})
    with TestClient(create_app(config), headers={"apikey": "abcdef12345"}) as client:
        for batch in filters:
            body = {"resourceType": "Parameters", "parameter": [
                {"name": "study", "valueString": "mii"}, {"name": "target", "valueString": site},
                *[{"name": "bloomfilter", "valueBase64Binary": f} for f in batch]]}
            barrier.wait(timeout=60)
            answer = client.post("/ttp-fhir/fhir/dispatcher/$requestPsnFromBfWorkflow", json=body).json()
            pseudonyms = [next(p["valueIdentifier"]["value"] for p in param["part"] if p["name"] == "pseudonym")
                          for param in answer["parameter"]]
            mapped = client.post("/ttp-fhir/fhir/dispatcher/$requestPsnWorkflow", json={
                "resourceType": "Parameters", "parameter": [
                    {"name": "study", "valueString": "mii"}, {"name": "source", "valueString": site},
                    {"name": "target", "valueString": "eyematics"},
                    *[{"name": "original", "valueString": p} for p in pseudonyms]]}).json()
            results.put((site, [next(p["valueIdentifier"]["value"] for p in param["part"] if p["name"] == "pseudonym")
                                for param in mapped["parameter"]]))


@pytest.mark.postgres
def test_two_processes_sending_the_same_new_person_create_one(postgres_database) -> None:
    import random

    from conftest import _empty_postgres
    from dispatch import b64, balanced_filter

    _empty_postgres(postgres_database)
    rng = random.Random(11)
    batches = [[b64(balanced_filter(rng)[0]) for _ in range(10)] for _ in range(ROUNDS)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_race_linkage, args=(postgres_database, site, batches, barrier, results))
               for site in ("dic_muenster", "dic_erlangen")]
    for worker in workers:
        worker.start()
    answers = [results.get(timeout=180) for _ in range(2 * ROUNDS)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    by_site: dict[str, list[str]] = {}
    for site, persons in answers:
        by_site.setdefault(site, []).extend(persons)
    # Each filter is one person, whichever site's request came first: the same project pseudonym.
    assert by_site["dic_muenster"] == by_site["dic_erlangen"]
    assert len(set(by_site["dic_muenster"])) == 10 * ROUNDS
