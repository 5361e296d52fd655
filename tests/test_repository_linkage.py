"""The repository contract of linkage: studies, persons, Bloom filters, person keys, clearing
cases, tasks and sealed identifying data (IDAT), alike on every backend through the `repository`
fixture.

The tests at the end check MongoDB specifics (the study lock by a document write, documents,
indexes); they take the MongoDB backends only, by parametrising `storage_url` themselves.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from conftest import BACKENDS, all_stores
from storage_dump import stored_text
from stores import transaction
from ttp_gateway.backends import open_repository
from ttp_gateway.backends.base import Busy, Conflict, NotFound, Repository, UnitOfWork
from ttp_gateway.plugins.dispatcher.store import LINKAGE, BloomFilterRow, ClearingCase, StudyRecord, Task

STUDY = "study-a"
OTHER_STUDY = "study-b"
T0 = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=timezone.utc)  # whole milliseconds
# Sealed identifying data are opaque bytes to the store; these carry readable markers (and zero
# bytes) so that a dump can tell where they are kept.
IDAT = b"\x00sealed|Quertzenbach|Wilhelmina|Adelheid|1931-02-17|Ober-Unterdorf\x00\xff"
IDAT_VALUES = ("Quertzenbach", "Wilhelmina", "Adelheid", "1931-02-17", "Ober-Unterdorf")
OTHER_IDAT = b"\x00sealed|Zwirbelmoser|Kunigunde|1944-07-09\x00"


def _filter(seed: int, length: int = 16) -> bytes:
    """A Bloom filter's bytes, zero bytes included."""
    return bytes((seed * 37 + i * 11) % 256 for i in range(length)) + b"\x00"


def _create_study(repository: Repository, name: str = STUDY) -> None:
    with transaction(repository, write=True) as tx:
        tx.put_study(StudyRecord(name, {"sites": ["site-1", "site-2"], "threshold": 0.9}))


def _new_persons(repository: Repository, count: int, study: str = STUDY) -> list[int]:
    with transaction(repository, write=True) as tx:
        tx.lock_study(study)
        return tx.create_persons(study, count)


def _add_filters(repository: Repository, filters: list[tuple[int, str, str, bytes]],
                 study: str = STUDY) -> None:
    with transaction(repository, write=True) as tx:
        tx.lock_study(study)
        tx.add_bloom_filters(study, filters)


def _changes(repository: Repository, version: str = "v1", after: int = 0,
             study: str = STUDY) -> list[BloomFilterRow]:
    with transaction(repository) as tx:
        return tx.get_bloom_filter_changes(study, version, after)


def _case(case_id: str = "case-1", *, study: str = STUDY, site: str = "site-1", bloom_filter: str = "QUJD",
          expires: datetime = T0 + timedelta(days=1), created: datetime = T0) -> ClearingCase:
    return ClearingCase(id=case_id, study=study, site=site, version="v1", bloom_filter=bloom_filter,
                        candidates=[{"requester": True, "task": f"{case_id}-t0", "bloomfilter": bloom_filter},
                                    {"person": 7, "site": "site-2", "pseudonym": "S2-7", "score": 0.873,
                                     "task": f"{case_id}-t1"}],
                        created=created, expires=expires)


def _task(task_id: str, *, study: str = STUDY, site: str = "site-1", case: str | None = "case-1",
          created: datetime = T0, expires: datetime = T0 + timedelta(days=1),
          kind: str = "send_idat") -> Task:
    return Task(id=task_id, study=study, site=site, kind=kind, created=created, expires=expires, case=case,
                details={"pseudonym": f"psn-{task_id}", "elements": ["family", "given", "birth_date"]})


def _records(repository: Repository) -> dict[str, list[Any]]:
    """Everything the backend stores, by table or collection: every row of every SQL table
    (SELECT *), every document of every MongoDB collection, each in a stable order."""
    from ttp_gateway.backends.mongo import MongoRepository
    from ttp_gateway.backends.sql import SqlRepository

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        return value

    records: dict[str, list[Any]] = {}
    if isinstance(repository, SqlRepository):
        import sqlalchemy as sa

        with repository.engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                rows = conn.exec_driver_sql(f'SELECT * FROM "{table}"').mappings().all()
                records[table] = [plain(dict(row)) for row in rows]
    else:
        assert isinstance(repository, MongoRepository)
        database = repository.database
        for name in database.list_collection_names():
            records[name] = [plain(document) for document in database[name].find()]
    return {name: sorted(rows, key=repr) for name, rows in sorted(records.items())}


def _dump(repository: Repository, leave_out: tuple[str, ...] = ()) -> str:
    """All stored data as text (bytes as Latin-1), but for the tables or collections named."""
    def text(value: Any) -> str:
        if isinstance(value, dict):
            return " ".join(f"{key}={text(item)}" for key, item in value.items())
        if isinstance(value, list):
            return " ".join(text(item) for item in value)
        return value.decode("latin-1") if isinstance(value, bytes) else str(value)

    return "\n".join(f"{name}: {text(rows)}" for name, rows in _records(repository).items()
                     if name not in leave_out)


