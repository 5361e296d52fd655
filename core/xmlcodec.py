"""FHIR R4 XML <-> FHIR JSON (as Python dicts), fast enough for 10,000-part Parameters.

The rest of the gateway works on FHIR JSON dicts only; this module translates XML request bodies
into that form and JSON answers back into XML (https://hl7.org/fhir/R4/xml.html).

What XML does not say by itself (is an element an array? a boolean? a nested resource?) comes
from the fhir.resources R4B model classes: their field annotations give type and cardinality,
`elements_sequence()` the order. Each type's table is derived once, on first use, and cached.
The models are never used to validate: that costs seconds for large Parameters.

Security: a document with a DOCTYPE is refused before the parser sees it (internal entities,
e.g. "billion laughs", would otherwise be expanded in attribute values even with
resolve_entities=False), the parser never loads DTDs or touches the network, and nesting depth
is limited. Error messages name element paths and element names, never values: values can be
patient data.

Deliberately not supported: encodings other than UTF-8 (FHIR XML is always UTF-8); resource
types that R4 has but R4B dropped (e.g. MedicinalProduct, EffectEvidenceSynthesis); decimal
precision ("1.50" reads as 1.5, as with any float-based JSON parser); checking narrative XHTML
against FHIR's XHTML rules (it is only required to be a well-formed div).
"""

from __future__ import annotations

import copy
import enum
import math
import re
import threading
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, TypedDict

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase
from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type information

from ttp_gateway.core.errors import CodecError

__all__ = ["parse_xml", "to_xml"]

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

# Deeper than any sensible FHIR resource, far below Python's recursion limit (libxml2 itself
# stops at 256 levels without huge_tree).
MAX_DEPTH = 100

_FHIR_PREFIX = "{" + FHIR_NS + "}"
_EXTENSION_TAG = _FHIR_PREFIX + "extension"
_XHTML_PREFIX = "{" + XHTML_NS + "}"
_XHTML_DIV_TAG = _XHTML_PREFIX + "div"
_MAX_NAME_IN_MESSAGE = 64
_MAX_PATH_STEPS = 12
_ABSTRACT_RESOURCES = frozenset({"Resource", "DomainResource"})


# ---------------------------------------------------------------------------------------------
# Type tables derived from the fhir.resources models
# ---------------------------------------------------------------------------------------------

class Kind(enum.Enum):
    """How an element is represented in XML."""

    PRIMITIVE = "primitive"  # <name value="..."/>, possibly with id attribute and extensions
    COMPLEX = "complex"      # <name>child elements</name>, a datatype or BackboneElement
    RESOURCE = "resource"    # <name><Patient>...</Patient></name>
    XHTML = "xhtml"          # Narrative.div, an XHTML element serialised as a JSON string


class ValueKind(enum.Enum):
    """How a primitive's XML value attribute maps to a JSON value."""

    TEXT = "text"        # JSON string: string, code, uri, date, base64Binary, ...
    BOOLEAN = "boolean"  # JSON true/false
    INTEGER = "integer"  # JSON integer: integer, unsignedInt, positiveInt
    DECIMAL = "decimal"  # JSON number


# Module-level aliases: enum member lookup (Kind.PRIMITIVE) costs ~0.1 µs, too much per element.
PRIMITIVE, COMPLEX, RESOURCE, XHTML = Kind.PRIMITIVE, Kind.COMPLEX, Kind.RESOURCE, Kind.XHTML
TEXT, BOOLEAN = ValueKind.TEXT, ValueKind.BOOLEAN
INTEGER, DECIMAL = ValueKind.INTEGER, ValueKind.DECIMAL

# Lowest value of each FHIR integer type; all are 32-bit signed at most.
_INTEGER_MINIMUM = {"integer": -(2**31), "unsignedInt": 0, "positiveInt": 1}
_INTEGER_MAXIMUM = 2**31 - 1
_INTEGER_PATTERN = re.compile(r"[+-]?(?:0|[1-9][0-9]{0,9})", re.ASCII)
_DECIMAL_PATTERN = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?", re.ASCII)


