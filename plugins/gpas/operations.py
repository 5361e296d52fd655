"""The seven gPAS operations: declarations and handlers.

Response shapes follow the implementation guide's examples part for part: a found item lists
target, original and pseudonym; an item that fails gets an `error` (or a `successStatus` with
an issue-type code) and never fails the others. A domain named once for the whole request that
does not exist fails the request with 404. Identifiers carry the endpoint's configured system
(`[gpas] identifier_system`, the guide's `https://ths-greifswald.de/gpas` by default).

The names of older gPAS versions answer in those versions' shapes, because their clients read
those shapes (fhir-pseudonymizer chooses its parser by the gPAS version it is configured for):

- gPAS before 1.10.2, `GET $pseudonymize-allow-create?domain=…&original=…` and
  `GET $de-pseudonymize?domain=…&pseudonym=…`: one parameter per answered value, named after
  the value sent and carrying the answer as valueString (an unknown pseudonym gets none);
- gPAS 1.10.2, the same names with POST and Parameters: a `pseudonym-result-set` per value with
  `target`, `original` and `pseudonym` parts as valueString, or an `error` parameter.
"""

from __future__ import annotations

from typing import Any, Callable

from ttp_gateway.core import fhir
from ttp_gateway.core.errors import FhirError, NotAllowed
from ttp_gateway.core.gateway import Call
from ttp_gateway.core.operations import Operation, Param

from .domains import Domain
from .service import PairOutcome, Pseudonymizer

ENDPOINT = "gpas"
SYSTEM = "https://ths-greifswald.de/gpas"  # the guide's Identifier.system, the default
LEGACY_ALLOW_CREATE = "pseudonymize-allow-create"
LEGACY_DE_PSEUDONYMIZE = "de-pseudonymize"
RESULT_SET = "pseudonym-result-set"
CANONICAL = "https://ths-greifswald.de/fhir/OperationDefinition/gpas"
MAX_FURTHER_PER_ITEM = 10_000

NOT_FOUND = fhir.issue_type("not-found")
ANONYMISED = fhir.issue_type("deleted")
INVALID = fhir.issue_type("invalid")
DUPLICATE = fhir.issue_type("duplicate")
NOT_MULTI_PSN = fhir.issue_type("business-rule")


def _target(doc: str, aliases: tuple[str, ...] = ()) -> Param:
    return Param("target", "string", 1, 1, doc, scope="domains", aliases=aliases)


def _code(name: str, coding: dict) -> dict[str, Any]:
    return {"name": name, "valueCoding": coding}