# --- studies ------------------------------------------------------------------------------------
def test_put_study_creates_then_replaces(repository: Repository) -> None:
    with transaction(repository) as tx:
        assert tx.get_studies() == []
    with transaction(repository, write=True) as tx:
        assert tx.put_study(StudyRecord("zeta", {"sites": ["a"]})) is True
        assert tx.put_study(StudyRecord("alpha", {"versions": {"v1": {"length": 500}}, "ttl": 3})) is True
    with transaction(repository, write=True) as tx:
        assert tx.put_study(StudyRecord("zeta", {"sites": ["a", "b"], "threshold": 0.85})) is False
    with transaction(repository) as tx:
        assert tx.get_studies() == [StudyRecord("alpha", {"versions": {"v1": {"length": 500}}, "ttl": 3}),
                                    StudyRecord("zeta", {"sites": ["a", "b"], "threshold": 0.85})]


def test_replacing_settings_keeps_the_studys_data(repository: Repository) -> None:
    _create_study(repository)
    [person] = _new_persons(repository, 1)
    _add_filters(repository, [(person, "site-1", "v1", _filter(1))])
    _create_study(repository)  # the same settings again
    with transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        tx.add_bloom_filters(STUDY, [(person, "site-2", "v1", _filter(2))])
    # The change counter went on: the replacement did not reset it.
    assert [row.sequence for row in _changes(repository)] == [1, 2]


def test_lock_study_of_an_unknown_study_raises(repository: Repository) -> None:
    _create_study(repository)
    with pytest.raises(NotFound, match="nowhere"), transaction(repository, write=True) as tx:
        tx.lock_study("nowhere")


def test_lock_study_twice_in_one_transaction(repository: Repository) -> None:
    _create_study(repository)
    with transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        [person] = tx.create_persons(STUDY, 1)
        tx.lock_study(STUDY)  # held already: no waiting for oneself
        tx.add_bloom_filters(STUDY, [(person, "site-1", "v1", _filter(1))])
    assert [row.person for row in _changes(repository)] == [person]


def test_lock_is_released_when_the_transaction_ends(repository: Repository) -> None:
    """After a commit and after a failure the next writer takes the lock at once."""
    _create_study(repository)
    _new_persons(repository, 1)
    with pytest.raises(RuntimeError), transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        raise RuntimeError("the request failed while holding the lock")
    started = time.monotonic()
    _new_persons(repository, 1)
    unit = repository.begin()
    unit[LINKAGE].lock_study(STUDY)
    unit.rollback()
    _new_persons(repository, 1)
    assert time.monotonic() - started < 5


def test_second_locker_waits_or_is_busy_until_the_holder_ends(repository: Repository,
                                                              storage_url: str) -> None:
    """A second writer, as another replica would, gets the study's lock only once the first
    one's unit has ended, and then sees what it wrote. SQL makes it wait (a row lock, SQLite's
    write lock); MongoDB refuses it at once (`Busy`: its lock write conflicts with the holder's)
    and its owner runs the unit again; the mongomock stand-in runs one transaction at a time."""
    _create_study(repository)
    [person] = _new_persons(repository, 1)
    held, release, locked = threading.Event(), threading.Event(), threading.Event()
    refusals: list[float] = []

    def holder() -> None:
        with transaction(repository, write=True) as tx:
            tx.lock_study(STUDY)
            tx.add_bloom_filters(STUDY, [(person, "site-1", "v1", _filter(1))])
            held.set()
            assert release.wait(30)

    def waiter(repo: Repository) -> list[BloomFilterRow]:
        deadline = time.monotonic() + 60
        while True:
            unit = repo.begin()
            try:
                started = time.monotonic()
                unit[LINKAGE].lock_study(STUDY)
            except Busy:
                unit.rollback()
                refusals.append(time.monotonic() - started)
                assert time.monotonic() < deadline
                time.sleep(0.02)
                continue
            except BaseException:
                unit.rollback()
                raise
            locked.set()
            try:
                return unit[LINKAGE].get_bloom_filter_changes(STUDY, "v1", 0)
            finally:
                unit.commit()

    second = open_repository(storage_url, all_stores())
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            holding = pool.submit(holder)
            try:
                assert held.wait(30)
                waiting = pool.submit(waiter, second)
                time.sleep(0.5)
                assert not locked.is_set()
            finally:
                release.set()
            holding.result(timeout=30)
            seen = waiting.result(timeout=60)
    finally:
        second.close()
    assert [(row.person, row.sequence) for row in seen] == [(person, 1)]
    if storage_url.startswith("mongodb://"):
        assert refusals and min(refusals) < 0.4  # refused, not kept waiting
    else:
        assert refusals == []


# --- persons ------------------------------------------------------------------------------------
def test_create_persons(repository: Repository) -> None:
    _create_study(repository)
    _create_study(repository, OTHER_STUDY)
    with transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        assert tx.create_persons(STUDY, 0) == []
        first = tx.create_persons(STUDY, 3)
        second = tx.create_persons(STUDY, 2)
    with transaction(repository, write=True) as tx:
        tx.lock_study(OTHER_STUDY)
        other = tx.create_persons(OTHER_STUDY, 1)
    with transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        third = tx.create_persons(STUDY, 1)
    assert all(isinstance(person, int) and person > 0 for person in first + second + third + other)
    # Consecutive, increasing ids within a study; every call's above the last. (A person is
    # named by study and id: MongoDB numbers each study's persons from 1, SQL across studies.)
    assert first == list(range(first[0], first[0] + 3))
    assert second == list(range(second[0], second[0] + 2)) and second[0] > first[-1]
    assert third[0] > second[-1]


