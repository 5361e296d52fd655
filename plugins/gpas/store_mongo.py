"""The gPAS store on MongoDB.

Collections: `gpas_domains` `{name, settings, description}`, unique on name; `gpas_pseudonyms`
`{domain, pseudonym, original, number}`, unique on (domain, pseudonym) and on (domain, original,
number) for documents whose original is a string (anonymised documents have no `original`, and a
plain unique index would count the missing field as a value).

Inside a transaction a duplicate-key error aborts the whole unit, so inserts read first which
keys are taken and insert only the rest; a writer that races this one conflicts with it, and the
unit runs again (`Busy`), now reading what the other stored.
"""

from __future__ import annotations

from typing import Any, Sequence

from ttp_gateway.backends.base import NotFound
from ttp_gateway.backends.mongo import MongoIndex, MongoSession

from .store import DomainRecord, PseudonymRow, PseudonymStore

# The partial filter of the (domain, original, number) index. Queries by original repeat it, so
# that the query planner can prove the partial index covers them and use it.
HAS_ORIGINAL: dict[str, Any] = {"$type": "string"}

INDEXES = {
    "gpas_domains": [MongoIndex("domain_name", [("name", 1)], unique=True)],
    "gpas_pseudonyms": [
        MongoIndex("pseudonym_per_domain", [("domain", 1), ("pseudonym", 1)], unique=True),
        MongoIndex("original_number_per_domain", [("domain", 1), ("original", 1), ("number", 1)],
                   unique=True, partial={"original": HAS_ORIGINAL}),
    ],
}


class MongoPseudonymStore(PseudonymStore):
    def __init__(self, session: MongoSession) -> None:
        self._domains = session.collection("gpas_domains")
        self._pseudonyms = session.collection("gpas_pseudonyms")
        self._known: set[str] = session.state.setdefault("known_domains", set())
        self._write = session.write
        self._session = session

    # --- domains ------------------------------------------------------------------------------
    def get_domains(self) -> list[DomainRecord]:
        documents = self._domains.find({}, {"_id": 0, "name": 1, "settings": 1, "description": 1},
                                       sort=[("name", 1)])
        return [DomainRecord(d["name"], d["settings"], d.get("description", "")) for d in documents]

    def put_domain(self, record: DomainRecord) -> bool:
        result = self._domains.update_one(
            {"name": record.name},
            {"$set": {"settings": dict(record.settings), "description": record.description}}, upsert=True)
        return result.upserted_id is not None

    # --- pseudonyms ---------------------------------------------------------------------------
    def get_pseudonyms(self, domain: str, originals: Sequence[str]) -> dict[str, str]:
        if not originals:
            return {}
        self._require(domain)
        documents = self._pseudonyms.find({**_of_originals(domain, originals), "number": 0},
                                          {"_id": 0, "original": 1, "pseudonym": 1})
        return {d["original"]: d["pseudonym"] for d in documents}

    def get_pseudonym_rows(self, domain: str, originals: Sequence[str]) -> dict[str, list[PseudonymRow]]:
        result: dict[str, list[PseudonymRow]] = {}
        if not originals:
            return result
        self._require(domain)
        documents = self._pseudonyms.find(_of_originals(domain, originals),
                                          {"_id": 0, "original": 1, "number": 1, "pseudonym": 1})
        for original, number, value in sorted((d["original"], d["number"], d["pseudonym"]) for d in documents):
            result.setdefault(original, []).append(PseudonymRow(original, number, value))
        return result

    def get_originals(self, domain: str, pseudonyms: Sequence[str]) -> dict[str, str | None]:
        if not pseudonyms:
            return {}
        self._require(domain)
        documents = self._pseudonyms.find({"domain": domain, "pseudonym": {"$in": list(pseudonyms)}},
                                          {"_id": 0, "pseudonym": 1, "original": 1})
        return {d["pseudonym"]: d.get("original") for d in documents}

    def insert_pseudonyms(self, domain: str, rows: Sequence[PseudonymRow]) -> set[PseudonymRow]:
        if not rows:
            return set()
        self._require(domain)
        taken_pseudonyms = {d["pseudonym"] for d in self._pseudonyms.find(
            {"domain": domain, "pseudonym": {"$in": [r.pseudonym for r in rows]}}, {"_id": 0, "pseudonym": 1})}
        taken_numbers = {(d["original"], d["number"]) for d in self._pseudonyms.find(
            _of_originals(domain, sorted({r.original for r in rows if r.original is not None})),
            {"_id": 0, "original": 1, "number": 1})}
        stored: list[PseudonymRow] = []
        for row in rows:  # in order: of rows sharing a key, the first one wins, as in SQL
            # A row without an original holds no (original, number) key, as a NULL in SQL.
            number = None if row.original is None else (row.original, row.number)
            if row.pseudonym in taken_pseudonyms or number in taken_numbers:
                continue
            taken_pseudonyms.add(row.pseudonym)
            if number is not None:
                taken_numbers.add(number)
            stored.append(row)
        if stored:
            self._pseudonyms.insert_many([_document(domain, row) for row in stored], ordered=True)
        return set(stored)

    def delete_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        if not originals:
            return set()
        self._require(domain)
        selection = _of_originals(domain, originals)
        known = set(self._pseudonyms.distinct("original", selection))
        if known:
            self._pseudonyms.delete_many(selection)
        return known

    def anonymize_originals(self, domain: str, originals: Sequence[str]) -> set[str]:
        if not originals:
            return set()
        self._require(domain)
        selection = _of_originals(domain, originals)
        known = set(self._pseudonyms.distinct("original", selection))
        if known:
            # Without the field the document leaves the partial unique index, so the original
            # may later be given a new pseudonym, as with SQL's NULL.
            self._pseudonyms.update_many(selection, {"$unset": {"original": ""}})
        return known

    def count_pseudonyms(self, domain: str) -> int:
        self._require(domain)
        return int(self._pseudonyms.count_documents({"domain": domain}))

    def _require(self, domain: str) -> None:
        """NotFound unless the domain exists; a domain once seen committed is not asked again."""
        if domain in self._known:
            return
        if self._domains.find_one({"name": domain}, {"_id": 1}) is None:
            raise NotFound(f"domain {domain!r} is not in the store")
        if self._write:
            self._session.after_commit(lambda: self._known.add(domain))
        else:
            self._known.add(domain)


def _of_originals(domain: str, originals: Sequence[str]) -> dict[str, Any]:
    return {"domain": domain, "original": {"$in": list(originals), **HAS_ORIGINAL}}


def _document(domain: str, row: PseudonymRow) -> dict[str, Any]:
    document: dict[str, Any] = {"domain": domain, "pseudonym": row.pseudonym, "number": row.number}
    if row.original is not None:
        document["original"] = row.original
    return document