@dataclass(frozen=True, slots=True)
class ElementDef:
    """One child element of a FHIR type, as JSON and XML name it."""

    name: str               # JSON key and XML local name, e.g. "valueString"
    ext_name: str           # JSON key of a primitive's id/extensions, e.g. "_valueString"
    tag: str                # qualified XML tag, e.g. "{http://hl7.org/fhir}valueString"
    kind: Kind
    is_list: bool
    primitive: str = ""     # FHIR primitive type name for PRIMITIVE, e.g. "positiveInt"
    value_kind: ValueKind = TEXT
    model: type[FHIRAbstractModel] | None = None  # model class for COMPLEX


@dataclass(frozen=True, slots=True)
class TypeDef:
    """The XML/JSON layout of one resource, datatype or BackboneElement."""

    name: str
    attributes: tuple[str, ...]       # keys that are XML attributes: Element.id, Extension.url
    elements: dict[str, ElementDef]   # by JSON name
    by_tag: dict[str, ElementDef]     # by qualified XML tag
    position: dict[str, int]          # definition order of every JSON key, "_x" next to "x"


_RESOURCE_MODEL = get_fhir_model_class("Resource")
_EXTENSION_MODEL = get_fhir_model_class("Extension")


def _without_none(annotation: Any) -> Any:
    """`Optional[X]` / `X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _primitive_type_name(annotated: Any) -> str:
    """The FHIR primitive behind `Annotated[str, String()]` etc.: "string", "positiveInt", ..."""
    for marker in annotated.__metadata__:
        name: str | None = getattr(marker, "__visit_name__", None)
        if name:
            return name
    base = typing.get_args(annotated)[0]
    if getattr(base, "__name__", "") == "UUID":  # UuidType is pydantic's UUID4, without a marker
        return "uuid"
    raise TypeError(f"no FHIR primitive type in annotation {annotated!r}")


def _value_kind(primitive: str) -> ValueKind:
    if primitive == "boolean":
        return BOOLEAN
    if primitive in _INTEGER_MINIMUM:
        return INTEGER
    if primitive == "decimal":
        return DECIMAL
    return TEXT


class _Naming(TypedDict):
    """The ElementDef fields that follow from a field's name and cardinality alone."""

    name: str
    ext_name: str
    tag: str
    is_list: bool


def _element_def(name: str, annotation: Any) -> ElementDef:
    """Classify one model field from its annotation, e.g. `Optional[List[HumanNameType]]`."""
    inner = _without_none(annotation)
    is_list = typing.get_origin(inner) is list
    if is_list:
        inner = _without_none(typing.get_args(inner)[0])
    common: _Naming = {"name": name, "ext_name": "_" + name, "tag": _FHIR_PREFIX + name, "is_list": is_list}

    if inner is bool:
        return ElementDef(kind=PRIMITIVE, primitive="boolean", value_kind=BOOLEAN,
                          **common)
    if typing.get_origin(inner) is typing.Annotated:
        primitive = _primitive_type_name(inner)
        if primitive == "xhtml":
            common["tag"] = _XHTML_DIV_TAG  # Narrative.div is an XHTML element, not a FHIR one
            return ElementDef(kind=XHTML, **common)
        return ElementDef(kind=PRIMITIVE, primitive=primitive,
                          value_kind=_value_kind(primitive), **common)
    if isinstance(inner, type) and issubclass(inner, FhirBase):
        model = inner.get_model_klass()
        if model is _RESOURCE_MODEL:
            return ElementDef(kind=RESOURCE, **common)
        return ElementDef(kind=COMPLEX, model=model, **common)
    raise TypeError(f"unsupported annotation for element {name}: {annotation!r}")


@cache
def _type_def(model: type[FHIRAbstractModel]) -> TypeDef:
    """The table for one model class, built on first use."""
    is_resource = issubclass(model, _RESOURCE_MODEL)
    if is_resource:
        attributes: tuple[str, ...] = ()
    elif model is _EXTENSION_MODEL:
        attributes = ("id", "url")
    else:
        attributes = ("id",)

    # Fields are keyed by Python name ("class_fhir"); the FHIR name is their alias ("class").
    fields_by_alias = {field.alias or key: field for key, field in model.model_fields.items()}
    elements: dict[str, ElementDef] = {}
    position: dict[str, int] = {"resourceType": -1} if is_resource else {}
    for index, name in enumerate(model.elements_sequence()):
        position[name] = index
        if name in attributes:
            continue
        element = _element_def(name, fields_by_alias[name].annotation)
        elements[name] = element
        if element.kind is PRIMITIVE:
            position[element.ext_name] = index

    return TypeDef(
        name=model.get_resource_type(),
        attributes=attributes,
        elements=elements,
        by_tag={element.tag: element for element in elements.values()},
        position=position,
    )


