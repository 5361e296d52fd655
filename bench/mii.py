"""One MII `batch` Bundle of 10,000 new `$pseudonymize` entries over HTTP, on SQLite, beside the
gPAS batch of the same size (`$pseudonymizeAllowCreate` with 10,000 new originals, `batch.py`)
measured on the same server in the same run: the MII interface is a plugin over gPAS's public
API, and a Bundle of it should cost about what gPAS's own batch costs."""

from __future__ import annotations

import http.client
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from .servers import gateway

BATCH = 10_000
PATH = "/ttp-fhir/fhir/gpas/v2/$pseudonymize"
GPAS_PATH = "/ttp-fhir/fhir/gpas/$pseudonymizeAllowCreate"
HEADERS = {"Content-Type": "application/fhir+json", "apikey": "abcdef12345"}
DOMAIN = "MIRACUM"


def gpas_body(round_: int, batch: int) -> bytes:
    """gPAS's batch, as `batch.py` sends it: one Parameters with `batch` originals."""
    return orjson.dumps({"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": DOMAIN},
        *({"name": "original", "valueString": f"{round_:04d}{i:09d}"} for i in range(batch))]})


def bundle(round_: int, batch: int) -> bytes:
    """A Bundle as a client sends one: a fullUrl, a Parameters and a request per entry."""
    return orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": [
        {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{round_:04d}{i:08d}",
         "resource": {"resourceType": "Parameters", "parameter": [
             {"name": "context", "valueIdentifier": {"value": DOMAIN}},
             {"name": "original", "valueIdentifier": {"system": "https://example.com/original-ids",
                                                      "value": f"mii-{round_:04d}{i:09d}"}}]},
         "request": {"method": "POST", "url": "$pseudonymize"}} for i in range(batch)]})


def post(connection: http.client.HTTPConnection, path: str, payload: bytes) -> tuple[float, int, bytes]:
    started = time.perf_counter()
    connection.request("POST", path, body=payload, headers=HEADERS)
    response = connection.getresponse()
    answer = response.read()
    return time.perf_counter() - started, response.status, answer


def run(repeats: int = 7, batch: int = BATCH) -> list[dict]:
    mii, gpas = [], []
    with tempfile.TemporaryDirectory() as folder:
        with gateway(f"sqlite:///{Path(folder) / 'bench.db'}") as base:
            url = urlsplit(base)
            connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=300)
            # Interleaved, so that both meet the same machine and the same growing table; the
            # first round warms up caches and is not counted.
            for round_ in range(repeats + 1):
                took, status, answer = post(connection, GPAS_PATH, gpas_body(round_, batch))
                if status != 200 or answer.count(b'"pseudonym"') < batch:
                    raise RuntimeError(f"gPAS batch answered {status}")
                if round_:
                    gpas.append(took)
                took, status, answer = post(connection, PATH, bundle(round_, batch))
                if status != 200 or answer.count(b'"status":"201"') != batch:
                    raise RuntimeError(f"MII Bundle answered {status}")
                if round_:
                    mii.append(took)
            connection.close()
    median, gpas_median = statistics.median(mii), statistics.median(gpas)
    return [{"benchmark": f"MII $pseudonymize Bundle of {batch:,} new entries, SQLite",
             "median_ms": round(median * 1000, 1), "per_second": round(batch / median),
             "gpas_batch_ms": round(gpas_median * 1000, 1), "ratio_to_gpas_batch": round(median / gpas_median, 2)}]


if __name__ == "__main__":
    for row in run():
        print(row)
