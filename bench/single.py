"""(b) Single-original `$pseudonymize` requests per second on one worker under wrk, beside a bare
Starlette endpoint doing the same lookup on the same SQLite file (`bench/bare_app.py`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson

from .servers import gateway, uvicorn_app
from .wrk import ensure_wrk, measure, post_script

PATH = "/ttp-fhir/fhir/gpas/$pseudonymize"
BODY = orjson.dumps({"resourceType": "Parameters", "parameter": [
    {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": "1001000000022"}]})


def requests_per_second(wrk: str, url: str, seconds: int, connections: int) -> float:
    script = post_script(BODY, {"Content-Type": "application/fhir+json", "apikey": "abcdef12345"})
    return measure(wrk, url, script, seconds, connections)["per_second"]


def run(seconds: int = 10, connections: int = 32) -> list[dict]:
    wrk = ensure_wrk()
    if wrk is None:
        print("wrk is not installed (Debian package 'wrk'): single-request figures skipped", flush=True)
        return []
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "single.db"
        with gateway(f"sqlite:///{database}") as base:
            requests_per_second(wrk, base + PATH, 2, connections)  # warm-up
            served = requests_per_second(wrk, base + PATH, seconds, connections)
        with uvicorn_app("bench.bare_app:app", {"BENCH_SQLITE_PATH": str(database)}) as base:
            requests_per_second(wrk, base + PATH, 2, connections)
            bare = requests_per_second(wrk, base + PATH, seconds, connections)
    return [{"benchmark": "single-original $pseudonymize, 1 worker, SQLite",
             "requests_per_second": round(served), "bare_starlette_per_second": round(bare),
             "ratio_to_bare": round(served / bare, 2)}]


if __name__ == "__main__":
    for row in run():
        print(row)
