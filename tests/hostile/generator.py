"""The bad requests of the hostile suite, generated systematically.

Every one of the 13 operations starts from a request that would succeed (`BASELINES`, on the
demo configuration). Each generator below breaks it in one way — a value, a name, a type, the
structure, the encoding, the transport, the credentials, the limits — in JSON and in XML, with the
answer negotiated as JSON or XML in turn. Every request must be refused with a 4xx
OperationOutcome in the negotiated format, name no secret it carried, and write nothing.

Values that a caller sends as patient data carry the marker `SECRET`: no answer may quote it.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from itertools import count, cycle
from typing import Any, Callable, Iterator

from ttp_gateway.core.xmlcodec import to_xml

from conftest import DEMO_KEY

from .harness import KEYS, LIMITS, Request

BASE = "/ttp-fhir/fhir"
SECRET = "SECRETx9"
JSON = "application/fhir+json"
XML = "application/fhir+xml"
TASK = "064ddebf-b20e-468a-97fd-88097bcdbc11"  # the demo's open send_idat task (study mii)
KEY_OF = {k["name"]: k["key"] for k in KEYS}

# Characters no FHIR string may hold: controls (not tab, CR, LF), non-characters, surrogates.
FORBIDDEN = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1f", "\ufffe", "\uffff", "\ufdd0", "\U0001fffe",
             "\U0010ffff", "\ud800", "\udfff"]

# Filters of the right lengths (1600 bits for version 1, 1000 for version 2), with some bits set.
FILTER_V1 = base64.b64encode(bytes((i * 37) % 256 for i in range(200))).decode()
FILTER_V2 = base64.b64encode(bytes((i * 53) % 256 for i in range(125))).decode()


def _s(name: str, value: str, key: str = "valueString") -> dict:
    return {"name": name, key: value}


def _patient() -> dict:
    return {"resourceType": "Patient", "id": "p-1",
            "identifier": [{"system": "http://example.org/mrn", "value": SECRET + "-mrn"}],
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                           "valueAddress": {"city": "Musterhausen"}}],
            "name": [{"family": "Mustermann" + SECRET, "given": ["Martin"]}],
            "gender": "male", "birthDate": "1965-12-03"}


# (endpoint, Parameters that would succeed) per operation.
BASELINES: dict[str, tuple[str, dict]] = {
    "pseudonymize": ("gpas", [_s("target", "MIRACUM"), _s("original", SECRET + "-1")]),
    "pseudonymizeAllowCreate": ("gpas", [_s("target", "MIRACUM"), _s("original", SECRET + "-2")]),
    "dePseudonymize": ("gpas", [_s("target", "MIRACUM"), _s("pseudonym", "mrcm_T0TYNV21")]),
    "pseudonymize-secondary": ("gpas", [{"name": "original", "part": [
        _s("target", "Datensatz-Ebene"), _s("value", SECRET + "-3"), {"name": "count", "valueInteger": 2}]}]),
    "deletePseudonyms": ("gpas", [_s("target", "MIRACUM"), _s("original", "1001000000022")]),
    "anonymizeOriginals": ("gpas", [_s("target", "MIRACUM"), _s("original", "1001000000033")]),
    "insertValuePseudonymPairs": ("gpas", [{"name": "pseudonym", "part": [
        _s("target", "MIRACUM"), _s("original", SECRET + "-4"), _s("value", "mrcm_ACDEFGHJ")]}]),
    "requestPsnFromBfWorkflow": ("dispatcher", [
        _s("study", "mii"), _s("bloomfilter", FILTER_V1, "valueBase64Binary"), _s("target", "dic_erlangen")]),
    "requestTasks": ("dispatcher", [_s("study", "mii"), _s("target", "eyematics")]),
    "providePatientData": ("dispatcher", [
        _s("taskId", TASK, "valueId"), _s("target", "eyematics"), {"name": "patient", "resource": _patient()}]),
    "updateBf": ("dispatcher", [
        _s("study", "mii"), _s("bloomfilter", FILTER_V2, "valueBase64Binary"), _s("source", "dic_muenster"),
        _s("pseudonym", "dic_2Q42E"), _s("bfVersion", "2")]),
    "requestPsnWorkflow": ("dispatcher", [
        _s("study", "mii"), _s("original", "dic_1H51T"), _s("source", "dic_muenster"), _s("target", "eyematics")]),
    "pseudonymizePatient": ("dispatcher", [
        _s("study", "mii"), {"name": "patient", "resource": _patient()},
        {"name": "context", "part": [_s("target", "dic_muenster"), {"name": "count", "valueInteger": 1}]}]),
}
OPERATIONS = list(BASELINES)
READS = {"pseudonymize", "dePseudonymize", "requestTasks"}  # may be invoked with GET
# The parameters that may repeat (0..* or 1..*) per operation; the others must not.
REPEATING = {"pseudonymize": "original", "pseudonymizeAllowCreate": "original", "dePseudonymize": "pseudonym",
             "pseudonymize-secondary": "original", "deletePseudonyms": "original", "anonymizeOriginals": "original",
             "insertValuePseudonymPairs": "pseudonym", "requestPsnFromBfWorkflow": "bloomfilter",
             "requestPsnWorkflow": "original", "pseudonymizePatient": "context"}


def parameters(op: str) -> list[dict]:
    return copy.deepcopy(BASELINES[op][1])


def path_of(op: str) -> str:
    return f"{BASE}/{BASELINES[op][0]}/${op}"


@dataclass
class BadRequest:
    """One request the gateway must refuse.

    `status`: the statuses that are right for it (a 4xx, or a set of them where the order of
    checks decides); `answer`: the answer format the negotiation must pick (None: either);
    `batch`: answered 200 with a batch-response whose every entry failed."""

    id: str
    request: Request
    status: tuple[int, ...]
    answer: str | None = None
    batch: bool = False
    secrets: tuple[str, ...] = (SECRET,)
    allow: bool = False  # a 405 that must carry an Allow header


# The answer format requested, in turn: (query, accept header, expected answer format).
_NEGOTIATIONS = [(b"", None, None), (b"", XML, "xml"), (b"_format=json", XML, "json"), (b"", JSON, "json"),
                 (b"_format=xml", None, "xml")]


@dataclass
class _Maker:
    """Builds requests, negotiating the answer format in turn so that every class meets both."""

    turn: Iterator[int] = field(default_factory=lambda: cycle(range(len(_NEGOTIATIONS))))
    seen: set[str] = field(default_factory=set)
    cases: list[BadRequest] = field(default_factory=list)

    def add(self, case_id: str, method: str, path: str, body: bytes = b"", *, status: tuple[int, ...] | int,
            content_type: str | bytes | None = JSON, key: str | None = DEMO_KEY, extra: tuple = (),
            query: bytes = b"", negotiate: bool = True, batch: bool = False, allow: bool = False,
            chunks: list[bytes] | None = None, body_format: str | None = "json") -> None:
        if case_id in self.seen:
            raise AssertionError(f"duplicate case id {case_id}")
        self.seen.add(case_id)
        accept, expected = None, None
        if negotiate:
            extra_query, accept, expected = _NEGOTIATIONS[next(self.turn)]
            if extra_query:
                query = query + b"&" + extra_query if query else extra_query
            if expected is None and accept is None and content_type is not None:
                # no preference: the answer follows the body's declared format
                expected = body_format if isinstance(content_type, str) and body_format else None
        headers: list[tuple[bytes, bytes]] = []
        if content_type is not None:
            headers.append((b"content-type", content_type.encode("latin-1") if isinstance(content_type, str)
                            else content_type))
        if accept:
            headers.append((b"accept", accept.encode()))
        if key is not None:
            headers.append((b"apikey", key.encode("latin-1")))
        headers += [(n.lower().encode("latin-1"), v if isinstance(v, bytes) else v.encode("latin-1"))
                    for n, v in extra]
        if body and chunks is None:
            headers.append((b"content-length", str(len(body)).encode()))
        self.cases.append(BadRequest(case_id, Request(method, path, query, headers, body, chunks),
                                     status if isinstance(status, tuple) else (status,), expected,
                                     batch=batch, allow=allow))

    def post(self, case_id: str, op: str, body: bytes | dict | list | Any, status: tuple[int, ...] | int = 400,
             fmt: str = "json", **options: Any) -> None:
        if not isinstance(body, bytes):
            body = _json(body) if fmt == "json" else to_xml(body)
        content_type = options.pop("content_type", JSON if fmt == "json" else XML)
        self.add(case_id, "POST", options.pop("path", path_of(op)), body, status=status,
                 content_type=content_type, body_format=fmt, **options)


def _json(value: Any) -> bytes:
    """JSON as a client may send it: escapes for every non-ASCII character, lone surrogates too."""
    return json.dumps(value).encode()


def _raw_json(value: Any) -> bytes:
    """JSON with characters as raw UTF-8 (surrogates as their would-be bytes: not UTF-8)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _some(items: list, position: int, rotating: int, everything_at: int = 3) -> list:
    """All of `items` for every `everything_at`-th operation (or value), a rotating few for the
    others: every item meets several operations, and the suite stays fast."""
    if position % everything_at == 0:
        return list(items)
    return [items[(position * rotating + k) % len(items)] for k in range(rotating)]


