"""Operation declarations and the binding of request parameters to them.

A plugin declares each operation once: its name, aliases, input parameters (name, cardinality,
type, parts) and output parameters. From that single declaration the core validates and binds
requests (this module), and generates the OperationDefinition and CapabilityStatement
(`core.capability`). Nothing else describes an operation's parameters.

Binding is the tolerant reader of the wire protocol: a string may arrive as valueString,
valueCode, valueId or valueUri (and the other string-like types); an integer as valueInteger,
valuePositiveInt, valueUnsignedInt or a digit string. Unknown parameters are ignored.

It is also strict where FHIR is: every value must be valid for the type it is sent as (an id as
FHIR's id, an integer in its range) and a string declared as an id, code, oid or uuid for that
type too, whatever value[x] carries it; every parameter needs a name, as a string; a resource
given as a parameter may nest only so deep. (Base64 content is the operation's to check: it may
answer per item.) Violations are 400 and name the parameter, never its value. (Characters that
no FHIR string may hold are refused when the body is decoded, `codec.decode`.) A `Budget`
bounds what one request may ask for: values of a repeating parameter, things to create (the sum
of the values of `creates` parameters), nesting; beyond it, 413.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Iterator, Literal, Mapping

from .errors import InvalidRequest, PayloadTooLarge

UNBOUNDED: Final = "*"

_STRING_KEYS = ("valueString", "valueCode", "valueId", "valueUri", "valueUrl", "valueCanonical",
                "valueOid", "valueUuid", "valueMarkdown")

# FHIR primitive types whose value reaches the handler as a Python str.
_STRING_TYPES = {"string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown"}

# FHIR's own value patterns (https://hl7.org/fhir/R4/datatypes.html), for the value[x] keys
# that carry them; a value sent as valueString is any string.
_VALUE_PATTERNS: dict[str, re.Pattern[str]] = {
    "valueCode": re.compile(r"[^\s]+(\s[^\s]+)*"),
    "valueId": re.compile(r"[A-Za-z0-9\-.]{1,64}"),
    "valueUri": re.compile(r"\S*"),
    "valueUrl": re.compile(r"\S*"),
    "valueCanonical": re.compile(r"\S*"),
    "valueOid": re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+"),
    "valueUuid": re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
}
_INTEGER_RANGES = {"valueInteger": (-(2 ** 31), 2 ** 31 - 1), "valuePositiveInt": (1, 2 ** 31 - 1),
                   "valueUnsignedInt": (0, 2 ** 31 - 1), "valueInteger64": (-(2 ** 63), 2 ** 63 - 1)}
_DATE_PATTERNS = {
    "date": re.compile(r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?"),
    "dateTime": re.compile(r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
                           r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?"),
    "instant": re.compile(r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
                          r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"),
}


@dataclass
class Budget:
    """What binding one request (all entries of a Bundle together) may still take."""

    max_items: int = 1_000_000
    max_created: int = 1_000_000
    max_depth: int = 64
    created: int = 0

    def create(self, count: int, where: str) -> None:
        if count > 0:
            self.created += count
            if self.created > self.max_created:
                raise PayloadTooLarge(f"the request asks to create more than {self.max_created} items "
                                      f"(parameter '{where}'); send several requests")

    def items(self, count: int, where: str) -> None:
        if count > self.max_items:
            raise PayloadTooLarge(f"parameter '{where}' has more than {self.max_items} values; "
                                  "send several requests")


@dataclass(frozen=True)
class Param:
    """One parameter (or part) of an operation, as an OperationDefinition describes it.

    `type` is a FHIR type name ("string", "integer", "base64Binary", "Identifier", "Patient", ...)
    or None for a parameter made only of parts. A parameter with both a type and parts accepts
    either form. `scope` names the scope kind (e.g. "domains", "studies") that must allow every
    value given for this parameter. `creates` marks an integer parameter whose values are numbers
    of things the call creates: their sum over a request is bounded (`[limits] max_created`).
    """

    name: str
    type: str | None = "string"
    min: int = 0
    max: int | Literal["*"] = 1
    doc: str = ""
    parts: tuple["Param", ...] = ()
    scope: str | None = None
    creates: bool = False
    aliases: tuple[str, ...] = ()
    reader: Callable[[dict[str, Any], str, Budget], Any] = field(init=False, repr=False, compare=False)
    scoped: bool = field(init=False, repr=False, compare=False)  # a scope here or in a part
    repeats: bool = field(init=False, repr=False, compare=False)  # more than one value allowed

    def __post_init__(self) -> None:
        if self.max != UNBOUNDED and (not isinstance(self.max, int) or self.max < 1):
            raise ValueError(f"parameter {self.name}: max must be a positive int or '*'")
        if self.type is None and not self.parts:
            raise ValueError(f"parameter {self.name}: needs a type or parts")
        if self.creates and self.type not in ("integer", "positiveInt", "unsignedInt"):
            raise ValueError(f"parameter {self.name}: only integer parameters count things created")
        object.__setattr__(self, "reader", _reader_for(self))
        object.__setattr__(self, "scoped", self.scope is not None or any(p.scoped for p in self.parts))
        object.__setattr__(self, "repeats", self.max == UNBOUNDED or self.max > 1)


@dataclass(frozen=True)
class Operation:
    """A system-level operation `POST [base]/$name` contributed by a plugin.

    `handler` receives a `core.gateway.Call` and returns a FHIR resource as a dict, or a
    `Result` when the status is not 200. With `batch=True` the operation also accepts a `batch`
    Bundle whose entries each carry one Parameters; the core answers a `batch-response` in which
    entries fail alone. With `transaction=True` it accepts a `transaction` Bundle: all entries or
    none, a `transaction-response` or the first entry's error for the whole request. Both run in
    one unit of work. `batch_handler`, where given, answers all entries of a Bundle in one call
    (a few store round trips instead of one unit per entry): it receives the bound calls and
    returns one answer per call — a resource, a `Result`, or a `FhirError` for an entry that fails
    alone — and must not write for the entries it fails. `coalesce`, where given, answers
    concurrent single calls of the operation together, in one unit of work (`core.coalescing`):
    like `batch_handler` it receives the calls and returns one answer per call, each exactly what
    `handler` would have answered that call alone (a failure, as a `FhirError` or a `Result`
    with an error status, having written nothing); each call keeps its own answer and audit.

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
    transaction: bool = False
    batch_handler: Callable[[list[Any]], list[Any]] | None = None
    url: str | None = None
    replaces: bool = False
    # A read that never writes nor waits for a lock: small requests of it may run on the event
    # loop itself when the store's reads never block (SQLite), sparing the hop to a thread.
    quick_read: bool = False
    # A small write that does little besides its statements (no searching, no waiting): on an
    # embedded store with group commit it runs on the event loop and awaits its group's commit.
    quick_write: bool = False
    legacy_get: tuple[str, ...] = ()
    coalesce: Callable[[list[Any]], list[Any]] | None = None

    def allows_get(self, invoked_as: str) -> bool:
        return not self.affects_state or invoked_as in self.legacy_get

    @property
    def definition_id(self) -> str:
        """The id of the generated OperationDefinition, as the guide names them."""
        words = self.name.replace("-", " ").split()
        return "".join(w[0].upper() + w[1:] for w in words)


