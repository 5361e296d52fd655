"""Concurrent single calls of one operation, answered together.

The most common write in the field is one `$pseudonymizeAllowCreate` per identifier, sent by
many clients at once. Group commit shares a commit between such requests but still runs each
one's statements (on a database server, each one a round trip). An operation that can answer a
list of single calls at once (`Operation.coalesce`) is instead answered in batches: the first
call runs at once; calls that arrive while a batch is in flight wait for it and then go together,
in one unit of work, with one set of statements and one commit. Alone, a call adds no latency;
under load the batches grow with the load.

Each call keeps its own answer, format, audit and metrics, and gets its answer only after the
commit that holds its writes. A call the handler refuses (a `FhirError`, or a `Result` with an
error status, in its place) wrote nothing and fails alone. Anything else that goes wrong in a
batch — a handler error, an answer that cannot be encoded — rolls the batch back and runs each of
its calls on its own, so that every call gets exactly the answer it would have got alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .threads import in_thread

if TYPE_CHECKING:
    from . import codec
    from .execution import Answer, Executor
    from .gateway import Call
    from .operations import Operation

MAX_BATCH = 512  # calls answered together at most
MAX_ITEMS = 20_000  # and their values (originals), as in a large batch request


@dataclass
class _Waiting:
    call: "Call"
    fmt: "codec.Format"
    answer: "asyncio.Future[Answer | None]"


@dataclass
class _Queue:
    waiting: list[_Waiting] = field(default_factory=list)
    in_flight: int = 0


class Coalescer:
    """Per operation, the calls waiting for a batch and the batches in flight: at most `lanes`
    batches of one operation at once, each of at most `MAX_BATCH` calls and, beyond its first
    call, `MAX_ITEMS` values."""

    def __init__(self, executor: "Executor", lanes: int) -> None:
        self._executor = executor
        self._lanes = lanes
        self._queues: dict[int, _Queue] = {}
        self._flushing: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def run(self, op: "Operation", call: "Call", fmt: "codec.Format") -> "Answer":
        loop = asyncio.get_running_loop()
        queue = self._queues.get(id(op))
        if queue is None:
            queue = self._queues[id(op)] = _Queue()
        waiting = _Waiting(call, fmt, loop.create_future())
        queue.waiting.append(waiting)
        if queue.in_flight < self._lanes:
            self._start(op, queue)
        answer = await waiting.answer
        if answer is None:  # the batch could not answer for it: the call runs alone
            return await in_thread(self._executor.run, op, call, fmt)
        return answer

    def _start(self, op: "Operation", queue: _Queue) -> None:
        from .execution import count_items  # the executor imports this module

        taken, items = 0, 0
        for waiting in queue.waiting[:MAX_BATCH]:
            items += count_items(waiting.call)
            if taken and items > MAX_ITEMS:
                break
            taken += 1
        batch, queue.waiting = queue.waiting[:taken], queue.waiting[taken:]
        queue.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._flush(op, queue, batch))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self, op: "Operation", queue: _Queue, batch: list[_Waiting]) -> None:
        try:
            outcomes: list[Any] = await in_thread(
                self._executor.run_together, op, [w.call for w in batch], [w.fmt for w in batch])
        except BaseException as error:  # noqa: BLE001 - the store failed: every call learns it
            outcomes = [error] * len(batch)
        finally:
            queue.in_flight -= 1
            if queue.waiting:
                self._start(op, queue)
        for waiting, outcome in zip(batch, outcomes):
            if waiting.answer.done():  # its request was abandoned
                continue
            if isinstance(outcome, BaseException):
                waiting.answer.set_exception(outcome)
            else:
                waiting.answer.set_result(outcome)