def _resource(params: list[dict]) -> dict:
    return {"resourceType": "Parameters", "parameter": params}


def _leaves(params: list[dict], trail: tuple = ()) -> Iterator[tuple[tuple, dict, str]]:
    """(trail of indexes, the parameter, its value key) of every value in a parameter list."""
    for index, param in enumerate(params):
        if "part" in param:
            yield from _leaves(param["part"], trail + (index,))
        else:
            key = next(k for k in param if k != "name")
            yield trail + (index,), param, key


def _at(params: list[dict], trail: tuple) -> dict:
    node = params[trail[0]]
    for index in trail[1:]:
        node = node["part"][index]
    return node


def _where(trail: tuple, params: list[dict]) -> str:
    names = []
    node_list = params
    for index in trail:
        names.append(node_list[index]["name"])
        node_list = node_list[index].get("part", [])
    return ".".join(names)


# --- values ---------------------------------------------------------------------------------------

def value_cases(make: _Maker) -> None:
    """Characters FHIR strings may not hold, wrong JSON types and wrong FHIR value types, in every
    value of every operation."""
    rotation = count()
    for op in OPERATIONS:
        base = parameters(op)
        for position, (trail, param, key) in enumerate(_leaves(base)):
            where = _where(trail, base)
            if key == "resource":
                continue
            # forbidden characters: all on the first value of an operation, a few on the others
            chars = FORBIDDEN if position == 0 else [FORBIDDEN[next(rotation) % len(FORBIDDEN)]]
            for char in dict.fromkeys(chars):
                params = parameters(op)
                _at(params, trail)[key] = SECRET + char + "x" if key != "valueInteger" else SECRET + char
                label = f"U+{ord(char):04X}"
                make.post(f"{op}:{where}:char-{label}:escaped", op, _resource(params))
            if position == 0:
                # the same characters as raw bytes (a surrogate's bytes are not UTF-8 at all)
                for char in _some(["\x01", "\uffff", "\U0001fffe", "\ufdd0", "\ud800"], next(rotation), 2):
                    params = parameters(op)
                    _at(params, trail)[key] = SECRET + char
                    make.post(f"{op}:{where}:char-U+{ord(char):04X}:raw", op, _raw_json(_resource(params)))
            # wrong JSON types
            wrong = [123, True, {"value": SECRET}, [SECRET], 1.5, -7] if key != "valueInteger" else \
                ["two", 2.5, True, [2], {"v": 2}, None]
            for kind in (wrong if position == 0 else [wrong[next(rotation) % len(wrong)]]):
                params = parameters(op)
                _at(params, trail)[key] = kind
                make.post(f"{op}:{where}:type-{type(kind).__name__}-{json.dumps(kind)[:12]}", op, _resource(params))
            # a value[x] of a type FHIR does not allow here, or one that breaks its type's rules
            for bad_key, bad_value in _some(_wrong_value_types(key), next(rotation), 1, everything_at=4):
                params = parameters(op)
                node = _at(params, trail)
                del node[key]
                node[bad_key] = bad_value
                make.post(f"{op}:{where}:{bad_key}={json.dumps(bad_value)[:16]}", op, _resource(params))