@dataclass(frozen=True)
class Search:
    """A type-level search `GET [base]/{endpoint}/{resource_type}?name=value...` contributed by a
    plugin (`ttp_searches`).

    `handler` receives a `core.gateway.Call` whose `args` map every query parameter to its values
    (a list of strings; `_count`, `_offset` and the other control parameters included) and returns
    a `searchset` Bundle. A caller needs `resource_type` among its operations (or "*") to search;
    value scopes (a domain named in the query) are the handler's to check, with `call.client`.
    `parameters` name the search parameters, for the CapabilityStatement."""

    endpoint: str
    resource_type: str
    handler: Callable[..., Any]
    parameters: tuple[str, ...] = ()
    description: str = ""

    def as_operation(self) -> "Operation":
        """The operation a search runs as (for scopes, the executor, audit and metrics)."""
        return Operation(endpoint=self.endpoint, name=self.resource_type, handler=self.handler,
                         affects_state=False, description=self.description)


@dataclass(frozen=True)
class Result:
    """A handler's answer with a status other than 200, or, inside a batch, with an outcome of
    its own for the entry's `response.outcome`."""

    resource: dict[str, Any]
    status: int = 200
    outcome: dict[str, Any] | None = None


class Args(dict[str, Any]):
    """Bound parameters: a single value (or None) for 0..1/1..1, a list for repeating ones,
    and an `Args` per instance of a parameter made of parts."""