# --- Bloom filters ------------------------------------------------------------------------------
def test_add_bloom_filters_and_read_changes(repository: Repository) -> None:
    _create_study(repository)
    _create_study(repository, OTHER_STUDY)
    alice, bob, carol = _new_persons(repository, 3)
    _add_filters(repository, [(alice, "site-1", "v1", _filter(1)), (bob, "site-2", "v1", _filter(2)),
                              (alice, "site-1", "v2", _filter(3, 32))])
    _add_filters(repository, [(carol, "site-1", "v1", _filter(4))])
    [dave] = _new_persons(repository, 1, OTHER_STUDY)
    _add_filters(repository, [(dave, "site-1", "v1", _filter(5))], OTHER_STUDY)

    v1 = _changes(repository, "v1")
    assert [(row.person, row.site, row.version, row.bloom_filter, row.sequence) for row in v1] == [
        (alice, "site-1", "v1", _filter(1), 1), (bob, "site-2", "v1", _filter(2), 2),
        (carol, "site-1", "v1", _filter(4), 4)]
    assert all(type(row.bloom_filter) is bytes and isinstance(row.id, int) for row in v1)
    assert len({row.id for row in v1}) == 3
    # Versions are kept apart; their rows share the study's numbering.
    v2 = _changes(repository, "v2")
    assert [(row.person, row.version, row.bloom_filter, row.sequence) for row in v2] == [
        (alice, "v2", _filter(3, 32), 3)]
    assert _changes(repository, "v3") == []
    # Exactly the rows after a number.
    assert _changes(repository, "v1", after=1) == v1[1:]
    assert _changes(repository, "v1", after=2) == v1[2:]
    assert _changes(repository, "v1", after=3) == v1[2:]
    assert _changes(repository, "v1", after=4) == []
    # Another study numbers its own changes.
    other = _changes(repository, "v1", study=OTHER_STUDY)
    assert [(row.person, row.sequence) for row in other] == [(dave, 1)]


def test_empty_batches(repository: Repository) -> None:
    _create_study(repository)
    with transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        tx.add_bloom_filters(STUDY, [])
        tx.add_person_keys(STUDY, [])
        tx.add_tasks([])
        tx.set_task_status([], "done")
        assert tx.get_bloom_filter_owners(STUDY, []) == {}
        assert tx.find_persons(STUDY, []) == {}
        assert tx.get_bloom_filter_changes(STUDY, "v1", 0) == []
    assert _changes(repository) == []


def test_replace_bloom_filters(repository: Repository) -> None:
    _create_study(repository)
    alice, bob = _new_persons(repository, 2)
    _add_filters(repository, [(alice, "site-1", "v1", _filter(1)), (alice, "site-1", "v1", _filter(2)),
                              (alice, "site-2", "v1", _filter(3)), (alice, "site-1", "v2", _filter(4)),
                              (bob, "site-1", "v1", _filter(5))])
    before = {row.bloom_filter: row for row in _changes(repository, "v1") + _changes(repository, "v2")}

    with transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        tx.replace_bloom_filters(STUDY, alice, "site-1", "v1", _filter(6))

    # The person's two filters of that site and version are withdrawn (same ids, no filter, new
    # numbers), then the new one follows with the next number; nothing else changed.
    changes = _changes(repository, "v1", after=5)
    assert [(row.person, row.site, row.bloom_filter, row.sequence) for row in changes] == [
        (alice, "site-1", None, 6), (alice, "site-1", None, 7), (alice, "site-1", _filter(6), 8)]
    assert {changes[0].id, changes[1].id} == {before[_filter(1)].id, before[_filter(2)].id}
    assert changes[2].id not in {row.id for row in before.values()}
    assert _changes(repository, "v1") == [before[_filter(3)], before[_filter(5)]] + changes
    assert _changes(repository, "v2") == [before[_filter(4)]]

    # With nothing to withdraw, a replacement is an insert; withdrawn filters stay withdrawn.
    with transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        tx.replace_bloom_filters(STUDY, bob, "site-2", "v1", _filter(7))
        tx.replace_bloom_filters(STUDY, alice, "site-1", "v1", _filter(8))
    changes = _changes(repository, "v1", after=8)
    assert [(row.person, row.site, row.bloom_filter, row.sequence) for row in changes] == [
        (bob, "site-2", _filter(7), 9), (alice, "site-1", None, 10), (alice, "site-1", _filter(8), 11)]


def test_bloom_filter_owners(repository: Repository) -> None:
    _create_study(repository)
    _create_study(repository, OTHER_STUDY)
    alice, bob = _new_persons(repository, 2)
    _add_filters(repository, [(alice, "site-1", "v1", _filter(1)), (bob, "site-2", "v2", _filter(2))])
    carol, dave = _new_persons(repository, 2, OTHER_STUDY)
    _add_filters(repository, [(carol, "site-1", "v1", _filter(3)), (carol, "site-2", "v1", _filter(5)),
                              (dave, "site-1", "v1", _filter(6)), (dave, "site-2", "v1", _filter(7)),
                              (dave, "site-2", "v2", _filter(8))], OTHER_STUDY)
    first, = _changes(repository, "v1")
    second, = _changes(repository, "v2")
    with transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        tx.replace_bloom_filters(STUDY, alice, "site-1", "v1", _filter(4))
    replacement, = [row for row in _changes(repository, "v1") if row.bloom_filter is not None]
    own = {first.id, second.id, replacement.id}
    foreign = {row.id: (row.person, row.site)
               for row in _changes(repository, "v1", study=OTHER_STUDY) + _changes(repository, "v2",
                                                                                   study=OTHER_STUDY)}
    # Ids are numbered per study on MongoDB, across studies on SQL: some of the other study's
    # ids are not this study's on either.
    only_foreign = set(foreign) - own
    assert only_foreign
    with transaction(repository) as tx:
        # Withdrawn filters included; other studies' filters and unknown ids are not.
        assert tx.get_bloom_filter_owners(STUDY, [first.id, second.id, *only_foreign, 10**9]) == {
            first.id: (alice, "site-1"), second.id: (bob, "site-2")}
        assert tx.get_bloom_filter_owners(OTHER_STUDY, list(foreign)) == foreign
        assert set(foreign.values()) == {(carol, "site-1"), (carol, "site-2"), (dave, "site-1"),
                                         (dave, "site-2")}