def _wrong_value_types(key: str) -> list[tuple[str, Any]]:
    if key == "valueInteger":
        return [("valueInteger", 2 ** 31), ("valueInteger", -(2 ** 31) - 1), ("valuePositiveInt", 0),
                ("valueUnsignedInt", -1), ("valueString", "12abc"), ("valueString", "9" * 30),
                ("valueDecimal", 2.0), ("valueBoolean", True)]
    return [("valueId", "has space " + SECRET), ("valueId", "x" * 65), ("valueCode", " lead " + SECRET),
            ("valueOid", "oid:" + SECRET), ("valueUuid", "urn:uuid:" + SECRET), ("valueInteger", 5),
            ("valueBoolean", False), ("valueDateTime", SECRET)][: 8]


def name_cases(make: _Maker) -> None:
    """Parameter names that are not strings, missing, or not what the operation declares."""
    for op in OPERATIONS:
        for label, name in (("int", 1), ("null", None), ("list", ["target"]), ("object", {"n": "target"}),
                            ("bool", True), ("float", 1.0)):
            params = parameters(op)
            params[0]["name"] = name
            make.post(f"{op}:name-{label}", op, _resource(params))
        params = parameters(op)
        del params[0]["name"]
        make.post(f"{op}:name-missing", op, _resource(params))
        params = parameters(op)
        params[0]["name"] = params[0]["name"].upper()  # names are case-sensitive: now it is missing
        make.post(f"{op}:name-upper-case", op, _resource(params))
        params = parameters(op)
        params[0]["name"] = "target\x00"
        make.post(f"{op}:name-with-NUL", op, _resource(params))


def structure_cases(make: _Maker) -> None:
    """Missing and repeated parameters, parameter lists and parts of the wrong shape, other
    resources, and bodies that are no resource at all."""
    for position, op in enumerate(OPERATIONS):
        base = parameters(op)
        for index, param in enumerate(base):
            params = parameters(op)
            del params[index]
            status = 422 if (op, param["name"]) == ("providePatientData", "patient") else 400
            make.post(f"{op}:missing-{param['name']}", op, _resource(params), status=(400, status))
            if param["name"] != REPEATING.get(op):
                params = parameters(op)
                params.insert(index, copy.deepcopy(param))
                make.post(f"{op}:repeated-{param['name']}", op, _resource(params))
            if "part" in param:
                for label, part in (("object", {"name": "x"}), ("string", "x"), ("null-entries", [None]),
                                    ("empty", [])):
                    params = parameters(op)
                    params[index]["part"] = part
                    make.post(f"{op}:{param['name']}-part-{label}", op, _resource(params))
        for label, value in _some([("object", {"name": "target"}), ("string", "target"), ("number", 5), ("null", None),
                                   ("entries-strings", ["target", "MIRACUM"]), ("entries-lists", [[]]),
                                   ("entries-null", [None]), ("empty", [])], position, 3):
            make.post(f"{op}:parameter-{label}", op, {"resourceType": "Parameters", "parameter": value})
        for label, value in _some([("Patient", {"resourceType": "Patient", "parameter": base}),
                             ("lower-case", {"resourceType": "parameters", "parameter": base}),
                             ("number-type", {"resourceType": 5, "parameter": base}),
                             ("no-type", {"parameter": base}),
                             ("array", [_resource(base)]), ("string", "Parameters"), ("number", 5),
                             ("null", None), ("true", True),
                             ("OperationOutcome", {"resourceType": "OperationOutcome", "issue": []})], position, 3):
            make.post(f"{op}:resource-{label}", op, value)
        for label, body in _some([("empty", b""), ("spaces", b"  \n\t "), ("truncated", _json(_resource(base))[:-7]),
                            ("trailing-garbage", _json(_resource(base)) + b"}}"),
                            ("single-quotes", _json(_resource(base)).replace(b'"', b"'")),
                            ("NaN", b'{"resourceType":"Parameters","parameter":[{"name":"count","valueInteger":NaN}]}'),
                            ("infinity", b'{"resourceType":"Parameters","parameter":[{"name":"x","valueDecimal":1e999}]}'),
                            ("latin-1", _json(_resource(base)).replace(b'"parameter"', b'"param\xe9ter"', 1)),
                            ("utf-16", json.dumps(_resource(base)).encode("utf-16")),
                            ("bom", b"\xef\xbb\xbf" + _json(_resource(base))),
                            ("nul-byte", b"\x00" + _json(_resource(base))),
                            ("deep-arrays", b'{"resourceType":"Parameters","parameter":' + b"[" * 5000 + b"]" * 5000 + b"}"),
                            ("deep-objects", b'{"resourceType":"Parameters","x":' + b'{"a":' * 3000 + b"1"
                             + b"}" * 3000 + b"}")], position, 4):
            make.post(f"{op}:body-{label}", op, body)


