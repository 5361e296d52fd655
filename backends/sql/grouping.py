"""Group commit: the write units of one process share transactions, committed once per group.

Every write unit of a process runs on one connection, one unit at a time, in the order the units
asked (`_Turns`, a ticket lock: writers queue, nobody polls). A unit runs inside a savepoint of
the group's transaction: when it fails, its savepoint is rolled back and only its writes go.
When it succeeds, its savepoint is released and it waits for the group's commit. The group is
committed by the unit that finishes while no other unit waits for its turn, or once the group
has `max_members` units or has run for `max_seconds`; so under load a commit carries every unit
that arrived meanwhile, and alone a unit commits at once, adding no latency. Each unit's answer
is sent only after the commit that holds its writes; a commit that fails fails every unit of the
group with that error, and the core runs them again.

Across processes, SQLite's write lock is taken through an OS file lock first (`flock` blocks in
the kernel, waking waiters in turn), so processes do not poll SQLite's busy handler either.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..base import StorageError, UnitOfWork, WriteUnit

if TYPE_CHECKING:
    from .repository import SqlRepository, _SqlUnit

MAX_MEMBERS = 256
MAX_SECONDS = 0.05


class _Turns:
    """A first-come, first-served lock that knows how many are waiting, for threads and for
    coroutines of the event loop alike. A release hands the turn straight to the longest
    waiter, waking that one alone."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._taken = False
        self._queue: deque[threading.Lock | tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    def acquire(self) -> None:
        with self._mutex:
            if not self._taken:
                self._taken = True
                return
            handoff = threading.Lock()
            handoff.acquire()
            self._queue.append(handoff)
        handoff.acquire()  # released by the holder before us: the turn is ours

    async def acquire_async(self) -> None:
        loop = asyncio.get_running_loop()
        with self._mutex:
            if not self._taken:
                self._taken = True
                return
            handoff: asyncio.Future[None] = loop.create_future()
            self._queue.append((loop, handoff))
        await handoff

    def release(self) -> None:
        with self._mutex:
            if not self._queue:
                self._taken = False
                return
            waiter = self._queue.popleft()
        if isinstance(waiter, tuple):
            loop, handoff = waiter
            loop.call_soon_threadsafe(handoff.set_result, None)
        else:
            waiter.release()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @contextmanager
    def turn(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


class _Group:
    def __init__(self, unit: "_SqlUnit") -> None:
        self.unit = unit
        self.started = time.monotonic()
        self.members = 0          # units that ran in it
        self.pending = 0          # of them, those that succeeded and wait for the commit
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.commit_scheduled: asyncio.Future[None] | None = None  # for members on the event loop


class GroupCommitter:
    """The write units of one repository, grouped into shared transactions."""

    def __init__(self, repository: "SqlRepository", open_transaction: Callable[[], "_SqlUnit"],
                 lock_file: str | None = None, max_members: int = MAX_MEMBERS,
                 max_seconds: float = MAX_SECONDS) -> None:
        self._repository = repository
        self._open_transaction = open_transaction
        self._turns = _Turns()
        self._group: _Group | None = None
        self._max_members = max_members
        self._max_seconds = max_seconds
        self._lock_file = lock_file
        self._lock_descriptor: int | None = None
        # Threads of their own: one waits for other processes' write lock, the others commit for
        # members on the event loop. Neither ever waits for something a request thread holds.
        self._process_lock_thread = ThreadPoolExecutor(1, thread_name_prefix="ttp-writer-lock")
        self._commit_threads = ThreadPoolExecutor(2, thread_name_prefix="ttp-group-commit")

    def load(self) -> int:
        """Units waiting for their turn, and one for a group being worked on: how long a new
        unit would wait in this committer."""
        return self._turns.waiting + (self._group is not None)

    def begin(self) -> WriteUnit:
        self._turns.acquire()
        try:
            group = self._group
            if group is not None and self._closing(group):
                self._commit(group)  # full or old: commit it for its members, start another
                group = None
            if group is None:
                self._lock_processes()
                group = self._opened()
            return self._joined(group)
        except BaseException:
            self._turns.release()
            raise

    async def begin_async(self) -> WriteUnit:
        """A member unit for a coroutine of the event loop: it waits for its turn without
        blocking the loop, and its group is committed on a worker thread (`_Member.commit_async`)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._turns.acquire_async()
            group = self._group
            if group is not None and self._closing(group):
                self._turns.release()
                await loop.run_in_executor(self._commit_threads, self._commit_when_current, group)
                continue
            try:
                if group is None:
                    # Another process may hold the database: wait for it off the loop.
                    await loop.run_in_executor(self._process_lock_thread, self._lock_processes)
                    group = self._opened()
                return self._joined(group)
            except BaseException:
                self._turns.release()
                raise

    def _closing(self, group: _Group) -> bool:
        """Whether a group takes no more members: full, or open for long enough."""
        return group.members >= self._max_members or time.monotonic() - group.started >= self._max_seconds

    def _opened(self) -> _Group:
        """A new group (holding the turn and the processes' lock, which it gives back on failure)."""
        try:
            group = self._group = _Group(self._open_transaction())
        except BaseException:
            self._unlock_processes()
            raise
        return group

    def _joined(self, group: _Group) -> "_Member":
        group.members += 1
        member = _Member(self, group)
        member.start()
        return member

    def _commit_when_current(self, group: _Group) -> None:
        """Commit `group` for its members (on a worker thread), unless it has ended already."""
        with self._turns.turn():
            if self._group is group:
                self._commit(group)

    @contextmanager
    def exclusive(self) -> Iterator[Any]:
        """The group connection for work outside any unit (a checkpoint), once no group is open."""
        with self._turns.turn():
            if self._group is not None:
                self._commit(self._group)
            yield

    # --- what members call, holding the turn -----------------------------------------------------
    def finished(self, group: _Group, succeeded: bool) -> None:
        """A member's savepoint is released (succeeded) or rolled back; decide whether to
        commit the group now, then give the turn to the next unit."""
        try:
            if succeeded:
                group.pending += 1
            if group.pending == 0 and self._turns.waiting == 0:
                self._end(group, commit=False)  # nothing to keep; do not hold the write lock idle
            elif group.commit_scheduled is not None:
                pass  # a worker thread commits it for the members on the event loop
            elif self._turns.waiting == 0 or self._closing(group):
                self._commit(group)
        finally:
            self._turns.release()

    def _commit(self, group: _Group) -> None:
        self._end(group, commit=group.pending > 0)

    def _end(self, group: _Group, commit: bool) -> None:
        if self._group is group:
            self._group = None
        try:
            if commit:
                group.unit.commit()
            else:
                group.unit.rollback()
        except BaseException as error:  # every member that waits fails with the commit
            group.error = error
        finally:
            self._unlock_processes()
            group.done.set()

    # --- across processes ----------------------------------------------------------------------
    def _lock_processes(self) -> None:
        if self._lock_file is None:
            return
        if self._lock_descriptor is None:
            self._lock_descriptor = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_descriptor, fcntl.LOCK_EX)

    def _unlock_processes(self) -> None:
        if self._lock_descriptor is not None:
            fcntl.flock(self._lock_descriptor, fcntl.LOCK_UN)

    def close(self) -> None:
        self._process_lock_thread.shutdown(wait=False)
        self._commit_threads.shutdown(wait=False)
        if self._lock_descriptor is not None:
            os.close(self._lock_descriptor)
            self._lock_descriptor = None


class _Member(WriteUnit):
    """One request's share of a group: a savepoint of the group's transaction."""

    # Members run one after another, each releasing its savepoint before the next begins: one
    # name serves them all (and its statements are compiled once).
    SAVEPOINT = "ttp_member"

    def __init__(self, committer: GroupCommitter, group: _Group) -> None:
        self._committer = committer
        self._group = group
        self._unit = group.unit
        self._callbacks: list[Callable[[], None]] = []
        self._stores: dict[str, Any] = {}
        self._ended = False
        self._statements = committer._repository.savepoint_statements(self.SAVEPOINT)

    def start(self) -> None:
        self._unit._control(self._statements[0])

    def __getitem__(self, key: Any) -> Any:
        store = self._stores.get(key.name)
        if store is None:
            if self._ended:
                raise StorageError(f"the unit of work has ended; store {key.name!r} cannot be opened")
            store = self._stores[key.name] = self._unit.open_store(key, self)
        return store

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        with self._unit.savepoint():
            yield

    def commit(self) -> None:
        group = self._released()
        self._committer.finished(group, succeeded=True)
        group.done.wait()
        self._after_commit(group)

    async def commit_async(self) -> None:
        """`commit` for a member on the event loop: the group's commit (an fsync) runs on a
        worker thread, scheduled once per group after the loop's ready work, so that every
        request the loop is handling anyway joins it first."""
        group = self._released()
        group.pending += 1
        loop = asyncio.get_running_loop()
        if group.commit_scheduled is None:
            group.commit_scheduled = loop.run_in_executor(self._committer._commit_threads,
                                                          self._committer._commit_when_current, group)
        self._committer._turns.release()
        await asyncio.shield(group.commit_scheduled)
        if not group.done.is_set():  # a thread's member committed it first: wait for that
            await loop.run_in_executor(None, group.done.wait)
        self._after_commit(group)

    def _released(self) -> "_Group":
        """End this member: RELEASE its savepoint, so that its writes join the group's."""
        if self._ended:
            raise StorageError("the unit of work has ended")
        self._ended = True
        self._stores.clear()
        try:
            self._unit._control(self._statements[2])
        except BaseException:
            self._rolled_back()
            raise
        return self._group

    def _after_commit(self, group: "_Group") -> None:
        if group.error is not None:
            raise group.error
        for callback in self._callbacks:
            callback()

    def rollback(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._stores.clear()
        self._rolled_back()

    def _rolled_back(self) -> None:
        try:
            self._unit._control(self._statements[1])
            self._unit._control(self._statements[2])
        except BaseException as error:  # the group's transaction is broken: end it for all
            self._group.error = self._group.error or error
            self._committer._end(self._group, commit=False)
            self._committer._turns.release()
            return
        self._committer.finished(self._group, succeeded=False)


__all__ = ["GroupCommitter", "UnitOfWork"]
