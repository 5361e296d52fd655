"""Group commit: concurrent write units of a process share transactions, each unit is answered
only once the commit holding its writes is done, and a unit that fails takes none of the others'
writes with it (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from conftest import all_stores
from ttp_gateway.backends import open_repository
from ttp_gateway.backends.base import Repository
from ttp_gateway.backends.sql.grouping import GroupCommitter
from ttp_gateway.plugins.gpas.store import PSEUDONYMS, DomainRecord, PseudonymRow

pytestmark = pytest.mark.parametrize("storage_url", ["sqlite", "postgresql"], indirect=True)
DOMAIN = "group-commit"


@pytest.fixture
def repository(storage_url: str) -> Iterator[Repository]:
    """Grouped on every SQL store (PostgreSQL is not grouped unless configured)."""
    repo = open_repository(storage_url, all_stores(), group_commit=True)
    repo.migrate()
    yield repo
    repo.close()


def _domain(repository: Repository) -> None:
    repository.write(lambda unit: unit[PSEUDONYMS].put_domain(DomainRecord(DOMAIN, {})))


def _count_commits(monkeypatch) -> list[int]:
    commits = [0]
    end = GroupCommitter._end

    def counting(self, group, commit):
        if commit:
            commits[0] += 1
        return end(self, group, commit)

    monkeypatch.setattr(GroupCommitter, "_end", counting)
    return commits


def _insert(repository: Repository, original: str, fail: bool = False, pause: float = 0.002) -> None:
    def work(unit):
        unit[PSEUDONYMS].insert_pseudonyms(DOMAIN, [PseudonymRow(original, 0, f"p-{original}")])
        time.sleep(pause)  # a request's own work, while others queue for their turn
        if fail:
            raise RuntimeError("this request fails")
    repository.write(work)


def test_concurrent_units_share_commits(repository: Repository, monkeypatch) -> None:
    _domain(repository)
    commits = _count_commits(monkeypatch)
    originals = [f"o{i:03d}" for i in range(96)]
    threads = [threading.Thread(target=_insert, args=(repository, o)) for o in originals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    with repository.read() as unit:
        stored = unit[PSEUDONYMS].get_pseudonyms(DOMAIN, originals)
    assert stored == {o: f"p-{o}" for o in originals}
    assert 0 < commits[0] < len(originals) / 2  # grouped: far fewer commits than units


def test_a_failing_unit_leaves_the_others_of_its_group(repository: Repository) -> None:
    _domain(repository)
    errors: list[BaseException] = []

    def send(original: str, fail: bool) -> None:
        try:
            _insert(repository, original, fail)
        except RuntimeError as error:
            errors.append(error)

    plan = [(f"k{i:02d}", i % 5 == 2) for i in range(40)]
    threads = [threading.Thread(target=send, args=item) for item in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    with repository.read() as unit:
        stored = unit[PSEUDONYMS].get_pseudonyms(DOMAIN, [o for o, _ in plan])
    assert set(stored) == {o for o, fail in plan if not fail}
    assert len(errors) == sum(fail for _, fail in plan)


def test_a_unit_is_answered_only_after_its_commit(repository: Repository) -> None:
    _domain(repository)
    seen_before_answer: list[bool] = []

    def send(original: str) -> None:
        _insert(repository, original)
        # The unit returned: its write is committed, visible to any reader.
        with repository.read() as unit:
            seen_before_answer.append(bool(unit[PSEUDONYMS].get_pseudonyms(DOMAIN, [original])))

    threads = [threading.Thread(target=send, args=(f"a{i}",)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert seen_before_answer == [True] * 32


def test_without_grouping_every_unit_commits_alone(storage_url: str, monkeypatch) -> None:
    repository = open_repository(storage_url, all_stores(), group_commit=False)
    repository.migrate()
    try:
        _domain(repository)
        commits = _count_commits(monkeypatch)
        threads = [threading.Thread(target=_insert, args=(repository, f"u{i}")) for i in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert commits[0] == 0  # the committer is not involved at all
        with repository.read() as unit:
            assert len(unit[PSEUDONYMS].get_pseudonyms(DOMAIN, [f"u{i}" for i in range(10)])) == 10
    finally:
        repository.close()



def test_grouped_by_default_on_sqlite_only(storage_url: str) -> None:
    repository = open_repository(storage_url, all_stores())
    try:
        assert repository.inline_writes == storage_url.startswith("sqlite")
        assert (repository._committer is not None) == storage_url.startswith("sqlite")
    finally:
        repository.close()