def bind(parameters: tuple[Param, ...], given: Any, path: str = "", budget: Budget | None = None) -> Args:
    """Check `given` (a Parameters.parameter or .part array) against the declaration."""
    if budget is None:
        budget = Budget()
    if not isinstance(given, list):
        raise InvalidRequest(f"'{path or 'parameter'}' must be an array")
    entry = _declared.get(id(parameters))
    if entry is None or entry[0] is not parameters:
        entry = _declared[id(parameters)] = (
            parameters, {name: p for p in parameters for name in (p.name, *p.aliases)})
    declared = entry[1]
    collected: dict[str, list[Any]] = {param.name: [] for param in parameters}
    for item in given:
        if item.__class__ is not dict:
            raise InvalidRequest(f"every entry of '{path or 'parameter'}' must be an object")
        name = item.get("name")
        if name.__class__ is not str:
            raise InvalidRequest(f"every entry of '{path or 'parameter'}' needs a name, as a string")
        param = declared.get(name)
        if param is not None:
            collected[param.name].append(param.reader(item, path + name, budget))
    args = Args()
    for param in parameters:
        values = collected[param.name]
        if len(values) < param.min:
            raise InvalidRequest(f"parameter '{path}{param.name}' is required"
                                 + (f" at least {param.min} times" if param.min > 1 else ""))
        if not param.repeats and len(values) > 1:
            raise InvalidRequest(f"parameter '{path}{param.name}' must not be repeated")
        if param.max != UNBOUNDED and len(values) > param.max:
            raise InvalidRequest(f"parameter '{path}{param.name}' may occur at most {param.max} times")
        if param.repeats:
            budget.items(len(values), path + param.name)
        if param.creates:
            for value in values:
                budget.create(value, path + param.name)
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
        value: Any = args.get(param.name)
        for instance in (value if param.repeats else (value,)):
            if instance is None:
                continue
            if isinstance(instance, Args):
                yield from scoped_values(param.parts, instance)
            elif param.scope is not None:
                # An Identifier names its scope by its value (the MII interface's `context`).
                yield param.scope, instance.get("value", "") if isinstance(instance, dict) else instance


# --- readers: one per declared parameter, built once -------------------------------------------

Reader = Callable[[dict[str, Any], str, Budget], Any]


def _reader_for(param: Param) -> Reader:
    value_reader = _value_reader(param.type) if param.type else None
    if not param.parts:
        assert value_reader is not None
        return value_reader
    parts = param.parts

    def read_parts(item: dict[str, Any], where: str, budget: Budget) -> Any:
        given = item.get("part")
        if given is None:
            if value_reader is not None:
                return value_reader(item, where, budget)
            raise InvalidRequest(f"parameter '{where}' needs parts")
        return bind(parts, given, where + ".", budget)

    return read_parts


def _value_reader(fhir_type: str) -> Reader:
    declared = _VALUE_PATTERNS.get("value" + fhir_type[0].upper() + fhir_type[1:])
    if fhir_type in _STRING_TYPES and declared is not None:
        # An id (or code, oid, uuid) keeps its type's rule when it arrives as valueString.
        return _checked_string(declared, fhir_type)
    if fhir_type in _STRING_TYPES:
        return _read_string
    if fhir_type in ("integer", "positiveInt", "unsignedInt"):
        return _read_integer
    if fhir_type == "boolean":
        return _read_boolean
    if fhir_type == "base64Binary":
        # Clients send Bloom filters as valueBase64Binary; a few send them as plain strings.
        # Not checked against base64's alphabet here: where a plugin answers per item (a site's
        # batch of Bloom filters), one undecodable filter must not fail the others.
        return _typed_reader(("valueBase64Binary",) + _STRING_KEYS, str, "a base64Binary")
    if fhir_type in _DATE_PATTERNS:
        keys = ("value" + fhir_type[0].upper() + fhir_type[1:],) + _STRING_KEYS
        return _typed_reader(keys, str, f"a {fhir_type}", _DATE_PATTERNS[fhir_type])
    if fhir_type[0].isupper() and fhir_type in _COMPLEX_DATATYPES:
        return _typed_reader(("value" + fhir_type,), dict, f"a {fhir_type}")
    if fhir_type[0].isupper():
        return _resource_reader(fhir_type)
    raise ValueError(f"unsupported parameter type {fhir_type!r}")


