"""The floor of the single-request benchmark: a bare Starlette endpoint that answers the same
`$pseudonymize` request with the same lookup on the same SQLite file, and nothing else — no
authentication, no binding, no thread hop, no logging, no metrics."""

from __future__ import annotations

import os
import sqlite3

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SYSTEM = "https://ths-greifswald.de/gpas"
database = sqlite3.connect(os.environ["BENCH_SQLITE_PATH"], check_same_thread=False)


async def pseudonymize(request: Request) -> Response:
    parameters = orjson.loads(await request.body())["parameter"]
    target = next(p["valueString"] for p in parameters if p["name"] == "target")
    original = next(p["valueString"] for p in parameters if p["name"] == "original")
    row = database.execute(
        "SELECT pseudonym FROM gpas_pseudonym AS p JOIN gpas_domain AS d ON d.id = p.domain_id "
        "WHERE d.name = ? AND number = 0 AND original = ?", (target, original)).fetchone()
    answer = {"resourceType": "Parameters", "parameter": [{"name": "pseudonym", "part": [
        {"name": "target", "valueIdentifier": {"system": SYSTEM, "value": target}},
        {"name": "original", "valueIdentifier": {"system": SYSTEM, "value": original}},
        {"name": "pseudonym", "valueIdentifier": {"system": SYSTEM, "value": row[0]}}]}]}
    return Response(orjson.dumps(answer), media_type="application/fhir+json")


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(routes=[Route("/ttp-fhir/fhir/gpas/$pseudonymize", pseudonymize, methods=["POST"]),
                        Route("/healthz", healthz)])