def resource_cases(make: _Maker) -> None:
    """The Patient of the two operations that take one: other resources, other shapes, nesting
    deeper than allowed, values no Patient may hold."""
    deep_extension: dict = {"url": "http://example.org/x", "valueString": SECRET}
    for _ in range(150):
        deep_extension = {"url": "http://example.org/x", "extension": [deep_extension]}
    deep_contained: dict = {"resourceType": "Patient"}
    for _ in range(60):
        deep_contained = {"resourceType": "Patient", "contained": [deep_contained]}
    broken = {
        "string": SECRET, "list": [_patient()], "number": 5, "null": None,
        "Observation": {"resourceType": "Observation", "status": "final"},
        "no-type": {k: v for k, v in _patient().items() if k != "resourceType"},
        "deep-extensions": {**_patient(), "extension": [deep_extension]},
        "deep-contained": {**_patient(), "contained": [deep_contained]},
        "gender-unknown-code": {**_patient(), "gender": "x-" + SECRET},
        "birthdate-not-a-date": {**_patient(), "birthDate": "1965-13-45" + SECRET},
        "name-a-string": {**_patient(), "name": SECRET},
        "identifier-an-object": {**_patient(), "identifier": {"value": SECRET}},
        "unknown-element": {**_patient(), "favouriteColour": SECRET},
        "id-with-spaces": {**_patient(), "id": "not an id " + SECRET},
        "key-with-control": {**_patient(), "name": [{"family" + "\x01": SECRET}]},
        "value-with-NUL": {**_patient(), "name": [{"family": SECRET + "\x00A", "given": ["B"]}]},
        "value-with-FFFF": {**_patient(), "name": [{"family": SECRET + "\uffff", "given": ["B"]}]},
    }
    for op in ("providePatientData", "pseudonymizePatient"):
        for label, patient in broken.items():
            params = parameters(op)
            next(p for p in params if p["name"] == "patient")["resource"] = patient
            status: tuple[int, ...] = (400, 422)
            make.post(f"{op}:patient-{label}", op, _resource(params), status=status)
        params = parameters(op)
        patient = next(p for p in params if p["name"] == "patient")
        patient["valueString"] = SECRET
        del patient["resource"]
        make.post(f"{op}:patient-as-string", op, _resource(params))


def xml_cases(make: _Maker) -> None:
    """XML bodies: entity tricks, foreign namespaces, elements and attributes FHIR has not,
    characters XML or FHIR cannot hold, other encodings, nesting."""
    for position, op in enumerate(OPERATIONS):
        good = to_xml(_resource(parameters(op)))
        value = SECRET.encode()
        first_value = good.index(b'value="', good.index(b"<value")) + len(b'value="')
        variants: dict[str, bytes] = {
            "doctype-entity": good.replace(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
                                           b'<?xml version="1.0"?><!DOCTYPE Parameters [<!ENTITY s "' + value + b'">]>')
                                  .replace(b'value="MIRACUM"', b'value="&s;"'),
            "external-entity": b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                               + good[good.index(b"<Parameters"):].replace(b'value="', b'value="&x;', 1),
            "billion-laughs": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;'
                              b'&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
                              + good[good.index(b"<Parameters"):],
            "no-namespace": good.replace(b' xmlns="http://hl7.org/fhir"', b""),
            "other-namespace": good.replace(b"http://hl7.org/fhir", b"http://example.org/fhir"),
            "unknown-element": good.replace(b"<parameter>", b"<parameter><colour value=\"red\"/>", 1),
            "unknown-attribute": good.replace(b"<parameter>", b'<parameter onload="x">', 1),
            "no-value-attribute": good[:first_value - len(b'value="')] + b'x="' + good[first_value:],
            "truncated": good[:-20],
            "two-roots": good + good[good.index(b"<Parameters"):],
            "text-in-element": good.replace(b"<parameter>", b"<parameter>" + value, 1),
            "cdata": good.replace(b"<parameter>", b"<parameter><![CDATA[" + value + b"]]>", 1),
            "charref-control": good[:first_value] + b"&#1;" + good[first_value:],
            "charref-FFFF": good[:first_value] + b"&#xFFFF;" + good[first_value:],
            "charref-FDD0": good[:first_value] + value + b"&#xFDD0;" + good[first_value:],
            "charref-1FFFE": good[:first_value] + value + b"&#x1FFFE;" + good[first_value:],
            "raw-NUL": good[:first_value] + b"\x00" + good[first_value:],
            "raw-control": good[:first_value] + b"\x02" + good[first_value:],
            "raw-FFFE": good[:first_value] + value + "\ufffe".encode() + good[first_value:],
            "latin-1-declared": (good[:first_value] + b"\xc4" + good[first_value:])
                                .replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"'),
            "utf-16": good.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"),
            "not-utf-8": good[:first_value] + b"\xff\xfe" + good[first_value:],
            "xinclude": good.replace(b"<parameter>", b'<parameter><xi:include xmlns:xi="http://www.w3.org/2001/'
                                                     b'XInclude" href="file:///etc/passwd"/>', 1),
            "deep-nesting": b'<Parameters xmlns="http://hl7.org/fhir">' + b"<parameter>" * 400
                            + b"</parameter>" * 400 + b"</Parameters>",
            "unknown-resource": good.replace(b"Parameters", b"Parameterz"),
            "json-in-xml-clothes": _json(_resource(parameters(op))),
            "empty": b"",
        }
        names = list(variants)
        # every variant on four operations, a rotating handful on the others
        chosen = names if position % 3 == 0 else names[position % 4::4]
        for label in chosen:
            make.post(f"{op}:xml-{label}", op, variants[label], fmt="xml", status=(400, 415))
        # a value that breaks the parameter's type, in XML
        params = parameters(op)
        trail, param, key = next(_leaves(params))
        node = _at(params, trail)
        del node[key]
        node["valueInteger"] = 7
        make.post(f"{op}:xml-wrong-value-type", op, _resource(params), fmt="xml")
        make.post(f"{op}:xml-missing-parameters", op, _resource([p for p in parameters(op)][1:]), fmt="xml",
                  status=(400, 422))


