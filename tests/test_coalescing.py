"""Concurrent single creates answered together (`core.coalescing`), on every backend: each call
gets exactly the answer it would have got alone — its own pseudonyms, shape, format, status and
audit record — only after the commit that holds its writes; a call the batch refuses fails alone;
a batch that fails as a whole is answered call by call."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

import httpx2
import pytest
from lxml import etree

from conftest import DEMO_KEY, GPAS
from ttp_gateway.core.app import create_app
from ttp_gateway.core.execution import Executor
from ttp_gateway.plugins.gpas.operations import GpasOperations
from ttp_gateway.plugins.mii_psn.operations import MiiInterface

DOMAIN = "MIRACUM"
FHIR = "{http://hl7.org/fhir}"


def _body(target: str, original: str) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "target", "valueString": target},
                                                        {"name": "original", "valueString": original}]}


def _batches(monkeypatch) -> list[int]:
    """The sizes of the batches the executor answered together."""
    sizes: list[int] = []
    run_together = Executor.run_together

    def counting(self, op, calls, fmts):
        sizes.append(len(calls))
        return run_together(self, op, calls, fmts)

    monkeypatch.setattr(Executor, "run_together", counting)
    return sizes


def _first_batch_waits(monkeypatch, seconds: float = 0.2, owner: type = GpasOperations,
                       name: str = "pseudonymize_allow_create_together") -> None:
    """The first batch takes a while, so that the calls sent with it queue for the next."""
    handler = getattr(owner, name)
    first = threading.Event()

    def slow(self, calls):
        if not first.is_set():
            first.set()
            threading.Event().wait(seconds)
        return handler(self, calls)

    monkeypatch.setattr(owner, name, slow)


def _send_together(config, requests: list[Callable[[httpx2.AsyncClient], Any]]) -> tuple[list[Any], Any]:
    app = create_app(config)

    async def main() -> list[Any]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway",
                                      headers={"apikey": DEMO_KEY}) as client:
            return list(await asyncio.gather(*(send(client) for send in requests)))

    try:
        return asyncio.run(main()), app
    finally:
        app.gateway.repository.close()


def _pseudonym(answer: dict) -> str:
    first = answer["parameter"][0]
    assert first["name"] == "pseudonym", answer
    return next(p["valueIdentifier"]["value"] for p in first["part"] if p["name"] == "pseudonym")


def _lookup(config, originals: list[str]) -> dict[str, str]:
    app = create_app(config)
    try:
        with app.gateway.repository.read() as unit:
            from ttp_gateway.plugins.gpas.store import PSEUDONYMS

            return unit[PSEUDONYMS].get_pseudonyms(DOMAIN, originals)
    finally:
        app.gateway.repository.close()


def _create(target: str, original: str) -> Callable[[httpx2.AsyncClient], Any]:
    async def send(client: httpx2.AsyncClient) -> httpx2.Response:
        return await client.post(f"{GPAS}/$pseudonymizeAllowCreate", json=_body(target, original))
    return send


def test_concurrent_creates_share_batches_and_keep_their_own_answers(demo_config, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ttp_gateway.audit")
    sizes = _batches(monkeypatch)
    _first_batch_waits(monkeypatch)
    originals = [f"together-{i:03d}" for i in range(40)]
    sent = originals * 3  # each original asked for three times at once
    responses, _ = _send_together(demo_config, [_create(DOMAIN, o) for o in sent])
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    by_original: dict[str, set[str]] = {}
    for original, response in zip(sent, responses):
        answer = response.json()
        part = answer["parameter"][0]["part"]
        assert next(p["valueIdentifier"]["value"] for p in part if p["name"] == "original") == original
        by_original.setdefault(original, set()).add(_pseudonym(answer))
    assert all(len(found) == 1 for found in by_original.values())  # one pseudonym per original
    pseudonyms = {next(iter(found)) for found in by_original.values()}
    assert len(pseudonyms) == len(originals)  # and none shared by two originals
    # Every answer was committed: the store holds exactly what the clients were told.
    assert _lookup(demo_config, originals) == {o: next(iter(p)) for o, p in by_original.items()}
    assert max(sizes) > 1 and sum(sizes) == len(sent)
    audits = [r for r in caplog.records if r.name == "ttp_gateway.audit"
              and r.getMessage() == "pseudonymize-allow-create"]
    assert len(audits) == len(sent)  # one audit record per call, not per batch


def test_a_call_the_batch_refuses_fails_alone(demo_config, monkeypatch) -> None:
    sizes = _batches(monkeypatch)
    _first_batch_waits(monkeypatch)
    good = [_create(DOMAIN, f"alone-{i}") for i in range(20)]
    bad = [_create("NO-SUCH-DOMAIN", f"alone-bad-{i}") for i in range(5)]
    responses, _ = _send_together(demo_config, good + bad)
    assert max(sizes) > 1
    assert [r.status_code for r in responses[:20]] == [200] * 20
    for response in responses[20:]:
        assert response.status_code == 404
        assert response.json()["resourceType"] == "OperationOutcome"
    assert len(_lookup(demo_config, [f"alone-{i}" for i in range(20)])) == 20


def test_a_batch_that_fails_is_answered_call_by_call(demo_config, monkeypatch) -> None:
    sizes = _batches(monkeypatch)
    handler = GpasOperations.pseudonymize_allow_create_together
    first = threading.Event()

    def failing(self, calls):
        if not first.is_set():
            first.set()
            threading.Event().wait(0.2)
            return handler(self, calls)
        handler(self, calls)
        with calls[0].writing() as unit:  # a batch that wrote more before it failed
            self.psn.get_or_create(unit, self.psn.domain(DOMAIN), ["fallback-sentinel"])
        raise RuntimeError("the batch fails as a whole")

    monkeypatch.setattr(GpasOperations, "pseudonymize_allow_create_together", failing)
    originals = [f"fallback-{i}" for i in range(24)]
    responses, _ = _send_together(demo_config, [_create(DOMAIN, o) for o in originals]
                                  + [_create("NO-SUCH-DOMAIN", "fallback-bad")])
    assert max(sizes) > 1
    assert [r.status_code for r in responses] == [200] * 24 + [404]
    told = {o: _pseudonym(r.json()) for o, r in zip(originals, responses)}
    assert _lookup(demo_config, originals) == told
    assert _lookup(demo_config, ["fallback-sentinel"]) == {}  # what the failed batch wrote is gone


def test_each_call_keeps_its_format_and_shape(demo_config, monkeypatch) -> None:
    sizes = _batches(monkeypatch)
    _first_batch_waits(monkeypatch)

    async def as_xml(client: httpx2.AsyncClient) -> httpx2.Response:
        return await client.post(f"{GPAS}/$pseudonymizeAllowCreate", json=_body(DOMAIN, "shape-xml"),
                                 headers={"accept": "application/fhir+xml"})

    async def legacy(client: httpx2.AsyncClient) -> httpx2.Response:  # gPAS before 1.10.2
        return await client.get(f"{GPAS}/$pseudonymize-allow-create",
                                params={"domain": DOMAIN, "original": "shape-legacy"})

    plain = [_create(DOMAIN, f"shape-{i}") for i in range(10)]
    responses, _ = _send_together(demo_config, plain + [as_xml, legacy])
    assert max(sizes) > 1
    assert all(r.status_code == 200 for r in responses)
    xml = responses[10]
    assert xml.headers["content-type"].startswith("application/fhir+xml")
    root = etree.fromstring(xml.content)
    values = root.findall(f".//{FHIR}valueIdentifier/{FHIR}value")
    assert [v.get("value") for v in values][1] == "shape-xml"
    named = responses[11].json()["parameter"]
    assert [p["name"] for p in named] == ["shape-legacy"] and "valueString" in named[0]
    stored = _lookup(demo_config, ["shape-xml", "shape-legacy"])
    assert stored["shape-legacy"] == named[0]["valueString"]
    assert stored["shape-xml"] == [v.get("value") for v in values][2]


def test_switched_off_with_group_commit(demo_config, monkeypatch) -> None:
    sizes = _batches(monkeypatch)
    config = demo_config.with_overrides(storage={"url": demo_config.storage_url, "group_commit": False})
    responses, _ = _send_together(config, [_create(DOMAIN, f"off-{i}") for i in range(10)])
    assert all(r.status_code == 200 for r in responses)
    assert sizes == []


def test_mii_single_creates_are_answered_together_as_each_alone(demo_config, monkeypatch, caplog) -> None:
    """The MII interface's `$pseudonymize`: each call answers 200 with its own Identifiers (as on
    its own; only a Bundle entry says 201), an unknown context 404 alone, one audit record each."""
    caplog.set_level(logging.INFO)
    sizes = _batches(monkeypatch)
    _first_batch_waits(monkeypatch, owner=MiiInterface, name="pseudonymize_together")

    def mii(context: str, original: str) -> Callable[[httpx2.AsyncClient], Any]:
        async def send(client: httpx2.AsyncClient) -> httpx2.Response:
            return await client.post(f"{GPAS}/v2/$pseudonymize", json={"resourceType": "Parameters", "parameter": [
                {"name": "context", "valueIdentifier": {"value": context}},
                {"name": "original", "valueIdentifier": {"system": "https://example.org/ids", "value": original}}]})
        return send

    originals = [f"mii-together-{i}" for i in range(15)]
    sent = originals * 2
    responses, _ = _send_together(demo_config, [mii(DOMAIN, o) for o in sent] + [mii("NO-SUCH-CONTEXT", "x")])
    assert max(sizes) > 1
    assert [r.status_code for r in responses] == [200] * len(sent) + [404]
    assert responses[-1].json()["resourceType"] == "OperationOutcome"
    # the unknown context was refused inside its batch, not by sending the batch back to single runs
    assert not [r for r in caplog.records if "fell back" in r.getMessage()]
    told: dict[str, set[str]] = {}
    for original, response in zip(sent, responses):
        parameter = {p["name"]: p["valueIdentifier"] for p in response.json()["parameter"]}
        assert parameter["original"] == {"system": "https://example.org/ids", "value": original}
        told.setdefault(original, set()).add(parameter["pseudonym"]["value"])
    assert all(len(p) == 1 for p in told.values())
    assert _lookup(demo_config, originals) == {o: next(iter(p)) for o, p in told.items()}  # gPAS sees the same
    audits = [r for r in caplog.records if r.name == "ttp_gateway.audit" and r.getMessage() == "pseudonymize"
              and r.audit.get("endpoint") == "gpas/v2"]
    assert len(audits) == len(sent) and all(r.audit["items"] == 1 for r in audits)
    assert sum(r.audit["created"] for r in audits) == len(originals)
