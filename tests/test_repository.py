"""The repository contract: every backend behaves alike, checked through the `repository` fixture.

Each test runs once per backend (SQLite, PostgreSQL, mongomock, and MongoDB when configured).
The sizes of large batches are reduced on mongomock only: it checks a unique index by scanning
the collection for every inserted document, so inserting n documents takes time quadratic in n;
what large batches probe (SQL parameter limits, pymongo splitting a batch into several
messages) does not exist in it anyway. The tests at the end check MongoDB specifics.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BACKENDS, all_stores
from stores import transaction
from ttp_gateway.backends import open_repository
from ttp_gateway.backends.base import Conflict, NotFound, Repository, StorageError, Unavailable, UnitOfWork
from ttp_gateway.core.keystore import StoredApiKey
from ttp_gateway.plugins.gpas.store import PSEUDONYMS, DomainRecord, PseudonymRow

DOMAIN = "study-patients"


def _size(storage_url: str, full: int) -> int:
    """`full` items, or a twentieth of them on mongomock (see the module docstring)."""
    return max(full // 20, 10) if storage_url.startswith("mongomock://") else full


def _create_domain(repository: Repository, name: str = DOMAIN) -> None:
    with transaction(repository, write=True) as tx:
        tx.put_domain(DomainRecord(name=name, settings={"prefix": "P"}))


def _insert(repository: Repository, rows: Iterable[PseudonymRow], domain: str = DOMAIN) -> set[PseudonymRow]:
    with transaction(repository, write=True) as tx:
        return tx.insert_pseudonyms(domain, list(rows))


def _rows(originals: Iterable[str], tag: str = "psn") -> list[PseudonymRow]:
    return [PseudonymRow(original, 0, f"{tag}-{original}") for original in originals]


def _all_pseudonyms(repository: Repository, originals: list[str],
                    domain: str = DOMAIN) -> dict[str, list[PseudonymRow]]:
    with transaction(repository) as tx:
        return tx.get_pseudonym_rows(domain, originals)


# --- domains ------------------------------------------------------------------------------------
def test_put_domain_creates_then_replaces(repository: Repository) -> None:
    with transaction(repository) as tx:
        assert tx.get_domains() == []
    with transaction(repository, write=True) as tx:
        assert tx.put_domain(DomainRecord("visits", {"alphabet": "0123456789"}, "first")) is True
        assert tx.put_domain(DomainRecord("patients", {"rules": {"length": 8, "check": ["luhn"]}})) is True
    with transaction(repository, write=True) as tx:
        assert tx.put_domain(DomainRecord("visits", {"alphabet": "ABC"}, "second")) is False
    with transaction(repository) as tx:
        assert tx.get_domains() == [
            DomainRecord("patients", {"rules": {"length": 8, "check": ["luhn"]}}, ""),
            DomainRecord("visits", {"alphabet": "ABC"}, "second"),
        ]


# --- pseudonyms ---------------------------------------------------------------------------------
def test_insert_and_read_back_batches_of_thousands(repository: Repository, storage_url: str) -> None:
    _create_domain(repository)
    originals = [f"patient-{i:06d}" for i in range(_size(storage_url, 5000))]
    rows = _rows(originals)
    assert _insert(repository, rows) == set(rows)

    unknown = ["nobody-1", "nobody-2"]
    with transaction(repository, write=True) as tx:
        assert tx.get_pseudonyms(DOMAIN, originals + unknown) == {r.original: r.pseudonym for r in rows}
        assert tx.get_originals(DOMAIN, [r.pseudonym for r in rows] + unknown) == {
            r.pseudonym: r.original for r in rows}
        assert tx.count_pseudonyms(DOMAIN) == len(rows)
        # Inserting the same batch again stores nothing.
        assert tx.insert_pseudonyms(DOMAIN, rows) == set()
        assert tx.count_pseudonyms(DOMAIN) == len(rows)


def test_empty_batches(repository: Repository) -> None:
    _create_domain(repository)
    with transaction(repository, write=True) as tx:
        assert tx.insert_pseudonyms(DOMAIN, []) == set()
        assert tx.get_pseudonyms(DOMAIN, []) == {}
        assert tx.get_pseudonym_rows(DOMAIN, []) == {}
        assert tx.get_originals(DOMAIN, []) == {}
        assert tx.delete_originals(DOMAIN, []) == set()
        assert tx.anonymize_originals(DOMAIN, []) == set()
        assert tx.count_pseudonyms(DOMAIN) == 0


def test_insert_skips_rows_that_conflict_with_stored_ones(repository: Repository) -> None:
    _create_domain(repository)
    assert _insert(repository, [PseudonymRow("alice", 0, "P-1")]) == {PseudonymRow("alice", 0, "P-1")}

    stored = _insert(repository, [
        PseudonymRow("alice", 0, "P-2"),  # the original has its number-0 pseudonym
        PseudonymRow("bob", 0, "P-1"),    # the pseudonym is taken
        PseudonymRow("carol", 0, "P-3"),
    ])
    assert stored == {PseudonymRow("carol", 0, "P-3")}
    with transaction(repository) as tx:
        assert tx.get_pseudonyms(DOMAIN, ["alice", "bob", "carol"]) == {"alice": "P-1", "carol": "P-3"}
        assert tx.get_originals(DOMAIN, ["P-1", "P-2", "P-3"]) == {"P-1": "alice", "P-3": "carol"}


def test_insert_skips_rows_that_conflict_with_earlier_rows_of_the_batch(repository: Repository) -> None:
    _create_domain(repository)
    stored = _insert(repository, [
        PseudonymRow("alice", 0, "P-1"),
        PseudonymRow("alice", 0, "P-2"),  # same original and number as the first row
        PseudonymRow("bob", 0, "P-1"),    # same pseudonym as the first row
        PseudonymRow("bob", 0, "P-3"),
    ])
    assert stored == {PseudonymRow("alice", 0, "P-1"), PseudonymRow("bob", 0, "P-3")}
    with transaction(repository) as tx:
        assert tx.get_pseudonyms(DOMAIN, ["alice", "bob"]) == {"alice": "P-1", "bob": "P-3"}


def test_an_earlier_row_that_was_not_stored_blocks_nothing(repository: Repository) -> None:
    """As with SQL's row-by-row ON CONFLICT DO NOTHING: a row conflicts with an earlier row of
    its batch only if that earlier row was stored."""
    _create_domain(repository)
    _insert(repository, [PseudonymRow("alice", 0, "P-1")])
    stored = _insert(repository, [
        PseudonymRow("alice", 0, "P-2"),  # skipped: alice has P-1
        PseudonymRow("dave", 0, "P-2"),   # stored: P-2 is free, the row before was skipped
        PseudonymRow("dave", 0, "P-3"),   # skipped: dave got P-2 just before
    ])
    assert stored == {PseudonymRow("dave", 0, "P-2")}
    with transaction(repository) as tx:
        assert tx.get_pseudonyms(DOMAIN, ["alice", "dave"]) == {"alice": "P-1", "dave": "P-2"}


@st.composite
def _batches(draw: st.DrawFn) -> list[list[PseudonymRow]]:
    row = st.builds(PseudonymRow, original=st.sampled_from(["ann", "ben", "cem", None]),
                    number=st.integers(0, 2), pseudonym=st.sampled_from(["P-1", "P-2", "P-3", "P-4", "P-5"]))
    return draw(st.lists(st.lists(row, max_size=10), min_size=1, max_size=3))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=_batches())
def test_insert_matches_row_by_row_model(repository: Repository, batches: list[list[PseudonymRow]]) -> None:
    """Any batches: what is stored is what inserting row by row, skipping conflicts, stores."""
    domain = f"model-{uuid.uuid4().hex}"
    _create_domain(repository, domain)
    model: list[PseudonymRow] = []
    for batch in batches:
        expected: set[PseudonymRow] = set()
        for row in batch:
            if any(row.pseudonym == m.pseudonym or (row.original is not None and
                                                    (row.original, row.number) == (m.original, m.number))
                   for m in model):
                continue
            model.append(row)
            expected.add(row)
        assert _insert(repository, batch, domain) == expected
    with transaction(repository) as tx:
        assert tx.get_originals(domain, ["P-1", "P-2", "P-3", "P-4", "P-5"]) == {
            m.pseudonym: m.original for m in model}
        assert tx.count_pseudonyms(domain) == len(model)


def test_pseudonym_rows_are_ordered_by_number(repository: Repository) -> None:
    _create_domain(repository)
    _insert(repository, [PseudonymRow("alice", 2, "P-c"), PseudonymRow("alice", 0, "P-a"),
                         PseudonymRow("bob", 0, "P-x"), PseudonymRow("alice", 1, "P-b")])
    assert _insert(repository, [PseudonymRow("alice", 1, "P-d")]) == set()  # number 1 is taken
    with transaction(repository) as tx:
        assert tx.get_pseudonym_rows(DOMAIN, ["alice", "bob", "carol"]) == {
            "alice": [PseudonymRow("alice", 0, "P-a"), PseudonymRow("alice", 1, "P-b"),
                      PseudonymRow("alice", 2, "P-c")],
            "bob": [PseudonymRow("bob", 0, "P-x")],
        }
        # get_pseudonyms answers with number 0 only.
        assert tx.get_pseudonyms(DOMAIN, ["alice"]) == {"alice": "P-a"}
        assert tx.get_originals(DOMAIN, ["P-b", "P-c"]) == {"P-b": "alice", "P-c": "alice"}


def test_domains_keep_their_pseudonyms_apart(repository: Repository) -> None:
    _create_domain(repository, "patients")
    _create_domain(repository, "samples")
    alice = PseudonymRow("alice", 0, "P-1")
    assert _insert(repository, [alice], "patients") == {alice}
    # The same original and the same pseudonym in another domain do not conflict.
    both = {PseudonymRow("alice", 0, "P-1"), PseudonymRow("bob", 0, "P-2")}
    assert _insert(repository, sorted(both, key=str), "samples") == both
    with transaction(repository, write=True) as tx:
        assert tx.count_pseudonyms("patients") == 1
        assert tx.count_pseudonyms("samples") == 2
        assert tx.get_pseudonyms("patients", ["alice", "bob"]) == {"alice": "P-1"}
        assert tx.delete_originals("samples", ["alice"]) == {"alice"}
    with transaction(repository) as tx:
        assert tx.get_pseudonyms("patients", ["alice"]) == {"alice": "P-1"}


def test_delete_originals(repository: Repository) -> None:
    _create_domain(repository)
    _insert(repository, [PseudonymRow("alice", 0, "P-1"), PseudonymRow("alice", 1, "P-2"),
                         PseudonymRow("bob", 0, "P-3"), PseudonymRow("carol", 0, "P-4")])
    with transaction(repository, write=True) as tx:
        assert tx.delete_originals(DOMAIN, ["alice", "bob", "nobody"]) == {"alice", "bob"}
    with transaction(repository, write=True) as tx:
        assert tx.delete_originals(DOMAIN, ["alice"]) == set()
        assert tx.get_pseudonym_rows(DOMAIN, ["alice", "bob", "carol"]) == {
            "carol": [PseudonymRow("carol", 0, "P-4")]}
        assert tx.get_originals(DOMAIN, ["P-1", "P-2", "P-3", "P-4"]) == {"P-4": "carol"}
        assert tx.count_pseudonyms(DOMAIN) == 1
        # Deleted pseudonyms and originals are free again.
        again = PseudonymRow("alice", 0, "P-3")
        assert tx.insert_pseudonyms(DOMAIN, [again]) == {again}


def test_anonymize_originals(repository: Repository) -> None:
    _create_domain(repository)
    _insert(repository, [PseudonymRow("alice", 0, "P-1"), PseudonymRow("alice", 1, "P-2"),
                         PseudonymRow("bob", 0, "P-3")])
    with transaction(repository, write=True) as tx:
        assert tx.anonymize_originals(DOMAIN, ["alice", "nobody"]) == {"alice"}
    with transaction(repository, write=True) as tx:
        assert tx.anonymize_originals(DOMAIN, ["alice"]) == set()
        # The pseudonyms stay, without their original.
        assert tx.get_originals(DOMAIN, ["P-1", "P-2", "P-3", "P-9"]) == {
            "P-1": None, "P-2": None, "P-3": "bob"}
        assert tx.get_pseudonyms(DOMAIN, ["alice", "bob"]) == {"bob": "P-3"}
        assert tx.get_pseudonym_rows(DOMAIN, ["alice"]) == {}
        assert tx.count_pseudonyms(DOMAIN) == 3
        # The original may be pseudonymised anew; the old pseudonyms stay taken.
        anew = PseudonymRow("alice", 0, "P-5")
        assert tx.insert_pseudonyms(DOMAIN, [PseudonymRow("alice", 0, "P-1"), anew]) == {anew}
    with transaction(repository) as tx:
        assert tx.get_pseudonyms(DOMAIN, ["alice"]) == {"alice": "P-5"}
        assert tx.get_originals(DOMAIN, ["P-1", "P-5"]) == {"P-1": None, "P-5": "alice"}
        assert tx.count_pseudonyms(DOMAIN) == 4


def test_anonymised_rows_do_not_conflict_with_each_other(repository: Repository) -> None:
    """Several anonymised rows with the same number coexist: a missing original is no value."""
    _create_domain(repository)
    for pseudonym in ("P-1", "P-2", "P-3"):
        _insert(repository, [PseudonymRow("alice", 0, pseudonym)])
        with transaction(repository, write=True) as tx:
            assert tx.anonymize_originals(DOMAIN, ["alice"]) == {"alice"}
    assert _insert(repository, [PseudonymRow(None, 0, "P-4")]) == {PseudonymRow(None, 0, "P-4")}
    with transaction(repository) as tx:
        assert tx.get_originals(DOMAIN, ["P-1", "P-2", "P-3", "P-4"]) == dict.fromkeys(
            ["P-1", "P-2", "P-3", "P-4"], None)


@pytest.mark.parametrize("call", [
    lambda tx: tx.get_pseudonyms("nowhere", ["alice"]),
    lambda tx: tx.get_pseudonym_rows("nowhere", ["alice"]),
    lambda tx: tx.get_originals("nowhere", ["P-1"]),
    lambda tx: tx.insert_pseudonyms("nowhere", [PseudonymRow("alice", 0, "P-1")]),
    lambda tx: tx.delete_originals("nowhere", ["alice"]),
    lambda tx: tx.anonymize_originals("nowhere", ["alice"]),
    lambda tx: tx.count_pseudonyms("nowhere"),
], ids=["get_pseudonyms", "get_pseudonym_rows", "get_originals", "insert_pseudonyms",
        "delete_originals", "anonymize_originals", "count_pseudonyms"])
def test_unknown_domain(repository: Repository, call) -> None:
    _create_domain(repository)
    with pytest.raises(NotFound) as raised, transaction(repository, write=True) as tx:
        call(tx)
    assert isinstance(raised.value, StorageError)
    assert "alice" not in str(raised.value) and "P-1" not in str(raised.value)


# --- API keys -----------------------------------------------------------------------------------
def test_api_keys(repository: Repository) -> None:
    reader = StoredApiKey("reader", "a" * 64, scopes={
        "endpoints": ("gpas",), "operations": ("pseudonymize", "depseudonymize"), "domains": ("patients",),
        "studies": ()})
    admin = StoredApiKey("admin", "b" * 64)
    with transaction(repository, write=True) as tx:
        assert tx.get_api_keys() == []
        assert tx.add_api_key(reader) is True
        assert tx.add_api_key(admin) is True
    with transaction(repository, write=True) as tx:
        assert tx.add_api_key(StoredApiKey("reader", "c" * 64)) is False  # name taken
        assert tx.add_api_key(StoredApiKey("other", "a" * 64)) is False   # digest taken
    with transaction(repository) as tx:
        assert tx.get_api_keys() == [admin, reader]
        assert tx.get_api_keys()[1].as_settings() == {
            "name": "reader", "key_sha256": "a" * 64, "endpoints": ["gpas"],
            "operations": ["pseudonymize", "depseudonymize"], "domains": ["patients"], "studies": []}


# --- units of work and repositories ---------------------------------------------------------------
def test_failed_transaction_leaves_no_new_pseudonyms(repository: Repository, storage_url: str) -> None:
    _create_domain(repository)
    committed = _rows(f"patient-{i}" for i in range(10))
    _insert(repository, committed)
    new = _rows((f"patient-{i}" for i in range(5, _size(storage_url, 2000))), tag="new")

    with pytest.raises(RuntimeError), transaction(repository, write=True) as tx:
        stored = tx.insert_pseudonyms(DOMAIN, new)
        assert len(stored) == len(new) - 5  # the first five originals have their pseudonyms
        assert tx.put_domain(DomainRecord("created-then-failed")) is True
        assert tx.add_api_key(StoredApiKey("created-then-failed", "d" * 64)) is True
        raise RuntimeError("the request failed after storing")

    with transaction(repository) as tx:
        assert tx.count_pseudonyms(DOMAIN) == len(committed)
        assert tx.get_pseudonyms(DOMAIN, [r.original for r in new]) == {
            r.original: r.pseudonym for r in committed[5:]}
        assert [d.name for d in tx.get_domains()] == [DOMAIN]
        assert tx.get_api_keys() == []
    # What failed may be done again.
    with transaction(repository, write=True) as tx:
        assert tx.insert_pseudonyms(DOMAIN, new) == set(new[5:])
        assert tx.add_api_key(StoredApiKey("created-then-failed", "d" * 64)) is True


def test_domain_created_in_failed_transaction_stays_unknown(repository: Repository) -> None:
    """Also after the repository used the domain inside the failed transaction (and may cache it)."""
    with pytest.raises(RuntimeError), transaction(repository, write=True) as tx:
        tx.put_domain(DomainRecord("short-lived"))
        tx.insert_pseudonyms("short-lived", [PseudonymRow("alice", 0, "P-1")])
        raise RuntimeError("the request failed")
    with pytest.raises(NotFound), transaction(repository) as tx:
        tx.count_pseudonyms("short-lived")
    with pytest.raises(NotFound), transaction(repository, write=True) as tx:
        tx.insert_pseudonyms("short-lived", [PseudonymRow("alice", 0, "P-1")])


def test_write_runs_the_unit_and_commits(repository: Repository) -> None:
    _create_domain(repository)

    def work(unit: UnitOfWork) -> set[PseudonymRow]:
        return unit[PSEUDONYMS].insert_pseudonyms(DOMAIN, [PseudonymRow("alice", 0, "P-1")])

    assert repository.write(work) == {PseudonymRow("alice", 0, "P-1")}
    assert repository.write(work) == set()
    with repository.read() as unit:
        assert unit.write is False
        assert unit[PSEUDONYMS] is unit[PSEUDONYMS]  # opened once per unit
        assert unit[PSEUDONYMS].get_pseudonyms(DOMAIN, ["alice"]) == {"alice": "P-1"}


def test_an_ended_unit_opens_no_store(repository: Repository) -> None:
    unit = repository.begin()
    unit.commit()
    with pytest.raises(StorageError):
        unit[PSEUDONYMS]
    with pytest.raises(StorageError):
        unit.commit()
    unit.rollback()  # harmless once ended
    with repository.read() as reader:
        pass
    with pytest.raises(StorageError):
        reader[PSEUDONYMS]


def test_second_repository_on_the_same_url_sees_committed_data(repository: Repository,
                                                               storage_url: str) -> None:
    _create_domain(repository)
    _insert(repository, [PseudonymRow("alice", 0, "P-1")])
    with transaction(repository, write=True) as tx:
        tx.add_api_key(StoredApiKey("reader", "a" * 64))

    other = open_repository(storage_url, all_stores())
    try:
        with transaction(other, write=True) as tx:
            assert [d.name for d in tx.get_domains()] == [DOMAIN]
            assert tx.get_pseudonyms(DOMAIN, ["alice"]) == {"alice": "P-1"}
            assert [k.name for k in tx.get_api_keys()] == ["reader"]
            bob = PseudonymRow("bob", 0, "P-2")
            assert tx.insert_pseudonyms(DOMAIN, [bob]) == {bob}
    finally:
        other.close()
    with transaction(repository) as tx:
        assert tx.get_originals(DOMAIN, ["P-2"]) == {"P-2": "bob"}


def test_migrate_twice_is_harmless(repository: Repository, storage_url: str) -> None:
    _create_domain(repository)
    _insert(repository, [PseudonymRow("alice", 0, "P-1")])
    repository.migrate()
    other = open_repository(storage_url, all_stores())
    try:
        other.migrate()
    finally:
        other.close()
    with transaction(repository, write=True) as tx:
        assert tx.get_pseudonyms(DOMAIN, ["alice"]) == {"alice": "P-1"}
        # The unique keys still hold.
        conflicting = [PseudonymRow("alice", 0, "P-2"), PseudonymRow("bob", 0, "P-1")]
        assert tx.insert_pseudonyms(DOMAIN, conflicting) == set()


def test_ping(repository: Repository) -> None:
    repository.ping()


def test_concurrent_writers_agree_on_one_pseudonym_per_original(repository: Repository,
                                                                storage_url: str) -> None:
    """Two writers, as two replicas would, pseudonymise the same originals at the same time,
    each proposing its own pseudonyms, chunk by chunk in opposite orders so that they collide.
    Every original ends with one pseudonym, which each writer read back, and no pseudonym is
    claimed by both. A writer whose unit could not be serialised runs it again (`write`)."""
    _create_domain(repository)
    originals = [f"patient-{i:05d}" for i in range(_size(storage_url, 2000))]
    chunk = len(originals) // 20
    chunks = [originals[i:i + chunk] for i in range(0, len(originals), chunk)]
    start = threading.Barrier(2)

    def writer(repo: Repository, tag: str,
               order: list[list[str]]) -> tuple[set[PseudonymRow], dict[str, str]]:
        stored: set[PseudonymRow] = set()
        seen: dict[str, str] = {}
        start.wait()
        for part in order:
            def work(unit: UnitOfWork, part: list[str] = part) -> tuple[set[PseudonymRow], dict[str, str]]:
                store = unit[PSEUDONYMS]
                return store.insert_pseudonyms(DOMAIN, _rows(part, tag)), store.get_pseudonyms(DOMAIN, part)

            inserted, read_back = repo.write(work)  # what a unit run again stored counts once
            stored |= inserted
            seen.update(read_back)
        return stored, seen

    second = open_repository(storage_url, all_stores())
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            forward = pool.submit(writer, repository, "fwd", chunks)
            backward = pool.submit(writer, second, "bwd", chunks[::-1])
            stored_forward, seen_forward = forward.result(timeout=300)
            stored_backward, seen_backward = backward.result(timeout=300)
    finally:
        second.close()

    rows = _all_pseudonyms(repository, originals)
    assert sorted(rows) == originals
    assert all(len(r) == 1 and r[0].number == 0 for r in rows.values())
    assert not stored_forward & stored_backward
    assert stored_forward | stored_backward == {r[0] for r in rows.values()}
    final = {original: r[0].pseudonym for original, r in rows.items()}
    assert seen_forward == seen_backward == final
    with transaction(repository) as tx:
        assert tx.count_pseudonyms(DOMAIN) == len(originals)


# --- MongoDB specifics ----------------------------------------------------------------------------
MONGO_BACKENDS = [b for b in BACKENDS if b.startswith("mongo")]
mongo_only = pytest.mark.parametrize("storage_url", MONGO_BACKENDS, indirect=True)


@mongo_only
def test_mongo_indexes_of_every_store(repository: Repository) -> None:
    """Every index a store declares exists, with its keys, uniqueness and partial filter."""
    declared = 0
    for definition in all_stores():
        for collection, indexes in definition.mongo.indexes.items():
            assert collection.startswith(definition.key.name + "_")
            stored = repository.database[collection].index_information()
            for index in indexes:
                assert [tuple(key) for key in stored[index.name]["key"]] == [tuple(k) for k in index.keys]
                assert stored[index.name].get("unique", False) == index.unique
                assert stored[index.name].get("partialFilterExpression") == (
                    None if index.partial is None else dict(index.partial))
                declared += 1
    assert declared >= 10
    pseudonym_indexes = repository.database["gpas_pseudonyms"].index_information()
    assert pseudonym_indexes["original_number_per_domain"]["partialFilterExpression"] == {
        "original": {"$type": "string"}}
    api_key_indexes = repository.database["core_api_keys"].index_information()
    assert api_key_indexes["api_key_name"]["unique"] and api_key_indexes["api_key_digest"]["unique"]


@mongo_only
def test_mongo_documents_are_compact(repository: Repository) -> None:
    _create_domain(repository)
    _insert(repository, [PseudonymRow("alice", 0, "P-1"), PseudonymRow("bob", 1, "P-2")])
    with transaction(repository, write=True) as tx:
        tx.anonymize_originals(DOMAIN, ["alice"])
    pseudonyms = repository.database["gpas_pseudonyms"]
    assert pseudonyms.find_one({"pseudonym": "P-1"}, {"_id": 0}) == {"domain": DOMAIN, "pseudonym": "P-1",
                                                                     "number": 0}
    assert pseudonyms.find_one({"pseudonym": "P-2"}, {"_id": 0}) == {"domain": DOMAIN, "pseudonym": "P-2",
                                                                     "number": 1, "original": "bob"}
    assert repository.database["gpas_domains"].find_one({}, {"_id": 0}) == {
        "name": DOMAIN, "settings": {"prefix": "P"}, "description": ""}


def _insert_many_class(storage_url: str) -> Any:
    """The collection class whose `insert_many` the MongoDB backend under test calls in the end."""
    if storage_url.startswith("mongomock://"):
        import mongomock

        return mongomock.collection.Collection
    import pymongo.collection

    return pymongo.collection.Collection


@mongo_only
def test_mongo_write_failure_hides_values_and_is_rolled_back(repository: Repository, storage_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A write error other than a duplicate key becomes a StorageError naming no value, and what
    the failed write did store is undone with the rest of the unit."""
    from pymongo.errors import BulkWriteError

    _create_domain(repository)
    cls = _insert_many_class(storage_url)
    insert_many = cls.insert_many

    def half_failing_insert(self: Any, documents: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        if self.name != "gpas_pseudonyms":
            return insert_many(self, documents, *args, **kwargs)
        insert_many(self, documents[:1], *args, **kwargs)
        raise BulkWriteError({"writeErrors": [{"index": 1, "code": 121, "op": documents[1],
                                               "errmsg": f"validation failed for {documents[1]}"}],
                              "nInserted": 1})

    monkeypatch.setattr(cls, "insert_many", half_failing_insert)
    with pytest.raises(StorageError) as raised, transaction(repository, write=True) as tx:
        tx.insert_pseudonyms(DOMAIN, [PseudonymRow("alice", 0, "P-1"), PseudonymRow("bob", 0, "P-2")])
    assert not isinstance(raised.value, (Conflict, Unavailable))  # neither a duplicate nor contention
    message = str(raised.value)
    assert "BulkWriteError" in message
    assert not any(value in message for value in ("alice", "bob", "P-1", "P-2"))
    monkeypatch.undo()
    with transaction(repository) as tx:
        assert tx.count_pseudonyms(DOMAIN) == 0
        assert tx.get_originals(DOMAIN, ["P-1", "P-2"]) == {}


class _FakeMongoClient:
    """A client whose server answers `hello` as given: enough to ask for transactions."""

    def __init__(self, hello: dict[str, Any]) -> None:
        self._hello = hello
        self.admin = self

    def command(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        assert name == "hello"
        return dict(self._hello)

    def __getitem__(self, name: str) -> Any:
        return None

    def close(self) -> None:
        return None


@pytest.mark.parametrize("hello, accepted", [
    ({"ok": 1.0, "isWritablePrimary": True}, False),                              # a standalone mongod
    ({"ok": 1.0, "isWritablePrimary": True, "setName": "rs0"}, True),             # a replica set member
    ({"ok": 1.0, "isWritablePrimary": True, "msg": "isdbgrid"}, True),            # mongos of a cluster
], ids=["standalone", "replica-set", "sharded"])
def test_mongo_refuses_a_server_without_transactions(monkeypatch: pytest.MonkeyPatch, hello: dict[str, Any],
                                                     accepted: bool) -> None:
    from ttp_gateway.backends.mongo import MongoRepository

    monkeypatch.setitem(MongoRepository.client_factories, "fakemongo",
                        lambda url: (_FakeMongoClient(hello), "ttp_test"))
    repo = MongoRepository("fakemongo://localhost/ttp_test", all_stores())
    if accepted:
        repo.require_transactions()
        return
    with pytest.raises(Unavailable, match="replica set") as raised:
        repo.require_transactions()
    assert "standalone" in str(raised.value)
    with pytest.raises(Unavailable, match="replica set"):
        repo.migrate()  # the start-up refuses it before touching any collection


UNREACHABLE = "mongodb://ttp:s3cret@127.0.0.1:1/ttp_test?serverSelectionTimeoutMS=200"


def test_mongo_unreachable_server_is_a_storage_error_naming_no_secret() -> None:
    from ttp_gateway.backends.mongo import MongoRepository

    repo = MongoRepository(UNREACHABLE, all_stores())
    try:
        failures: list[StorageError] = []
        for attempt in (repo.ping, repo.migrate):
            with pytest.raises(Unavailable, match="unavailable") as raised:
                attempt()
            failures.append(raised.value)
        with pytest.raises(Unavailable, match="unavailable") as raised, repo.read() as unit:
            unit[PSEUDONYMS].get_domains()
        failures.append(raised.value)
        # Inside a transaction the driver calls a lost server transient: the unit may run again.
        unit = repo.begin()
        try:
            with pytest.raises(Unavailable) as raised:
                unit[PSEUDONYMS].get_domains()
            failures.append(raised.value)
        finally:
            unit.rollback()
        assert not any("s3cret" in str(failure) or "ttp:" in str(failure) for failure in failures)
    finally:
        repo.close()


@pytest.mark.parametrize("url", [
    "mongodb://ttp:s3cret@host:notaport/db",
    "mongodb://ttp:s3cret@/db",
    "mongodb://ttp:s3cret@[::1/db",
    "mongomock://ttp:s3cret@host/db",  # mongomock is for tests only: no client outside them
])
def test_mongo_invalid_url_names_no_secret(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ttp_gateway.backends.mongo import MongoRepository

    monkeypatch.delitem(MongoRepository.client_factories, "mongomock")
    with pytest.raises(StorageError) as raised:
        MongoRepository(url, all_stores())
    assert "s3cret" not in str(raised.value)


def test_a_pooled_connection_comes_back_without_a_transaction(postgres_database) -> None:
    # The pool does not roll back what a unit ended itself (a round trip per write), but a
    # connection given back in a transaction is rolled back before anyone else gets it.
    from psycopg.pq import TransactionStatus
    from sqlalchemy import create_engine

    from ttp_gateway.backends.sql.repository import _create_engine

    engine = _create_engine(postgres_database)
    assert isinstance(engine, type(create_engine("sqlite://")))
    connection = engine.raw_connection()
    connection.cursor().execute("CREATE TEMP TABLE IF NOT EXISTS pool_probe (x int)")
    assert connection.driver_connection.info.transaction_status == TransactionStatus.INTRANS
    connection.close()
    again = engine.raw_connection()
    assert again.driver_connection.info.transaction_status == TransactionStatus.IDLE
    again.close()
    engine.dispose()