# --- person keys --------------------------------------------------------------------------------
def test_person_keys_keep_their_first_person(repository: Repository) -> None:
    _create_study(repository)
    _create_study(repository, OTHER_STUDY)
    alice, bob, carol = _new_persons(repository, 3)
    with transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        tx.add_person_keys(STUDY, [("kvid-a", alice), ("kvid-b", bob),
                                   ("kvid-c", carol), ("kvid-c", alice)])  # the batch's first pair wins
    with transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        tx.add_person_keys(STUDY, [("kvid-a", bob), ("kvid-d", bob)])  # kvid-a belongs to alice
        assert tx.find_persons(STUDY, ["kvid-a", "kvid-b", "kvid-c", "kvid-d", "kvid-x"]) == {
            "kvid-a": alice, "kvid-b": bob, "kvid-c": carol, "kvid-d": bob}
    [dave] = _new_persons(repository, 1, OTHER_STUDY)
    with transaction(repository, write=True) as tx:
        tx.lock_study(OTHER_STUDY)
        tx.add_person_keys(OTHER_STUDY, [("kvid-a", dave)])  # keys are per study
    with transaction(repository) as tx:
        assert tx.find_persons(OTHER_STUDY, ["kvid-a", "kvid-b"]) == {"kvid-a": dave}
        assert tx.find_persons(STUDY, ["kvid-a"]) == {"kvid-a": alice}


# --- clearing cases -----------------------------------------------------------------------------
def test_add_get_and_list_open_cases(repository: Repository) -> None:
    _create_study(repository)
    _create_study(repository, OTHER_STUDY)
    case = _case("case-1", bloom_filter="QUJD")
    with transaction(repository, write=True) as tx:
        tx.add_case(case)
        tx.add_case(_case("case-2", site="site-2", bloom_filter="QUJD"))
    with transaction(repository) as tx:
        assert tx.get_case("case-1") == case
        assert tx.get_case("case-9") is None
        assert [c.id for c in tx.get_open_cases(STUDY)] == ["case-1", "case-2"]
        assert tx.get_open_cases(OTHER_STUDY) == []
    joined = [*case.candidates, {"requester": True, "task": "t-9", "site": "site-3", "canonical": "REVG"}]
    with transaction(repository, write=True) as tx:
        tx.update_case_candidates("case-1", joined)
    with transaction(repository) as tx:
        assert tx.get_case("case-1").candidates == joined


def test_close_case_acts_once(repository: Repository) -> None:
    _create_study(repository)
    with transaction(repository, write=True) as tx:
        tx.add_case(_case("case-1"))
        tx.add_case(_case("case-2"))
    with transaction(repository, write=True) as tx:
        assert tx.close_case("case-1", "decided", 42) is True
        assert tx.close_case("case-2", "aborted", None) is True
    with transaction(repository, write=True) as tx:
        # Of two processes closing one case only one acts on it.
        assert tx.close_case("case-1", "aborted", None) is False
        assert tx.close_case("case-9", "decided", 1) is False
    with transaction(repository) as tx:
        decided, aborted = tx.get_case("case-1"), tx.get_case("case-2")
        assert (decided.status, decided.person) == ("decided", 42)
        assert (aborted.status, aborted.person) == ("aborted", None)
        assert tx.get_open_cases(STUDY) == []


def test_due_cases(repository: Repository) -> None:
    _create_study(repository)
    _create_study(repository, OTHER_STUDY)
    now = T0 + timedelta(hours=2)
    with transaction(repository, write=True) as tx:
        tx.add_case(_case("past", expires=now - timedelta(milliseconds=1)))
        tx.add_case(_case("boundary", expires=now))  # due: SQL compares expires <= now
        tx.add_case(_case("future", expires=now + timedelta(milliseconds=1)))
        tx.add_case(_case("closed", expires=now - timedelta(hours=1)))
        tx.add_case(_case("elsewhere", study=OTHER_STUDY, expires=now - timedelta(hours=1)))
        tx.close_case("closed", "aborted", None)
    with transaction(repository) as tx:
        assert sorted(c.id for c in tx.get_due_cases(STUDY, now)) == ["boundary", "past"]
        assert tx.get_due_cases(STUDY, T0) == []
        assert [c.id for c in tx.get_due_cases(OTHER_STUDY, now)] == ["elsewhere"]


def test_times_are_utc_milliseconds(repository: Repository) -> None:
    """Times come back timezone-aware in UTC, cut to whole milliseconds; the instant is kept."""
    _create_study(repository)
    berlin = timezone(timedelta(hours=2))
    created = datetime(2024, 5, 1, 14, 0, 0, 123_456, tzinfo=berlin)
    expires = datetime(2024, 5, 2, 14, 0, 0, 999_999, tzinfo=berlin)
    with transaction(repository, write=True) as tx:
        tx.add_case(_case("case-1", created=created, expires=expires))
        tx.add_tasks([_task("task-1", created=created, expires=expires)])
    with transaction(repository) as tx:
        case, task = tx.get_case("case-1"), tx.get_task("task-1")
    for got in (case, task):
        assert got.created == datetime(2024, 5, 1, 12, 0, 0, 123_000, tzinfo=timezone.utc)
        assert got.expires == datetime(2024, 5, 2, 12, 0, 0, 999_000, tzinfo=timezone.utc)
        assert got.created.utcoffset() == timedelta(0) and got.expires.utcoffset() == timedelta(0)


