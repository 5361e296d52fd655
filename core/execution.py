"""Running a handler so that a request that fails writes nothing.

The answer is complete before anything is committed: the handler runs, its answer is encoded in
the negotiated format and checked against the size limit, and only then is the request's write
unit committed and its audit records written. A failure at any of these stages — a handler's
error, an answer the format cannot hold, an answer too large — rolls the unit back. When the store
was busy (a deadlock, a write conflict) the whole request runs again from the start.

A batch Bundle runs in one unit with a savepoint per entry: entries fail alone, and the batch
costs one commit. On stores without savepoints (MongoDB) a failed entry makes the batch run again
without it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from ttp_gateway.backends.base import Busy, Repository, StorageError, WriteUnit, backoff, backoff_seconds

from . import codec, fhir
from .errors import FhirError, PayloadTooLarge
from .coalescing import Coalescer
from .gateway import Call, RequestWork
from .operations import Operation, Result

log = logging.getLogger("ttp_gateway.request")
ATTEMPTS = 8


@dataclass(frozen=True)
class Answer:
    status: int
    content: bytes
    items: int


class _JoinedWork(RequestWork):
    """A call's share of a unit that its owner (the batch) commits."""

    def __init__(self, unit: WriteUnit) -> None:
        self.unit = unit

    def begin(self) -> WriteUnit:
        assert self.unit is not None
        return self.unit

    def commit(self) -> None:
        return None

    def rollback(self) -> None:
        return None