# Filled with known resource types only: names come from documents and must not grow a cache.
_resource_defs: dict[str, TypeDef] = {}


def _resource_def(resource_type: str) -> TypeDef | None:
    """The table of a concrete resource type, or None if there is no such resource type."""
    type_def = _resource_defs.get(resource_type)
    if type_def is None and resource_type not in _ABSTRACT_RESOURCES:
        try:
            model = get_fhir_model_class(resource_type)
        except (ValueError, ImportError):
            return None
        if not issubclass(model, _RESOURCE_MODEL):
            return None
        type_def = _resource_defs[resource_type] = _type_def(model)
    return type_def


# ---------------------------------------------------------------------------------------------
# Parsing: XML bytes -> FHIR JSON dict
# ---------------------------------------------------------------------------------------------

_parsers = threading.local()

# Non-whitespace text nodes; outside XHTML, FHIR XML carries all data in attributes.
_NON_BLANK_TEXT = etree.XPath("//text()[normalize-space()]")


def _safe_parser() -> etree.XMLParser:
    """One parser per thread: lxml lets only one thread at a time use a parser instance."""
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
            huge_tree=False, remove_comments=True, remove_pis=True,
            # FHIR XML is always UTF-8. Forcing it also makes the byte search for "<!DOCTYPE"
            # in _parse_document complete: no other encoding can hide a DOCTYPE from it.
            encoding="utf-8",
        )
        _parsers.parser = parser
    return parser


