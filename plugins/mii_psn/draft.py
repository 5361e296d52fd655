"""The request form of the guide's drafts before 2026.1, on an endpoint of its own.

DicomShield's `MIIClient` still speaks it: `$pseudonymize` with `target` and `allowCreate` as
strings and one `original` string per value, all in one call, and `$de-pseudonymize` with
`target` and one `pseudonym` string per value. It reads, from every parameter of the answer,
the parts `original` and `pseudonym` as Identifiers. The 2026.1 interface takes none of this
(one Identifier per call), so this form has its own endpoint (`[mii_psn] draft_base`), whose
OperationDefinitions describe it as it is: each value answers a `pseudonym` (or `original`)
parameter with the parts `target`, `original` and `pseudonym`, or an `error` parameter.
"""

from __future__ import annotations

from typing import Any, Mapping

from ttp_gateway.core import fhir
from ttp_gateway.core.errors import InvalidRequest
from ttp_gateway.core.gateway import Call
from ttp_gateway.core.operations import Operation, Param
from ttp_gateway.plugins.gpas.api import Pseudonymizer

from .operations import identifier

NOT_FOUND = fhir.issue_type("not-found")
ANONYMISED = fhir.issue_type("deleted")
INVALID = fhir.issue_type("invalid")


class DraftInterface:
    def __init__(self, pseudonymizer: Pseudonymizer, systems: Mapping[str, str], endpoint: str) -> None:
        self.psn = pseudonymizer
        self.systems = dict(systems)
        self.endpoint = endpoint

    def pseudonymize(self, call: Call) -> dict:
        domain = self.psn.domain(call.args["target"])
        originals = call.args["original"]
        allow_create = _flag(call.args["allowCreate"], "allowCreate")
        valid = [o for o in originals if o]
        if allow_create:
            with call.writing() as unit:
                found = self.psn.get_or_create(unit, domain, valid)
        else:
            with call.reading() as unit:
                found = self.psn.lookup(unit, domain, valid)
        call.audit("pseudonymize", domain=domain.name, items=len(originals), allow_create=allow_create)
        system = self.systems.get(domain.name)
        target = identifier(domain.name, system)
        answer = []
        for original in originals:
            pseudonym = found.get(original)
            if pseudonym is None:
                answer.append({"name": "error", "part": [
                    {"name": "original", "valueIdentifier": identifier(original, system)} if original else
                    {"name": "target", "valueIdentifier": target},
                    {"name": "error-code", "valueCoding": NOT_FOUND if original else INVALID}]})
                continue
            answer.append({"name": "pseudonym", "part": [
                {"name": "target", "valueIdentifier": target},
                {"name": "original", "valueIdentifier": identifier(original, system)},
                {"name": "pseudonym", "valueIdentifier": identifier(pseudonym, system)}]})
        return fhir.parameters(answer)

    def de_pseudonymize(self, call: Call) -> dict:
        domain = self.psn.domain(call.args["target"])
        pseudonyms = call.args["pseudonym"]
        with call.reading() as unit:
            owners = self.psn.originals(unit, domain, pseudonyms)
        call.audit("de-pseudonymize", domain=domain.name, items=len(pseudonyms), pseudonyms=pseudonyms)
        system = self.systems.get(domain.name)
        target = identifier(domain.name, system)
        answer = []
        for pseudonym in pseudonyms:
            original = owners.get(pseudonym)
            if original is None:
                answer.append({"name": "error", "part": [
                    {"name": "pseudonym", "valueIdentifier": identifier(pseudonym, system)},
                    {"name": "error-code", "valueCoding": ANONYMISED if pseudonym in owners else NOT_FOUND}]})
                continue
            answer.append({"name": "original", "part": [
                {"name": "target", "valueIdentifier": target},
                {"name": "original", "valueIdentifier": identifier(original, None)},
                {"name": "pseudonym", "valueIdentifier": identifier(pseudonym, system)}]})
        return fhir.parameters(answer)

    def declarations(self) -> list[Operation]:
        target = Param("target", "string", 1, 1, "The gPAS domain.", scope="domains")
        found = (Param("target", "Identifier", 1, 1), Param("original", "Identifier", 1, 1),
                 Param("pseudonym", "Identifier", 1, 1))
        error = Param("error", None, 0, "*", "A value without an answer.", parts=(
            Param("target", "Identifier", 0, 1), Param("original", "Identifier", 0, 1),
            Param("pseudonym", "Identifier", 0, 1), Param("error-code", "Coding", 1, 1)))
        return [
            Operation(endpoint=self.endpoint, name="pseudonymize", handler=self.pseudonymize, title="pseudonymize",
                      description="The pseudonyms of 1..n originals; with allowCreate 'true' created where "
                                  "there are none, else unknown originals get an error.",
                      parameters=(target, Param("original", "string", 1, "*", "Original values."),
                                  Param("allowCreate", "string", 0, 1, "'true' or 'false' (default): create "
                                        "pseudonyms for unknown originals.")),
                      returns=(Param("pseudonym", None, 0, "*", "The pseudonym of one original.", parts=found),
                               error)),
            Operation(endpoint=self.endpoint, name="de-pseudonymize", handler=self.de_pseudonymize,
                      title="de-pseudonymize", affects_state=False, quick_read=True,
                      description="The originals of 1..n pseudonyms; unknown and anonymised ones get an error.",
                      parameters=(target, Param("pseudonym", "string", 1, "*", "Pseudonyms.")),
                      returns=(Param("original", None, 0, "*", "The original of one pseudonym.", parts=found),
                               error)),
        ]


def _flag(value: Any, parameter: str) -> bool:
    # The drafts typed allowCreate as a boolean; their clients send it as a string.
    if value is None:
        return False
    text = value.strip().lower()
    if text not in ("true", "false"):
        raise InvalidRequest(f"parameter '{parameter}' must be 'true' or 'false'")
    return text == "true"