class Executor:
    def __init__(self, repository: Repository, max_answer_bytes: int) -> None:
        self._repository = repository
        self._max_answer = max_answer_bytes
        # One batch of coalesced calls in flight per operation: on PostgreSQL too, a second one
        # cost more processor time per call than it saved in waiting.
        self.coalescer = Coalescer(self, lanes=1)

    def run(self, op: Operation, call: Call, fmt: codec.Format) -> Answer:
        for attempt in range(ATTEMPTS):
            work = call.work = RequestWork(self._repository)
            call.audits.clear()
            try:
                result = op.handler(call)
                status, resource = _single_answer(result)
                content = self._encoded(resource, fmt)
                if status < 400:
                    work.commit()
                    call.flush_audits()
                else:
                    work.rollback()
                return Answer(status, content, count_items(call))
            except Busy:
                work.rollback()
                if attempt == ATTEMPTS - 1:
                    raise
                backoff(attempt)
            except BaseException:
                work.rollback()
                raise
        raise AssertionError("unreachable")

    async def run_on_loop(self, op: Operation, call: Call, fmt: codec.Format) -> Answer:
        """`run` for a quick write on the event loop (`Repository.inline_writes`): the unit is
        begun and committed by awaiting, the handler and encoding run in between."""
        for attempt in range(ATTEMPTS):
            unit = await self._repository.begin_async()
            call.work = _JoinedWork(unit)
            call.audits.clear()
            try:
                result = op.handler(call)
                status, resource = _single_answer(result)
                content = self._encoded(resource, fmt)
            except BaseException:
                unit.rollback()
                raise
            try:
                if status < 400:
                    await unit.commit_async()
                    call.flush_audits()
                else:
                    unit.rollback()
                return Answer(status, content, count_items(call))
            except Busy:
                unit.rollback()
                if attempt == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(backoff_seconds(attempt))
            except BaseException:
                unit.rollback()  # a unit ends either way, whatever its commit raised
                raise
        raise AssertionError("unreachable")

    def run_together(self, op: Operation, calls: list[Call], fmts: list[codec.Format]) -> list[Any]:
        """Single calls of `op` answered together by its `coalesce` handler, in one unit of work
        (`core.coalescing`): per call its `Answer` (an error status among them), the `FhirError`
        it fails with alone (it wrote nothing), or None where the batch cannot answer for it and it
        must run on its own."""
        assert op.coalesce is not None
        for attempt in range(ATTEMPTS):
            unit = self._repository.begin()
            joined = _JoinedWork(unit)
            for call in calls:
                call.work = joined
                call.audits.clear()
            try:
                outcomes: list[Any] = []
                for call, fmt, result in zip(calls, fmts, op.coalesce(calls), strict=True):
                    if isinstance(result, FhirError):
                        outcomes.append(result)
                        continue
                    status, resource = _single_answer(result)  # a failing Result wrote nothing either
                    outcomes.append(Answer(status, self._encoded(resource, fmt), count_items(call)))
                unit.commit()
            except Busy:
                unit.rollback()
                if attempt == ATTEMPTS - 1:
                    raise
                backoff(attempt)
                continue
            except Exception as error:  # noqa: BLE001 - each call runs alone and meets it there
                unit.rollback()
                log.info("calls answered together fell back to single runs",
                         extra={"operation": op.name, "error": type(error).__name__})
                return [None] * len(calls)
            except BaseException:
                unit.rollback()
                raise
            for call, outcome in zip(calls, outcomes):
                if isinstance(outcome, Answer) and outcome.status < 400:
                    call.flush_audits()
                else:
                    call.audits.clear()
            return outcomes
        raise AssertionError("unreachable")

    def run_batch(self, op: Operation | None, calls: list[Call | FhirError], fmt: codec.Format,
                  transaction: bool = False) -> Answer:
        """A `batch` Bundle: each entry one call, answered in a `batch-response` entry; or a
        `transaction` Bundle, all entries or none. `op` is the operation of every entry, or None
        when the entries name several (a Bundle posted to an endpoint's base)."""
        excluded: dict[int, dict[str, Any]] = {}  # entries dropped from a unit without savepoints
        writes = op.affects_state if op is not None else \
            any(call.operation.affects_state for call in calls if isinstance(call, Call))
        attempt = 0
        while True:
            unit = self._repository.begin() if writes else None
            try:
                if op is not None and op.batch_handler is not None:
                    answers, restart = self._handled_together(op, calls, unit), False
                else:
                    answers, restart = self._entries(calls, unit, excluded, transaction)
                if restart:
                    if unit is not None:
                        unit.rollback()
                    continue
                if transaction:
                    failed = next((entry for entry in answers if not _succeeded(entry)), None)
                    if failed is not None:  # all or nothing: the first failure is the answer
                        if unit is not None:
                            unit.rollback()
                        status = int(failed["response"]["status"])
                        return Answer(status, self._encoded(failed["response"]["outcome"], fmt), 0)
                kind = "transaction-response" if transaction else "batch-response"
                bundle = {"resourceType": "Bundle", "type": kind, "entry": answers}
                content = self._encoded(bundle, fmt)
                if unit is not None:
                    unit.commit()
                for index, call in enumerate(calls):
                    if isinstance(call, Call) and index not in excluded and _succeeded(answers[index]):
                        call.flush_audits()
                items = sum(count_items(c) for c in calls if isinstance(c, Call))
                return Answer(200, content, items)
            except Busy:
                if unit is not None:
                    unit.rollback()
                attempt += 1
                if attempt == ATTEMPTS:
                    raise
                backoff(attempt)
            except BaseException:
                if unit is not None:
                    unit.rollback()
                raise

    def _handled_together(self, op: Operation, calls: list[Call | FhirError],
                          unit: WriteUnit | None) -> list[dict[str, Any]]:
        """All entries through the operation's batch handler, in one call."""
        bound = [call for call in calls if isinstance(call, Call)]
        joined = _JoinedWork(unit) if unit is not None else None  # one share of the unit for all entries
        for bound_call in bound:
            bound_call.work = joined if joined is not None else RequestWork(self._repository)
            if bound_call.audits:  # from an attempt the store was too busy for
                bound_call.audits.clear()
        assert op.batch_handler is not None
        results = iter(op.batch_handler(bound)) if bound else iter(())
        answers = []
        for call in calls:
            if isinstance(call, FhirError):
                answers.append(_error_entry(call.status, outcome_of(call)))
                continue
            result = next(results)
            if isinstance(result, FhirError):
                answers.append(_error_entry(result.status, outcome_of(result)))
            else:
                answers.append(_entry(*_entry_answer(result)))
        return answers

    def _entries(self, calls: list[Call | FhirError], unit: WriteUnit | None,
                 excluded: dict[int, dict[str, Any]], transaction: bool = False) -> tuple[list[dict[str, Any]], bool]:
        answers: list[dict[str, Any]] = []
        for index, call in enumerate(calls):
            if index in excluded:
                answers.append(excluded[index])
                continue
            if isinstance(call, FhirError):
                answers.append(_error_entry(call.status, outcome_of(call)))
                continue
            call.work = _JoinedWork(unit) if unit is not None else RequestWork(self._repository)
            call.audits.clear()
            try:
                with unit.savepoint() if unit is not None else nullcontext():
                    status, resource, outcome = _entry_answer(_answer_entry(call))
                    if status >= 400:
                        raise _EntryFailed(status, resource, outcome)
                answers.append(_entry(status, resource, outcome))
                continue
            except _EntryFailed as failed:
                entry = _entry(failed.status, failed.resource, failed.outcome)
            except FhirError as error:
                entry = _error_entry(error.status, outcome_of(error))
            except Busy:
                raise
            except StorageError as error:
                status, outcome = storage_failure(error)
                entry = _error_entry(status, outcome)
            except Exception:  # noqa: BLE001 - one entry's bug must not fail the others
                status, outcome = internal_error("batch entry", call.operation)
                entry = _error_entry(status, outcome)
            if transaction:  # the whole unit is rolled back: no savepoint needed
                answers.append(entry)
                return answers, False
            if unit is not None and not self._repository.savepoints:
                # The entry may have written before it failed, and nothing can undo just that part.
                excluded[index] = entry
                return answers, True
            answers.append(entry)
        return answers, False

    def _encoded(self, resource: dict[str, Any], fmt: codec.Format) -> bytes:
        content = codec.encode(resource, fmt)
        if len(content) > self._max_answer:
            raise PayloadTooLarge(f"the answer would exceed {self._max_answer} bytes; send fewer items "
                                  "per request")
        return content


