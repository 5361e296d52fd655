"""Comparing an answer with an example of the implementation guide, in shape.

Shape is what a client relies on: parameter and part names and their order of parameters, the
value type of every part (valueIdentifier, valueCoding, ...), Identifier systems and Coding
systems and codes. Values are compared where the test asks for it (`values=True`), except
those that `volatile` names: pseudonyms the service draws anew cannot match the example's.

The guide's examples use a few placeholder systems (`https://sample/...`,
`http://my.fhir.domain.local/...`); those stand for "some system" and match any.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

PLACEHOLDER_SYSTEMS = ("https://sample/", "http://my.fhir.domain.local/")
ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "tests" / "spec"  # the guide's published examples, copied into the repository


def example(endpoint: str, name: str) -> dict:
    """An example resource of the guide by file name (without `.json`)."""
    return json.loads((SPEC / "ig" / endpoint / f"{name}.json").read_text(encoding="utf-8"))


def shape(resource: dict, *, values: bool = False, volatile: Iterable[str] = ()) -> Any:
    volatile = set(volatile)
    kind = resource.get("resourceType")
    if kind == "Parameters":
        return ("Parameters", [_parameter(p, values, volatile) for p in resource.get("parameter", [])])
    if kind == "OperationOutcome":
        return ("OperationOutcome", [(i.get("severity"), i.get("code"),
                                      _codings((i.get("details") or {}).get("coding", [])))
                                     for i in resource.get("issue", [])])
    if kind == "Bundle":
        return ("Bundle", resource.get("type"), [
            ((e.get("response") or {}).get("status"),
             shape(e["response"]["outcome"]) if (e.get("response") or {}).get("outcome") else None,
             shape(e["resource"], values=values, volatile=volatile) if e.get("resource") else None)
            for e in resource.get("entry", [])])
    raise ValueError(f"no shape for {kind}")


def _parameter(param: dict, values: bool, volatile: set[str]) -> Any:
    name = param["name"]
    if "part" in param:
        return (name, sorted((_parameter(p, values, volatile) for p in param["part"]), key=repr))
    if "resource" in param:
        return (name, "resource", param["resource"].get("resourceType"))
    value_key = next(k for k in param if k.startswith("value"))
    value = param[value_key]
    keep = values and name not in volatile
    if value_key == "valueIdentifier":
        return (name, value_key, _system(value.get("system")), value.get("value") if keep else None)
    if value_key == "valueCoding":
        return (name, value_key, _system(value.get("system")), value.get("code"))
    return (name, value_key, value if keep else None)


def _codings(codings: list[dict]) -> list:
    return [(_system(c.get("system")), c.get("code")) for c in codings]


def _system(system: str | None) -> str | None:
    if system and system.startswith(PLACEHOLDER_SYSTEMS):
        return "<any>"
    return system


def match(answer: dict, expected: dict, **options: Any) -> None:
    """Assert that `answer` has the shape of `expected`; placeholder systems match any."""
    got, want = shape(answer, **options), shape(expected, **options)
    if got != want:
        got, want = _relax(got, want)
    assert got == want, f"\nanswer:   {got}\nexpected: {want}"


def _relax(got: Any, want: Any) -> tuple[Any, Any]:
    """Where the example has a placeholder, accept whatever the answer has there."""
    if want == "<any>":
        return got, got
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)) and len(got) == len(want):
        pairs = [_relax(g, w) for g, w in zip(got, want)]
        kind = type(want)
        return kind(p[0] for p in pairs), kind(p[1] for p in pairs)
    return got, want
