"""Quick writes on SQLite run on the event loop: concurrent ones share commits, and each answer
comes after the commit that holds its writes."""

from __future__ import annotations

import asyncio

import httpx2
import pytest

from test_group_commit import _count_commits
from ttp_gateway.core.app import create_app


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_quick_writes_on_the_event_loop_share_commits(demo_config, monkeypatch) -> None:
    commits = _count_commits(monkeypatch)
    app = create_app(demo_config)

    async def main() -> list[dict]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway",
                                      headers={"apikey": "abcdef12345"}) as client:
            async def create(original: str) -> dict:
                response = await client.post("/ttp-fhir/fhir/gpas/$pseudonymizeAllowCreate", json={
                    "resourceType": "Parameters", "parameter": [{"name": "target", "valueString": "MIRACUM"},
                                                                {"name": "original", "valueString": original}]})
                assert response.status_code == 200, response.text
                return response.json()
            answers = await asyncio.gather(*(create(f"loop-{i}") for i in range(200)))
            # Every answer's pseudonym is committed: a lookup finds each.
            for answer in answers:
                original = answer["parameter"][0]["part"][1]["valueIdentifier"]["value"]
                found = await client.post("/ttp-fhir/fhir/gpas/$pseudonymize", json={
                    "resourceType": "Parameters", "parameter": [{"name": "target", "valueString": "MIRACUM"},
                                                                {"name": "original", "valueString": original}]})
                assert found.json()["parameter"][0]["name"] == "pseudonym"
            return answers

    answers = asyncio.run(main())
    pseudonyms = {a["parameter"][0]["part"][2]["valueIdentifier"]["value"] for a in answers}
    assert len(pseudonyms) == 200
    assert 0 < commits[0] < 100
    app.gateway.repository.close()
