"""The six operations of the MII pseudonymisation interface, on the gPAS domains.

Every operation takes one `context` and one `original` (or `pseudonym`) as Identifiers; lists
come as `batch` or `transaction` Bundles of such calls. Each operation has one function that
answers a list of calls: a Bundle's entries all at once (one store round trip per domain, not
one per entry), a single call as a list of one. Each answer is a `Result`: the resource and its
status, or, for a call that fails, an OperationOutcome that names the offending parameter in
`expression`, as the guide's examples do. A call that fails writes nothing.

Where the guide leaves a question open, this module answers it so:

- `context` names a gPAS domain by `Identifier.value`. Where `[mii_psn.systems]` configures a
  system for the domain, a context sent with another system names no known context (404);
  without a configured system any system, or none, is accepted, since clients send their own.
- Echoed `context`, `original` and `pseudonym` Identifiers are the request's system and value,
  exactly (other Identifier elements are not repeated). Pseudonyms carry the domain's configured
  system, or none; originals found by `$de-pseudonymize` carry none, since gPAS keeps values only.
- `$pseudonymize` creates or gets, `$get-pseudonym` only reads. Both, like the guide, are for
  single-pseudonym domains, and `$pseudonymize-multiple` for multi-pseudonym domains: the wrong
  kind of domain answers 422 (`business-rule`).
- `$pseudonymize-multiple` with `count` 0 returns every pseudonym of the original (404 if it has
  none: the guide's `pseudonym` is 1..*); with `count` > 0 only the `count` new ones.
- Unknown values answer 404 (`not-found`; an original that was anonymised: `deleted`), a domain
  that does not allow deletion 405 (`not-supported`), a caller not allowed the domain 401.
- `$delete-pseudonym` and `$anonymize-original` answer the bare OperationOutcome the guide's
  examples show (FHIR R4 returns a resource bare only for an out parameter named `return`, so
  their generated OperationDefinitions name it so; the guide names it `successStatus`).
- A single call that succeeds answers 200, as the guide's error model lists; Bundle entries say
  `201` where a pseudonym was created and `200` otherwise, as the guide's batch examples do.
- A Bundle entry's failure is its `resource` (as in the guide's examples) and its
  `response.outcome` (as FHIR puts it). A `transaction` Bundle is all or nothing: the first
  failing entry's status and OperationOutcome answer the whole Bundle, and nothing is written.
- The generated OperationDefinitions say whether an operation changes state as it does here
  (`$get-pseudonym` and `$de-pseudonymize` do not, `$pseudonymize-multiple` does; the guide has
  these the other way round) and carry the guide's canonical URLs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping

from ttp_gateway.core import fhir
from ttp_gateway.core.gateway import Call
from ttp_gateway.core.operations import Operation, Param, Result
from ttp_gateway.plugins.gpas.api import Domain, Pseudonymizer

ENDPOINT = "gpas/v2"
CANONICAL = ("https://www.medizininformatik-initiative.de/fhir/ext/mii-interface-module-pseudonymization"
             "/OperationDefinition")
MAX_COUNT = 10_000  # new pseudonyms per call of $pseudonymize-multiple, as gPAS's secondary ones

Answers = list[Result]
Asked = tuple[Domain, dict[str, str], dict[str, str]]
Groups = dict[str, tuple[Domain, list[int]]]


def expression(parameter: str) -> list[str]:
    return [f"Parameters.parameter.where(name='{parameter}')"]


def failure(status: int, code: str, diagnostics: str, parameter: str) -> Result:
    """A call that fails: an OperationOutcome naming the parameter at fault (never its value)."""
    issue = {"severity": "error", "code": code,
             "details": {"coding": [{"system": fhir.ISSUE_TYPE_SYSTEM, "code": code}]},
             "diagnostics": diagnostics, "expression": expression(parameter)}
    outcome = {"resourceType": "OperationOutcome", "issue": [issue]}
    return Result(outcome, status, outcome)


def echo(given: dict, parameter: str) -> dict[str, str] | Result:
    """The Identifier a call sent, as answers repeat it: its system (if any) and value."""
    value, system = given.get("value"), given.get("system")
    if type(value) is not str or not value:
        return failure(400, "invalid", f"parameter '{parameter}' needs an Identifier with a value", parameter)
    if system is not None and (type(system) is not str or not system):
        return failure(400, "invalid", f"parameter '{parameter}': Identifier.system must be a string", parameter)
    if len(given) == (1 if system is None else 2):
        return given  # nothing but system and value: repeated as it is (large Bundles make many)
    return {"value": value} if system is None else {"system": system, "value": value}


def identifier(value: str, system: str | None) -> dict[str, str]:
    return {"system": system, "value": value} if system else {"value": value}


# The outcome of every Bundle entry that succeeds (FHIR's entry.response.outcome; the guide's
# examples have none): one small object, however many entries share it.
DONE = {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}


def succeeded(diagnostics: str, coding: dict) -> Result:
    return Result(fhir.informational(diagnostics, coding), 200, DONE)


class MiiInterface:
    """The operations, bound to gPAS's public API and this interface's configuration."""

    def __init__(self, pseudonymizer: Pseudonymizer, systems: Mapping[str, str] | None = None,
                 endpoint: str = ENDPOINT) -> None:
        self.psn = pseudonymizer
        self.systems = dict(systems or {})
        self.endpoint = endpoint

    # --- what every call names -------------------------------------------------------------
    def _asked(self, call: Call, value_parameter: str, contexts: dict) -> Asked | Result:
        """The domain a call names and the Identifiers it sent, or why the call fails."""
        context = echo(call.args["context"], "context")
        if isinstance(context, Result):
            return context
        value = echo(call.args[value_parameter], value_parameter)
        if isinstance(value, Result):
            return value
        key = (context.get("system"), context["value"])
        domain = contexts.get(key)  # one Bundle names few contexts, and has one caller
        if domain is None:
            domain = contexts[key] = self._domain(call, *key)
        if isinstance(domain, Result):
            return domain
        return domain, context, value

    def _domain(self, call: Call, system: str | None, name: str) -> Domain | Result:
        if not call.client.may_use("domains", name):
            return failure(401, "security", "this caller may not use the context it named", "context")
        domain = self.psn.domains.get(name)
        if domain is None:
            return failure(404, "not-found", f"The context {name!r} is not known.", "context")
        configured = self.systems.get(name)
        if system is not None and configured is not None and system != configured:
            return failure(404, "not-found", f"The context {name!r} is not known under the given system.",
                           "context")
        return domain

    def _by_domain(self, calls: list[Call], value_parameter: str, answers: list[Any],
                   admit: Callable[[Domain], Result | None] | None = None) -> tuple[Groups, list[Any]]:
        """The calls that name a usable domain, by domain, and what each call asked; the others'
        answers filled in."""
        groups: Groups = {}
        contexts: dict = {}
        asked_by_call: list[Any] = [None] * len(calls)
        for index, call in enumerate(calls):
            asked = self._asked(call, value_parameter, contexts)
            if isinstance(asked, Result):
                answers[index] = asked
                continue
            refused = admit(asked[0]) if admit else None
            if refused is not None:
                answers[index] = refused
                continue
            asked_by_call[index] = asked
            group = groups.get(asked[0].name)
            if group is None:
                group = groups[asked[0].name] = (asked[0], [])
            group[1].append(index)
        return groups, asked_by_call

    @staticmethod
    def _single_psn(domain: Domain) -> Result | None:
        if domain.multi_psn:
            return failure(422, "business-rule", f"The context {domain.name!r} is a multi-pseudonym domain; "
                           "use $pseudonymize-multiple.", "context")
        return None

    @staticmethod
    def _multi_psn(domain: Domain) -> Result | None:
        if not domain.multi_psn:
            return failure(422, "business-rule", f"The context {domain.name!r} is a single-pseudonym domain; "
                           "use $pseudonymize or $get-pseudonym.", "context")
        return None

    @staticmethod
    def _deletable(domain: Domain) -> Result | None:
        if not domain.deletable:
            return failure(405, "not-supported", f"The domain {domain.name!r} does not allow deleting entries.",
                           "context")
        return None

    # --- the operations, each over a list of calls --------------------------------------------
    def pseudonymize(self, calls: list[Call], audit_each: bool = False) -> Answers:
        """The calls of one Bundle (one audit record per context), or with `audit_each`
        concurrent single calls of several clients answered together (a record each)."""
        answers: list[Any] = [None] * len(calls)  # each filled in below
        groups, asked = self._by_domain(calls, "original", answers, self._single_psn)
        if groups:
            with calls[0].writing() as unit:
                for domain, indexes in groups.values():
                    created: set[str] = set()
                    found = self.psn.get_or_create(unit, domain, [asked[i][2]["value"] for i in indexes],
                                                   created=created)
                    new = len(created)
                    system = self.systems.get(domain.name)
                    for index in indexes:
                        _, context, original = asked[index]
                        value = original["value"]
                        status = 200
                        if value in created:  # a repeated original was created by its first call only
                            created.discard(value)
                            status = 201
                        answers[index] = Result({"resourceType": "Parameters", "parameter": [
                            {"name": "context", "valueIdentifier": context},
                            {"name": "original", "valueIdentifier": original},
                            {"name": "pseudonym", "valueIdentifier": identifier(found[value], system)}]},
                            status, DONE)
                        if audit_each:
                            calls[index].audit("pseudonymize", domain=domain.name, items=1,
                                               created=int(status == 201))
                    if not audit_each:
                        calls[indexes[0]].audit("pseudonymize", domain=domain.name, items=len(indexes),
                                                created=new)
        return answers

    def pseudonymize_together(self, calls: list[Call]) -> Answers:
        return self.pseudonymize(calls, audit_each=True)

    def get_pseudonym(self, calls: list[Call]) -> Answers:
        answers: list[Any] = [None] * len(calls)  # each filled in below
        groups, asked = self._by_domain(calls, "original", answers, self._single_psn)
        if groups:
            with calls[0].reading() as unit:
                for domain, indexes in groups.values():
                    found = self.psn.lookup(unit, domain, [asked[i][2]["value"] for i in indexes])
                    system = self.systems.get(domain.name)
                    first = None
                    for index in indexes:
                        _, context, original = asked[index]
                        pseudonym = found.get(original["value"])
                        if pseudonym is None:
                            answers[index] = failure(404, "not-found", "No pseudonym for the given original was "
                                                     "found.", "original")
                            continue
                        first = index if first is None else first
                        answers[index] = Result({"resourceType": "Parameters", "parameter": [
                            {"name": "context", "valueIdentifier": context},
                            {"name": "original", "valueIdentifier": original},
                            {"name": "pseudonym", "valueIdentifier": identifier(pseudonym, system)}]}, 200, DONE)
                    if first is not None:
                        calls[first].audit("get-pseudonym", domain=domain.name, items=len(indexes))
        return answers

    def pseudonymize_multiple(self, calls: list[Call]) -> Answers:
        """Call by call, in order, so that an entry reading an original's pseudonyms sees those an
        earlier entry of its Bundle created."""
        answers: list[Any] = [None] * len(calls)  # each filled in below
        groups, asked = self._by_domain(calls, "original", answers, self._multi_psn)
        wanted = sorted(i for _, indexes in groups.values() for i in indexes)
        for index in wanted:
            count = calls[index].args["count"]
            if not 0 <= count <= MAX_COUNT:
                answers[index] = failure(400, "invalid", f"parameter 'count' must be between 0 and {MAX_COUNT}",
                                         "count")
        wanted = [i for i in wanted if answers[i] is None]
        if not wanted:
            return answers
        creates = any(calls[i].args["count"] > 0 for i in wanted)
        with (calls[0].writing() if creates else calls[0].reading()) as unit:
            for index in wanted:
                domain, context, original = asked[index]
                value, count = original["value"], calls[index].args["count"]
                if count == 0:
                    pseudonyms = self.psn.all_pseudonyms(unit, domain, [value]).get(value, [])
                    if not pseudonyms:
                        answers[index] = failure(404, "not-found", "No pseudonym for the given original was found.",
                                                 "original")
                        continue
                    status = 200
                else:
                    pseudonyms = [p for _, p in self.psn.add_further(unit, domain, [(value, count)])]
                    status = 201
                system = self.systems.get(domain.name)
                answers[index] = Result(fhir.parameters(
                    {"name": "pseudonym", "part": [
                        {"name": "context", "valueIdentifier": context},
                        {"name": "original", "valueIdentifier": original},
                        {"name": "value", "valueIdentifier": identifier(pseudonym, system)}]}
                    for pseudonym in pseudonyms), status, DONE)
                calls[index].audit("pseudonymize-multiple", domain=domain.name, items=1,
                                   created=count)
        return answers

    def de_pseudonymize(self, calls: list[Call]) -> Answers:
        answers: list[Any] = [None] * len(calls)  # each filled in below
        groups, asked = self._by_domain(calls, "pseudonym", answers)
        if groups:
            with calls[0].reading() as unit:
                for domain, indexes in groups.values():
                    owners = self.psn.originals(unit, domain, [asked[i][2]["value"] for i in indexes])
                    answered = []
                    for index in indexes:
                        _, context, pseudonym = asked[index]
                        original = owners.get(pseudonym["value"])
                        if original is None:
                            anonymised = pseudonym["value"] in owners
                            answers[index] = failure(
                                404, "deleted" if anonymised else "not-found",
                                "The original of the given pseudonym was anonymised." if anonymised else
                                "No original for the given pseudonym was found.", "pseudonym")
                            continue
                        answered.append(index)
                        answers[index] = Result(fhir.parameters([{"name": "original", "part": [
                            {"name": "context", "valueIdentifier": context},
                            {"name": "value", "valueIdentifier": {"value": original}},
                            {"name": "pseudonym", "valueIdentifier": pseudonym}]}]), 200, DONE)
                    if answered:
                        calls[answered[0]].audit("de-pseudonymize", domain=domain.name, items=len(answered),
                                                 pseudonyms=[asked[i][2]["value"] for i in answered])
        return answers

    def delete_pseudonym(self, calls: list[Call]) -> Answers:
        return self._remove(calls, "delete-pseudonym", self._deletable, self.psn.delete,
                            "Entry deleted.", fhir.MSG_DELETED)

    def anonymize_original(self, calls: list[Call]) -> Answers:
        return self._remove(calls, "anonymize-original", None, self.psn.anonymize,
                            "Entry anonymized.", fhir.MSG_UPDATED)

    def _remove(self, calls: list[Call], action: str, admit: Callable[[Domain], Result | None] | None,
                remove: Callable[..., set[str]], done_text: str, coding: dict) -> Answers:
        answers: list[Any] = [None] * len(calls)  # each filled in below
        groups, asked = self._by_domain(calls, "original", answers, admit)
        if groups:
            with calls[0].writing() as unit:
                for domain, indexes in groups.values():
                    removed = remove(unit, domain, [asked[i][2]["value"] for i in indexes])
                    count, first = len(removed), None
                    for index in indexes:
                        value = asked[index][2]["value"]
                        if value in removed:  # a repeated original is gone after its first call
                            removed.discard(value)
                            first = index if first is None else first
                            answers[index] = succeeded(done_text, coding)
                        else:
                            answers[index] = failure(404, "not-found", "No pseudonym for the given original "
                                                     "was found.", "original")
                    if first is not None:
                        calls[first].audit(action, domain=domain.name, items=len(indexes), done=count)
        return answers

    # --- declarations ---------------------------------------------------------------------
    def declarations(self) -> list[Operation]:
        context = Param("context", "Identifier", 1, 1, "The pseudonymisation context: a gPAS domain, named "
                        "by Identifier.value (and by its system where one is configured).")
        original = Param("original", "Identifier", 1, 1, "The original value.")
        echoed = (Param("context", "Identifier", 0, 1, "As in the request."),
                  Param("original", "Identifier", 0, 1, "As in the request."))
        status = (Param("return", "OperationOutcome", 1, 1, "MSG_DELETED or MSG_UPDATED in "
                        "issue.details where the entry was found (the guide's successStatus)."),)
        return [
            self._op("pseudonymize", self.pseudonymize,
                     "The pseudonym of an original in a single-pseudonym domain, created if there is none.",
                     (context, original), (*echoed, Param("pseudonym", "Identifier", 1, 1, "The pseudonym.")),
                     together=self.pseudonymize_together),
            self._op("get-pseudonym", self.get_pseudonym,
                     "The pseudonym of an original in a single-pseudonym domain; 404 if there is none.",
                     (context, original), (*echoed, Param("pseudonym", "Identifier", 1, 1, "The pseudonym.")),
                     affects_state=False),
            self._op("pseudonymize-multiple", self.pseudonymize_multiple,
                     "In a multi-pseudonym domain: count new pseudonyms of an original (only these are "
                     "returned), or with count 0 all of its pseudonyms.",
                     (context, original, Param("count", "integer", 1, 1, "How many new pseudonyms; 0 reads "
                                               "all existing ones.", creates=True)),
                     (Param("pseudonym", None, 1, "*", "One pseudonym.", parts=(
                         *echoed, Param("value", "Identifier", 1, 1, "The pseudonym."))),)),
            self._op("de-pseudonymize", self.de_pseudonymize, "The original of a pseudonym.",
                     (context, Param("pseudonym", "Identifier", 1, 1, "The pseudonym.")),
                     (Param("original", None, 1, "*", "The original.", parts=(
                         Param("context", "Identifier", 0, 1, "As in the request."),
                         Param("value", "Identifier", 1, 1, "The original value."),
                         Param("pseudonym", "Identifier", 0, 1, "As in the request."))),),
                     affects_state=False),
            self._op("delete-pseudonym", self.delete_pseudonym,
                     "Delete the entry of an original, where the domain allows it (405 where not).",
                     (context, original), status),
            self._op("anonymize-original", self.anonymize_original,
                     "Cut an original from its pseudonyms irreversibly; the pseudonyms stay.",
                     (context, original), status),
        ]

    def _op(self, name: str, answer: Callable[[list[Call]], Answers], description: str,
            parameters: tuple[Param, ...], returns: tuple[Param, ...], affects_state: bool = True,
            together: Callable[[list[Call]], Answers] | None = None) -> Operation:
        """An operation answered by `answer` for a Bundle's entries, for a single call (a list of
        one), and, with `together`, for concurrent single calls answered at once."""
        op = Operation(endpoint=self.endpoint, name=name, handler=_single(answer), batch_handler=answer,
                       batch=True, transaction=True, affects_state=affects_state, quick_read=not affects_state,
                       parameters=parameters, returns=returns, title=name, description=description,
                       coalesce=_each_single(together) if together is not None else None)
        return replace(op, url=f"{CANONICAL}/{op.definition_id}")


def _as_single(result: Result) -> Any:
    """A call's answer on its own: a success is 200, whatever it made."""
    return result.resource if result.status < 400 else result


def _single(answer: Callable[[list[Call]], Answers]) -> Callable[[Call], Any]:
    """A single call's handler: the answer to a list of one."""
    def handle(call: Call) -> Any:
        return _as_single(answer([call])[0])

    return handle


def _each_single(answer: Callable[[list[Call]], Answers]) -> Callable[[list[Call]], list[Any]]:
    """Concurrent single calls answered at once, each as it would be answered on its own."""
    def handle(calls: list[Call]) -> list[Any]:
        return [_as_single(result) for result in answer(calls)]

    return handle
