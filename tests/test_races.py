"""Two processes racing on the same originals get the same pseudonyms (PostgreSQL).

Each process runs its own gateway (own engine, own connections) on one database, as replicas
would; they wait at a barrier and then send `$pseudonymizeAllowCreate` with the same originals in
different orders.
"""

from __future__ import annotations

import multiprocessing

import pytest

from conftest import DEMO_CONFIG, GPAS

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

    repository = open_repository(postgres_database)
    with repository.transaction() as tx:
        assert tx.count_pseudonyms("MIRACUM") == 2 + ROUNDS * ORIGINALS
    repository.close()
