"""Batches decide like single requests: one corpus, sent in one order as single requests, as one
request per run of a site's records, and as those runs cut into batches of random sizes, gives the
same persons through the service, clearings included."""

from __future__ import annotations

import random

from starlette.testclient import TestClient

from bench.quality import SITES, arrival_order, send, service_config
from tests.linkage.people import BloomFilterEncoder, population
from ttp_gateway.core.app import create_app


def _persons(person_of: dict[str, object]) -> set[frozenset[str]]:
    groups: dict[object, set[str]] = {}
    for record, person in person_of.items():
        groups.setdefault(person, set()).add(record)
    return {frozenset(group) for group in groups.values()}


def test_single_batched_and_mixed_sending_give_the_same_persons(tmp_path) -> None:
    rng = random.Random(11)
    # Each site listed twice: a person may have two records at one site (registered twice), which
    # a site's batch may then carry together.
    records = arrival_order(population(250, SITES * 2, 11), 11)
    encoder = BloomFilterEncoder(800)
    text = {r.record_id: encoder.encode_base64(r) for r in records}
    # One order of arrival: runs of one site's records, each up to 25 long.
    queues = {site: [r for r in records if r.site == site] for site in SITES}
    runs = []
    while any(queues.values()):
        site = rng.choice([s for s in SITES if queues[s]])
        size = rng.randint(1, 25)
        runs.append((site, queues[site][:size]))
        queues[site] = queues[site][size:]
    mixed = []
    for site, run in runs:  # each run cut at random points
        while run:
            size = rng.randint(1, len(run))
            mixed.append((site, run[:size]))
            run = run[size:]
    plans = {"single": [(site, [r]) for site, run in runs for r in run], "runs": runs, "mixed": mixed}
    found = {}
    for name, plan in plans.items():
        config = service_config(f"sqlite:///{tmp_path / (name + '.db')}", encoder.filter_bits, 0.94, 0.82)
        with TestClient(create_app(config), headers={"apikey": "abcdef12345"}) as client:
            found[name] = send(client, records, text, plan)
    persons = {name: _persons(person_of) for name, (person_of, _) in found.items()}
    assert persons["runs"] == persons["single"]
    assert persons["mixed"] == persons["single"]
    assert found["runs"][1] == found["single"][1] == found["mixed"][1]
    # The corpus tests what it should: clearings, and one person's records within one batch.
    assert found["single"][1] > 0
    in_one_request = [run for _, run in runs
                      if any(a is not b and any(a.record_id in g and b.record_id in g for g in persons["single"])
                             for a in run for b in run)]
    assert in_one_request
