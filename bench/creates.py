"""(e) Single-original `$pseudonymizeAllowCreate` requests, each with a new original, per second on
one worker under wrk (32 connections), with p50 and p99 latency: the gateway as configured by
default (group commit "auto": concurrent creates answered together), the same gateway with
`group_commit = false`, and a bare Starlette endpoint doing one insert and one commit per
request (`bench/bare_creates.py`), on SQLite and PostgreSQL. This is the most common call in the
field: one create per identifier."""

from __future__ import annotations

import os
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .servers import analyze, gateway, postgres_available, postgres_database, uvicorn_app
from .wrk import ensure_wrk, measure

PATH = "/ttp-fhir/fhir/gpas/$pseudonymizeAllowCreate"


def create_script() -> str:
    """Each request a new original."""
    prefix = uuid.uuid4().hex[:8]
    return ("local counter = 0\n"
            'local headers = {["Content-Type"] = "application/fhir+json", ["apikey"] = "abcdef12345"}\n'
            "request = function()\n"
            "  counter = counter + 1\n"
            '  local body = \'{"resourceType":"Parameters","parameter":[{"name":"target","valueString":"MIRACUM"},\'\n'
            f'    .. \'{{"name":"original","valueString":"{prefix}-\' .. counter .. \'"}}]}}\'\n'
            '  return wrk.format("POST", nil, headers, body)\n'
            "end\n")


def measured(wrk: str, url: str, seconds: int, connections: int) -> dict:
    figures = measure(wrk, url, create_script(), seconds, connections)
    return {**figures, "per_second": round(figures["per_second"])}


@contextmanager
def _contender(kind: str, storage_url: str) -> Iterator[str]:
    if kind == "bare":
        with uvicorn_app("bench.bare_creates:app", {"BENCH_STORAGE_URL": storage_url}) as base:
            yield base
        return
    if kind == "grouped":  # the default configuration: group commit "auto"
        with gateway(storage_url) as base:
            yield base
        return
    os.environ["TTP_GATEWAY__STORAGE__GROUP_COMMIT"] = "false"
    try:
        with gateway(storage_url) as base:
            yield base
    finally:
        del os.environ["TTP_GATEWAY__STORAGE__GROUP_COMMIT"]


def run(seconds: int = 10, connections: int = 32) -> list[dict]:
    wrk = ensure_wrk()
    if wrk is None:
        print("wrk is not installed (Debian package 'wrk'): single-create figures skipped", flush=True)
        return []
    rows = []
    stores = ["SQLite"] + (["PostgreSQL"] if postgres_available() else [])
    for store in stores:
        figures = {}
        for kind in ("grouped", "ungrouped", "bare"):
            with _store(store) as storage_url, _contender(kind, storage_url) as base:
                measured(wrk, base + PATH, 2, connections)  # warm-up
                analyze(storage_url)
                figures[kind] = measured(wrk, base + PATH, seconds, connections)
        grouped, ungrouped, bare = figures["grouped"], figures["ungrouped"], figures["bare"]
        rows.append({"benchmark": f"single-original $pseudonymizeAllowCreate, new originals, 1 worker, "
                                  f"{connections} connections, {store}",
                     "per_second": grouped["per_second"], "p50_ms": grouped["p50_ms"], "p99_ms": grouped["p99_ms"],
                     "ungrouped_per_second": ungrouped["per_second"], "ungrouped_p99_ms": ungrouped["p99_ms"],
                     "bare_per_second": bare["per_second"], "bare_p99_ms": bare["p99_ms"],
                     "ratio_to_ungrouped": round(grouped["per_second"] / ungrouped["per_second"], 2),
                     "ratio_to_bare": round(grouped["per_second"] / bare["per_second"], 2)})
    if "PostgreSQL" not in stores:
        print("PostgreSQL not reachable: its single-create figure is skipped", flush=True)
    return rows


@contextmanager
def _store(store: str) -> Iterator[str]:
    if store == "SQLite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{Path(folder) / 'creates.db'}"
    else:
        with postgres_database() as url:
            yield url


if __name__ == "__main__":
    for row in run():
        print(row)