# --- transport --------------------------------------------------------------------------------------

def transport_cases(make: _Maker) -> None:
    """Methods, content types, charsets, paths, query strings, headers, body sizes."""
    body_of = {op: _json(_resource(parameters(op))) for op in OPERATIONS}
    for position, op in enumerate(OPERATIONS):
        body = body_of[op]
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO") + (() if op in READS else ("GET", "HEAD")):
            make.add(f"{op}:method-{method}", method, path_of(op), body if method not in ("GET", "HEAD") else b"",
                     status=405, allow=True)
        types = [b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x",
                 b"application/fhir+json; charset=latin-1", b"application/fhir+json; charset=utf-16",
                 b'application/fhir+json; charset=""', b"application/fhir+json; charset=utf-8; charset=ascii",
                 b"application/fhir+xml; charset=iso-8859-1", b"application/octet-stream", b"\x01\x02",
                 b"application/fhir+json; charset=\xff", b"*/*", b"application/*"]
        for content_type in _some(types, position, 3, everything_at=5):
            make.add(f"{op}:content-type-{content_type.decode('latin-1')}", "POST", path_of(op), body,
                     status=415, content_type=content_type)
        # a JSON body declared as XML and the other way round
        make.add(f"{op}:json-declared-xml", "POST", path_of(op), body, status=400, content_type=XML, body_format="xml")
        make.add(f"{op}:xml-declared-json", "POST", path_of(op), to_xml(_resource(parameters(op))), status=400,
                 content_type=JSON)
        endpoint = BASELINES[op][0]
        for label, path in _some([("control-in-name", f"{BASE}/{endpoint}/${op}\x01"),
                            ("quote-newline-in-name", f'{BASE}/{endpoint}/${op}"}}\nfake_metric 1'),
                            ("case", f"{BASE}/{endpoint}/${op.upper()}"),
                            ("unknown-endpoint", f"{BASE}/{endpoint}x/${op}"),
                            ("endpoint-with-NUL", f"{BASE}/{endpoint}\x00/${op}"),
                            ("no-base", f"/{endpoint}/${op}"),
                            ("double-dollar", f"{BASE}/{endpoint}/$${op}"),
                            ("dot-segments", f"{BASE}/{endpoint}/../{endpoint}/${op}x"),
                            ("long-name", f"{BASE}/{endpoint}/${op}{'x' * 3000}")], position, 3):
            make.add(f"{op}:path-{label}", "POST", path, body, status=404)
        make.add(f"{op}:query-format-control", "POST", path_of(op), body.replace(b"Parameters", b"Parameterz", 1),
                 status=400, query=b"_format=xml%00%01", negotiate=False)
        make.add(f"{op}:query-invalid-utf8", "POST", path_of(op), body.replace(b"Parameters", b"Parameterz", 1),
                 status=400, query=b"x=%ff%fe&%zz=%zz")
        # Content-Length that is no number, or beyond the limit (with and without credentials)
        for label, length in _some([(b"word", b"abc"), (b"negative", b"-1"), (b"float", b"1e3"), (b"spaces", b" 12 "),
                                    (b"hex", b"0x10")], position, 2):
            label = label.decode()
            make.add(f"{op}:content-length-{label}", "POST", path_of(op), body, status=400,
                     extra=(("content-length", length),), chunks=[body])
        make.add(f"{op}:content-length-huge", "POST", path_of(op), body, status=413,
                 extra=(("content-length", b"99999999999999999999999"),), chunks=[body])
        big = body[:-2] + b',{"name":"padding","valueString":"' + b"p" * LIMITS["max_body_bytes"] + b'"}]}'
        make.add(f"{op}:body-over-limit-declared", "POST", path_of(op), big, status=413)
        make.add(f"{op}:body-over-limit-chunked", "POST", path_of(op), big, status=413,
                 chunks=[big[i:i + 65536] for i in range(0, len(big), 65536)])
        small_big = body[:-2] + b',{"name":"padding","valueString":"' + b"p" * LIMITS["max_unauthenticated_body_bytes"] + b'"}]}'
        make.add(f"{op}:unauthenticated-body-over-smaller-limit", "POST", path_of(op), small_big, status=413, key=None)
        # headers: too many, too large
        # refused before any header is read: the answer is JSON, whatever was asked
        make.add(f"{op}:headers-too-many", "POST", path_of(op), body, status=431, negotiate=False,
                 extra=tuple((f"x-h{i}", "1") for i in range(LIMITS["max_headers"] + 1)))
        make.add(f"{op}:headers-too-large", "POST", path_of(op), body, status=431, negotiate=False,
                 extra=(("x-padding", "p" * (LIMITS["max_header_bytes"] + 1)),))
        make.add(f"{op}:accept-garbage", "POST", path_of(op), body.replace(b"Parameters", b"Parameterz", 1),
                 status=400, extra=(("accept", "application/fhir+xml;q=abc, */*;q=-1, \x01"),), negotiate=False)
    for op in sorted(READS):  # GET with the parameters in the query string
        good = "&".join(f"{p['name']}={p[next(k for k in p if k != 'name')]}" for p in parameters(op)).encode()
        first = good.split(b"&")[0]
        for label, query, status in (
                ("control", good + b"%01x", 400), ("NUL", good + b"%00", 400), ("FFFF", good + b"%EF%BF%BF", 400),
                ("surrogate-bytes", good + b"%ED%A0%80", 400), ("not-utf-8", good + b"%FF", 400),
                ("raw-not-utf-8", good + b"\xff", 400), ("repeated", good + b"&" + first, 400),
                ("missing", first, 400), ("nameless", b"=x&" + first, 400),
                ("items-over-limit", good + b"".join(b"&" + good.split(b"&")[-1] + b"%d" % i
                                                      for i in range(LIMITS["max_items"] + 1)),
                 413 if op != "requestTasks" else 400)):  # its last parameter may not repeat at all
            for method in ("GET", "HEAD"):
                make.add(f"{op}:{method}-query-{label}", method, path_of(op), status=status, content_type=None,
                         query=query)
        make.add(f"{op}:GET-key-in-query-only", "GET", path_of(op), status=401, content_type=None, key=None,
                 query=good + b"&apikey=" + DEMO_KEY.encode())
    for label, method, path in (("root", "GET", "/"), ("base", "GET", BASE), ("unknown", "GET", "/nothing/here"),
                                ("metadata-unknown-endpoint", "GET", f"{BASE}/nowhere/metadata"),
                                ("definition-unknown", "GET", f"{BASE}/gpas/OperationDefinition/Nope\x01"),
                                ("definition-unknown-endpoint", "GET", f"{BASE}/x/OperationDefinition/Pseudonymize"),
                                ("search-undeclared", "GET", f"{BASE}/gpas/Patient"),
                                ("favicon", "GET", "/favicon.ico"), ("path-with-NUL", "GET", "/healthz\x00"),
                                ("dot-dot", "GET", f"{BASE}/../../etc/passwd")):
        make.add(f"route:{label}", method, path, status=404, content_type=None)
    for label, method, path in (("metadata-POST", "POST", f"{BASE}/gpas/metadata"),
                                ("metadata-DELETE", "DELETE", f"{BASE}/dispatcher/metadata"),
                                ("definition-PUT", "PUT", f"{BASE}/gpas/OperationDefinition/Pseudonymize"),
                                ("healthz-POST", "POST", "/healthz"), ("readyz-DELETE", "DELETE", "/readyz"),
                                ("metrics-POST", "POST", "/metrics"), ("metrics-PUT", "PUT", "/metrics")):
        make.add(f"route:{label}", method, path, status=405, allow=True, content_type=None)
    make.add("metrics:no-key", "GET", "/metrics", status=401, key=None, content_type=None)
    make.add("metrics:demo-key", "GET", "/metrics", status=401, content_type=None)
    make.add("metrics:wrong-key", "GET", "/metrics", status=401, key="metrics-key-0006", content_type=None)