def test_duplicate_case_id_fails_and_keeps_the_stored_case(repository: Repository) -> None:
    _create_study(repository)
    with transaction(repository, write=True) as tx:
        tx.add_case(_case("case-1", site="site-1"))
    with pytest.raises(Conflict), transaction(repository, write=True) as tx:
        tx.add_case(_case("case-1", site="site-2"))
    with pytest.raises(Conflict), transaction(repository, write=True) as tx:
        tx.add_tasks([_task("task-1")])
        tx.add_tasks([_task("task-2"), _task("task-1"), _task("task-3")])
    with pytest.raises(Conflict), transaction(repository, write=True) as tx:
        tx.add_tasks([_task("task-4"), _task("task-4")])
    with transaction(repository, write=True) as tx:
        tx.add_tasks([_task("task-1")])
        tx.put_idat("case-1", "task-1", "site-1", IDAT)
    with pytest.raises(Conflict), transaction(repository, write=True) as tx:  # one IDAT per task
        tx.put_idat("case-1", "task-1", "site-1", OTHER_IDAT)
    with transaction(repository) as tx:
        assert tx.get_case("case-1").site == "site-1"
        assert [t.id for t in tx.get_open_tasks(STUDY)] == ["task-1"]
        assert tx.get_idat("case-1") == {"task-1": IDAT}


# --- tasks --------------------------------------------------------------------------------------
def test_add_and_get_tasks(repository: Repository) -> None:
    _create_study(repository)
    free = _task("task-free", case=None, kind="dic_psn_available")
    with transaction(repository, write=True) as tx:
        tx.add_tasks([_task("task-1"), free])
    with transaction(repository) as tx:
        assert tx.get_task("task-1") == _task("task-1")
        assert tx.get_task("task-free") == free
        assert tx.get_task("task-9") is None


def test_open_tasks_by_study_site_and_case(repository: Repository) -> None:
    _create_study(repository)
    _create_study(repository, OTHER_STUDY)
    later = T0 + timedelta(minutes=5)
    with transaction(repository, write=True) as tx:
        tx.add_tasks([
            _task("t-c", created=later),
            _task("t-b", created=T0, site="site-2", case="case-2"),
            _task("t-a", created=later),  # same time as t-c: ordered by id
            _task("t-d", created=T0 - timedelta(minutes=5), case="case-2"),
            _task("t-done", created=T0),
            _task("t-other", study=OTHER_STUDY),
        ])
        tx.set_task_status(["t-done"], "done")
    with transaction(repository) as tx:
        assert [t.id for t in tx.get_open_tasks(STUDY)] == ["t-d", "t-b", "t-a", "t-c"]
        assert [t.id for t in tx.get_open_tasks(STUDY, site="site-1")] == ["t-d", "t-a", "t-c"]
        assert [t.id for t in tx.get_open_tasks(STUDY, site="site-2")] == ["t-b"]
        assert [t.id for t in tx.get_open_tasks(STUDY, case="case-2")] == ["t-d", "t-b"]
        assert [t.id for t in tx.get_open_tasks(STUDY, site="site-1", case="case-2")] == ["t-d"]
        assert [t.id for t in tx.get_open_tasks(OTHER_STUDY)] == ["t-other"]
        assert tx.get_open_tasks(STUDY, site="site-3") == []
        assert tx.get_task("t-done").status == "done"


def test_set_task_status(repository: Repository) -> None:
    _create_study(repository)
    with transaction(repository, write=True) as tx:
        tx.add_tasks([_task("t-1"), _task("t-2"), _task("t-3")])
    with transaction(repository, write=True) as tx:
        tx.set_task_status(["t-1", "t-3", "t-unknown"], "done")
        tx.set_task_status(["t-2"], "expired")
    with transaction(repository) as tx:
        assert [tx.get_task(i).status for i in ("t-1", "t-2", "t-3")] == ["done", "expired", "done"]
        assert tx.get_open_tasks(STUDY) == []


def test_complete_task_replaces_its_details(repository: Repository) -> None:
    _create_study(repository)
    with transaction(repository, write=True) as tx:
        tx.add_tasks([_task("t-1"), _task("t-2")])
    answered = {"pseudonym": "psn-t-1", "answer": {"received": True, "elements": ["family"]}}
    with transaction(repository, write=True) as tx:
        tx.complete_task("t-1", answered)
        tx.complete_task("t-unknown", {"x": 1})  # nothing to complete: no error, nothing stored
    with transaction(repository) as tx:
        done = tx.get_task("t-1")
        assert (done.status, done.details) == ("done", answered)
        assert tx.get_task("t-2") == _task("t-2")
        assert tx.get_task("t-unknown") is None
        assert [t.id for t in tx.get_open_tasks(STUDY)] == ["t-2"]