class GpasOperations:
    """Handlers bound to one gateway's pseudonymizer."""

    def __init__(self, pseudonymizer: Pseudonymizer, system: str = SYSTEM) -> None:
        self.psn = pseudonymizer
        self.system = system

    def _id(self, kind: str, value: str) -> dict[str, Any]:
        return {"name": kind, "valueIdentifier": {"system": self.system, "value": value}}

    # --- handlers -------------------------------------------------------------------------
    def pseudonymize(self, call: Call) -> dict:
        domain = self.psn.domain(call.args["target"])
        originals = call.args["original"]
        with call.reading() as unit:
            found = self.psn.lookup(unit, domain, originals)
        call.audit("pseudonymize", domain=domain.name, items=len(originals))
        return self._pseudonym_answer(domain.name, originals, found)

    def pseudonymize_allow_create(self, call: Call) -> dict:
        domain = self.psn.domain(call.args["target"])
        with call.writing() as unit:
            found = self.psn.get_or_create(unit, domain, [o for o in call.args["original"] if o])
        return self._allow_create_answer(call, domain, found)

    def pseudonymize_allow_create_together(self, calls: list[Call]) -> list[dict | FhirError]:
        """Concurrent single calls answered together (`core.coalescing`): one get-or-create per
        domain for the originals of all of them, each call answered for its own."""
        results: list[dict | FhirError] = []
        by_domain: dict[str, tuple[Domain, list[int]]] = {}
        for index, call in enumerate(calls):
            try:
                domain = self.psn.domain(call.args["target"])
            except FhirError as error:  # fails alone, having written nothing
                results.append(error)
                continue
            results.append({})
            by_domain.setdefault(domain.name, (domain, []))[1].append(index)
        for name in sorted(by_domain):  # domains in one order, as the originals within one
            domain, indexes = by_domain[name]
            with calls[indexes[0]].writing() as unit:
                found = self.psn.get_or_create(
                    unit, domain, [o for i in indexes for o in calls[i].args["original"] if o])
            for index in indexes:
                results[index] = self._allow_create_answer(calls[index], domain, found)
        return results

    def _allow_create_answer(self, call: Call, domain: Domain, found: dict[str, str]) -> dict:
        originals = call.args["original"]
        call.audit("pseudonymize-allow-create", domain=domain.name, items=len(originals))
        if call.invoked_as == LEGACY_ALLOW_CREATE:
            return _legacy_answer(call, domain.name, originals, found, "original", lambda _: INVALID)
        return self._pseudonym_answer(domain.name, originals, found, missing=INVALID)

    def de_pseudonymize(self, call: Call) -> dict:
        domain = self.psn.domain(call.args["target"])
        pseudonyms = call.args["pseudonym"]
        with call.reading() as unit:
            owners = self.psn.originals(unit, domain, pseudonyms)
        call.audit("de-pseudonymize", domain=domain.name, items=len(pseudonyms), pseudonyms=pseudonyms)
        if call.invoked_as == LEGACY_DE_PSEUDONYMIZE:
            return _legacy_answer(call, domain.name, pseudonyms,
                                  {p: o for p, o in owners.items() if o is not None}, "pseudonym",
                                  lambda p: ANONYMISED if p in owners else NOT_FOUND)
        answer = []
        for pseudonym in pseudonyms:
            original = owners.get(pseudonym)
            if original is not None:
                answer.append({"name": "original", "part": [
                    self._id("target", domain.name), self._id("original", original),
                    self._id("pseudonym", pseudonym)]})
            else:
                code = ANONYMISED if pseudonym in owners else NOT_FOUND
                answer.append({"name": "error", "part": [self._id("pseudonym", pseudonym),
                                                         _code("error-code", code)]})
        return fhir.parameters(answer)

    def pseudonymize_secondary(self, call: Call) -> dict:
        items = call.args["original"]
        by_domain: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            by_domain.setdefault(item["target"], []).append(index)
        created: dict[int, list[str]] = {}
        errors: dict[int, dict] = {}
        with call.writing() as unit:
            for name, indexes in by_domain.items():
                domain = self.psn.domains.get(name)
                if domain is None or not domain.multi_psn:
                    for index in indexes:
                        errors[index] = NOT_FOUND if domain is None else NOT_MULTI_PSN
                    continue
                wanted = []
                for index in indexes:
                    item = items[index]
                    if not item["value"] or not 0 < item["count"] <= MAX_FURTHER_PER_ITEM:
                        errors[index] = INVALID
                    else:
                        wanted.append(index)
                handed = self.psn.add_further(unit, domain, [(items[i]["value"], items[i]["count"])
                                                           for i in wanted])
                position = 0
                for index in wanted:
                    count = items[index]["count"]
                    created[index] = [p for _, p in handed[position:position + count]]
                    position += count
        call.audit("pseudonymize-secondary", domains=sorted(by_domain), items=len(items),
                   created=sum(len(v) for v in created.values()))
        answer = []
        for index, item in enumerate(items):
            if index in errors:
                answer.append({"name": "error", "part": [self._id("target", item["target"]),
                                                         _code("error-code", errors[index])]})
                continue
            for pseudonym in created[index]:
                answer.append({"name": "secondarypseudonym", "part": [
                    self._id("target", item["target"]), self._id("original", item["value"]),
                    self._id("value", pseudonym), _code("result-code", fhir.MSG_CREATED)]})
        return fhir.parameters(answer)

    def delete_pseudonyms(self, call: Call) -> dict:
        domain = self.psn.domain(call.args["target"])
        if not domain.deletable:
            raise NotAllowed(f"domain {domain.name!r} does not allow deleting pseudonyms")
        originals = call.args["original"]
        with call.writing() as unit:
            deleted = self.psn.delete(unit, domain, originals)
        call.audit("delete-pseudonyms", domain=domain.name, items=len(originals), deleted=len(deleted))
        return self._status_answer(domain.name, originals, deleted, fhir.MSG_DELETED)

    def anonymize_originals(self, call: Call) -> dict:
        domain = self.psn.domain(call.args["target"])
        originals = call.args["original"]
        with call.writing() as unit:
            anonymised = self.psn.anonymize(unit, domain, originals)
        call.audit("anonymize-originals", domain=domain.name, items=len(originals),
                   anonymised=len(anonymised))
        return self._status_answer(domain.name, originals, anonymised, fhir.MSG_UPDATED)

    def insert_value_pseudonym_pairs(self, call: Call) -> dict:
        items = call.args["pseudonym"]
        outcomes: dict[int, PairOutcome | None] = {}
        by_domain: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            by_domain.setdefault(item["target"], []).append(index)
        with call.writing() as unit:
            for name, indexes in by_domain.items():
                domain = self.psn.domains.get(name)
                if domain is None:
                    outcomes.update((i, None) for i in indexes)
                    continue
                pairs = [(items[i]["original"], items[i]["value"]) for i in indexes]
                outcomes.update(zip(indexes, self.psn.insert_pairs(unit, domain, pairs)))
        call.audit("insert-value-pseudonym-pairs", domains=sorted(by_domain), items=len(items),
                   created=sum(1 for o in outcomes.values() if o is PairOutcome.CREATED))
        answer = []
        for index, item in enumerate(items):
            outcome = outcomes[index]
            if outcome is None:  # unknown domain: the guide's example names only the target
                parts = [self._id("target", item["target"]), _code("result-code", NOT_FOUND)]
            else:
                parts = [self._id("target", item["target"]), self._id("original", item["original"]),
                         self._id("value", item["value"]), _code("result-code", _PAIR_CODES[outcome])]
            answer.append({"name": "successStatus", "part": parts})
        return fhir.parameters(answer)

    # --- answers --------------------------------------------------------------------------
    def _pseudonym_answer(self, domain: str, originals: list[str], found: dict[str, str],
                          missing: dict = NOT_FOUND) -> dict:
        # The hot path of large batches: dict literals, one shared target part.
        system = self.system
        target = self._id("target", domain)
        error_code = _code("error-code", missing)
        answer = []
        append = answer.append
        for original in originals:
            pseudonym = found.get(original)
            if pseudonym is not None:
                append({"name": "pseudonym", "part": [
                    target,
                    {"name": "original", "valueIdentifier": {"system": system, "value": original}},
                    {"name": "pseudonym", "valueIdentifier": {"system": system, "value": pseudonym}}]})
            else:
                append({"name": "error", "part": [self._id("original", original), error_code]})
        return fhir.parameters(answer)

    def _status_answer(self, domain: str, originals: list[str], done: set[str], success: dict) -> dict:
        target = self._id("target", domain)
        return fhir.parameters(
            {"name": "successStatus", "part": [
                target, self._id("original", original),
                _code("result-code", success if original in done else NOT_FOUND)]}
            for original in originals)

    # --- declarations ---------------------------------------------------------------------
    def declarations(self) -> list[Operation]:
        originals = Param("original", "string", 1, "*", "original values")
        found = Param("pseudonym", None, 0, "*", "the pseudonym of one original", parts=(
            Param("original", "Identifier", 1, 1), Param("target", "Identifier", 1, 1),
            Param("pseudonym", "Identifier", 1, 1)))
        error = Param("error", None, 0, "*", "an original without an answer", parts=(
            Param("target", "Identifier", 0, 1), Param("original", "Identifier", 0, 1),
            Param("error-code", "Coding", 1, 1)))
        status = Param("successStatus", None, 1, "*", "the outcome per original", parts=(
            Param("target", "Identifier", 0, 1), Param("original", "Identifier", 1, 1),
            Param("result-code", "Coding", 1, 1)))
        return [
            self._op("pseudonymize", self.pseudonymize, affects_state=False, quick_read=True,
                     description="The pseudonyms of 1..n originals in one domain; unknown "
                                 "originals get an error part.",
                     parameters=(_target("domain to look in"), originals), returns=(found, error)),
            self._op("pseudonymizeAllowCreate", self.pseudonymize_allow_create,
                     aliases=(LEGACY_ALLOW_CREATE,), legacy_get=(LEGACY_ALLOW_CREATE,), quick_write=True,
                     coalesce=self.pseudonymize_allow_create_together,
                     description="The pseudonyms of 1..n originals in one domain, created where "
                                 "missing; idempotent.",
                     parameters=(_target("domain to look in and create in", aliases=("domain",)),
                                 originals),
                     returns=(found, error)),
            self._op("dePseudonymize", self.de_pseudonymize, aliases=(LEGACY_DE_PSEUDONYMIZE,),
                     affects_state=False, quick_read=True,
                     description="The originals of 1..n pseudonyms in one domain; unknown and "
                                 "anonymised pseudonyms get an error part.",
                     parameters=(_target("domain to look in", aliases=("domain",)),
                                 Param("pseudonym", "string", 1, "*", "pseudonyms")),
                     returns=(Param("original", None, 0, "*", "the original of one pseudonym", parts=(
                         Param("original", "Identifier", 1, 1), Param("target", "Identifier", 1, 1),
                         Param("pseudonym", "Identifier", 1, 1))),
                              Param("error", None, 0, "*", "a pseudonym without an original", parts=(
                                  Param("original", "Identifier", 0, 1),
                                  Param("target", "Identifier", 0, 1),
                                  Param("pseudonym", "Identifier", 0, 1),
                                  Param("error-code", "Coding", 1, 1))))),
            self._op("pseudonymize-secondary", self.pseudonymize_secondary,
                     aliases=("pseudonymizeSecondary",),
                     description="count further pseudonyms for each (target, value) in multi-psn "
                                 "domains.",
                     parameters=(Param("original", None, 1, "*", "one request", parts=(
                         _target("multi-psn domain"),
                         Param("value", "string", 1, 1, "the original value"),
                         Param("count", "integer", 1, 1, "how many pseudonyms to create", creates=True))),),
                     returns=(Param("secondarypseudonym", None, 1, "*", "one new pseudonym", parts=(
                         Param("target", "Identifier", 1, 1), Param("original", "Identifier", 1, 1),
                         Param("value", "Identifier", 1, 1), Param("result-code", "Coding", 0, 1))),
                              Param("error", None, 0, "*", "a request that failed", parts=(
                                  Param("target", "Identifier", 1, 1),
                                  Param("error-code", "Coding", 0, 1))))),
            self._op("deletePseudonyms", self.delete_pseudonyms,
                     description="Delete the entries of 1..n originals where the domain allows it; "
                                 "a domain that does not answers 500.",
                     parameters=(_target("domain to delete in"), originals), returns=(status,)),
            self._op("anonymizeOriginals", self.anonymize_originals,
                     description="Remove 1..n originals from their pseudonyms irreversibly; the "
                                 "pseudonyms stay.",
                     parameters=(_target("domain to anonymise in"), originals), returns=(status,)),
            self._op("insertValuePseudonymPairs", self.insert_value_pseudonym_pairs,
                     description="Import existing (original, pseudonym) pairs; each pseudonym is "
                                 "checked against its domain's rules, conflicts are reported per pair.",
                     parameters=(Param("pseudonym", None, 1, "*", "one pair", parts=(
                         _target("domain to insert into"),
                         Param("original", "string", 1, 1, "the original value"),
                         Param("value", "string", 1, 1, "its pseudonym"))),),
                     returns=(Param("successStatus", None, 0, "*", "the outcome per pair", parts=(
                         Param("original", "Identifier", 0, 1), Param("target", "Identifier", 0, 1),
                         Param("value", "Identifier", 0, 1), Param("result-code", "Coding", 1, 1))),)),
        ]

    @staticmethod
    def _op(name: str, handler: Any, **declaration: Any) -> Operation:
        return Operation(endpoint=ENDPOINT, name=name, handler=handler,
                         url=f"{CANONICAL}/{name}", title=name, **declaration)