# --- credentials ------------------------------------------------------------------------------------

def auth_cases(make: _Maker) -> None:
    """Every operation without credentials, with wrong ones, and with keys scoped elsewhere."""
    for position, op in enumerate(OPERATIONS):
        body = _json(_resource(parameters(op)))
        endpoint = BASELINES[op][0]
        for label, key, extra in _some([("none", None, ()), ("wrong", "abcdef12346", ()), ("empty", "", ()),
                                  ("prefix", DEMO_KEY[:-1], ()), ("longer", DEMO_KEY + "0", ()),
                                  ("x-api-key-wrong", None, (("x-api-key", "nope"),)),
                                  ("basic-garbage", None, (("authorization", "Basic !!!not-base64"),)),
                                  ("basic-no-users", None, (("authorization", "Basic ZGVtbzphYmNkZWYxMjM0NQ=="),)),
                                  ("bearer-garbage", None, (("authorization", "Bearer a.b.c"),)),
                                  ("digest", None, (("authorization", "Digest username=demo"),)),
                                  ("wrong-header-right-key-in-body", "wrong-key", ())], position, 4):
            request_body = body
            if label == "wrong-header-right-key-in-body":
                request_body = _json(_resource([_s("apikey", DEMO_KEY)] + parameters(op)))
            make.add(f"{op}:auth-{label}", "POST", path_of(op), request_body, status=401, key=key, extra=extra)
        make.add(f"{op}:auth-key-in-query-only", "POST", path_of(op), body, status=401, key=None,
                 query=b"apikey=" + DEMO_KEY.encode())
        for label, key_param in _some([("wrong", _s("apikey", "nope")), ("integer", {"name": "apikey", "valueInteger": 5}),
                                       ("repeated", None), ("no-value", {"name": "apikey"})], position, 2):
            params = parameters(op)
            params = ([_s("apikey", DEMO_KEY), _s("apikey", DEMO_KEY)] if key_param is None else [key_param]) + params
            make.add(f"{op}:auth-body-key-{label}", "POST", path_of(op), _json(_resource(params)),
                     status=(400, 401), key=None)
        make.add(f"{op}:auth-body-key-not-parameters", "POST", path_of(op),
                 _json({"resourceType": "Patient", "parameter": [_s("apikey", DEMO_KEY)]}), status=(400, 401),
                 key=None)
        # keys scoped elsewhere: another endpoint, other operations, other domains or studies
        if endpoint == "dispatcher":
            make.add(f"{op}:auth-key-of-other-endpoint", "POST", path_of(op), body, status=401,
                     key=KEY_OF["gpas-only"])
        if op not in ("pseudonymize", "dePseudonymize"):
            make.add(f"{op}:auth-key-for-other-operations", "POST", path_of(op), body, status=401,
                     key=KEY_OF["reader"])
        make.add(f"{op}:auth-key-for-other-domains", "POST", path_of(op), body, status=(401, 404),
                 key=KEY_OF["other-domain"])
        if endpoint == "dispatcher" and op != "providePatientData":
            make.add(f"{op}:auth-key-of-other-study", "POST", path_of(op), body, status=401, key=KEY_OF["num-site"])
    # another study's task: the same answer as a task that does not exist
    params = parameters("providePatientData")
    make.add("providePatientData:auth-task-of-other-study", "POST", path_of("providePatientData"),
             _json(_resource(params)), status=404, key=KEY_OF["num-site"])


