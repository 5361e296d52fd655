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
from typing import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BACKENDS
from ttp_gateway.backends import open_repository
from ttp_gateway.backends.base import (DomainRecord, PseudonymRow, Repository, StorageError, StoredApiKey,
                                       UnknownDomain)

DOMAIN = "study-patients"


def _size(storage_url: str, full: int) -> int:
    """`full` items, or a twentieth of them on mongomock (see the module docstring)."""
    return max(full // 20, 10) if storage_url.startswith("mongomock://") else full


def _create_domain(repository: Repository, name: str = DOMAIN) -> None:
    with repository.transaction(write=True) as tx:
        tx.put_domain(DomainRecord(name=name, settings={"prefix": "P"}))


def _insert(repository: Repository, rows: Iterable[PseudonymRow], domain: str = DOMAIN) -> set[PseudonymRow]:
    with repository.transaction(write=True) as tx:
        return tx.insert_pseudonyms(domain, list(rows))


def _rows(originals: Iterable[str], tag: str = "psn") -> list[PseudonymRow]:
    return [PseudonymRow(original, 0, f"{tag}-{original}") for original in originals]


def _all_pseudonyms(repository: Repository, originals: list[str],
                    domain: str = DOMAIN) -> dict[str, list[PseudonymRow]]:
    with repository.transaction() as tx:
        return tx.get_pseudonym_rows(domain, originals)


# --- domains ------------------------------------------------------------------------------------
def test_put_domain_creates_then_replaces(repository: Repository) -> None:
    with repository.transaction() as tx:
        assert tx.get_domains() == []
    with repository.transaction(write=True) as tx:
        assert tx.put_domain(DomainRecord("visits", {"alphabet": "0123456789"}, "first")) is True
        assert tx.put_domain(DomainRecord("patients", {"rules": {"length": 8, "check": ["luhn"]}})) is True
    with repository.transaction(write=True) as tx:
        assert tx.put_domain(DomainRecord("visits", {"alphabet": "ABC"}, "second")) is False
    with repository.transaction() as tx:
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
    with repository.transaction() as tx:
        assert tx.get_pseudonyms(DOMAIN, originals + unknown) == {r.original: r.pseudonym for r in rows}
        assert tx.get_originals(DOMAIN, [r.pseudonym for r in rows] + unknown) == {
            r.pseudonym: r.original for r in rows}
        assert tx.count_pseudonyms(DOMAIN) == len(rows)
        # Inserting the same batch again stores nothing.
        assert tx.insert_pseudonyms(DOMAIN, rows) == set()
        assert tx.count_pseudonyms(DOMAIN) == len(rows)


def test_empty_batches(repository: Repository) -> None:
    _create_domain(repository)
    with repository.transaction(write=True) as tx:
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
    with repository.transaction() as tx:
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
    with repository.transaction() as tx:
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
    with repository.transaction() as tx:
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
    with repository.transaction() as tx:
        assert tx.get_originals(domain, ["P-1", "P-2", "P-3", "P-4", "P-5"]) == {
            m.pseudonym: m.original for m in model}
        assert tx.count_pseudonyms(domain) == len(model)


def test_pseudonym_rows_are_ordered_by_number(repository: Repository) -> None:
    _create_domain(repository)
    _insert(repository, [PseudonymRow("alice", 2, "P-c"), PseudonymRow("alice", 0, "P-a"),
                         PseudonymRow("bob", 0, "P-x"), PseudonymRow("alice", 1, "P-b")])
    assert _insert(repository, [PseudonymRow("alice", 1, "P-d")]) == set()  # number 1 is taken
    with repository.transaction() as tx:
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
    with repository.transaction() as tx:
        assert tx.count_pseudonyms("patients") == 1
        assert tx.count_pseudonyms("samples") == 2
        assert tx.get_pseudonyms("patients", ["alice", "bob"]) == {"alice": "P-1"}
        assert tx.delete_originals("samples", ["alice"]) == {"alice"}
    with repository.transaction() as tx:
        assert tx.get_pseudonyms("patients", ["alice"]) == {"alice": "P-1"}


def test_delete_originals(repository: Repository) -> None:
    _create_domain(repository)
    _insert(repository, [PseudonymRow("alice", 0, "P-1"), PseudonymRow("alice", 1, "P-2"),
                         PseudonymRow("bob", 0, "P-3"), PseudonymRow("carol", 0, "P-4")])
    with repository.transaction(write=True) as tx:
        assert tx.delete_originals(DOMAIN, ["alice", "bob", "nobody"]) == {"alice", "bob"}
    with repository.transaction(write=True) as tx:
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
    with repository.transaction(write=True) as tx:
        assert tx.anonymize_originals(DOMAIN, ["alice", "nobody"]) == {"alice"}
    with repository.transaction(write=True) as tx:
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
    with repository.transaction() as tx:
        assert tx.get_pseudonyms(DOMAIN, ["alice"]) == {"alice": "P-5"}
        assert tx.get_originals(DOMAIN, ["P-1", "P-5"]) == {"P-1": None, "P-5": "alice"}
        assert tx.count_pseudonyms(DOMAIN) == 4


def test_anonymised_rows_do_not_conflict_with_each_other(repository: Repository) -> None:
    """Several anonymised rows with the same number coexist: a missing original is no value."""
    _create_domain(repository)
    for pseudonym in ("P-1", "P-2", "P-3"):
        _insert(repository, [PseudonymRow("alice", 0, pseudonym)])
        with repository.transaction(write=True) as tx:
            assert tx.anonymize_originals(DOMAIN, ["alice"]) == {"alice"}
    assert _insert(repository, [PseudonymRow(None, 0, "P-4")]) == {PseudonymRow(None, 0, "P-4")}
    with repository.transaction() as tx:
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
    with pytest.raises(UnknownDomain) as raised, repository.transaction(write=True) as tx:
        call(tx)
    assert isinstance(raised.value, StorageError)
    assert "alice" not in str(raised.value) and "P-1" not in str(raised.value)


# --- API keys -----------------------------------------------------------------------------------
def test_api_keys(repository: Repository) -> None:
    reader = StoredApiKey("reader", "a" * 64, endpoints=("gpas",),
                          operations=("pseudonymize", "depseudonymize"), domains=("patients",), studies=())
    admin = StoredApiKey("admin", "b" * 64)
    with repository.transaction(write=True) as tx:
        assert tx.get_api_keys() == []
        assert tx.add_api_key(reader) is True
        assert tx.add_api_key(admin) is True
    with repository.transaction(write=True) as tx:
        assert tx.add_api_key(StoredApiKey("reader", "c" * 64)) is False  # name taken
        assert tx.add_api_key(StoredApiKey("other", "a" * 64)) is False   # digest taken
    with repository.transaction() as tx:
        assert tx.get_api_keys() == [admin, reader]


# --- transactions and repositories ----------------------------------------------------------------
def test_failed_transaction_leaves_no_new_pseudonyms(repository: Repository, storage_url: str) -> None:
    _create_domain(repository)
    committed = _rows(f"patient-{i}" for i in range(10))
    _insert(repository, committed)
    new = _rows((f"patient-{i}" for i in range(5, _size(storage_url, 2000))), tag="new")

    with pytest.raises(RuntimeError), repository.transaction(write=True) as tx:
        stored = tx.insert_pseudonyms(DOMAIN, new)
        assert len(stored) == len(new) - 5  # the first five originals have their pseudonyms
        assert tx.put_domain(DomainRecord("created-then-failed")) is True
        assert tx.add_api_key(StoredApiKey("created-then-failed", "d" * 64)) is True
        raise RuntimeError("the request failed after storing")

    with repository.transaction() as tx:
        assert tx.count_pseudonyms(DOMAIN) == len(committed)
        assert tx.get_pseudonyms(DOMAIN, [r.original for r in new]) == {
            r.original: r.pseudonym for r in committed[5:]}
        assert [d.name for d in tx.get_domains()] == [DOMAIN]
        assert tx.get_api_keys() == []
    # What failed may be done again.
    with repository.transaction(write=True) as tx:
        assert tx.insert_pseudonyms(DOMAIN, new) == set(new[5:])
        assert tx.add_api_key(StoredApiKey("created-then-failed", "d" * 64)) is True


def test_domain_created_in_failed_transaction_stays_unknown(repository: Repository) -> None:
    """Also after the repository used the domain inside the failed transaction (and may cache it)."""
    with pytest.raises(RuntimeError), repository.transaction(write=True) as tx:
        tx.put_domain(DomainRecord("short-lived"))
        tx.insert_pseudonyms("short-lived", [PseudonymRow("alice", 0, "P-1")])
        raise RuntimeError("the request failed")
    with pytest.raises(UnknownDomain), repository.transaction() as tx:
        tx.count_pseudonyms("short-lived")


def test_second_repository_on_the_same_url_sees_committed_data(repository: Repository,
                                                               storage_url: str) -> None:
    _create_domain(repository)
    _insert(repository, [PseudonymRow("alice", 0, "P-1")])
    with repository.transaction(write=True) as tx:
        tx.add_api_key(StoredApiKey("reader", "a" * 64))

    other = open_repository(storage_url)
    try:
        with other.transaction(write=True) as tx:
            assert [d.name for d in tx.get_domains()] == [DOMAIN]
            assert tx.get_pseudonyms(DOMAIN, ["alice"]) == {"alice": "P-1"}
            assert [k.name for k in tx.get_api_keys()] == ["reader"]
            bob = PseudonymRow("bob", 0, "P-2")
            assert tx.insert_pseudonyms(DOMAIN, [bob]) == {bob}
    finally:
        other.close()
    with repository.transaction() as tx:
        assert tx.get_originals(DOMAIN, ["P-2"]) == {"P-2": "bob"}


def test_migrate_twice_is_harmless(repository: Repository, storage_url: str) -> None:
    _create_domain(repository)
    _insert(repository, [PseudonymRow("alice", 0, "P-1")])
    repository.migrate()
    other = open_repository(storage_url)
    try:
        other.migrate()
    finally:
        other.close()
    with repository.transaction(write=True) as tx:
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
    claimed by both."""
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
            with repo.transaction(write=True) as tx:
                stored |= tx.insert_pseudonyms(DOMAIN, _rows(part, tag))
                seen.update(tx.get_pseudonyms(DOMAIN, part))
        return stored, seen

    second = open_repository(storage_url)
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
    with repository.transaction() as tx:
        assert tx.count_pseudonyms(DOMAIN) == len(originals)


# --- MongoDB specifics ----------------------------------------------------------------------------
mongo_only = pytest.mark.parametrize("storage_url", [b for b in BACKENDS if b.startswith("mongo")],
                                     indirect=True)


@pytest.fixture
def mongo_repository(repository: Repository):
    """The repository, on the MongoDB backends only (tests using it are marked `mongo_only`)."""
    return repository


@mongo_only
def test_mongo_indexes_and_schema_version(mongo_repository) -> None:
    pseudonym_indexes = mongo_repository.pseudonyms.index_information()
    assert pseudonym_indexes["pseudonym_per_domain"]["unique"]
    assert pseudonym_indexes["original_number_per_domain"]["unique"]
    assert pseudonym_indexes["original_number_per_domain"]["partialFilterExpression"] == {
        "original": {"$type": "string"}}
    assert mongo_repository.domains.index_information()["domain_name"]["unique"]
    api_key_indexes = mongo_repository.api_keys.index_information()
    assert api_key_indexes["api_key_name"]["unique"] and api_key_indexes["api_key_digest"]["unique"]
    from ttp_gateway.backends.mongo.repository import SCHEMA_VERSION

    assert mongo_repository.meta.find_one({"_id": "schema"})["version"] == SCHEMA_VERSION


@mongo_only
def test_mongo_refuses_a_newer_schema(mongo_repository) -> None:
    mongo_repository.meta.update_one({"_id": "schema"}, {"$set": {"version": 99}})
    with pytest.raises(StorageError, match="newer"):
        mongo_repository.migrate()


@mongo_only
def test_mongo_documents_are_compact(mongo_repository) -> None:
    _create_domain(mongo_repository)
    _insert(mongo_repository, [PseudonymRow("alice", 0, "P-1")])
    with mongo_repository.transaction(write=True) as tx:
        tx.anonymize_originals(DOMAIN, ["alice"])
    document = mongo_repository.pseudonyms.find_one({}, {"_id": 0})
    assert document == {"domain": DOMAIN, "pseudonym": "P-1", "number": 0}


@mongo_only
def test_mongo_write_failure_hides_values_and_is_compensated(mongo_repository, monkeypatch) -> None:
    """A write error other than a duplicate key becomes a StorageError naming no value, and
    what the failed write did store is removed when the transaction ends."""
    from pymongo.errors import BulkWriteError

    _create_domain(mongo_repository)
    collection = mongo_repository.pseudonyms
    insert_many = collection.insert_many

    def half_failing_insert(documents, ordered=True):
        insert_many(documents[:1], ordered=ordered)
        raise BulkWriteError({"writeErrors": [{"index": 1, "code": 121, "op": documents[1],
                                               "errmsg": f"validation failed for {documents[1]}"}],
                              "nInserted": 1})

    monkeypatch.setattr(collection, "insert_many", half_failing_insert)
    with pytest.raises(StorageError) as raised, mongo_repository.transaction(write=True) as tx:
        tx.insert_pseudonyms(DOMAIN, [PseudonymRow("alice", 0, "P-1"), PseudonymRow("bob", 0, "P-2")])
    message = str(raised.value)
    assert "121" in message
    assert not any(value in message for value in ("alice", "bob", "P-1", "P-2"))
    monkeypatch.undo()
    with mongo_repository.transaction() as tx:
        assert tx.count_pseudonyms(DOMAIN) == 0


def test_mongo_unreachable_server_is_a_storage_error() -> None:
    from ttp_gateway.backends.mongo import MongoRepository

    repo = MongoRepository("mongodb://127.0.0.1:1/ttp_test?serverSelectionTimeoutMS=200")
    try:
        with pytest.raises(StorageError, match="unavailable"):
            repo.ping()
        with pytest.raises(StorageError, match="unavailable"), repo.transaction() as tx:
            tx.get_domains()
    finally:
        repo.close()


def test_mongo_invalid_url_names_no_secret() -> None:
    from ttp_gateway.backends.mongo import MongoRepository

    with pytest.raises(StorageError) as raised:
        MongoRepository("mongodb://user:s3cret@host:notaport/db")
    assert "s3cret" not in str(raised.value)
