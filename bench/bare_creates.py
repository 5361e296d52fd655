"""The floor of the single-create benchmark: a bare Starlette endpoint that stores one new
(original, pseudonym) per request with one insert and one commit, on SQLite (WAL, synchronous
FULL, as the gateway) or PostgreSQL, a connection per worker thread, and nothing else."""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SYSTEM = "https://ths-greifswald.de/gpas"
URL = os.environ["BENCH_STORAGE_URL"]  # sqlite:///path or postgresql://...
_local = threading.local()


def _connection():
    connection = getattr(_local, "connection", None)
    if connection is None:
        if URL.startswith("sqlite"):
            connection = sqlite3.connect(URL.split(":///", 1)[1], isolation_level=None, timeout=30)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
        else:
            import psycopg

            connection = psycopg.connect(URL, autocommit=False)
        _local.connection = connection
    return connection


def _setup() -> None:
    connection = _connection()
    statement = "CREATE TABLE IF NOT EXISTS floor_pseudonym (original TEXT PRIMARY KEY, pseudonym TEXT UNIQUE)"
    connection.execute(statement)
    if not URL.startswith("sqlite"):
        connection.commit()


def create(body: bytes) -> Response:
    parameters = orjson.loads(body)["parameter"]
    target = next(p["valueString"] for p in parameters if p["name"] == "target")
    original = next(p["valueString"] for p in parameters if p["name"] == "original")
    pseudonym = secrets.token_hex(8)
    connection = _connection()
    if URL.startswith("sqlite"):
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO floor_pseudonym VALUES (?, ?)", (original, pseudonym))
        connection.execute("COMMIT")
    else:
        connection.execute("INSERT INTO floor_pseudonym VALUES (%s, %s)", (original, pseudonym))
        connection.commit()
    answer = {"resourceType": "Parameters", "parameter": [{"name": "pseudonym", "part": [
        {"name": "target", "valueIdentifier": {"system": SYSTEM, "value": target}},
        {"name": "original", "valueIdentifier": {"system": SYSTEM, "value": original}},
        {"name": "pseudonym", "valueIdentifier": {"system": SYSTEM, "value": pseudonym}}]}]}
    return Response(orjson.dumps(answer), media_type="application/fhir+json")


async def endpoint(request: Request) -> Response:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(create, await request.body())


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


_setup()
app = Starlette(routes=[Route("/ttp-fhir/fhir/gpas/$pseudonymizeAllowCreate", endpoint, methods=["POST"]),
                        Route("/healthz", healthz)])
