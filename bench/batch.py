"""(a) One `$pseudonymizeAllowCreate` of 10,000 new originals over HTTP, on SQLite and PostgreSQL,
beside its floor: in-process orjson parse of the same body, one executemany insert of the same
rows into the same table, orjson dump of the rows."""

from __future__ import annotations

import http.client
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import sqlalchemy as sa

from ttp_gateway.plugins.gpas.store_sql import metadata
from ttp_gateway.plugins.gpas.domains import Domain

from .servers import gateway, postgres_available, postgres_database

BATCH = 10_000
PATH = "/ttp-fhir/fhir/gpas/$pseudonymizeAllowCreate"
HEADERS = {"Content-Type": "application/fhir+json", "apikey": "abcdef12345"}


def body(round_: int, batch: int) -> bytes:
    return orjson.dumps({"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": "MIRACUM"},
        *({"name": "original", "valueString": f"{round_:04d}{i:09d}"} for i in range(batch))]})


def time_gateway(base: str, repeats: int, batch: int) -> list[float]:
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    timings = []
    for round_ in range(repeats + 1):  # the first request warms up caches and is not counted
        payload = body(round_, batch)
        started = time.perf_counter()
        connection.request("POST", PATH, body=payload, headers=HEADERS)
        response = connection.getresponse()
        answer = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200 or answer.count(b'"pseudonym"') < batch:
            raise RuntimeError(f"gateway answered {response.status}")
        if round_:
            timings.append(elapsed)
    connection.close()
    return timings


def floor_pseudonyms(batch: int) -> list[str]:
    return Domain.from_settings("MIRACUM", {"prefix": "mrcm_"}).format.generate(batch)


def time_floor(insert, repeats: int, batch: int) -> list[float]:
    timings = []
    for round_ in range(1, repeats + 2):
        payload = body(10_000 + round_, batch)
        pseudonyms = floor_pseudonyms(batch)
        started = time.perf_counter()
        parsed = orjson.loads(payload)
        rows = [(1, p["valueString"], 0, pseudonym) for p, pseudonym in zip(parsed["parameter"][1:], pseudonyms)]
        insert(rows)
        orjson.dumps(rows)
        elapsed = time.perf_counter() - started
        if round_ > 1:
            timings.append(elapsed)
    return timings


def sqlite_floor(repeats: int, batch: int) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "floor.db"
        engine = sa.create_engine(f"sqlite:///{path}")
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO gpas_domain (id, name, settings) VALUES (1, 'MIRACUM', '{}')")
        engine.dispose()
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")  # as the gateway: commits survive power loss

        def insert(rows):
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO gpas_pseudonym (domain_id, original, number, pseudonym) VALUES (?, ?, ?, ?)", rows)
            db.execute("COMMIT")

        try:
            return time_floor(insert, repeats, batch)
        finally:
            db.close()


def postgres_floor(url: str, repeats: int, batch: int) -> list[float]:
    import psycopg

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO gpas_domain (id, name, settings) VALUES (1, 'MIRACUM', '{}')")
    engine.dispose()
    with psycopg.connect(url) as db:
        def insert(rows):
            with db.cursor() as cursor:
                cursor.executemany("INSERT INTO gpas_pseudonym (domain_id, original, number, pseudonym) "
                                   "VALUES (%s, %s, %s, %s)", rows)
            db.commit()

        return time_floor(insert, repeats, batch)


def run(repeats: int = 7, batch: int = BATCH) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        with gateway(f"sqlite:///{Path(folder) / 'bench.db'}") as base:
            served = time_gateway(base, repeats, batch)
        rows.append(_row("SQLite", served, sqlite_floor(repeats, batch), batch))
    if postgres_available():
        with postgres_database() as url, gateway(url) as base:
            served = time_gateway(base, repeats, batch)
        with postgres_database() as url:
            rows.append(_row("PostgreSQL", served, postgres_floor(url, repeats, batch), batch))
    else:
        print("PostgreSQL not reachable: its batch figure is skipped", flush=True)
    return rows


def _row(backend: str, served: list[float], floor: list[float], batch: int) -> dict:
    median, floor_median = statistics.median(served), statistics.median(floor)
    return {"benchmark": f"$pseudonymizeAllowCreate {batch:,} new originals, {backend}",
            "median_ms": round(median * 1000, 1), "per_second": round(batch / median),
            "floor_ms": round(floor_median * 1000, 1), "ratio_to_floor": round(median / floor_median, 2)}


if __name__ == "__main__":
    for row in run():
        print(row)
