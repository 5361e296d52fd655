"""Operation declarations and the binding of request parameters to them.

A plugin declares each operation once: its name, aliases, input parameters (name, cardinality,
type, parts) and output parameters. From that single declaration the core validates and binds
requests (this module), and generates the OperationDefinition and CapabilityStatement
(`core.capability`). Nothing else describes an operation's parameters.

Binding is the tolerant reader of the wire protocol: a string may arrive as valueString,
valueCode, valueId or valueUri (and the other string-like types); an integer as valueInteger,
valuePositiveInt, valueUnsignedInt or a digit string. Unknown parameters are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from .errors import InvalidRequest

UNBOUNDED = "*"

_STRING_KEYS = ("valueString", "valueCode", "valueId", "valueUri", "valueUrl", "valueCanonical",
                "valueOid", "valueUuid", "valueMarkdown")
_INTEGER_KEYS = ("valueInteger", "valuePositiveInt", "valueUnsignedInt", "valueInteger64")

# FHIR primitive types whose value reaches the handler as a Python str.
_STRING_TYPES = {"string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown"}


@dataclass(frozen=True)
class Param:
    """One parameter (or part) of an operation, as an OperationDefinition describes it.

    `type` is a FHIR type name ("string", "integer", "base64Binary", "Identifier", "Patient", ...)
    or None for a parameter made only of parts. A parameter with both a type and parts accepts
    either form. `scope` names the API-key scope (e.g. "domains", "studies") that must allow
    every value given for this parameter.
    """

    name: str
    type: str | None = "string"
    min: int = 0
    max: int | str = 1
    doc: str = ""
    parts: tuple["Param", ...] = ()
    scope: str | None = None
    aliases: tuple[str, ...] = ()
    reader: Callable[[dict, str], Any] = field(init=False, repr=False, compare=False)
    scoped: bool = field(init=False, repr=False, compare=False)  # a scope here or in a part

    def __post_init__(self) -> None:
        if self.max != UNBOUNDED and (not isinstance(self.max, int) or self.max < 1):
            raise ValueError(f"parameter {self.name}: max must be a positive int or '*'")
        if self.type is None and not self.parts:
            raise ValueError(f"parameter {self.name}: needs a type or parts")
        object.__setattr__(self, "reader", _reader_for(self))
        object.__setattr__(self, "scoped", self.scope is not None or any(p.scoped for p in self.parts))

    @property
    def repeats(self) -> bool:
        return self.max == UNBOUNDED or self.max > 1


@dataclass(frozen=True)
class Operation:
    """A system-level operation `POST [base]/$name` contributed by a plugin.

    `handler` receives a `core.gateway.Call` and returns a FHIR resource as a dict, or a
    `Result` when the status is not 200. With `batch=True` the operation also accepts a `batch`
    Bundle whose entries each carry one Parameters; the core answers a `batch-response`.

    An operation that does not affect state may also be invoked with GET, its parameters in the
    query string, as FHIR allows; `legacy_get` names aliases under which older versions served
    it with GET although it does (gPAS before 1.10.2: `$pseudonymize-allow-create`).
    """

    endpoint: str
    name: str
    handler: Callable[..., Any]
    parameters: tuple[Param, ...] = ()
    returns: tuple[Param, ...] = ()
    title: str = ""
    description: str = ""
    aliases: tuple[str, ...] = ()
    affects_state: bool = True
    batch: bool = False
    url: str | None = None
    replaces: bool = False
    # A read that never writes nor waits for a lock: small requests of it may run on the event
    # loop itself when the store's reads never block (SQLite), sparing the hop to a thread.
    quick_read: bool = False
    legacy_get: tuple[str, ...] = ()

    def allows_get(self, invoked_as: str) -> bool:
        return not self.affects_state or invoked_as in self.legacy_get

    @property
    def definition_id(self) -> str:
        """The id of the generated OperationDefinition, as the guide names them."""
        words = self.name.replace("-", " ").split()
        return "".join(w[0].upper() + w[1:] for w in words)


@dataclass(frozen=True)
class Result:
    """A handler's answer with a status other than 200, or, inside a batch, with an outcome of
    its own for the entry's `response.outcome`."""

    resource: dict
    status: int = 200
    outcome: dict | None = None


class Args(dict):
    """Bound parameters: a single value (or None) for 0..1/1..1, a list for repeating ones,
    and an `Args` per instance of a parameter made of parts."""