def _parse_document(body: bytes) -> etree._Element:
    """The root element of a well-formed, DTD-free XML document, else CodecError."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise CodecError("XML body must be bytes")
    body = bytes(body)
    if not body.strip():
        raise CodecError("empty XML body")
    # Refused before parsing: libxml2 expands internal entities in attribute values even with
    # resolve_entities=False, so no entity declaration may ever reach it.
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise CodecError("XML with a DOCTYPE or entity declarations is not accepted")
    try:
        root = etree.fromstring(body, _safe_parser())
    except etree.XMLSyntaxError as exc:
        # lxml's message can quote the document; only the position is safe to show.
        line, column = exc.position if exc.position else (0, 0)
        raise CodecError(f"malformed XML (line {line}, column {column})") from None
    except (ValueError, etree.LxmlError):
        raise CodecError("malformed XML") from None
    if root is None:
        raise CodecError("malformed XML")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise CodecError("XML with a DOCTYPE or entity declarations is not accepted")
    return root


def parse_xml(body: bytes) -> dict[str, Any]:
    """One FHIR XML resource (any type) -> its FHIR JSON form, as `orjson.loads` would give it.

    Raises CodecError for anything that is not well-formed, DTD-free FHIR XML of a known
    structure; the message names element paths, never values.
    """
    root = _parse_document(body)
    if not root.tag.startswith(_FHIR_PREFIX):
        raise CodecError("root element is not in the FHIR namespace http://hl7.org/fhir")
    _reject_stray_text(root)
    return _read_resource(root, depth=0)


def _reject_stray_text(root: etree._Element) -> None:
    """Text is only allowed inside Narrative XHTML; one XPath pass instead of a check per node."""
    for text in _NON_BLANK_TEXT(root):
        holder = text.getparent()
        if text.is_tail and holder is not None:  # text after an element is in its parent
            holder = holder.getparent()
        if holder is None:
            raise CodecError("text outside the root element")
        if not holder.tag.startswith(_XHTML_PREFIX):
            raise CodecError(f"element {_element_path(holder)} contains text; "
                             "FHIR XML carries values in value attributes")


def _read_resource(elem: etree._Element, depth: int) -> dict[str, Any]:
    resource_type = elem.tag[len(_FHIR_PREFIX):] if elem.tag.startswith(_FHIR_PREFIX) else ""
    type_def = _resource_def(resource_type) if resource_type else None
    if type_def is None:
        raise CodecError(f"unknown resource type {_display_name(elem)} at {_element_path(elem)}")
    if depth > MAX_DEPTH:
        raise CodecError(f"XML nested deeper than {MAX_DEPTH} elements at {_element_path(elem)}")
    _read_attributes(elem, type_def, {})  # a resource has none: this only rejects strays
    resource: dict[str, Any] = {"resourceType": resource_type}
    _read_children(elem, type_def, resource, depth)
    return resource


def _read_complex(elem: etree._Element, type_def: TypeDef, depth: int) -> dict[str, Any]:
    """JSON object of a datatype or BackboneElement: attributes (id, url) and children."""
    if depth > MAX_DEPTH:
        raise CodecError(f"XML nested deeper than {MAX_DEPTH} elements at {_element_path(elem)}")
    out: dict[str, Any] = {}
    _read_attributes(elem, type_def, out)
    if len(elem):
        _read_children(elem, type_def, out, depth)
    if not out:
        raise CodecError(f"element {_element_path(elem)} is empty")
    return out


def _read_attributes(elem: etree._Element, type_def: TypeDef, out: dict[str, Any]) -> None:
    """Element.id and Extension.url; attributes in other namespaces (xsi:...) are ignored."""
    for name, value in elem.items():
        if name in type_def.attributes:
            out[name] = value
        elif not name.startswith("{"):
            raise _unknown_attribute(elem, name)


def _read_children(parent: etree._Element, type_def: TypeDef, out: dict[str, Any], depth: int) -> None:
    """Add the JSON form of all child elements of `parent` to `out`."""
    by_tag = type_def.by_tag
    for child in parent:
        element = by_tag.get(child.tag)
        if element is None:
            raise _unknown_element(child, type_def.name)
        if element.kind is PRIMITIVE:
            value, extras = _read_primitive(child, element, depth + 1)
            if element.is_list:
                _append_primitive(out, element, value, extras)
            else:
                _set_primitive(out, element, value, extras, child)
        else:
            value = _read_structure(child, element, depth + 1)
            if not element.is_list:
                if element.name in out:
                    raise _repeated_element(child)
                out[element.name] = value
            elif element.name in out:
                out[element.name].append(value)
            else:
                out[element.name] = [value]


def _read_structure(elem: etree._Element, element: ElementDef, depth: int) -> Any:
    """JSON value of a complex, resource or XHTML element."""
    if element.kind is COMPLEX:
        return _read_complex(elem, _type_def(element.model), depth)
    if element.kind is RESOURCE:
        return _read_wrapped_resource(elem, depth)
    return _xhtml_to_string(elem)


def _set_primitive(out: dict[str, Any], element: ElementDef, value: Any, extras: dict[str, Any] | None,
                   elem: etree._Element) -> None:
    if element.name in out or element.ext_name in out:
        raise _repeated_element(elem)
    if value is not None:
        out[element.name] = value
    if extras is not None:
        out[element.ext_name] = extras


def _append_primitive(out: dict[str, Any], element: ElementDef, value: Any,
                      extras: dict[str, Any] | None) -> None:
    """Add one entry of a primitive array, keeping "x" and "_x" aligned.

    "_x" exists only once some entry has an id or extensions; it starts with nulls for the
    entries before, and gets a null for every later entry without.
    """
    values = out.get(element.name)
    if values is None:
        values = out[element.name] = []
    values.append(value)
    extras_list = out.get(element.ext_name)
    if extras is not None:
        if extras_list is None:
            extras_list = out[element.ext_name] = [None] * (len(values) - 1)
        extras_list.append(extras)
    elif extras_list is not None:
        extras_list.append(None)


def _read_primitive(elem: etree._Element, element: ElementDef,
                    depth: int) -> tuple[Any, dict[str, Any] | None]:
    """(JSON value or None, {"id": ..., "extension": [...]} or None) of a primitive element."""
    attributes = elem.items()
    if len(attributes) == 1 and attributes[0][0] == "value" and not len(elem):
        # Fast path for the common <name value="..."/>: a value and nothing else.
        raw = attributes[0][1]
        return (raw if element.value_kind is TEXT else _convert_value(raw, element, elem)), None

    value = None
    extras: dict[str, Any] = {}
    for name, text in attributes:
        if name == "value":
            value = _convert_value(text, element, elem)
        elif name == "id":
            extras["id"] = text
        elif not name.startswith("{"):
            raise _unknown_attribute(elem, name)
    if len(elem):
        extras["extension"] = _read_primitive_extensions(elem, element, depth)
    if value is None and not extras:
        raise CodecError(f"element {_element_path(elem)} has neither a value nor extensions")
    return value, extras or None


def _read_primitive_extensions(elem: etree._Element, element: ElementDef,
                               depth: int) -> list[dict[str, Any]]:
    extension_def = _type_def(_EXTENSION_MODEL)
    extensions = []
    for child in elem:
        if child.tag != _EXTENSION_TAG:
            raise _unknown_element(child, element.primitive)
        extensions.append(_read_complex(child, extension_def, depth + 1))
    return extensions


def _convert_value(raw: str, element: ElementDef, elem: etree._Element) -> Any:
    """The JSON value of a primitive's value attribute."""
    kind = element.value_kind
    if kind is TEXT:
        return raw
    if kind is BOOLEAN:
        if raw == "true":
            return True
        if raw == "false":
            return False
    elif kind is INTEGER:
        if _INTEGER_PATTERN.fullmatch(raw):
            number = int(raw)
            if _INTEGER_MINIMUM[element.primitive] <= number <= _INTEGER_MAXIMUM:
                return number
    else:
        match = _DECIMAL_PATTERN.fullmatch(raw)
        if match:
            has_fraction_or_exponent = bool(match.group(1) or match.group(2))
            return _decimal_number(raw, is_integral=not has_fraction_or_exponent, elem=elem)
    raise CodecError(f"element {_element_path(elem)} has no valid {element.primitive} value")


