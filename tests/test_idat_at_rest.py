"""IDAT never lie in clear on disk: while a clearing waits for a site and after it is decided, no
file of the store — the SQLite database, its write-ahead log and shared-memory file — holds a name
or a birth date in clear. The service runs throughout (no checkpoint forced by the test)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dispatch import Clock, Site, b64, balanced_filter, idat_patient, similar_filter
from storage_dump import stored_text

PEOPLE = [dict(given="Wilhelmina", family="Quertzenbach", birth_date="1931-02-17", gender="female",
               birth_place="Oberunterdorf"),
          dict(given="Kunibert", family="Zwirbelmoser", birth_date="1944-07-09", gender="male",
               birth_place="Hinterwaldhausen")]
CLEAR = ("Wilhelmina", "Quertzenbach", "1931-02-17", "Oberunterdorf", "Kunibert", "Zwirbelmoser",
         "1944-07-09", "Hinterwaldhausen", "WILHELMINA", "wilhelmina", "quertzenbach")


def _files_of(database: Path) -> bytes:
    """Every file SQLite keeps for the database, read as they are."""
    found = b""
    for path in database.parent.glob(database.name + "*"):
        found += path.read_bytes()
    return found


def _scan(database: Path) -> None:
    content = _files_of(database)
    for value in CLEAR:
        assert value.encode() not in content, f"{value!r} lies in clear in a file of the store"


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_no_file_of_the_store_holds_idat_in_clear(demo_config, storage_url: str) -> None:
    from starlette.testclient import TestClient

    from ttp_gateway.core.app import create_app

    database = Path(storage_url.split(":///", 1)[1])
    rng = random.Random(3)
    config = demo_config.with_overrides(dispatcher={"clearings": []})
    with TestClient(create_app(config, clock=Clock()), headers={"apikey": "abcdef12345"}) as client:
        muenster, erlangen = Site(client, "dic_muenster"), Site(client, "dic_erlangen")
        for person in PEOPLE:
            data, ones = balanced_filter(rng)
            muenster.request_psn(b64(data))
            assert erlangen.request_psn(b64(similar_filter(ones, 0.88, rng))) == [("error", "incomplete")]
        erlangen_tasks = erlangen.tasks()
        muenster_tasks = muenster.tasks()
        # During: one site has answered, the other not yet; the IDAT wait in the store, sealed.
        for task, person in zip(erlangen_tasks, PEOPLE):
            erlangen.provide(task["taskId"], idat_patient(**person))
        _scan(database)
        # After: the other site answers, the clearings are decided and their IDAT deleted.
        for task, person in zip(muenster_tasks, PEOPLE):
            muenster.provide(task["taskId"], idat_patient(**person))
        assert [t["kind"] for t in erlangen.tasks()] == ["dic_psn_available"] * len(PEOPLE)
        _scan(database)
        assert "Quertzenbach" not in stored_text(client.app.gateway.repository)


def test_idat_are_stored_sealed_on_every_backend(demo_config) -> None:
    """On every backend the store's rows or documents hold ciphertext only, during a clearing."""
    from starlette.testclient import TestClient

    from ttp_gateway.core.app import create_app

    rng = random.Random(4)
    config = demo_config.with_overrides(dispatcher={"clearings": []})
    with TestClient(create_app(config, clock=Clock()), headers={"apikey": "abcdef12345"}) as client:
        muenster, erlangen = Site(client, "dic_muenster"), Site(client, "dic_erlangen")
        data, ones = balanced_filter(rng)
        muenster.request_psn(b64(data))
        erlangen.request_psn(b64(similar_filter(ones, 0.88, rng)))
        [task] = erlangen.tasks()
        erlangen.provide(task["taskId"], idat_patient(**PEOPLE[0]))
        stored = stored_text(client.app.gateway.repository)
        for value in CLEAR:
            assert value not in stored