def _answer_entry(call: Call) -> Any:
    """One entry's answer, as its operation answers entries of a Bundle: through its batch
    handler where it has one (a Bundle of several operations runs entry by entry)."""
    op = call.operation
    if op.batch_handler is None:
        return op.handler(call)
    result = op.batch_handler([call])[0]
    if isinstance(result, FhirError):
        raise result
    return result


class _EntryFailed(Exception):
    def __init__(self, status: int, resource: dict[str, Any] | None, outcome: dict[str, Any] | None) -> None:
        super().__init__(status)
        self.status, self.resource, self.outcome = status, resource, outcome


def _single_answer(result: Any) -> tuple[int, dict[str, Any]]:
    if isinstance(result, Result):
        if result.status >= 400 and result.outcome is not None:
            return result.status, result.outcome  # a failed call answers with its outcome
        return result.status, result.resource
    return 200, result


def _entry_answer(result: Any) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
    if isinstance(result, Result):
        return result.status, result.resource, result.outcome
    return 200, result, None


_STATUS_TEXT = {200: "200", 201: "201"}


def _entry(status: int, resource: dict[str, Any] | None, outcome: dict[str, Any] | None) -> dict[str, Any]:
    if outcome is None:
        outcome = fhir.informational("Operation completed successfully.") if status < 400 else \
            fhir.operation_outcome("error", "processing", "the entry failed")
    entry: dict[str, Any] = {"response": {"status": _STATUS_TEXT.get(status) or str(status), "outcome": outcome}}
    if resource is not None:
        entry["resource"] = resource
    return entry


def _error_entry(status: int, outcome: dict[str, Any]) -> dict[str, Any]:
    return {"response": {"status": str(status), "outcome": outcome}}


def _succeeded(entry: dict[str, Any]) -> bool:
    status: str = entry["response"]["status"]
    return status.startswith("2")


def outcome_of(error: FhirError) -> dict[str, Any]:
    severity = "error" if error.status < 500 else "fatal"
    return fhir.operation_outcome(severity, error.issue_code, error.diagnostics, error.details)


def storage_failure(error: StorageError) -> tuple[int, dict[str, Any]]:
    """Status and outcome for a storage error; one meaning, one status, on every backend."""
    from ttp_gateway.backends import base

    if isinstance(error, base.NotFound):
        return 404, fhir.operation_outcome("error", "not-found", str(error))
    if isinstance(error, base.Conflict):
        return 409, fhir.operation_outcome("error", "conflict", "the request conflicts with stored data")
    if isinstance(error, base.Unavailable):
        log.error("storage unavailable", extra={"error": type(error).__name__, "detail": str(error)})
        return 503, fhir.operation_outcome("error", "transient", "storage is unavailable; try again later")
    return internal_error("storage", None, error)


def internal_error(where: str, op: Operation | None, error: BaseException | None = None) -> tuple[int, dict[str, Any]]:
    """A bug: 500 with an error id that the log line carries too (its type and place, no values)."""
    error_id = uuid.uuid4().hex[:16]
    log.error("internal error", exc_info=error if error is not None else True, extra={
        "error_id": error_id, "where": where, "operation": op.name if op else None})
    return 500, fhir.operation_outcome("fatal", "exception", f"internal error (error id {error_id})")


def count_items(call: Call) -> int:
    """The size of a call, for metrics: the longest repeating parameter."""
    return max((len(v) for v in call.args.values() if isinstance(v, list)), default=1)