def _decimal_number(raw: str, is_integral: bool, elem: etree._Element) -> int | float:
    """JSON number of a FHIR decimal: int without fraction or exponent, else float.

    Precision is not kept ("1.50" becomes 1.5), as with any JSON parser that reads floats.
    """
    try:
        number: int | float = int(raw) if is_integral else float(raw)
    except ValueError:  # more digits than Python converts to int
        number = math.inf
    if isinstance(number, float) and not math.isfinite(number):
        raise CodecError(f"element {_element_path(elem)} has a decimal value out of range")
    return number


def _read_wrapped_resource(wrapper: etree._Element, depth: int) -> dict[str, Any]:
    """`<resource><Patient>...</Patient></resource>` -> {"resourceType": "Patient", ...}."""
    for name, _ in wrapper.items():
        if not name.startswith("{"):
            raise _unknown_attribute(wrapper, name)
    if len(wrapper) != 1:
        raise CodecError(f"element {_element_path(wrapper)} must contain exactly one resource")
    return _read_resource(wrapper[0], depth + 1)


def _xhtml_to_string(div: etree._Element) -> str:
    """Narrative.div as its JSON string: the serialised XHTML element, own namespace only."""
    detached = copy.deepcopy(div)  # a copy carries the namespaces of its ancestors, e.g. xsi ...
    etree.cleanup_namespaces(detached)  # ... which are dropped again unless the div uses them
    detached.tail = None
    text: str = etree.tostring(detached, encoding="unicode")
    return text


# Error messages: element names and paths only, never attribute values or text.

def _unknown_element(elem: etree._Element, parent_type: str) -> CodecError:
    return CodecError(f"unknown element {_display_name(elem)} in {parent_type} "
                      f"at {_element_path(elem)}")


def _unknown_attribute(elem: etree._Element, name: str) -> CodecError:
    return CodecError(f"unknown attribute '{_truncate(name)}' on element {_element_path(elem)}")


def _repeated_element(elem: etree._Element) -> CodecError:
    return CodecError(f"element {_element_path(elem)} occurs more than once but is not an array")


def _truncate(name: str) -> str:
    return name if len(name) <= _MAX_NAME_IN_MESSAGE else name[:_MAX_NAME_IN_MESSAGE] + "..."


def _local_name(elem: etree._Element) -> str:
    if not isinstance(elem.tag, str):  # an entity reference; cannot occur without a DTD
        return "(not an element)"
    return _truncate(elem.tag.rsplit("}", 1)[-1])


