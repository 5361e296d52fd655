"""Errors that end a request as a whole, each carrying its HTTP status and FHIR issue type.

Messages end up in OperationOutcome.diagnostics and in logs, so they name parameters, domains
and studies, never the values a client sent as originals, IDAT or Bloom filters.
"""

from __future__ import annotations

from typing import Any


class FhirError(Exception):
    """A request that fails as a whole; answered with an OperationOutcome."""

    status: int = 400
    issue_code: str = "invalid"

    def __init__(self, diagnostics: str, *, status: int | None = None, issue_code: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        if status is not None:
            self.status = status
        if issue_code is not None:
            self.issue_code = issue_code
        self.details = details  # optional CodeableConcept for OperationOutcome.issue.details


class InvalidRequest(FhirError):
    """Malformed body, wrong resource type, missing, repeated or mistyped parameter (400)."""


class CodecError(InvalidRequest):
    """A body that is not well-formed FHIR JSON or XML, or XML that could expand entities."""

    issue_code = "structure"


class NotAuthenticated(FhirError):
    """Missing or unknown API key, or a key not allowed for what was asked (401)."""

    status = 401
    issue_code = "security"


class NotFound(FhirError):
    """An unknown domain, study, task or operation named once for the whole request (404)."""

    status = 404
    issue_code = "not-found"


class Conflict(FhirError):
    """A write that contradicts what is stored, e.g. other data for a task already answered (409)."""

    status = 409
    issue_code = "conflict"


class Unprocessable(FhirError):
    """Missing or wrong patient attributes (422)."""

    status = 422
    issue_code = "processing"


class PayloadTooLarge(FhirError):
    status = 413
    issue_code = "too-costly"


class UnsupportedMediaType(FhirError):
    status = 415
    issue_code = "not-supported"


class NotAllowed(FhirError):
    """The operation is configured away for this target, e.g. deleting in a non-deletable domain.

    The reference gateway answers these with 500; clients rely on that status.
    """

    status = 500
    issue_code = "business-rule"


class ServerError(FhirError):
    """A failure on our side with a message safe to show, e.g. an exhausted pseudonym domain."""

    status = 500
    issue_code = "exception"
