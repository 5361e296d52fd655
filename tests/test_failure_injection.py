"""A write request that fails at any stage writes nothing, on every backend.

Each write operation (and a batch Bundle of `$pseudonymizePatient`) is sent while a failure is
injected at one stage: in the handler after it wrote, in the encoder, at the answer-size check,
at the commit. The store must be as before, and the answer an OperationOutcome; a bug's 500
carries an error id that the log line carries too. Without the injection the same request
writes: the injection is what stopped it.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterator

import orjson
import pytest

from hostile.generator import BASELINES, JSON, parameters, path_of
from hostile.harness import GatewayUnderTest, Request, headers, hostile_config
from ttp_gateway.backends.base import Unavailable
from ttp_gateway.core import codec
from ttp_gateway.core.gateway import Call

WRITES = [op for op in BASELINES if op not in ("pseudonymize", "dePseudonymize", "requestTasks")]


def _requests() -> list[tuple[str, bytes]]:
    """(name, body) of every write request; new values each, so that each would write."""
    found = []
    for op in WRITES:
        params = parameters(op)
        if op == "requestPsnWorkflow":  # a person without a pseudonym in the target yet
            params = [p if p["name"] != "original" else {"name": "original", "valueString": "dic_2Q42E"}
                      for p in params]
        found.append((op, orjson.dumps({"resourceType": "Parameters", "parameter": params})))
    patient = next(p for p in parameters("pseudonymizePatient") if p["name"] == "patient")
    entries = []
    for index in range(2):
        params = parameters("pseudonymizePatient")
        params[1] = {"name": "patient", "resource": {**patient["resource"], "id": f"b-{index}",
                                                     "identifier": [{"system": "http://example.org/mrn",
                                                                     "value": f"batch-{index}"}]}}
        entries.append({"request": {"method": "POST", "url": "$pseudonymizePatient"},
                        "resource": {"resourceType": "Parameters", "parameter": params}})
    found.append(("pseudonymizePatient", orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries})))
    return found


REQUESTS = _requests()


class _CommitFails:
    """A write unit whose commit fails (the store went away at the last moment); like the real
    units, a failed commit leaves the unit rolled back."""

    def __init__(self, unit: Any) -> None:
        self._unit = unit

    def __getitem__(self, key: Any) -> Any:
        return self._unit[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._unit, name)

    def commit(self) -> None:
        self._unit.rollback()
        raise Unavailable("the connection was lost")

    async def commit_async(self) -> None:
        self._unit.rollback()
        raise Unavailable("the connection was lost")


def _inject(stage: str, gateway: GatewayUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    if stage == "handler":
        def audit_then_fail(self: Call, action: str, **facts: Any) -> None:
            raise RuntimeError("injected after the handler wrote")

        monkeypatch.setattr(Call, "audit", audit_then_fail)
    elif stage == "encoder":
        encode = codec.encode

        def failing_encode(resource: dict, fmt: codec.Format) -> bytes:
            refusal = resource.get("resourceType") == "OperationOutcome" and resource["issue"][0]["severity"] in (
                "error", "fatal")
            if not refusal:  # every answer but the boundary's own refusals
                raise ValueError("injected: the answer cannot be encoded")
            return encode(resource, fmt)

        monkeypatch.setattr(codec, "encode", failing_encode)
    elif stage == "answer-size":
        monkeypatch.setattr(gateway.app.executor, "_max_answer", 64)
    elif stage == "commit":
        repository = gateway.repository
        begin = repository.begin
        monkeypatch.setattr(repository, "begin", lambda *a, **k: _CommitFails(begin(*a, **k)))
        if hasattr(repository, "begin_async"):
            begin_async = repository.begin_async

            async def failing_begin_async(*args: Any, **kwargs: Any) -> Any:
                return _CommitFails(await begin_async(*args, **kwargs))

            monkeypatch.setattr(repository, "begin_async", failing_begin_async)


EXPECTED = {"handler": (500,), "encoder": (500,), "answer-size": (413,), "commit": (500, 503)}


@pytest.fixture
def gateway(storage_url: str) -> Iterator[GatewayUnderTest]:
    under_test = GatewayUnderTest(hostile_config(storage_url))
    yield under_test
    under_test.close()


@pytest.mark.parametrize("stage", list(EXPECTED))
def test_a_failure_at_any_stage_writes_nothing(gateway: GatewayUnderTest, stage: str,
                                               monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="ttp_gateway.request")
    with monkeypatch.context() as patched:
        _inject(stage, gateway, patched)
        for op, body in REQUESTS:
            before = gateway.snapshot()
            caplog.clear()
            response = gateway.send(Request("POST", path_of(op), b"", headers(("content-type", JSON)), body))
            answer = orjson.loads(response.body)
            if answer["resourceType"] == "Bundle":  # a batch: each entry failed alone
                assert stage == "handler", (op, stage, response.status)
                statuses = [entry["response"]["status"] for entry in answer["entry"]]
                assert statuses == ["500", "500"], (op, statuses)
                outcome = answer["entry"][0]["response"]["outcome"]
            else:
                assert response.status in EXPECTED[stage], (op, stage, response.status, answer)
                outcome = answer
            assert outcome["resourceType"] == "OperationOutcome"
            assert gateway.snapshot() == before, f"{op}: a failure at the {stage} stage wrote"
            if stage in ("handler", "encoder"):  # a bug: its id in the answer and in the log
                error_id = re.search(r"error id ([0-9a-f]+)", outcome["issue"][0]["diagnostics"]).group(1)
                logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
                assert logged, f"{op}: no log line with error id {error_id}"
                assert "Traceback" not in response.body.decode()
    # Without the injection, the same requests write.
    for op, body in REQUESTS:
        before = gateway.snapshot()
        response = gateway.send(Request("POST", path_of(op), b"", headers(("content-type", JSON)), body))
        assert response.status == 200, (op, response.body[:300])
        assert gateway.snapshot() != before, f"{op} writes nothing even without a failure"