def _display_name(elem: etree._Element) -> str:
    """An element's name for messages; its namespace is shown unless it is FHIR's."""
    tag = elem.tag
    if isinstance(tag, str) and tag.startswith("{") and not tag.startswith(_FHIR_PREFIX):
        namespace = tag[1:].split("}", 1)[0]
        return f"'{_local_name(elem)}' (namespace {_truncate(namespace)})"
    return f"'{_local_name(elem)}'"


def _element_path(elem: etree._Element) -> str:
    """E.g. "Parameters.parameter[2].part[0].valueString"; only built for error messages."""
    steps = []
    node: etree._Element | None = elem
    while node is not None:
        parent = node.getparent()
        step = _local_name(node)
        if parent is not None:
            same_name = [sibling for sibling in parent if sibling.tag == node.tag]
            if len(same_name) > 1:
                step += f"[{same_name.index(node)}]"
        steps.append(step)
        node = parent
    steps.reverse()
    if len(steps) > _MAX_PATH_STEPS:  # e.g. a document nested too deep
        steps[3:-6] = ["(...)"]
    return ".".join(steps)


# ---------------------------------------------------------------------------------------------
# Serialising: FHIR JSON dict -> XML bytes
#
# The XML text is written directly: element names come from the type tables, and every value
# goes through _escape(). Building an lxml tree first costs three times as long.
# ---------------------------------------------------------------------------------------------

_NEEDS_ESCAPE = re.compile(r'[&<>"\t\n\r]')
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                          # kept as references, or a parser would turn them into spaces
                          "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})
# Characters XML 1.0 cannot carry at all, not even as character references.
_NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def to_xml(resource: dict[str, Any]) -> bytes:
    """A FHIR JSON resource (dict with "resourceType") -> UTF-8 FHIR XML bytes.

    Elements are written in FHIR definition order whatever the key order. Raises ValueError
    for keys or values that have no place in the resource's definition, and for text with
    characters XML 1.0 cannot represent.
    """
    parts: list[str] = []
    _write_resource(parts, resource, namespace=f' xmlns="{FHIR_NS}"')
    text = "".join(parts)
    if _NOT_IN_XML.search(text):
        raise ValueError("a value contains a character that XML 1.0 cannot represent")
    return XML_DECLARATION + text.encode("utf-8")


def _escape(value: str) -> str:
    """Text for a double-quoted attribute value."""
    return value if _NEEDS_ESCAPE.search(value) is None else value.translate(_ESCAPES)


def _write_resource(parts: list[str], resource: Any, namespace: str = "") -> None:
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    type_def = _resource_def(resource_type) if isinstance(resource_type, str) else None
    if type_def is None:
        raise ValueError(f"not a FHIR resource with a known resourceType: {resource_type!r}")
    parts.append(f"<{resource_type}{namespace}>")
    _write_children(parts, resource, type_def)
    parts.append(f"</{resource_type}>")


def _write_complex(parts: list[str], name: str, obj: Any, type_def: TypeDef) -> None:
    """`<name id="..." url="...">children</name>` of a datatype or BackboneElement."""
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"element {name} must be a non-empty JSON object")
    attributes = ""
    for attribute in type_def.attributes:
        if attribute in obj:
            attributes += f' {attribute}="{_escape(_string(obj[attribute], attribute))}"'
    parts.append(f"<{name}{attributes}>")
    _write_children(parts, obj, type_def)
    parts.append(f"</{name}>")


def _ordered_keys(obj: dict[str, Any], type_def: TypeDef) -> list[str]:
    try:
        return sorted(obj, key=type_def.position.__getitem__)
    except KeyError:
        unknown = sorted(str(key) for key in obj if key not in type_def.position)
        raise ValueError(f"unknown element(s) in {type_def.name}: {', '.join(unknown)}") from None


