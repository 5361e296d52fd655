"""The gICS store on MongoDB.

Collections: the catalogue in `gics_catalogue`, one document per domain with the settings of the
domain and of every policy, module and template version in it (`model.catalogue_settings`), as
JSON text: the catalogue is small and read whole, and changing it rewrites its domain's
document, which also keeps two writers of one domain apart. A consent in `gics_consents`, with
its signer ids (`signers`, "type|value", a multikey index finds a person's consents) and its
signed policies (`policy_rows`; and `policies`, each with what a search compares); what it came with in
`gics_consent_resources`; `gics_signer_ids` lists the signer id values of a domain in order,
for pages over persons. What no query looks into (settings, module answers, the resources a
client sent) is kept as JSON text: field names in it are the client's or the configuration's,
and MongoDB reserves some ("$...", names with dots). `seq`, the order consents were recorded
in, comes from a counter document that each recording unit increments: that write is also the
lock that keeps two units from recording at once.

Inside a transaction a duplicate-key error aborts the whole unit, so writes read first what is
there and insert only the rest; a racing unit conflicts with this one on the counter and runs
again, then reading what the other stored.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import orjson
from pymongo import ReturnDocument

from ttp_gateway.backends.base import NotFound
from ttp_gateway.backends.mongo import MongoIndex, MongoSession

from .model import (ConsentDomain, Key, Module, Policy, SignedConsent, SignedPolicy, SignerId, Template,
                    catalogue_settings, to_millis)
from .store import PERMITTING, ConsentStore, PolicyFilter, consent_of, module_rows, policy_end, policy_rows

KINDS = {Policy: "policies", Module: "modules", Template: "templates"}
INDEXES = {
    "gics_catalogue": [MongoIndex("gics_catalogue_domain", [("domain", 1)], unique=True)],
    "gics_consents": [
        MongoIndex("gics_consent_seq", [("seq", 1)], unique=True),
        MongoIndex("gics_consent_id", [("id", 1)], unique=True),
        MongoIndex("gics_consent_fingerprint", [("fingerprint", 1)], unique=True),
        MongoIndex("gics_consent_domain", [("domain", 1), ("seq", 1)]),
        MongoIndex("gics_consent_template", [("domain", 1), ("template_name", 1), ("template_version", 1),
                                             ("seq", 1)]),
        MongoIndex("gics_consent_signers", [("domain", 1), ("signers", 1)]),
        MongoIndex("gics_consent_policies", [("domain", 1), ("policies.name", 1), ("seq", 1)]),
    ],
    "gics_consent_resources": [MongoIndex("gics_consent_resources_seq", [("seq", 1)], unique=True)],
    "gics_signer_ids": [MongoIndex("gics_signer_id_key", [("domain", 1), ("type", 1), ("value", 1), ("seq", 1)],
                                   unique=True)],
}
COLLECTIONS = ("gics_counters",)
_CONSENT_FIELDS = {"_id": 0, "seq": 1, "id": 1, "domain": 1, "template_name": 1, "template_version": 1,
                   "template_type": 1, "signed_at": 1, "recorded_at": 1, "signers": 1, "modules": 1,
                   "policy_rows": 1}


class MongoConsentStore(ConsentStore):
    def __init__(self, session: MongoSession) -> None:
        self._session = session
        self._catalogue = session.collection("gics_catalogue")
        self._consents = session.collection("gics_consents")
        self._resources = session.collection("gics_consent_resources")
        self._signers = session.collection("gics_signer_ids")
        self._counters = session.collection("gics_counters")

    # --- the catalogue ----------------------------------------------------------------------
    def load_catalogue(self) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
        found: tuple[list[dict], list[dict], list[dict], list[dict]] = ([], [], [], [])
        for document in self._catalogue.find({}, {"_id": 0}, sort=[("domain", 1)]):
            found[0].append(_loads(document["settings"]))
            versions = _loads(document["versions"])
            for index, kind in enumerate(KINDS.values(), start=1):
                found[index].extend(versions[kind])
        return found

    def put_domains(self, domains: Sequence[ConsentDomain]) -> list[bool]:
        created = []
        for item in domains:
            result = self._catalogue.update_one(
                {"domain": item.name}, {"$set": {"settings": _dumps(catalogue_settings(item))},
                                        "$setOnInsert": {"versions": _dumps({kind: [] for kind in KINDS.values()})}},
                upsert=True)
            created.append(result.upserted_id is not None)
        return created

    def put_versions(self, items: Sequence[Policy | Module | Template]) -> list[bool]:
        names = sorted({i.domain for i in items})
        documents = {d["domain"]: d for d in self._catalogue.find({"domain": {"$in": names}},
                                                                   {"_id": 0, "domain": 1, "versions": 1})}
        if len(documents) != len(names):
            raise NotFound("a consent domain this unit refers to is not in the store")
        versions = {name: {kind: {(v["name"], v["version"]): v for v in found}
                           for kind, found in _loads(documents[name]["versions"]).items()} for name in names}
        created = []
        for item in items:
            kept = versions[item.domain][KINDS[type(item)]]
            created.append((item.name, item.version) not in kept)
            kept[(item.name, item.version)] = catalogue_settings(item)
        for name in names:
            ordered = {kind: [found[key] for key in sorted(found)] for kind, found in versions[name].items()}
            self._catalogue.update_one({"domain": name}, {"$set": {"versions": _dumps(ordered)}})
        return created

    def _require(self, domains: set[str]) -> None:
        if not domains:
            return
        found = {d["domain"] for d in self._catalogue.find({"domain": {"$in": sorted(domains)}},
                                                           {"_id": 0, "domain": 1})}
        if found != domains:
            raise NotFound("a consent domain this unit refers to is not in the store")

    # --- consents ---------------------------------------------------------------------------
    def add_consents(self, consents: Sequence[SignedConsent]) -> list[SignedConsent]:
        if not consents:
            return []
        fingerprints = [item.fingerprint for item in consents]
        kept: dict[str, SignedConsent] = {}
        for document in self._consents.find({"fingerprint": {"$in": sorted(set(fingerprints))}},
                                             {**_CONSENT_FIELDS, "fingerprint": 1}):
            kept[document["fingerprint"]] = _consent(document)
        new: dict[str, SignedConsent] = {}
        for item, fingerprint in zip(consents, fingerprints):
            if fingerprint not in kept and fingerprint not in new:
                new[fingerprint] = item
        if new:
            self._require({item.domain for item in new.values()})
            counter = self._counters.find_one_and_update({"_id": "consents"}, {"$inc": {"value": len(new)}},
                                                         upsert=True, return_document=ReturnDocument.AFTER)
            first = int(counter["value"]) - len(new) + 1
            for offset, (fingerprint, item) in enumerate(new.items()):
                kept[fingerprint] = replace(item, seq=first + offset)
            stored = [kept[f] for f in new]
            self._consents.insert_many([_document(item, f) for f, item in zip(new, stored)], ordered=True)
            self._signers.insert_many([{"domain": item.domain, "type": s.type, "value": s.value, "seq": item.seq}
                                       for item in stored for s in sorted(item.signer_ids)], ordered=True)
            self._resources.insert_many([{"seq": item.seq, "resources": _dumps(dict(item.resources))}
                                         for item in stored], ordered=True)
        return [kept[f] for f in fingerprints]

    def consents_of_persons(self, domain: str, signer_ids: Sequence[SignerId], *,
                            resources: bool = False) -> list[SignedConsent]:
        if not signer_ids:
            return []
        wanted = [str(s) for s in signer_ids]
        selection = {"domain": domain, "signers": wanted[0] if len(wanted) == 1 else {"$in": wanted}}
        return self._found(self._consents.find(selection, _CONSENT_FIELDS, sort=[("seq", 1)]), resources)

    def consents_page(self, domain: str, *, offset: int = 0, limit: int, template: Key | None = None,
                      resources: bool = True) -> list[SignedConsent]:
        if limit <= 0:
            return []
        documents = self._consents.find(_of_domain(domain, template), _CONSENT_FIELDS, sort=[("seq", 1)],
                                        skip=offset, limit=limit)
        return self._found(documents, resources)

    def count_consents(self, domain: str, template: Key | None = None) -> int:
        return int(self._consents.count_documents(_of_domain(domain, template)))

    def signers_page(self, domain: str, id_type: str, *, after: str = "",
                     limit: int) -> list[tuple[str, list[SignedConsent]]]:
        rows = self._signers.find({"domain": domain, "type": id_type, "value": {"$gt": after}},
                                  {"_id": 0, "value": 1, "seq": 1}, sort=[("value", 1), ("seq", 1)], limit=limit)
        pairs = [(d["value"], d["seq"]) for d in rows]
        if len(pairs) == limit:  # the last value may have more consents than the page held
            last = pairs[-1][0]
            pairs = [p for p in pairs if p[0] != last]
            if not pairs:  # one value with more consents than a page: all of them
                pairs = [(last, d["seq"]) for d in self._signers.find(
                    {"domain": domain, "type": id_type, "value": last}, {"_id": 0, "seq": 1}, sort=[("seq", 1)])]
        consents = {c.seq: c for c in self._found(self._consents.find(
            {"seq": {"$in": sorted({seq for _, seq in pairs})}}, _CONSENT_FIELDS), False)}
        found: dict[str, list[SignedConsent]] = {}
        for value, seq in pairs:
            found.setdefault(value, []).append(consents[seq])
        return list(found.items())

    # --- search -------------------------------------------------------------------------------
    def signed_policies_page(self, wanted: PolicyFilter, *, offset: int = 0, limit: int,
                             resources: bool = False) -> list[tuple[SignedConsent, SignedPolicy]]:
        if limit <= 0:
            return []
        rows = self._consents.aggregate([
            *self._policy_stages(wanted), {"$skip": offset}, {"$limit": limit},
            {"$project": {"_id": 0, "seq": 1, "position": 1}}], allowDiskUse=True)
        # The unwound document holds one policy; the consent is read whole, with all of them.
        whole = {c.seq: c for c in self._found(self._consents.find(
            {"seq": {"$in": sorted({d["seq"] for d in rows})}}, _CONSENT_FIELDS), resources)}
        return [(whole[d["seq"]], whole[d["seq"]].policies[d["position"]]) for d in rows]

    def count_signed_policies(self, wanted: PolicyFilter) -> int:
        counted = self._consents.aggregate([*self._policy_stages(wanted), {"$count": "n"}], allowDiskUse=True)
        return int(counted[0]["n"]) if counted else 0

    def matching_consents_page(self, wanted: PolicyFilter, *, offset: int = 0, limit: int) -> list[SignedConsent]:
        if limit <= 0:
            return []
        documents = self._consents.find(_matching(wanted), _CONSENT_FIELDS, sort=[("seq", 1)], skip=offset,
                                        limit=limit)
        return self._found(documents, True)

    def count_matching_consents(self, wanted: PolicyFilter) -> int:
        return int(self._consents.count_documents(_matching(wanted)))

    @staticmethod
    def _policy_stages(wanted: PolicyFilter) -> list[dict[str, Any]]:
        on_consents = _of_consents(wanted)
        if wanted.policies is not None:
            on_consents["policies.name"] = {"$in": sorted(wanted.policies)}
        # In the order of the (domain, seq) index, each consent's policies in their stored order:
        # pages need no sort of the unwound policies.
        return [{"$match": on_consents}, {"$sort": {"seq": 1}},
                {"$unwind": {"path": "$policies", "includeArrayIndex": "position"}},
                {"$match": _on_policies(wanted, "policies.")}]

    def _found(self, documents: list[dict[str, Any]], resources: bool) -> list[SignedConsent]:
        found = [_consent(d) for d in documents]
        if resources and found:
            given = {d["seq"]: _loads(d["resources"]) for d in self._resources.find(
                {"seq": {"$in": [c.seq for c in found]}}, {"_id": 0, "seq": 1, "resources": 1})}
            found = [replace(c, resources=given.get(c.seq, {})) for c in found]
        return found


def _of_domain(domain: str, template: Key | None) -> dict[str, Any]:
    selection: dict[str, Any] = {"domain": domain}
    if template is not None:
        selection.update(template_name=template.name, template_version=template.version)
    return selection


def _of_consents(wanted: PolicyFilter) -> dict[str, Any]:
    selection = _of_domain(wanted.domain, wanted.template)
    if wanted.signer_ids:
        selection["signers"] = {"$in": [str(s) for s in wanted.signer_ids]}
    return selection


def _matching(wanted: PolicyFilter) -> dict[str, Any]:
    selection = _of_consents(wanted)
    if wanted.policies is not None and not wanted.policies:
        selection["seq"] = {"$in": []}
    elif wanted.on_policies:
        selection["policies"] = {"$elemMatch": _on_policies(wanted, "")}
    return selection


def _on_policies(wanted: PolicyFilter, prefix: str) -> dict[str, Any]:
    """The criteria on one signed policy, its fields under `prefix`."""
    status, start, end = prefix + "status", prefix + "start", prefix + "end"
    conditions: list[dict[str, Any]] = []
    if wanted.policies is not None:
        conditions.append({prefix + "name": {"$in": sorted(wanted.policies)}})
    if wanted.permit is not None:
        at = to_millis(wanted.at)  # type: ignore[arg-type]
        if wanted.permit:
            conditions.append({status: {"$in": list(PERMITTING)}, end: {"$gt": at}})
        else:
            conditions.append({"$or": [{status: {"$nin": list(PERMITTING)}}, {end: {"$lte": at}}]})
    for prefix_, low_moment, high_moment in wanted.periods:
        low, high = to_millis(low_moment), to_millis(high_moment)
        conditions.append({
            "eq": {start: {"$lte": low}, end: {"$gte": high}},
            "ne": {"$or": [{start: {"$gt": low}}, {end: {"$lt": high}}]},
            "gt": {end: {"$gt": high}}, "ge": {end: {"$gt": low}},
            "lt": {start: {"$lt": low}}, "le": {start: {"$lt": high}},
            "sa": {start: {"$gte": high}}, "eb": {end: {"$lte": low}}}[prefix_])
    return {"$and": conditions} if conditions else {}


def _document(item: SignedConsent, fingerprint: str) -> dict[str, Any]:
    start = to_millis(item.date)
    return {"seq": item.seq, "id": item.id, "fingerprint": fingerprint, "domain": item.domain,
            "template_name": item.template.name, "template_version": item.template.version,
            "template_type": item.template_type.value, "signed_at": start, "recorded_at": to_millis(item.recorded),
            "signers": [str(s) for s in sorted(item.signer_ids)], "modules": _dumps(module_rows(item)),
            "policy_rows": _dumps(policy_rows(item)),
            # what searches compare, in the order of `policy_rows`
            "policies": [{"name": p.name, "status": p.status.value, "start": start, "end": policy_end(p)}
                         for p in item.policies]}


def _consent(document: dict[str, Any]) -> SignedConsent:
    return consent_of(
        seq=document["seq"], id=document["id"], domain=document["domain"], template_name=document["template_name"],
        template_version=document["template_version"], template_type=document["template_type"],
        signed_at=document["signed_at"], recorded_at=document["recorded_at"],
        signer_ids=[signer.split("|", 1) for signer in document["signers"]], modules=_loads(document["modules"]),
        policies=_loads(document["policy_rows"]))


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads(text: str) -> Any:
    return orjson.loads(text)
