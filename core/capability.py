"""OperationDefinition and CapabilityStatement, generated from the operations' declarations.

Both are built once per app and checked against the fhir.resources R4B models, so a
declaration that would describe itself wrongly fails at start-up, not in a client.
`elements_subset` answers `_elements` (e.g. `metadata?_elements=rest.operation`, which
fts-next asks for) as FHIR describes it: the elements asked for, the mandatory ones, and a
SUBSETTED tag.
"""

from __future__ import annotations

from typing import Any, Iterable

from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationdefinition import OperationDefinition
from fhir_core.fhirabstractmodel import FHIRAbstractModel

from . import __version__
from .operations import Operation, Param, Search

FHIR_VERSION = "4.0.1"
SOFTWARE = "TTP Gateway"
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED", "display": "Resource encoded in summary mode"}
# Elements a subset keeps whether asked for or not: FHIR says servers SHOULD return mandatory
# elements, and a client's parser may insist on them. Keyed by resource type, then by the path
# of the element they belong to ("" for the resource itself).
_MANDATORY: dict[str, dict[str, tuple[str, ...]]] = {
    "CapabilityStatement": {"": ("status", "date", "kind", "fhirVersion", "format"),
                            "rest": ("mode",)},
}


def operation_definition(op: Operation, base_url: str) -> dict[str, Any]:
    definition: dict[str, Any] = {
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
                         published: str, searches: Iterable[Search] = ()) -> dict[str, Any]:
    operations = sorted(operations, key=lambda op: op.name)
    resources: list[dict[str, Any]] = [{"type": "OperationDefinition", "interaction": [{"code": "read"}]}]
    for search in sorted(searches, key=lambda s: s.resource_type):
        resource: dict[str, Any] = {"type": search.resource_type, "interaction": [{"code": "search-type"}]}
        if search.parameters:
            resource["searchParam"] = [{"name": name, "type": "string"} for name in search.parameters]
        resources.append(resource)
    statement: dict[str, Any] = {
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
            "resource": resources,
            "operation": [{"name": op.name,
                           "definition": op.url or f"{base_url}/OperationDefinition/{op.definition_id}"}
                          for op in operations],
        }],
    }
    # A Bundle posted to the base runs the operations its entries name (those that take Bundles).
    interactions = [{"code": kind} for kind, taken in (("batch", any(op.batch for op in operations)),
                                                       ("transaction", any(op.transaction for op in operations)))
                    if taken]
    if interactions:
        statement["rest"][0]["interaction"] = interactions
    return _checked(CapabilityStatement, statement)


def elements_subset(resource: dict[str, Any], elements: Iterable[str]) -> dict[str, Any]:
    """The resource reduced to the given element paths (`rest.operation`, `fhirVersion`, with or
    without the resource type in front), its mandatory elements, `id` and `meta`; `meta.tag`
    says SUBSETTED."""
    resource_type = resource["resourceType"]
    paths = []
    for element in elements:
        steps = [s for s in element.strip().split(".") if s]
        if steps and steps[0] == resource_type:
            steps = steps[1:]
        if steps:
            paths.append(steps)
    subset: dict[str, Any] = {"resourceType": resource_type}
    if "id" in resource:
        subset["id"] = resource["id"]
    meta = dict(resource.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    subset["meta"] = meta
    kept = _keep(resource, paths, _MANDATORY.get(resource_type, {}), "")
    subset.update((k, v) for k, v in kept.items() if k not in subset)
    return subset


def _keep(node: Any, paths: list[list[str]], mandatory: dict[str, tuple[str, ...]], where: str) -> Any:
    """`node` with only the paths (relative to it) and the mandatory elements at `where`."""
    if isinstance(node, list):
        return [_keep(item, paths, mandatory, where) for item in node]
    if not isinstance(node, dict) or any(not p for p in paths):
        return node  # a path ends here: the whole element
    kept: dict[str, Any] = {}
    wanted = {p[0] for p in paths} | set(mandatory.get(where, ()))
    for name in node:  # in the resource's own order, which XML keeps
        if name not in wanted:
            continue
        below = [p[1:] for p in paths if p[0] == name]
        kept[name] = node[name] if not below else _keep(
            node[name], below, mandatory, f"{where}.{name}".lstrip("."))
    return kept


def _parameter(param: Param, use: str) -> dict[str, Any]:
    described: dict[str, Any] = {
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


def _checked(model: type[FHIRAbstractModel], resource: dict[str, Any]) -> dict[str, Any]:
    model.model_validate(resource)
    return resource