def _write_children(parts: list[str], obj: dict[str, Any], type_def: TypeDef) -> None:
    """The child elements of a JSON object, in definition order."""
    elements = type_def.elements
    for key in _ordered_keys(obj, type_def):
        element = elements.get(key)
        if element is None:
            if key == "resourceType" or key in type_def.attributes:
                continue
            element = elements[key[1:]]  # "_x", the id/extensions of primitive "x" ...
            if element.name in obj:
                continue  # ... written together with "x"
        value = obj.get(element.name)
        if element.kind is PRIMITIVE:
            extras = obj.get(element.ext_name)
            if extras is None and type(value) is str and element.value_kind is TEXT \
                    and not element.is_list:
                # Fast path for the common case: one string-like value, no id or extensions.
                parts.append(f'<{key} value="{_escape(value)}"/>')
            else:
                _write_primitive(parts, element, value, extras)
        elif not element.is_list:
            _write_element(parts, element, value)
        elif isinstance(value, list):
            for entry in value:
                _write_element(parts, element, entry)
        else:
            raise ValueError(f"element {element.name} must be an array")


def _write_element(parts: list[str], element: ElementDef, value: Any) -> None:
    """One complex, resource or XHTML element."""
    if element.kind is COMPLEX:
        _write_complex(parts, element.name, value, _type_def(element.model))
    elif element.kind is RESOURCE:
        parts.append(f"<{element.name}>")
        _write_resource(parts, value)
        parts.append(f"</{element.name}>")
    else:
        parts.append(_xhtml_text(value))


def _write_primitive(parts: list[str], element: ElementDef, value: Any, extras: Any) -> None:
    """`x` and `_x` -> one `<x value="..."/>` per entry, id and extensions merged in."""
    if not element.is_list:
        _write_primitive_entry(parts, element, value, extras)
        return
    values = [] if value is None else value
    extras_list = [] if extras is None else extras
    if not isinstance(values, list) or not isinstance(extras_list, list):
        raise ValueError(f"element {element.name} must be an array")
    if extras_list and values and len(extras_list) != len(values):
        raise ValueError(f"{element.ext_name} must be as long as {element.name}")
    for index in range(max(len(values), len(extras_list))):
        _write_primitive_entry(
            parts, element,
            values[index] if index < len(values) else None,
            extras_list[index] if index < len(extras_list) else None,
        )


def _write_primitive_entry(parts: list[str], element: ElementDef, value: Any,
                           extras: Any) -> None:
    value_attribute = ""
    if value is not None:
        value_attribute = f' value="{_escape(_primitive_text(value, element))}"'
    if not extras:
        if value is None:
            raise ValueError(f"element {element.name} has neither a value nor extensions")
        parts.append(f"<{element.name}{value_attribute}/>")
        return
    if not isinstance(extras, dict) or not extras.keys() <= {"id", "extension"}:
        raise ValueError(f"{element.ext_name} may only hold id and extension")
    id_attribute = f' id="{_escape(_string(extras["id"], "id"))}"' if "id" in extras else ""
    parts.append(f"<{element.name}{id_attribute}{value_attribute}>")
    extension_def = _type_def(_EXTENSION_MODEL)
    for extension in extras.get("extension") or ():
        _write_complex(parts, "extension", extension, extension_def)
    parts.append(f"</{element.name}>")


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _primitive_text(value: Any, element: ElementDef) -> str:
    """The XML value attribute of a JSON primitive, checked against the element's type."""
    kind = element.value_kind
    if kind is TEXT and isinstance(value, str):
        return value
    if kind is BOOLEAN and isinstance(value, bool):
        return "true" if value else "false"
    # type() rather than isinstance(): True is an int, but no FHIR number
    if kind is INTEGER and type(value) is int:
        return str(value)
    if kind is DECIMAL and (type(value) is int or (type(value) is float and math.isfinite(value))):
        return str(value)  # shortest form that reads back as the same float, e.g. "0.1", "1e-07"
    raise ValueError(f"element {element.name} needs a {element.primitive} value")


def _xhtml_text(div: Any) -> str:
    """Narrative.div's JSON string, checked to be one safe, well-formed XHTML div element."""
    if not isinstance(div, str):
        raise ValueError("Narrative.div must be a string")
    try:
        elem = _parse_document(div.encode("utf-8"))
    except CodecError as exc:
        raise ValueError(f"Narrative.div is not well-formed XHTML: {exc.diagnostics}") from None
    if elem.tag != _XHTML_DIV_TAG:
        raise ValueError("Narrative.div must be a div element in the XHTML namespace")
    text: str = etree.tostring(elem, encoding="unicode")
    return text