# --- limits and Bundles ------------------------------------------------------------------------------

def limit_cases(make: _Maker) -> None:
    """More values, more to create, deeper nesting than a request may ask for."""
    too_many = LIMITS["max_items"] + 1
    for op in OPERATIONS:
        params = parameters(op)
        repeating = [p for p in params if p["name"] == REPEATING.get(op)]
        if repeating:
            extra = [copy.deepcopy(repeating[0]) for _ in range(too_many)]
            make.post(f"{op}:items-over-limit", op, _resource(params + extra), status=413)
    for count_value in (LIMITS["max_created"] + 1, 10 ** 9, 2 ** 31 - 1):
        params = parameters("pseudonymize-secondary")
        params[0]["part"][2]["valueInteger"] = count_value
        make.post(f"pseudonymize-secondary:count-{count_value}", "pseudonymize-secondary", _resource(params),
                  status=413)
        params = parameters("pseudonymizePatient")
        params[2]["part"] = [_s("target", "MyStudy-Domain2"), {"name": "count", "valueInteger": count_value}]
        params[0]["valueString"] = "MyStudy"
        make.post(f"pseudonymizePatient:count-{count_value}", "pseudonymizePatient", _resource(params), status=413)
    # each item within the limit, the request beyond it
    each = LIMITS["max_created"] // 4 + 1
    items = [{"name": "original", "part": [_s("target", "Datensatz-Ebene"), _s("value", f"{SECRET}-{i}"),
                                           {"name": "count", "valueInteger": each}]} for i in range(4)]
    make.post("pseudonymize-secondary:created-sum-over-limit", "pseudonymize-secondary", _resource(items), status=413)
    contexts = [{"name": "context", "part": [_s("target", "MyStudy-Domain2"), {"name": "count", "valueInteger": each}]}
                for _ in range(4)]
    params = parameters("pseudonymizePatient")
    params[0]["valueString"] = "MyStudy"
    make.post("pseudonymizePatient:created-sum-over-limit", "pseudonymizePatient", _resource(params[:2] + contexts),
              status=413)
    make.post("pseudonymizePatient:count-negative", "pseudonymizePatient",
              _resource(parameters("pseudonymizePatient")[:2] + [{"name": "context", "part": [
                  _s("target", "dic_muenster"), {"name": "count", "valueInteger": -5}]}]), status=(400, 422))
    make.post("pseudonymizePatient:count-2-not-multi-psn", "pseudonymizePatient",
              _resource(parameters("pseudonymizePatient")[:2] + [{"name": "context", "part": [
                  _s("target", "dic_muenster"), {"name": "count", "valueInteger": 2}]}]), status=422)
    make.post("pseudonymizePatient:unknown-target", "pseudonymizePatient",
              _resource(parameters("pseudonymizePatient")[:2] + [{"name": "context", "part": [
                  _s("target", "nowhere")]}]), status=404)
    deep_part: dict = {"name": "target", "valueString": "MIRACUM"}
    for _ in range(200):
        deep_part = {"name": "x", "part": [deep_part]}
    make.post("pseudonymize-secondary:deep-parts", "pseudonymize-secondary",
              _resource([{"name": "original", "part": [deep_part]}]))