def test_expire_tasks(repository: Repository) -> None:
    _create_study(repository)
    _create_study(repository, OTHER_STUDY)
    now = T0 + timedelta(hours=1)
    with transaction(repository, write=True) as tx:
        tx.add_tasks([
            _task("past", expires=now - timedelta(minutes=1)),
            _task("boundary", expires=now),  # expired: SQL compares expires <= now
            _task("future", expires=now + timedelta(milliseconds=1)),
            _task("done", expires=now - timedelta(minutes=1)),
            _task("elsewhere", study=OTHER_STUDY, expires=now - timedelta(minutes=1)),
        ])
        tx.set_task_status(["done"], "done")
    with transaction(repository, write=True) as tx:
        assert tx.expire_tasks(STUDY, now) == 2
    with transaction(repository, write=True) as tx:
        assert tx.expire_tasks(STUDY, now) == 0
        assert {i: tx.get_task(i).status for i in ("past", "boundary", "future", "done", "elsewhere")} == {
            "past": "expired", "boundary": "expired", "future": "open", "done": "done", "elsewhere": "open"}
        assert [t.id for t in tx.get_open_tasks(STUDY)] == ["future"]
        assert tx.expire_tasks(STUDY, now + timedelta(days=2)) == 1


# --- identifying data ---------------------------------------------------------------------------
def test_idat_is_kept_per_case_and_deleted_for_good(repository: Repository) -> None:
    _create_study(repository)
    with transaction(repository, write=True) as tx:
        tx.add_case(_case("case-1"))
        tx.add_case(_case("case-2", bloom_filter="REVG"))
        tx.add_tasks([_task("t-1"), _task("t-2", site="site-2"), _task("t-3", case="case-2")])
    with transaction(repository, write=True) as tx:
        tx.put_idat("case-1", "t-1", "site-1", IDAT)
        tx.put_idat("case-1", "t-2", "site-2", OTHER_IDAT)
        tx.put_idat("case-2", "t-3", "site-1", OTHER_IDAT)
    with transaction(repository) as tx:
        assert tx.get_idat("case-1") == {"t-1": IDAT, "t-2": OTHER_IDAT}
        assert tx.get_idat("case-2") == {"t-3": OTHER_IDAT}
        assert tx.get_idat("case-9") == {}
    # Only the IDAT table or collection holds identifying data: no copies in cases or tasks.
    assert "Quertzenbach" in _dump(repository)
    assert not any(value in _dump(repository, leave_out=("dispatcher_idat",)) for value in IDAT_VALUES)

    with transaction(repository, write=True) as tx:
        tx.delete_idat("case-1")
        tx.delete_idat("case-9")
    with transaction(repository) as tx:
        assert tx.get_idat("case-1") == {}
        assert tx.get_idat("case-2") == {"t-3": OTHER_IDAT}
    stored = stored_text(repository)  # on SQLite also the database file itself
    assert not any(value in stored for value in IDAT_VALUES)
    assert "Zwirbelmoser" in stored  # the other case's data stay, and the dump does see IDAT


# --- transactions and repositories --------------------------------------------------------------
def test_failed_transaction_leaves_no_linkage_data(repository: Repository) -> None:
    _create_study(repository)
    [alice] = _new_persons(repository, 1)
    _add_filters(repository, [(alice, "site-1", "v1", _filter(1))])
    before = _records(repository)
    assert any(rows for name, rows in before.items() if name.startswith("dispatcher_bloom_filter"))

    def work(tx) -> None:
        tx.put_study(StudyRecord("short-lived", {"sites": []}))
        tx.lock_study(STUDY)
        bob, carol = tx.create_persons(STUDY, 2)
        tx.add_bloom_filters(STUDY, [(bob, "site-1", "v1", _filter(2)), (carol, "site-2", "v2", _filter(3))])
        tx.replace_bloom_filters(STUDY, carol, "site-2", "v1", _filter(4))
        tx.add_person_keys(STUDY, [("kvid-b", bob), ("kvid-c", carol)])
        tx.add_case(_case("case-1"))
        tx.add_tasks([_task("t-1"), _task("t-2", site="site-2")])
        tx.put_idat("case-1", "t-1", "site-1", IDAT)

    with pytest.raises(RuntimeError), transaction(repository, write=True) as tx:
        work(tx)
        raise RuntimeError("the request failed after storing")

    assert _records(repository) == before  # counters and change numbers included
    assert not any(value in _dump(repository) for value in IDAT_VALUES)
    with transaction(repository) as tx:
        assert [s.name for s in tx.get_studies()] == [STUDY]
        assert [row.person for row in tx.get_bloom_filter_changes(STUDY, "v1", 0)] == [alice]
        assert tx.get_bloom_filter_changes(STUDY, "v2", 0) == []
        assert tx.find_persons(STUDY, ["kvid-b", "kvid-c"]) == {}
        assert tx.get_case("case-1") is None
        assert tx.get_task("t-1") is None and tx.get_open_tasks(STUDY) == []
        assert tx.get_idat("case-1") == {}
    # What failed may be done again, with the same ids, and the lock is free.
    with transaction(repository, write=True) as tx:
        work(tx)
    with transaction(repository) as tx:
        assert tx.get_idat("case-1") == {"t-1": IDAT}
        assert len(tx.find_persons(STUDY, ["kvid-b", "kvid-c"])) == 2