_COMPLEX_DATATYPES = {"Identifier", "Coding", "CodeableConcept", "Reference", "Period", "Address",
                      "HumanName", "Quantity", "Attachment", "ContactPoint", "Meta"}


def _read_string(item: dict[str, Any], where: str, budget: Budget) -> str:
    value = item.get("valueString")
    if value is None:
        for key in _STRING_KEYS:
            value = item.get(key)
            if value is not None:
                pattern = _VALUE_PATTERNS.get(key)
                if pattern is not None and type(value) is str and not pattern.fullmatch(value):
                    raise InvalidRequest(f"parameter '{where}' is not a valid {key[5:]}")
                break
        else:
            raise InvalidRequest(f"parameter '{where}' needs a string value")
    if type(value) is not str:
        raise InvalidRequest(f"parameter '{where}' needs a string value")
    return value


def _checked_string(pattern: re.Pattern[str], fhir_type: str) -> Reader:
    def read(item: dict[str, Any], where: str, budget: Budget) -> str:
        value = _read_string(item, where, budget)
        if not pattern.fullmatch(value):
            raise InvalidRequest(f"parameter '{where}' is not a valid {fhir_type}")
        return value

    return read


def _read_integer(item: dict[str, Any], where: str, budget: Budget) -> int:
    for key, (lowest, highest) in _INTEGER_RANGES.items():
        value = item.get(key)
        if value is not None:
            if type(value) is not int:
                raise InvalidRequest(f"parameter '{where}' needs an integer value")
            if not lowest <= value <= highest:
                raise InvalidRequest(f"parameter '{where}' is out of the range of {key[5:]}")
            return value
    for key in _STRING_KEYS:
        value = item.get(key)
        if value is not None:
            # The guide's own `$pseudonymize-secondary` example sends count as valueString "2".
            text = value.strip() if isinstance(value, str) else ""
            digits = text[1:] if text[:1] in "+-" else text
            if digits.isascii() and digits.isdigit() and len(digits) <= 10:
                number = int(text)
                if -(2 ** 31) <= number < 2 ** 31:
                    return number
            break
    raise InvalidRequest(f"parameter '{where}' needs an integer value")


def _read_boolean(item: dict[str, Any], where: str, budget: Budget) -> bool:
    value = item.get("valueBoolean")
    if isinstance(value, bool):
        return value
    if value is None:
        # As for integers, a tolerant reader: HAPI-built clients send flags as strings too.
        for key in _STRING_KEYS:
            text = item.get(key)
            if text is not None:
                if text in ("true", "false"):
                    return bool(text == "true")
                break
    raise InvalidRequest(f"parameter '{where}' needs a boolean value")


def _typed_reader(keys: tuple[str, ...], python_type: type[Any], what: str,
                  pattern: re.Pattern[str] | None = None) -> Reader:
    def read(item: dict[str, Any], where: str, budget: Budget) -> Any:
        for key in keys:
            value = item.get(key)
            if value is not None:
                if type(value) is not python_type:
                    break
                if pattern is not None and not pattern.fullmatch(value):
                    raise InvalidRequest(f"parameter '{where}' is not {what}")
                sent_as = _VALUE_PATTERNS.get(key)  # e.g. a filter sent as valueId must be an id
                if sent_as is not None and not sent_as.fullmatch(value):
                    raise InvalidRequest(f"parameter '{where}' is not a valid {key[5:]}")
                return value
        raise InvalidRequest(f"parameter '{where}' needs {what} value")

    return read


def _resource_reader(resource_type: str) -> Reader:
    def read(item: dict[str, Any], where: str, budget: Budget) -> dict[str, Any]:
        resource = item.get("resource")
        if not isinstance(resource, dict) or (
                resource_type != "Resource" and resource.get("resourceType") != resource_type):
            raise InvalidRequest(f"parameter '{where}' needs a {resource_type} resource")
        if _depth(resource, budget.max_depth) > budget.max_depth:
            raise InvalidRequest(f"parameter '{where}' nests deeper than {budget.max_depth} levels")
        return resource

    return read


def _depth(value: Any, limit: int) -> int:
    """How deep objects and arrays nest in `value` (counting stops just past `limit`)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, level = pending.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                pending.append((child, level + 1))
    return deepest