def bind(parameters: tuple[Param, ...], given: Any, path: str = "") -> Args:
    """Check `given` (a Parameters.parameter or .part array) against the declaration."""
    if not isinstance(given, list):
        raise InvalidRequest(f"'{path or 'parameter'}' must be an array")
    entry = _declared.get(id(parameters))
    if entry is None or entry[0] is not parameters:
        entry = _declared[id(parameters)] = (
            parameters, {name: p for p in parameters for name in (p.name, *p.aliases)})
    declared = entry[1]
    collected: dict[str, list] = {param.name: [] for param in parameters}
    for item in given:
        if not isinstance(item, dict):
            raise InvalidRequest(f"every entry of '{path or 'parameter'}' must be an object")
        name = item.get("name")
        param = declared.get(name)  # type: ignore[arg-type]
        if param is None:
            if not isinstance(name, str):
                raise InvalidRequest(f"an entry of '{path or 'parameter'}' has no name")
            continue
        collected[param.name].append(param.reader(item, path + name))
    args = Args()
    for param in parameters:
        values = collected[param.name]
        if len(values) < param.min:
            raise InvalidRequest(f"parameter '{path}{param.name}' is required"
                                 + (f" at least {param.min} times" if param.min > 1 else ""))
        if not param.repeats and len(values) > 1:
            raise InvalidRequest(f"parameter '{path}{param.name}' must not be repeated")
        if param.max != UNBOUNDED and len(values) > param.max:  # type: ignore[operator]
            raise InvalidRequest(f"parameter '{path}{param.name}' may occur at most {param.max} times")
        args[param.name] = values if param.repeats else (values[0] if values else None)
    return args


# The name index of each declaration, built once; the entry holds the declaration itself, so
# that its id cannot be reused by another while cached.
_declared: dict[int, tuple[tuple[Param, ...], dict[str, Param]]] = {}


def scoped_values(parameters: tuple[Param, ...], args: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(scope, value) for every value of a scoped parameter, parts included."""
    for param in parameters:
        if not param.scoped:
            continue
        value = args.get(param.name)
        for instance in (value if param.repeats else (value,)):
            if instance is None:
                continue
            if isinstance(instance, Args):
                yield from scoped_values(param.parts, instance)
            elif param.scope is not None:
                yield param.scope, instance


# --- readers: one per declared parameter, built once -------------------------------------------

def _reader_for(param: Param) -> Callable[[dict, str], Any]:
    value_reader = _value_reader(param.type) if param.type else None
    if not param.parts:
        assert value_reader is not None
        return value_reader
    parts = param.parts

    def read_parts(item: dict, where: str) -> Any:
        given = item.get("part")
        if given is None:
            if value_reader is not None:
                return value_reader(item, where)
            raise InvalidRequest(f"parameter '{where}' needs parts")
        return bind(parts, given, where + ".")

    return read_parts


def _value_reader(fhir_type: str) -> Callable[[dict, str], Any]:
    if fhir_type in _STRING_TYPES:
        return _read_string
    if fhir_type in ("integer", "positiveInt", "unsignedInt"):
        return _read_integer
    if fhir_type == "boolean":
        return _typed_reader(("valueBoolean",), bool, "a boolean")
    if fhir_type == "base64Binary":
        # Clients send Bloom filters as valueBase64Binary; a few send them as plain strings.
        return _typed_reader(("valueBase64Binary",) + _STRING_KEYS, str, "a base64Binary")
    if fhir_type in ("instant", "dateTime", "date"):
        keys = ("value" + fhir_type[0].upper() + fhir_type[1:],) + _STRING_KEYS
        return _typed_reader(keys, str, f"a {fhir_type}")
    if fhir_type[0].isupper() and fhir_type in _COMPLEX_DATATYPES:
        return _typed_reader(("value" + fhir_type,), dict, f"a {fhir_type}")
    if fhir_type[0].isupper():
        return _resource_reader(fhir_type)
    raise ValueError(f"unsupported parameter type {fhir_type!r}")


_COMPLEX_DATATYPES = {"Identifier", "Coding", "CodeableConcept", "Reference", "Period", "Address",
                      "HumanName", "Quantity", "Attachment", "ContactPoint", "Meta"}


def _read_string(item: dict, where: str) -> str:
    value = item.get("valueString")
    if value is None:
        for key in _STRING_KEYS:
            value = item.get(key)
            if value is not None:
                break
        else:
            raise InvalidRequest(f"parameter '{where}' needs a string value")
    if type(value) is not str:
        raise InvalidRequest(f"parameter '{where}' needs a string value")
    return value


def _read_integer(item: dict, where: str) -> int:
    for key in _INTEGER_KEYS:
        value = item.get(key)
        if value is not None:
            if type(value) is not int:
                raise InvalidRequest(f"parameter '{where}' needs an integer value")
            return value
    for key in _STRING_KEYS:
        value = item.get(key)
        if value is not None:
            # The guide's own `$pseudonymize-secondary` example sends count as valueString "2".
            text = value.strip() if isinstance(value, str) else ""
            digits = text[1:] if text[:1] in "+-" else text
            if digits.isascii() and digits.isdigit() and len(digits) <= 18:
                return int(text)
            break
    raise InvalidRequest(f"parameter '{where}' needs an integer value")


def _typed_reader(keys: tuple[str, ...], python_type: type, what: str) -> Callable[[dict, str], Any]:
    def read(item: dict, where: str) -> Any:
        for key in keys:
            value = item.get(key)
            if value is not None:
                if type(value) is not python_type:
                    break
                return value
        raise InvalidRequest(f"parameter '{where}' needs {what} value")

    return read


def _resource_reader(resource_type: str) -> Callable[[dict, str], dict]:
    def read(item: dict, where: str) -> dict:
        resource = item.get("resource")
        if not isinstance(resource, dict) or (
                resource_type != "Resource" and resource.get("resourceType") != resource_type):
            raise InvalidRequest(f"parameter '{where}' needs a {resource_type} resource")
        return resource

    return read
