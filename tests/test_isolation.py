"""Units of work keep their promises on every backend: a reader never sees what an unfinished
unit wrote; a unit that fails leaves nothing behind, whatever it inserted or changed in any
store; a failed part of a unit rolls back alone where the store has savepoints; and the same
mistake raises the same typed error everywhere.

Isolation between concurrent units can only be shown by a store that runs them concurrently:
SQLite, PostgreSQL and a real MongoDB (`TTP_TEST_MONGODB_URL`, a replica set). The mongomock
stand-in for sessions runs one transaction at a time and makes every other thread wait for it,
so it could not tell an isolating store from one that is not: the concurrency tests leave it out
of their parameters. The other tests hold for it too (it restores the data of an aborted
transaction) and run on it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Callable

import pytest

from conftest import BACKENDS, all_stores
from stores import transaction
from test_repository_linkage import IDAT, OTHER_IDAT, STUDY, T0, _case, _filter, _records, _task
from ttp_gateway.backends import open_repository
from ttp_gateway.backends.base import Busy, Conflict, NotFound, Repository, StorageError, UnitOfWork
from ttp_gateway.core.keystore import KEYS, StoredApiKey
from ttp_gateway.plugins.dispatcher.store import LINKAGE, StudyRecord
from ttp_gateway.plugins.gpas.store import PSEUDONYMS, DomainRecord, PseudonymRow

DOMAIN = "patients"

# mongomock is not among these: its stand-in serialises transactions (see the module docstring).
ISOLATING = [backend for backend in BACKENDS if backend != "mongomock"]
isolating = pytest.mark.parametrize("storage_url", ISOLATING, indirect=True)
# The SQL backends offer savepoints; MongoDB transactions have none (`Repository.savepoints`).
SAVEPOINTING = [backend for backend in BACKENDS if backend in ("sqlite", "postgresql")]
savepointing = pytest.mark.parametrize("storage_url", SAVEPOINTING, indirect=True)
without_savepoints = pytest.mark.parametrize(
    "storage_url", [backend for backend in BACKENDS if backend not in SAVEPOINTING], indirect=True)


def _committed_state(repository: Repository) -> None:
    """A little of everything, committed: pseudonyms, a study with persons, filters and a key, an
    open clearing case with its tasks and sealed IDAT, an API key."""
    with transaction(repository, write=True) as tx:
        tx.put_domain(DomainRecord(DOMAIN, {"prefix": "P"}))
        tx.put_study(StudyRecord(STUDY, {"sites": ["site-1", "site-2"]}))
        tx.add_api_key(StoredApiKey("reader", "a" * 64, scopes={"domains": (DOMAIN,)}))
    with transaction(repository, write=True) as tx:
        tx.insert_pseudonyms(DOMAIN, [PseudonymRow("alice", 0, "P-1"), PseudonymRow("alice", 1, "P-2"),
                                      PseudonymRow("bob", 0, "P-3"), PseudonymRow("carol", 0, "P-4")])
        tx.lock_study(STUDY)
        anna, ben = tx.create_persons(STUDY, 2)
        tx.add_bloom_filters(STUDY, [(anna, "site-1", "v1", _filter(1)), (ben, "site-2", "v1", _filter(2))])
        tx.add_person_keys(STUDY, [("kvid-anna", anna)])
        tx.add_case(_case("case-1"))
        tx.add_tasks([_task("t-1"), _task("t-2", site="site-2")])
        tx.put_idat("case-1", "t-1", "site-1", IDAT)


def _change_everything(unit: UnitOfWork) -> None:
    """Inserts into every store and updates of every kind, each checked inside the unit."""
    gpas, linkage, keys = unit[PSEUDONYMS], unit[LINKAGE], unit[KEYS]
    # inserts
    assert gpas.put_domain(DomainRecord("new-domain")) is True
    assert gpas.insert_pseudonyms(DOMAIN, [PseudonymRow("dave", 0, "P-5")]) == {PseudonymRow("dave", 0, "P-5")}
    assert linkage.put_study(StudyRecord("new-study", {"sites": []})) is True
    linkage.lock_study(STUDY)
    new = linkage.create_persons(STUDY, 2)
    linkage.add_bloom_filters(STUDY, [(new[0], "site-1", "v1", _filter(3))])
    linkage.add_person_keys(STUDY, [("kvid-new", new[1])])
    linkage.add_case(_case("case-2"))
    linkage.add_tasks([_task("t-3", case="case-2")])
    linkage.put_idat("case-2", "t-3", "site-1", OTHER_IDAT)
    assert keys.add_api_key(StoredApiKey("writer", "b" * 64)) is True
    # updates and deletions
    assert gpas.put_domain(DomainRecord(DOMAIN, {"prefix": "Q"}, "changed")) is False
    assert gpas.delete_originals(DOMAIN, ["alice"]) == {"alice"}
    assert gpas.anonymize_originals(DOMAIN, ["bob"]) == {"bob"}
    assert linkage.put_study(StudyRecord(STUDY, {"sites": ["site-9"]})) is False
    anna = linkage.find_persons(STUDY, ["kvid-anna"])["kvid-anna"]
    linkage.replace_bloom_filters(STUDY, anna, "site-1", "v1", _filter(4))
    linkage.update_case_candidates("case-1", [])
    assert linkage.close_case("case-1", "decided", new[0]) is True
    linkage.set_task_status(["t-1"], "expired")
    linkage.complete_task("t-2", {"answered": True})
    assert linkage.expire_tasks(STUDY, T0 + timedelta(days=2)) == 1  # t-3
    linkage.delete_idat("case-1")
    # The unit reads its own writes.
    assert gpas.get_pseudonyms(DOMAIN, ["alice", "bob", "dave"]) == {"dave": "P-5"}
    assert gpas.get_originals(DOMAIN, ["P-3"]) == {"P-3": None}
    assert linkage.get_case("case-1").status == "decided"
    assert linkage.get_task("t-2").details == {"answered": True}
    assert linkage.get_idat("case-1") == {}
    assert [k.name for k in keys.get_api_keys()] == ["reader", "writer"]


def _assert_untouched(repository: Repository, before: dict[str, list[Any]]) -> None:
    assert _records(repository) == before
    with transaction(repository) as tx:
        assert tx.get_pseudonyms(DOMAIN, ["alice", "bob", "dave"]) == {"alice": "P-1", "bob": "P-3"}
        assert tx.get_case("case-1").status == "open"
        assert tx.get_idat("case-1") == {"t-1": IDAT}
        assert [t.id for t in tx.get_open_tasks(STUDY)] == ["t-1", "t-2"]
        assert [d.name for d in tx.get_domains()] == [DOMAIN]
        # A domain the failed unit created is not remembered by any cache either.
        with pytest.raises(NotFound):
            tx.count_pseudonyms("new-domain")


# --- (a) readers see committed data only --------------------------------------------------------
@isolating
def test_a_reader_never_sees_an_unfinished_unit(repository: Repository, storage_url: str) -> None:
    """A writer inserts and waits; readers in other threads, of this repository and of another
    one (another process), neither see its rows nor wait for it. Once it commits, they see all."""
    _committed_state(repository)
    originals = [f"patient-{i:03d}" for i in range(50)]
    rows = [PseudonymRow(original, 0, f"N-{original}") for original in originals]
    inserted, finish = threading.Event(), threading.Event()

    def writer() -> None:
        unit = repository.begin()
        try:
            assert unit[PSEUDONYMS].insert_pseudonyms(DOMAIN, rows) == set(rows)
            unit[PSEUDONYMS].put_domain(DomainRecord("fresh"))
            unit[LINKAGE].add_case(_case("case-2"))
            unit[LINKAGE].close_case("case-1", "aborted", None)
            inserted.set()
            assert finish.wait(30)
        except BaseException:
            unit.rollback()
            raise
        unit.commit()

    def read(repo: Repository) -> tuple[Any, ...]:
        with repo.read() as unit:
            gpas, linkage = unit[PSEUDONYMS], unit[LINKAGE]
            return (gpas.get_pseudonyms(DOMAIN, originals),
                    gpas.get_originals(DOMAIN, [r.pseudonym for r in rows]), gpas.count_pseudonyms(DOMAIN), [d.name for d in gpas.get_domains()],
                    linkage.get_case("case-2") is not None, linkage.get_case("case-1").status)

    second = open_repository(storage_url, all_stores())
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            writing = pool.submit(writer)
            try:
                assert inserted.wait(30)
                # A reader does not wait for the writer: a timeout here is a failure.
                during = [pool.submit(read, repo).result(timeout=10) for repo in (repository, second)]
            finally:
                finish.set()
            writing.result(timeout=30)
            after = [pool.submit(read, repo).result(timeout=10) for repo in (repository, second)]
    finally:
        second.close()
    assert during == [({}, {}, 4, [DOMAIN], False, "open")] * 2
    assert after == [({r.original: r.pseudonym for r in rows}, {r.pseudonym: r.original for r in rows},
                      4 + len(rows), ["fresh", DOMAIN], True, "aborted")] * 2


@isolating
def test_a_reader_never_sees_a_unit_that_rolls_back(repository: Repository, storage_url: str) -> None:
    _committed_state(repository)
    inserted, finish = threading.Event(), threading.Event()

    def writer() -> None:
        unit = repository.begin()
        try:
            _change_everything(unit)
            inserted.set()
            assert finish.wait(30)
        finally:
            unit.rollback()

    before = _records(repository)
    with ThreadPoolExecutor(max_workers=1) as pool:
        writing = pool.submit(writer)
        try:
            assert inserted.wait(30)
            with repository.read() as unit:
                assert unit[PSEUDONYMS].get_pseudonyms(DOMAIN, ["alice", "dave"]) == {"alice": "P-1"}
                assert unit[LINKAGE].get_idat("case-1") == {"t-1": IDAT}
                assert unit[LINKAGE].get_case("case-2") is None
                assert [k.name for k in unit[KEYS].get_api_keys()] == ["reader"]
        finally:
            finish.set()
        writing.result(timeout=30)
    _assert_untouched(repository, before)


# --- (b) a failed unit leaves nothing -----------------------------------------------------------
def test_rollback_undoes_inserts_and_updates_of_every_store(repository: Repository) -> None:
    _committed_state(repository)
    before = _records(repository)
    unit = repository.begin()
    _change_everything(unit)
    unit.rollback()
    _assert_untouched(repository, before)
    # The unit is over: a second rollback is harmless, a commit refused.
    unit.rollback()
    with pytest.raises(StorageError):
        unit.commit()


def test_an_exception_in_write_leaves_nothing(repository: Repository) -> None:
    _committed_state(repository)
    before = _records(repository)
    runs = []

    def work(unit: UnitOfWork) -> None:
        runs.append(1)
        _change_everything(unit)
        raise RuntimeError("the request failed after writing")

    with pytest.raises(RuntimeError):
        repository.write(work)
    assert len(runs) == 1  # only Busy runs a unit again
    _assert_untouched(repository, before)
    # And what failed can be done, in full, by the next unit.
    repository.write(_change_everything)
    with transaction(repository) as tx:
        assert tx.get_case("case-1").status == "decided"
        assert tx.get_idat("case-2") == {"t-3": OTHER_IDAT}
        assert tx.count_pseudonyms("new-domain") == 0


def test_a_busy_unit_is_run_again_from_scratch(repository: Repository) -> None:
    """`write` runs a unit that met contention again; what the first run wrote is gone."""
    _committed_state(repository)
    runs = []

    def work(unit: UnitOfWork) -> int:
        runs.append(1)
        unit[LINKAGE].lock_study(STUDY)
        [person] = unit[LINKAGE].create_persons(STUDY, 1)
        unit[LINKAGE].add_case(_case(f"case-run-{len(runs)}"))
        if len(runs) == 1:
            raise Busy("contention, as a deadlock or write conflict would report it")
        return person

    person = repository.write(work)
    assert len(runs) == 2
    with transaction(repository) as tx:
        assert tx.get_case("case-run-1") is None
        assert tx.get_case("case-run-2") is not None
    with transaction(repository, write=True) as tx:
        tx.lock_study(STUDY)
        assert tx.create_persons(STUDY, 1) == [person + 1]


def test_after_commit_runs_only_for_a_committed_unit(repository: Repository) -> None:
    calls: list[str] = []
    failed = repository.begin()
    failed.after_commit(lambda: calls.append("failed"))
    failed.rollback()
    committed = repository.begin()
    committed.after_commit(lambda: calls.append("committed"))
    assert calls == []
    committed.commit()
    assert calls == ["committed"]
    with repository.read() as reader, pytest.raises(StorageError):
        reader.after_commit(lambda: calls.append("read"))


# --- (c) savepoints -----------------------------------------------------------------------------
@savepointing
def test_a_failed_part_rolls_back_alone(repository: Repository) -> None:
    _committed_state(repository)
    assert repository.savepoints is True
    unit = repository.begin()
    try:
        gpas, linkage = unit[PSEUDONYMS], unit[LINKAGE]
        gpas.insert_pseudonyms(DOMAIN, [PseudonymRow("dave", 0, "P-5")])
        with pytest.raises(RuntimeError), unit.savepoint():
            gpas.insert_pseudonyms(DOMAIN, [PseudonymRow("erin", 0, "P-6")])
            gpas.delete_originals(DOMAIN, ["carol"])
            linkage.add_case(_case("case-2"))
            linkage.close_case("case-1", "decided", 1)
            linkage.delete_idat("case-1")
            raise RuntimeError("this entry of the batch failed")
        # A part that fails on the store's own error (here a duplicate case id, which aborts the
        # whole transaction on PostgreSQL without a savepoint) leaves the unit usable as well.
        with pytest.raises(Conflict), unit.savepoint():
            linkage.add_tasks([_task("t-4")])
            linkage.add_case(_case("case-1"))
        # Nested parts: the inner one fails alone, the outer one stays.
        with unit.savepoint():
            gpas.insert_pseudonyms(DOMAIN, [PseudonymRow("fred", 0, "P-7")])
            with pytest.raises(NotFound), unit.savepoint():
                linkage.add_case(_case("case-3"))
                linkage.lock_study("nowhere")
        assert gpas.get_pseudonyms(DOMAIN, ["carol", "dave", "erin", "fred"]) == {
            "carol": "P-4", "dave": "P-5", "fred": "P-7"}
        assert linkage.get_case("case-1").status == "open"
        assert linkage.get_case("case-2") is None and linkage.get_case("case-3") is None
        assert linkage.get_task("t-4") is None
        assert linkage.get_idat("case-1") == {"t-1": IDAT}
    except BaseException:
        unit.rollback()
        raise
    unit.commit()
    with transaction(repository) as tx:
        assert tx.get_pseudonyms(DOMAIN, ["carol", "dave", "erin", "fred"]) == {
            "carol": "P-4", "dave": "P-5", "fred": "P-7"}
        assert tx.get_case("case-1").status == "open"
        assert tx.get_case("case-2") is None and tx.get_case("case-3") is None
        assert tx.get_idat("case-1") == {"t-1": IDAT}


@without_savepoints
def test_without_savepoints_a_failed_part_fails_the_unit(repository: Repository) -> None:
    """MongoDB transactions have no savepoints: the error of a failed part reaches the unit's
    owner as it was raised, and rolling the unit back undoes every part; the owner then runs the
    unit again without the failed part (as the batch executor does)."""
    _committed_state(repository)
    assert repository.savepoints is False
    before = _records(repository)
    unit = repository.begin()
    try:
        unit[PSEUDONYMS].insert_pseudonyms(DOMAIN, [PseudonymRow("dave", 0, "P-5")])
        with pytest.raises(Conflict), unit.savepoint():
            unit[LINKAGE].add_case(_case("case-2"))
            unit[LINKAGE].add_case(_case("case-1"))
    finally:
        unit.rollback()
    _assert_untouched(repository, before)


# --- (d) one mistake, one typed error -----------------------------------------------------------
CONFLICTS: dict[str, Callable[[UnitOfWork], None]] = {
    "case id": lambda unit: unit[LINKAGE].add_case(_case("case-1", site="site-2")),
    "case id twice in the unit": lambda unit: (unit[LINKAGE].add_case(_case("case-9")),
                                               unit[LINKAGE].add_case(_case("case-9"))),
    "task id": lambda unit: unit[LINKAGE].add_tasks([_task("t-5"), _task("t-1")]),
    "task id twice in a batch": lambda unit: unit[LINKAGE].add_tasks([_task("t-5"), _task("t-5")]),
    "idat of a task": lambda unit: unit[LINKAGE].put_idat("case-1", "t-1", "site-1", OTHER_IDAT),
}


@pytest.mark.parametrize("mistake", list(CONFLICTS), ids=list(CONFLICTS))
def test_a_broken_unique_key_is_a_conflict_everywhere(repository: Repository, mistake: str) -> None:
    _committed_state(repository)
    before = _records(repository)
    runs = []

    def work(unit: UnitOfWork) -> None:
        runs.append(1)
        unit[LINKAGE].add_case(_case("case-2"))  # written before the mistake, undone with it
        CONFLICTS[mistake](unit)

    with pytest.raises(Conflict) as raised:
        repository.write(work)
    assert len(runs) == 1  # a conflict is not contention: not run again
    assert not any(value in str(raised.value) for value in ("case-1", "case-9", "t-1", "t-5", "site-"))
    assert _records(repository) == before


NOT_FOUND: dict[str, Callable[[UnitOfWork], Any]] = {
    "pseudonyms of an unknown domain": lambda unit: unit[PSEUDONYMS].get_pseudonyms("nowhere", ["alice"]),
    "insert into an unknown domain": lambda unit: unit[PSEUDONYMS].insert_pseudonyms(
        "nowhere", [PseudonymRow("alice", 0, "P-1")]),
    "anonymise in an unknown domain": lambda unit: unit[PSEUDONYMS].anonymize_originals("nowhere", ["alice"]),
    "lock an unknown study": lambda unit: unit[LINKAGE].lock_study("nowhere"),
    "persons of an unknown study": lambda unit: unit[LINKAGE].create_persons("nowhere", 1),
    "filters of an unknown study": lambda unit: unit[LINKAGE].add_bloom_filters(
        "nowhere", [(1, "site-1", "v1", _filter(1))]),
    "replace in an unknown study": lambda unit: unit[LINKAGE].replace_bloom_filters(
        "nowhere", 1, "site-1", "v1", _filter(1)),
}


@pytest.mark.parametrize("mistake", list(NOT_FOUND), ids=list(NOT_FOUND))
def test_naming_an_unknown_domain_or_study_is_not_found_everywhere(repository: Repository,
                                                                   mistake: str) -> None:
    _committed_state(repository)
    before = _records(repository)
    runs = []

    def work(unit: UnitOfWork) -> None:
        runs.append(1)
        unit[PSEUDONYMS].insert_pseudonyms(DOMAIN, [PseudonymRow("dave", 0, "P-5")])
        NOT_FOUND[mistake](unit)

    with pytest.raises(NotFound) as raised:
        repository.write(work)
    assert len(runs) == 1
    assert not any(value in str(raised.value) for value in ("alice", "P-1", "dave", "P-5"))
    assert _records(repository) == before


def test_reads_of_an_unknown_domain_are_not_found(repository: Repository) -> None:
    _committed_state(repository)
    with repository.read() as unit:
        for read in (lambda: unit[PSEUDONYMS].get_pseudonyms("nowhere", ["alice"]),
                     lambda: unit[PSEUDONYMS].get_originals("nowhere", ["P-1"]),
                     lambda: unit[PSEUDONYMS].count_pseudonyms("nowhere")):
            with pytest.raises(NotFound):
                read()
        # The unit goes on after a NotFound: reads are not a transaction that it could break.
        assert unit[PSEUDONYMS].get_pseudonyms(DOMAIN, ["alice"]) == {"alice": "P-1"}
