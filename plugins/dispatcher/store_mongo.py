"""The dispatcher's store on MongoDB.

Collections: `dispatcher_studies` `{name, settings, sequence, persons, filters, lock}` (the last
change number, person id and filter id handed out, and a counter that `lock_study` increments);
`dispatcher_bloom_filters` `{study, id, version, person, site, bloom_filter, sequence}` (the filter
as BSON binary, null once withdrawn); `dispatcher_person_keys` `{study, key, person}`;
`dispatcher_cases`, `dispatcher_tasks` and `dispatcher_idat` keyed by the callers' ids.

The study lock is a write to the study's document inside the unit's transaction: a second unit
that locks the same study conflicts with it and runs again (`Busy`) once the first has ended.
Person and filter ids come from the study's document too, so they are numbered per study.
Times are BSON dates (UTC milliseconds), returned as timezone-aware datetimes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from bson.binary import Binary
from pymongo import ReturnDocument

from ttp_gateway.backends.base import NotFound
from ttp_gateway.backends.mongo import MongoIndex, MongoSession

from .store import BloomFilterRow, ClearingCase, LinkageStore, StudyRecord, Task

INDEXES = {
    "dispatcher_studies": [MongoIndex("study_name", [("name", 1)], unique=True)],
    "dispatcher_bloom_filters": [
        MongoIndex("bloom_filter_id", [("study", 1), ("id", 1)], unique=True),
        MongoIndex("bloom_filter_changes", [("study", 1), ("version", 1), ("sequence", 1)]),
        MongoIndex("bloom_filter_person", [("study", 1), ("person", 1), ("site", 1), ("version", 1)]),
    ],
    "dispatcher_person_keys": [MongoIndex("person_key", [("study", 1), ("key", 1)], unique=True)],
    "dispatcher_cases": [MongoIndex("case_open", [("study", 1), ("status", 1), ("expires", 1)])],
    "dispatcher_tasks": [
        MongoIndex("task_site", [("study", 1), ("site", 1), ("status", 1), ("created", 1), ("_id", 1)]),
        MongoIndex("task_due", [("study", 1), ("status", 1), ("expires", 1)]),
        MongoIndex("task_case", [("case", 1)]),
    ],
    "dispatcher_idat": [MongoIndex("idat_case", [("case", 1)])],
}


class MongoLinkageStore(LinkageStore):
    def __init__(self, session: MongoSession) -> None:
        self._studies = session.collection("dispatcher_studies")
        self._filters = session.collection("dispatcher_bloom_filters")
        self._keys = session.collection("dispatcher_person_keys")
        self._cases = session.collection("dispatcher_cases")
        self._tasks = session.collection("dispatcher_tasks")
        self._idat = session.collection("dispatcher_idat")

    # --- studies and persons ------------------------------------------------------------------
    def get_studies(self) -> list[StudyRecord]:
        return [StudyRecord(d["name"], d["settings"])
                for d in self._studies.find({}, {"_id": 0, "name": 1, "settings": 1}, sort=[("name", 1)])]

    def put_study(self, record: StudyRecord) -> bool:
        result = self._studies.update_one(
            {"name": record.name},
            {"$set": {"settings": dict(record.settings)},
             "$setOnInsert": {"sequence": 0, "persons": 0, "filters": 0, "lock": 0}}, upsert=True)
        return result.upserted_id is not None

    def lock_study(self, name: str) -> None:
        if self._studies.update_one({"name": name}, {"$inc": {"lock": 1}}).matched_count == 0:
            raise NotFound(f"study {name!r} is not in the store")

    def create_persons(self, name: str, count: int) -> list[int]:
        if count <= 0:
            return []
        last = self._advance(name, "persons", count)
        return list(range(last - count + 1, last + 1))

    def add_bloom_filters(self, name: str, filters: Sequence[tuple[int, str, str, bytes]]) -> None:
        if not filters:
            return
        first_sequence = self._advance(name, "sequence", len(filters)) - len(filters) + 1
        first_id = self._advance(name, "filters", len(filters)) - len(filters) + 1
        self._filters.insert_many([
            _filter_document(name, first_id + offset, version, owner, site, data, first_sequence + offset)
            for offset, (owner, site, version, data) in enumerate(filters)], ordered=True)

    def replace_bloom_filters(self, name: str, owner: int, site: str, version: str, data: bytes) -> None:
        current = [d["id"] for d in self._filters.find(
            {"study": name, "person": owner, "site": site, "version": version, "bloom_filter": {"$ne": None}},
            {"_id": 0, "id": 1}, sort=[("id", 1)])]
        first = self._advance(name, "sequence", len(current) + 1) - len(current)
        for offset, bf_id in enumerate(current):
            self._filters.update_one({"study": name, "id": bf_id},
                                     {"$set": {"bloom_filter": None, "sequence": first + offset}})
        new_id = self._advance(name, "filters", 1)
        self._filters.insert_one(_filter_document(name, new_id, version, owner, site, data, first + len(current)))

    def get_bloom_filter_changes(self, name: str, version: str, after: int) -> list[BloomFilterRow]:
        documents = self._filters.find({"study": name, "version": version, "sequence": {"$gt": after}},
                                       sort=[("sequence", 1)])
        return [BloomFilterRow(int(d["id"]), int(d["person"]), d["site"], version,
                               None if d["bloom_filter"] is None else bytes(d["bloom_filter"]), int(d["sequence"]))
                for d in documents]

    def get_bloom_filter_owners(self, name: str, ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        if not ids:
            return {}
        documents = self._filters.find({"study": name, "id": {"$in": list(ids)}}, {"id": 1, "person": 1, "site": 1})
        return {int(d["id"]): (int(d["person"]), d["site"]) for d in documents}

    def find_persons(self, name: str, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        documents = self._keys.find({"study": name, "key": {"$in": list(keys)}}, {"_id": 0, "key": 1, "person": 1})
        return {d["key"]: int(d["person"]) for d in documents}

    def add_person_keys(self, name: str, keys: Sequence[tuple[str, int]]) -> None:
        first: dict[str, int] = {}
        for key, owner in keys:
            first.setdefault(key, owner)  # the first pair of a key wins, as in SQL
        if not first:
            return
        taken = set(self.find_persons(name, list(first)))
        fresh = [{"study": name, "key": key, "person": owner} for key, owner in first.items() if key not in taken]
        if fresh:
            self._keys.insert_many(fresh, ordered=True)

    # --- clearing and tasks -------------------------------------------------------------------
    def add_case(self, clearing: ClearingCase) -> None:
        self._cases.insert_one({
            "_id": clearing.id, "study": clearing.study, "site": clearing.site, "version": clearing.version,
            "bloom_filter": clearing.bloom_filter, "candidates": list(clearing.candidates),
            "status": clearing.status, "person": clearing.person, "created": _stored(clearing.created),
            "expires": _stored(clearing.expires)})

    def get_case(self, case_id: str) -> ClearingCase | None:
        document = self._cases.find_one({"_id": case_id})
        return None if document is None else _case(document)

    def close_case(self, case_id: str, status: str, decided: int | None) -> bool:
        result = self._cases.update_one({"_id": case_id, "status": "open"},
                                        {"$set": {"status": status, "person": decided}})
        return bool(result.matched_count == 1)

    def get_due_cases(self, name: str, now: datetime) -> list[ClearingCase]:
        documents = self._cases.find({"study": name, "status": "open", "expires": {"$lte": _stored(now)}},
                                     sort=[("expires", 1), ("_id", 1)])
        return [_case(d) for d in documents]

    def get_open_cases(self, name: str) -> list[ClearingCase]:
        documents = self._cases.find({"study": name, "status": "open"}, sort=[("created", 1), ("_id", 1)])
        return [_case(d) for d in documents]

    def update_case_candidates(self, case_id: str, candidates: list[dict[str, Any]]) -> None:
        self._cases.update_one({"_id": case_id}, {"$set": {"candidates": list(candidates)}})

    def add_tasks(self, tasks: Sequence[Task]) -> None:
        if tasks:
            self._tasks.insert_many([{
                "_id": t.id, "study": t.study, "site": t.site, "kind": t.kind, "case": t.case,
                "details": dict(t.details), "status": t.status, "created": _stored(t.created),
                "expires": _stored(t.expires)} for t in tasks], ordered=True)

    def get_task(self, task_id: str) -> Task | None:
        document = self._tasks.find_one({"_id": task_id})
        return None if document is None else _task(document)

    def get_open_tasks(self, name: str, site: str | None = None, case: str | None = None) -> list[Task]:
        selection: dict[str, Any] = {"study": name, "status": "open"}
        if site is not None:
            selection["site"] = site
        if case is not None:
            selection["case"] = case
        return [_task(d) for d in self._tasks.find(selection, sort=[("created", 1), ("_id", 1)])]

    def set_task_status(self, task_ids: Sequence[str], status: str) -> None:
        if task_ids:
            self._tasks.update_many({"_id": {"$in": list(task_ids)}}, {"$set": {"status": status}})

    def complete_task(self, task_id: str, details: dict[str, Any]) -> None:
        self._tasks.update_one({"_id": task_id}, {"$set": {"status": "done", "details": dict(details)}})

    def expire_tasks(self, name: str, now: datetime) -> int:
        result = self._tasks.update_many({"study": name, "status": "open", "expires": {"$lte": _stored(now)}},
                                         {"$set": {"status": "expired"}})
        return int(result.modified_count)

    def put_idat(self, case_id: str, task_id: str, site: str, sealed: bytes) -> None:
        self._idat.insert_one({"_id": task_id, "case": case_id, "site": site, "data": Binary(sealed)})

    def get_idat(self, case_id: str) -> dict[str, bytes]:
        return {d["_id"]: bytes(d["data"]) for d in self._idat.find({"case": case_id}, {"data": 1})}

    def delete_idat(self, case_id: str) -> None:
        self._idat.delete_many({"case": case_id})

    def _advance(self, name: str, counter: str, count: int) -> int:
        """Add `count` to a counter of the study's document; its new value."""
        document = self._studies.find_one_and_update({"name": name}, {"$inc": {counter: count}},
                                                     projection={"_id": 0, counter: 1},
                                                     return_document=ReturnDocument.AFTER)
        if document is None:
            raise NotFound(f"study {name!r} is not in the store")
        return int(document[counter])


def _filter_document(name: str, bf_id: int, version: str, owner: int, site: str, data: bytes,
                     sequence: int) -> dict[str, Any]:
    return {"study": name, "id": bf_id, "version": version, "person": owner, "site": site,
            "bloom_filter": Binary(data), "sequence": sequence}


def _stored(moment: datetime) -> datetime:
    """A time as BSON keeps it: UTC, whole milliseconds."""
    moment = moment.astimezone(timezone.utc)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _loaded(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _case(d: dict[str, Any]) -> ClearingCase:
    return ClearingCase(id=d["_id"], study=d["study"], site=d["site"], version=d["version"],
                        bloom_filter=d["bloom_filter"], candidates=list(d["candidates"]), status=d["status"],
                        person=None if d.get("person") is None else int(d["person"]),
                        created=_loaded(d["created"]), expires=_loaded(d["expires"]))


def _task(d: dict[str, Any]) -> Task:
    return Task(id=d["_id"], study=d["study"], site=d["site"], kind=d["kind"], case=d.get("case"),
                details=dict(d["details"]), status=d["status"], created=_loaded(d["created"]),
                expires=_loaded(d["expires"]))