def test_second_repository_on_the_same_url_sees_committed_data(repository: Repository,
                                                               storage_url: str) -> None:
    _create_study(repository)
    [alice] = _new_persons(repository, 1)
    _add_filters(repository, [(alice, "site-1", "v1", _filter(1))])
    with transaction(repository, write=True) as tx:
        tx.add_person_keys(STUDY, [("kvid-a", alice)])
        tx.add_case(_case("case-1"))
        tx.add_tasks([_task("t-1")])
        tx.put_idat("case-1", "t-1", "site-1", IDAT)

    other = open_repository(storage_url, all_stores())
    try:
        with transaction(other, write=True) as tx:
            assert [s.name for s in tx.get_studies()] == [STUDY]
            assert [row.person for row in tx.get_bloom_filter_changes(STUDY, "v1", 0)] == [alice]
            assert tx.find_persons(STUDY, ["kvid-a"]) == {"kvid-a": alice}
            assert tx.get_case("case-1") == _case("case-1")
            assert tx.get_task("t-1") == _task("t-1")
            assert tx.get_idat("case-1") == {"t-1": IDAT}
            tx.lock_study(STUDY)
            [bob] = tx.create_persons(STUDY, 1)
            tx.add_bloom_filters(STUDY, [(bob, "site-2", "v1", _filter(2))])
    finally:
        other.close()
    assert bob > alice
    assert [(row.person, row.sequence) for row in _changes(repository)] == [(alice, 1), (bob, 2)]


def test_concurrent_writers_of_one_study_take_turns(repository: Repository, storage_url: str) -> None:
    """Two writers, as two replicas would, lock the same study over and over, creating persons
    and storing their filters, while a reader follows the changes without the lock. Inside the
    lock each writer is alone and sees its numbers follow the last stored one; numbers never
    repeat; the reader receives them in order without gaps; in the end they run 1..n."""
    _create_study(repository)
    rounds = 25
    start = threading.Barrier(3)
    writers_done = threading.Event()
    inside = [0]
    inside_lock = threading.Lock()

    def writer(repo: Repository, site: str) -> tuple[list[int], list[int]]:
        persons: list[int] = []
        sequences: list[int] = []
        start.wait()
        def work(unit: UnitOfWork) -> tuple[list[int], list[BloomFilterRow]]:
            store = unit[LINKAGE]
            store.lock_study(STUDY)  # waits on SQL; Busy on MongoDB while another holds it
            with inside_lock:
                inside[0] += 1
                assert inside[0] == 1, "two writers hold the study's lock"
            try:
                stored = store.get_bloom_filter_changes(STUDY, "v1", 0)
                top = stored[-1].sequence if stored else 0
                assert [row.sequence for row in stored] == list(range(1, top + 1))
                new = store.create_persons(STUDY, 2)
                store.add_bloom_filters(STUDY, [(person, site, "v1", _filter(person)) for person in new])
                time.sleep(0.002)  # widen the window for an intruder
                mine = store.get_bloom_filter_changes(STUDY, "v1", top)
                assert [(row.person, row.sequence) for row in mine] == [(new[0], top + 1), (new[1], top + 2)]
                return new, mine
            finally:
                with inside_lock:
                    inside[0] -= 1

        for _ in range(rounds):
            new, mine = repo.write(work, attempts=50)
            persons += new
            sequences += [row.sequence for row in mine]
        return persons, sequences

    def reader(repo: Repository) -> list[int]:
        received: list[int] = []
        start.wait()
        while True:
            finished = writers_done.is_set()
            with transaction(repo) as tx:
                rows = tx.get_bloom_filter_changes(STUDY, "v1", received[-1] if received else 0)
            last = received[-1] if received else 0
            assert [row.sequence for row in rows] == list(range(last + 1, last + 1 + len(rows)))
            received += [row.sequence for row in rows]
            if finished:
                return received
            time.sleep(0.001)

    second, third = open_repository(storage_url, all_stores()), open_repository(storage_url, all_stores())
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            following = pool.submit(reader, third)
            first_writer = pool.submit(writer, repository, "site-1")
            second_writer = pool.submit(writer, second, "site-2")
            try:
                persons_1, sequences_1 = first_writer.result(timeout=300)
                persons_2, sequences_2 = second_writer.result(timeout=300)
            finally:
                writers_done.set()  # also when a writer failed: the reader must end
            received = following.result(timeout=300)
    finally:
        second.close()
        third.close()

    total = 4 * rounds
    assert len(set(persons_1 + persons_2)) == total
    assert not set(sequences_1) & set(sequences_2)
    assert sorted(sequences_1 + sequences_2) == list(range(1, total + 1))
    assert received == list(range(1, total + 1))
    changes = _changes(repository)
    assert [row.sequence for row in changes] == list(range(1, total + 1))
    assert sorted(row.person for row in changes) == sorted(persons_1 + persons_2)


def test_concurrent_requests_for_one_new_person_create_it_once(repository: Repository,
                                                                storage_url: str) -> None:
    """Two writers, as two replicas would, receive the same new patients at the same time: each
    looks the patient's key up under the study's lock and creates the person if it is unknown.
    Every key ends with one person, both writers were given that person, and no other person
    was created."""
    _create_study(repository)
    keys = [f"kvid-{i:02d}" for i in range(12)]
    start = threading.Barrier(2)

    def writer(repo: Repository, site: str) -> list[int]:
        def work(unit: UnitOfWork, key: str) -> int:
            store = unit[LINKAGE]
            store.lock_study(STUDY)
            known = store.find_persons(STUDY, [key])
            if key in known:
                return known[key]
            [person] = store.create_persons(STUDY, 1)
            store.add_person_keys(STUDY, [(key, person)])
            store.add_bloom_filters(STUDY, [(person, site, "v1", _filter(person))])
            return person

        start.wait()
        return [repo.write(lambda unit, key=key: work(unit, key), attempts=50) for key in keys]

    second = open_repository(storage_url, all_stores())
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            first_writer = pool.submit(writer, repository, "site-1")
            second_writer = pool.submit(writer, second, "site-2")
            persons_1, persons_2 = first_writer.result(timeout=300), second_writer.result(timeout=300)
    finally:
        second.close()
    assert persons_1 == persons_2
    assert len(set(persons_1)) == len(keys)
    with transaction(repository) as tx:
        assert tx.find_persons(STUDY, keys) == dict(zip(keys, persons_1))
    changes = _changes(repository)
    assert sorted(row.person for row in changes) == sorted(persons_1)  # one filter per created person
    # No person was created beside them (on PostgreSQL a rolled-back insert would skip an id).
    assert _new_persons(repository, 1) == [max(persons_1) + 1]


