"""The whole `$requestPsnFromBfWorkflow` against a study with 1,000,000 stored filters.

The matcher benchmark (`bench/matcher.py`) times the index search alone beside anonlink on the
same filters. This one stores those filters in the service's own SQLite store (one person each,
at one site), starts the service in process (which loads the index), and then times requests that each send one new 1600-bit filter: parsing, authentication, the index
search, the comparison with changes under the study's lock, a new person, its filter and its
site pseudonym written and committed, and the answer. Times are taken around the ASGI call, in
process, without the network.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from starlette.testclient import TestClient

from ttp_gateway.core.app import create_app
from ttp_gateway.core.config import load_config
from ttp_gateway.plugins.dispatcher.api import DISPATCHER
from ttp_gateway.plugins.dispatcher import bloom

from .matcher import LENGTH_BITS, BalancedFilters

ROOT = Path(__file__).resolve().parent.parent
STUDY, SITE = "mii", "dic_muenster"


def _store(database: Path, filters: np.ndarray) -> None:
    """The filters as persons of the study, written straight into the store's tables."""
    n = filters.shape[0]
    connection = sqlite3.connect(database)
    connection.execute("BEGIN")
    connection.executemany("INSERT INTO dispatcher_person (id, study) VALUES (?, ?)", ((i, STUDY) for i in range(1, n + 1)))
    connection.executemany(
        "INSERT INTO dispatcher_bloom_filter (id, study, version, person, site, bloom_filter, sequence) "
        "VALUES (?, ?, '1', ?, ?, ?, ?)",
        ((i, STUDY, i, SITE, bloom.pad_filter(filters[i - 1].tobytes(), LENGTH_BITS), i) for i in range(1, n + 1)))
    connection.execute("UPDATE dispatcher_study SET change_sequence = ? WHERE name = ?", (n, STUDY))
    connection.commit()
    connection.close()


def run(n: int = 1_000_000, repeats: int = 15, seed: int = 20240601) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    generator = BalancedFilters(LENGTH_BITS, rng)
    filters = generator.build(rng.integers(0, 256, (n, generator.record_bytes), dtype=np.uint8))
    queries = generator.build(rng.integers(0, 256, (repeats + 1, generator.record_bytes), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "linkage.db"
        config = load_config(ROOT / "config" / "demo.toml", environ={}).with_overrides(
            storage={"url": f"sqlite:///{database}"}, dispatcher={"persons": [], "clearings": []},
            logging={"level": "WARNING"})
        create_app(config)  # creates the schema and the studies
        stored_at = time.perf_counter()
        _store(database, filters)
        store_seconds = time.perf_counter() - stored_at
        del filters
        started = time.perf_counter()
        app = create_app(config)
        with TestClient(app, headers={"apikey": "abcdef12345"}) as client:  # start-up loads the index
            startup_seconds = time.perf_counter() - started
            def request(query: np.ndarray) -> float:
                body = {"resourceType": "Parameters", "parameter": [
                    {"name": "study", "valueString": STUDY},
                    {"name": "bloomfilter", "valueBase64Binary": bloom.encode_filter(query.tobytes())},
                    {"name": "target", "valueString": SITE}]}
                started = time.perf_counter()
                response = client.post("/ttp-fhir/fhir/dispatcher/$requestPsnFromBfWorkflow", json=body)
                elapsed = time.perf_counter() - started
                if response.status_code != 200 or response.json()["parameter"][0]["name"] != "pseudonym-bf":
                    raise RuntimeError("the service did not answer with a pseudonym")
                return elapsed

            request(queries[0])  # warms the code paths
            times = [request(query) for query in queries[1:]]
            index_bytes = sum(entry.index.nbytes for entry in
                              client.app.gateway.service(DISPATCHER).linker.indexes._indexes.values())
    raw_bytes = n * LENGTH_BITS // 8
    return [{"benchmark": f"$requestPsnFromBfWorkflow, one new 1600-bit filter, {n:,} stored (SQLite)",
             "median_ms": round(statistics.median(times) * 1000, 1), "min_ms": round(min(times) * 1000, 1),
             "startup_with_index_load_s": round(startup_seconds, 1), "store_load_s": round(store_seconds, 1),
             "index_bytes": index_bytes, "raw_bytes": raw_bytes, "memory_ratio": round(index_bytes / raw_bytes, 2)}]


if __name__ == "__main__":
    for row in run():
        print(row)
