"""The audit trail written to its file: whole JSON lines, the records of a request written before
its answer leaves (whether the request was answered on the event loop, where records are written
together, or on a worker thread), and an answer that says so when its record cannot be written."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx2
import orjson
import pytest

from conftest import DEMO_KEY, GPAS
from ttp_gateway.core import observability
from ttp_gateway.core.app import create_app
from ttp_gateway.core.observability import audit_trail

SQLITE = pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)


@pytest.fixture
def trail(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    audit_trail.write_to(str(path))
    yield path
    audit_trail.write_to(None)


def _records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _body(operation_original: str) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "target", "valueString": "MIRACUM"},
                                                        {"name": "original", "valueString": operation_original}]}


@SQLITE
def test_every_answer_leaves_after_its_record(demo_config, trail: Path, monkeypatch) -> None:
    writes: list[int] = []
    write = observability.os.write

    def counting(descriptor: int, data: bytes) -> int:
        writes.append(data.count(b"\n"))
        return write(descriptor, data)

    monkeypatch.setattr(observability.os, "write", counting)
    app = create_app(demo_config)

    async def main() -> None:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway",
                                      headers={"apikey": DEMO_KEY}) as client:
            async def read(i: int) -> None:
                # $pseudonymize is answered on the event loop; its record is written in a group
                response = await client.post(f"{GPAS}/$pseudonymize", json=_body(f"unknown-{i}"))
                assert response.status_code == 200
                # the record of this very request is in the file when its answer arrives
                mine = [r for r in _records(trail) if r["message"] == "pseudonymize"]
                assert len(mine) >= answered[0] + 1
                answered[0] += 1

            answered = [0]
            await asyncio.gather(*(read(i) for i in range(60)))

    try:
        asyncio.run(main())
    finally:
        app.gateway.repository.close()
    records = [r for r in _records(trail) if r["message"] == "pseudonymize"]
    assert len(records) == 60
    assert all(r["audit"] == {"client": "demo", "endpoint": "gpas", "operation": "pseudonymize",
                              "domain": "MIRACUM", "items": 1} for r in records)
    assert len(writes) < 60  # records of requests answered together share a write


def test_records_made_on_a_worker_thread_are_written_at_once(trail: Path) -> None:
    thread = threading.Thread(target=audit_trail.record, args=("threaded", {"client": "x", "items": 1}))
    thread.start()
    thread.join()
    assert [r["message"] for r in _records(trail)] == ["threaded"]


@SQLITE
def test_an_answer_whose_record_cannot_be_written_is_a_500(demo_config, trail: Path, monkeypatch) -> None:
    def failing(descriptor: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(observability, "_write_all", failing)
    app = create_app(demo_config)

    async def main() -> httpx2.Response:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway",
                                      headers={"apikey": DEMO_KEY}) as client:
            return await client.post(f"{GPAS}/$pseudonymize", json=_body("1001000000022"))

    try:
        response = asyncio.run(main())
    finally:
        app.gateway.repository.close()
    assert response.status_code == 500
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and "error id" in outcome["issue"][0]["diagnostics"]
    assert "1001000000022" not in response.text