# --- MongoDB specifics ----------------------------------------------------------------------------
mongo_only = pytest.mark.parametrize("storage_url", [b for b in BACKENDS if b.startswith("mongo")],
                                     indirect=True)


@mongo_only
def test_mongo_linkage_indexes(repository: Repository) -> None:
    from ttp_gateway.plugins.dispatcher.store_mongo import INDEXES

    for collection, indexes in INDEXES.items():
        stored = repository.database[collection].index_information()
        for index in indexes:
            assert [tuple(key) for key in stored[index.name]["key"]] == [tuple(k) for k in index.keys]
            assert stored[index.name].get("unique", False) == index.unique
    assert repository.database["dispatcher_person_keys"].index_information()["person_key"]["unique"]
    assert repository.database["dispatcher_studies"].index_information()["study_name"]["unique"]
    assert repository.database["dispatcher_bloom_filters"].index_information()["bloom_filter_id"]["unique"]


@mongo_only
def test_mongo_linkage_documents_are_compact(repository: Repository) -> None:
    _create_study(repository)
    [alice] = _new_persons(repository, 1)
    _add_filters(repository, [(alice, "site-1", "v1", b"\x01\x02")])
    with transaction(repository, write=True) as tx:
        tx.add_case(_case("case-1"))
        tx.add_tasks([_task("t-1")])
        tx.put_idat("case-1", "t-1", "site-1", b"\x00sealed")
    database = repository.database
    # The study holds its counters: the last change number, person id and filter id handed out,
    # and how often its lock was taken (once per unit above that created or stored).
    assert database["dispatcher_studies"].find_one({}, {"_id": 0}) == {
        "name": STUDY, "settings": {"sites": ["site-1", "site-2"], "threshold": 0.9}, "sequence": 1,
        "persons": 1, "filters": 1, "lock": 2}
    # Binary data as BSON binary (mongomock hands back the Binary, pymongo plain bytes).
    document = database["dispatcher_bloom_filters"].find_one({}, {"_id": 0})
    assert bytes(document.pop("bloom_filter")) == b"\x01\x02"
    assert document == {"study": STUDY, "id": 1, "version": "v1", "person": alice, "site": "site-1",
                        "sequence": 1}
    document = database["dispatcher_idat"].find_one({})
    assert bytes(document.pop("data")) == b"\x00sealed"
    assert document == {"_id": "t-1", "case": "case-1", "site": "site-1"}
    assert sorted(database["dispatcher_tasks"].find_one({})) == sorted(
        ["_id", "study", "site", "kind", "case", "details", "status", "created", "expires"])
    assert sorted(database["dispatcher_cases"].find_one({})) == sorted(
        ["_id", "study", "site", "version", "bloom_filter", "candidates", "status", "person", "created",
         "expires"])


@mongo_only
def test_mongo_persons_and_filters_are_numbered_per_study(repository: Repository) -> None:
    _create_study(repository)
    _create_study(repository, OTHER_STUDY)
    assert _new_persons(repository, 2) == [1, 2]
    assert _new_persons(repository, 3, OTHER_STUDY) == [1, 2, 3]
    assert _new_persons(repository, 1) == [3]
    _add_filters(repository, [(1, "site-1", "v1", _filter(1)), (2, "site-1", "v1", _filter(2))])
    _add_filters(repository, [(3, "site-2", "v1", _filter(3))], OTHER_STUDY)
    assert [(row.id, row.person) for row in _changes(repository)] == [(1, 1), (2, 2)]
    assert [(row.id, row.person) for row in _changes(repository, study=OTHER_STUDY)] == [(1, 3)]
    with transaction(repository) as tx:
        assert tx.get_bloom_filter_owners(STUDY, [1, 2]) == {1: (1, "site-1"), 2: (2, "site-1")}
        assert tx.get_bloom_filter_owners(OTHER_STUDY, [1, 2]) == {1: (3, "site-2")}


@mongo_only
def test_mongo_study_lock_is_a_write_to_the_study_undone_with_its_unit(repository: Repository) -> None:
    """Locking a study writes to its document inside the unit: a rolled-back unit's lock write
    goes with it, a committed one only counts up, and neither keeps the next writer waiting."""
    _create_study(repository)
    studies = repository.database["dispatcher_studies"]

    def study_document() -> dict[str, Any]:
        return studies.find_one({"name": STUDY}, {"_id": 0, "lock": 1, "persons": 1})

    assert study_document() == {"lock": 0, "persons": 0}
    unit = repository.begin()
    unit[LINKAGE].lock_study(STUDY)
    assert unit[LINKAGE].create_persons(STUDY, 2) == [1, 2]
    unit.rollback()
    assert study_document() == {"lock": 0, "persons": 0}
    started = time.monotonic()
    assert _new_persons(repository, 1) == [1]  # the numbers of the undone unit are handed out again
    assert time.monotonic() - started < 5
    assert study_document() == {"lock": 1, "persons": 1}