def _legacy_answer(call: Call, domain: str, asked: list[str], answers: dict[str, str],
                   asked_as: str, missing: Callable[[str], dict]) -> dict:
    """The answer of an older gPAS name: before 1.10.2 (GET) one valueString parameter named
    after each value sent; 1.10.2 (POST) a `pseudonym-result-set` per value, or an `error`."""
    if call.http_method == "GET":
        return fhir.parameters({"name": value, "valueString": answers[value]}
                               for value in dict.fromkeys(asked) if value in answers)
    answer = []
    for value in asked:
        found = answers.get(value)
        if found is None:
            answer.append({"name": "error", "part": [
                {"name": asked_as, "valueString": value},
                _code("error-code", missing(value))]})
            continue
        original, pseudonym = (value, found) if asked_as == "original" else (found, value)
        answer.append({"name": RESULT_SET, "part": [
            {"name": "target", "valueString": domain}, {"name": "original", "valueString": original},
            {"name": "pseudonym", "valueString": pseudonym}]})
    return fhir.parameters(answer)


_PAIR_CODES = {
    PairOutcome.CREATED: fhir.MSG_CREATED,
    # Importing a pair that is already there is a success: imports can be repeated.
    PairOutcome.EXISTS: fhir.MSG_CREATED,
    PairOutcome.INVALID: INVALID,
    PairOutcome.PSEUDONYM_TAKEN: DUPLICATE,
    PairOutcome.ORIGINAL_TAKEN: DUPLICATE,
}
