"""Small builders for the FHIR JSON the gateway answers with.

Responses are plain dicts serialised by orjson: a 10,000-part Parameters costs milliseconds this
way and seconds through fhir.resources models. Rich, small resources (OperationOutcome,
CapabilityStatement, OperationDefinition) are still checked against fhir.resources where built.
"""

from __future__ import annotations

from typing import Any, Iterable

OPERATION_OUTCOME_SYSTEM = "http://terminology.hl7.org/CodeSystem/operation-outcome"
ISSUE_TYPE_SYSTEM = "http://hl7.org/fhir/issue-type"

MSG_CREATED = {"system": OPERATION_OUTCOME_SYSTEM, "code": "MSG_CREATED"}
MSG_UPDATED = {"system": OPERATION_OUTCOME_SYSTEM, "code": "MSG_UPDATED"}
MSG_DELETED = {"system": OPERATION_OUTCOME_SYSTEM, "code": "MSG_DELETED"}

ISSUE_TYPE_DISPLAY = {
    "not-found": "Not Found",
    "deleted": "Deleted",
    "invalid": "Invalid Content",
    "duplicate": "Duplicate",
    "conflict": "Edit Version Conflict",
    "incomplete": "Incomplete Results",
    "business-rule": "Business Rule Violation",
    "security": "Security Problem",
    "processing": "Processing Failure",
    "exception": "Exception",
    "value": "Element value invalid",
    "not-supported": "Content not supported",
}


def is_absolute_uri(value: Any) -> bool:
    """Whether a value (e.g. a configured Identifier.system) is an absolute URI: a scheme, then
    something, and no whitespace."""
    scheme, colon, rest = value.partition(":") if isinstance(value, str) else ("", "", "")
    return bool(colon and rest and scheme[:1].isalpha() and not any(c.isspace() for c in value))


def issue_type(code: str) -> dict[str, str]:
    """A Coding from http://hl7.org/fhir/issue-type, as the guide uses for per-item errors."""
    return {"system": ISSUE_TYPE_SYSTEM, "code": code, "display": ISSUE_TYPE_DISPLAY[code]}


def identifier(system: str, value: str) -> dict[str, str]:
    return {"system": system, "value": value}


def part(name: str, **value: Any) -> dict[str, Any]:
    """One Parameters.parameter or part: `part("target", valueIdentifier=...)`."""
    return {"name": name, **value}


def parameters(params: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(params)}


def operation_outcome(severity: str, code: str, diagnostics: str,
                      details: dict[str, Any] | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code}
    if details is not None:
        issue["details"] = details
    issue["diagnostics"] = diagnostics
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def informational(diagnostics: str, coding: dict[str, Any] | None = None) -> dict[str, Any]:
    """A successful OperationOutcome, e.g. MSG_UPDATED for `$updateBf`."""
    details = {"coding": [coding]} if coding else None
    return operation_outcome("information", "informational", diagnostics, details)
