"""OperationDefinition and CapabilityStatement, generated from the operations' declarations.

Both are built once per app and checked against the fhir.resources R4B models, so a
declaration that would describe itself wrongly fails at start-up, not in a client.
"""

from __future__ import annotations

from typing import Iterable

from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationdefinition import OperationDefinition

from . import __version__
from .operations import Operation, Param

FHIR_VERSION = "4.0.1"
SOFTWARE = "TTP Gateway"


def operation_definition(op: Operation, base_url: str) -> dict:
    definition = {
        "resourceType": "OperationDefinition",
        "id": op.definition_id,
        "url": op.url or f"{base_url}/OperationDefinition/{op.definition_id}",
        "version": __version__,
        "name": op.definition_id,
        "title": op.name,
        "status": "active",
        "kind": "operation",
        "description": op.description or op.title or op.name,
        "affectsState": op.affects_state,
        "code": op.name,
        "system": True,
        "type": False,
        "instance": False,
        "parameter": [*(_parameter(p, "in") for p in op.parameters),
                      *(_parameter(p, "out") for p in op.returns)],
    }
    if op.aliases:
        definition["comment"] = "Also answers to: " + ", ".join(f"${a}" for a in op.aliases)
    return _checked(OperationDefinition, definition)


def capability_statement(endpoint: str, operations: Iterable[Operation], base_url: str,
                         published: str) -> dict:
    operations = sorted(operations, key=lambda op: op.name)
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": SOFTWARE,
        "kind": "instance",
        "software": {"name": SOFTWARE, "version": __version__},
        "implementation": {"description": f"{SOFTWARE} {endpoint} endpoint", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "application/fhir+xml", "json", "xml"],
        "rest": [{
            "mode": "server",
            "security": {"description": "API key in the 'apikey' or 'X-API-Key' header, "
                                        "or an 'apikey' parameter in the body"},
            "resource": [{"type": "OperationDefinition", "interaction": [{"code": "read"}]}],
            "operation": [{"name": op.name,
                           "definition": op.url or f"{base_url}/OperationDefinition/{op.definition_id}"}
                          for op in operations],
        }],
    }
    return _checked(CapabilityStatement, statement)


def _parameter(param: Param, use: str) -> dict:
    described: dict = {
        "name": param.name,
        "use": use,
        "min": param.min,
        "max": str(param.max),
    }
    if param.doc:
        described["documentation"] = param.doc
    if param.type is not None:
        described["type"] = param.type
    if param.parts:
        described["part"] = [_parameter(p, use) for p in param.parts]
    return described


def _checked(model: type, resource: dict) -> dict:
    model.model_validate(resource)
    return resource