def bundle_cases(make: _Maker) -> None:
    """Bundles: to operations without batches, of the wrong type, with entries that are broken."""
    op = "pseudonymizePatient"
    good_entry = {"request": {"method": "POST", "url": "$pseudonymizePatient"},
                  "resource": _resource(parameters(op))}
    base = f"{BASE}/{BASELINES[op][0]}"  # a Bundle posted to the endpoint's base: entries name operations
    for label, bundle in (
            ("transaction", {"resourceType": "Bundle", "type": "transaction", "entry": [good_entry]}),
            ("collection", {"resourceType": "Bundle", "type": "collection", "entry": [good_entry]}),
            ("no-type", {"resourceType": "Bundle", "entry": [good_entry]}),
            ("type-number", {"resourceType": "Bundle", "type": 5, "entry": [good_entry]}),
            ("entry-object", {"resourceType": "Bundle", "type": "batch", "entry": good_entry}),
            ("entry-string", {"resourceType": "Bundle", "type": "batch", "entry": "x"}),
            ("entries-over-limit", {"resourceType": "Bundle", "type": "batch",
                                    "entry": [good_entry] * (LIMITS["max_items"] + 1)})):
        status = 413 if label == "entries-over-limit" else 400
        make.post(f"{op}:bundle-{label}", op, bundle, status=status)
        make.post(f"base:{op}:bundle-{label}", op, bundle, status=status, path=base)
    make.post(f"base:{op}:parameters", op, _resource(parameters(op)), path=base)
    broken_entries = {
        "entry-number": 5, "entry-null": None, "entry-list": [good_entry],
        "no-resource": {"request": good_entry["request"]},
        "resource-string": {"resource": "Parameters"},
        "resource-Patient": {"resource": _patient()},
        "resource-Bundle": {"resource": {"resourceType": "Bundle", "type": "batch", "entry": [good_entry]}},
        "request-number": {**good_entry, "request": 5}, "request-string": {**good_entry, "request": "POST"},
        "request-list": {**good_entry, "request": [good_entry["request"]]},
        "url-number": {**good_entry, "request": {"method": "POST", "url": 5}},
        "url-other-operation": {**good_entry, "request": {"method": "POST", "url": "$pseudonymizeAllowCreate"}},
        "url-unknown-operation": {**good_entry, "request": {"method": "POST", "url": "$unknownOperation"}},
        "name-not-string": {**good_entry, "resource": _resource([{"name": 5, "valueString": "mii"}])},
        "count-huge": {**good_entry, "resource": _resource(parameters(op)[:2] + [{"name": "context", "part": [
            _s("target", "dic_muenster"), {"name": "count", "valueInteger": 10 ** 9}]}])},
        "value-with-NUL": {**good_entry, "resource": _resource([_s("study", "mii\x00")] + parameters(op)[1:])},
    }
    for label, entry in broken_entries.items():
        status = 413 if label == "count-huge" else 400
        if label == "value-with-NUL":  # refused as a whole when the body is decoded
            make.post(f"{op}:batch-{label}", op, {"resourceType": "Bundle", "type": "batch", "entry": [entry]},
                      status=400)
            continue
        make.post(f"{op}:batch-{label}", op, {"resourceType": "Bundle", "type": "batch", "entry": [entry, entry]},
                  status=200 if status != 413 else 413, batch=status != 413)
        make.post(f"base:{op}:batch-{label}", op, {"resourceType": "Bundle", "type": "batch", "entry": [entry, entry]},
                  status=200 if status != 413 else 413, batch=status != 413, path=base)
    for other in ("pseudonymize", "pseudonymizeAllowCreate", "requestPsnWorkflow", "providePatientData"):
        not_accepted = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "POST", "url": f"${other}"}, "resource": _resource(parameters(other))}]}
        make.post(f"{other}:bundle-not-accepted", other, not_accepted)
        make.post(f"base:{other}:bundle-not-accepted", other, not_accepted, status=200, batch=True,
                  path=f"{BASE}/{BASELINES[other][0]}")
    for fmt in ("json", "xml"):
        make.post(f"{op}:batch-all-entries-unknown-study-{fmt}", op, {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "POST", "url": "$pseudonymizePatient"},
             "resource": _resource([_s("study", f"nostudy{i}")] + parameters(op)[1:])} for i in range(3)]},
            fmt=fmt, status=200, batch=True)


# --- operations' own refusals --------------------------------------------------------------------------

def refusal_cases(make: _Maker) -> None:
    """Requests well-formed but naming what does not exist: unknown domains, studies, sites, tasks."""
    unknown = {
        "pseudonymize": [("target", "NoSuchDomain")], "pseudonymizeAllowCreate": [("target", "NoSuchDomain")],
        "dePseudonymize": [("target", "NoSuchDomain")], "deletePseudonyms": [("target", "NoSuchDomain")],
        "anonymizeOriginals": [("target", "NoSuchDomain")],
        "requestPsnFromBfWorkflow": [("study", "nostudy"), ("target", "dic_heidelberg")],
        "requestTasks": [("study", "nostudy"), ("target", "dic_heidelberg")],
        "providePatientData": [("taskId", "00000000-0000-0000-0000-000000000000"), ("target", "dic_muenster")],
        "updateBf": [("study", "nostudy"), ("source", "dic_heidelberg"), ("pseudonym", "dic_XXXXX"), ("bfVersion", "9")],
        "requestPsnWorkflow": [("study", "nostudy"), ("source", "codex"), ("target", "dic_heidelberg")],
        "pseudonymizePatient": [("study", "nostudy")],
    }
    for op, changes in unknown.items():
        for name, value in changes:
            params = parameters(op)
            param = next(p for p in params if p.get("name") == name)
            key = next(k for k in param if k != "name")
            param[key] = value
            make.post(f"{op}:unknown-{name}", op, _resource(params), status=(404, 400))
    make.post("requestPsnWorkflow:unknown-event", "requestPsnWorkflow",
              _resource(parameters("requestPsnWorkflow") + [_s("event", "no.such.event")]), status=404)
    make.post("updateBf:bloomfilter-not-base64", "updateBf", _resource(
        [p if p["name"] != "bloomfilter" else _s("bloomfilter", "!!" + SECRET, "valueBase64Binary")
         for p in parameters("updateBf")]), status=400)
    make.post("requestPsnWorkflow:event-wrong-direction", "requestPsnWorkflow", _resource(
        [p if p["name"] != "target" else _s("target", "dic_erlangen") for p in parameters("requestPsnWorkflow")]
        + [_s("event", "fttp.getMiiPsn_eyematics")]), status=400)


GENERATORS: list[Callable[[_Maker], None]] = [value_cases, name_cases, structure_cases, resource_cases, xml_cases,
                                              transport_cases, auth_cases, limit_cases, bundle_cases, refusal_cases]


def generate(*generators: Callable[[_Maker], None]) -> list[BadRequest]:
    make = _Maker()
    for generator in generators or GENERATORS:
        generator(make)
    return make.cases
