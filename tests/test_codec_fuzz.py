"""The codec fuzzed: whatever the decoder and the binder accept can be answered in either format
and read back unchanged, and no input makes the codec raise anything but its own refusals."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import DEMO_CONFIG, GPAS, client_for
from ttp_gateway.core import codec
from ttp_gateway.core.config import load_config
from ttp_gateway.core.errors import CodecError, InvalidRequest, UnsupportedMediaType
from ttp_gateway.core.operations import Budget, Param, bind
from ttp_gateway.core.xmlcodec import parse_xml, to_xml

# Every character a FHIR string may hold (the codec refuses the others), from all planes.
fhir_char = st.characters().filter(lambda c: not codec.NOT_IN_FHIR_STRINGS.search(c))
fhir_text = st.text(fhir_char, min_size=1, max_size=24)
names = st.sampled_from(["target", "original", "value", "count", "study", "x"]) | fhir_text
int32 = st.integers(-(2 ** 31), 2 ** 31 - 1)

VALUES = st.one_of(
    st.builds(lambda v: {"valueString": v}, fhir_text),
    st.builds(lambda v: {"valueCode": v}, st.from_regex(r"[^\s]+( [^\s]+)*", fullmatch=True).filter(
        lambda v: not codec.NOT_IN_FHIR_STRINGS.search(v))),
    st.builds(lambda v: {"valueId": v}, st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True)),
    st.builds(lambda v: {"valueInteger": v}, int32),
    st.builds(lambda v: {"valueUnsignedInt": v}, st.integers(0, 2 ** 31 - 1)),
    st.builds(lambda v: {"valueBoolean": v}, st.booleans()),
    st.builds(lambda v: {"valueBase64Binary": v}, st.binary(min_size=1, max_size=40).map(
        lambda b: base64.b64encode(b).decode())),
)


def _parameter(children: Any) -> Any:
    return st.builds(lambda name, v: {"name": name, **v}, names,
                     VALUES | st.builds(lambda parts: {"part": parts}, children))


PARAMETER_LISTS = st.recursive(st.lists(_parameter(st.nothing()), min_size=1, max_size=5),
                               lambda children: st.lists(_parameter(children), min_size=1, max_size=4),
                               max_leaves=25)


def _declaration(params: list[dict]) -> tuple[Param, ...]:
    """A declaration that takes every parameter given, each as the type it was sent as."""
    declared: dict[str, Param] = {}
    for param in params:
        name = param["name"]
        if name in declared:
            continue
        if "part" in param:
            declared[name] = Param(name, None, 0, "*", parts=_declaration(
                [p for q in params if q["name"] == name and "part" in q for p in q["part"]]))
        else:
            key = next(k for k in param if k != "name")
            fhir_type = {"valueInteger": "integer", "valueUnsignedInt": "unsignedInt", "valueBoolean": "boolean",
                         "valueBase64Binary": "base64Binary"}.get(key, "string")
            declared[name] = Param(name, fhir_type, 0, "*")
    return tuple(declared.values())


def _consistent(params: list[dict]) -> bool:
    """Whether each name is used with one shape only (as a declaration can describe it): the
    parts of all parameters of one name together, as `_declaration` merges them."""
    shapes: dict[str, str] = {}
    for param in params:
        shape = "part" if "part" in param else next(k for k in param if k != "name")
        if shapes.setdefault(param["name"], shape) != shape:
            return False
    return all(_consistent([p for q in params if q["name"] == name for p in q["part"]])
               for name, shape in shapes.items() if shape == "part")


@settings(max_examples=300, deadline=None)
@given(PARAMETER_LISTS)
def test_what_decoder_and_binder_accept_survives_both_formats(params: list[dict]) -> None:
    assume(_consistent(params))
    resource = {"resourceType": "Parameters", "parameter": params}
    for body in (orjson.dumps(resource), json.dumps(resource).encode(), json.dumps(resource, ensure_ascii=False).encode()):
        decoded = codec.decode(body, "json")
        assert decoded == resource
    bind(_declaration(params), decoded["parameter"], budget=Budget())
    xml = codec.encode(decoded, "xml")
    assert codec.decode(xml, "xml") == resource
    assert codec.decode(codec.encode(decoded, "json"), "json") == resource


@settings(max_examples=300, deadline=None)
@given(fhir_text)
def test_any_accepted_string_is_answered_in_xml(value: str) -> None:
    resource = {"resourceType": "Parameters", "parameter": [{"name": "original", "valueString": value}]}
    assert parse_xml(to_xml(codec.decode(json.dumps(resource).encode(), "json"))) == resource


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.sampled_from(["json", "xml"]))
def test_a_refused_string_is_refused_in_both_formats_alike(value: str, fmt: str) -> None:
    """A string with a character FHIR forbids is a CodecError in JSON; XML either cannot carry it
    or the codec refuses it too."""
    assume(codec.NOT_IN_FHIR_STRINGS.search(value))
    resource = {"resourceType": "Parameters", "parameter": [{"name": "original", "valueString": value}]}
    with pytest.raises(CodecError):
        codec.decode(json.dumps(resource).encode(), "json")
    with pytest.raises((CodecError, ValueError)):
        codec.decode(to_xml(resource), "xml")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["json", "xml"]))
def test_arbitrary_bytes_are_a_resource_or_a_codec_error(body: bytes, fmt: str) -> None:
    try:
        resource = codec.decode(body, fmt)  # type: ignore[arg-type]
    except CodecError:
        return
    assert isinstance(resource, dict) and isinstance(resource["resourceType"], str)


GOOD_JSON = orjson.dumps({"resourceType": "Parameters", "parameter": [
    {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": "1001000000022"},
    {"name": "patient", "resource": {"resourceType": "Patient", "name": [{"family": "Muster"}]}}]})
GOOD_XML = to_xml(orjson.loads(GOOD_JSON))


@settings(max_examples=500, deadline=None)
@given(st.data(), st.sampled_from([("json", GOOD_JSON), ("xml", GOOD_XML)]))
def test_mutated_bodies_are_a_resource_or_a_codec_error(data: st.DataObject, good: tuple[str, bytes]) -> None:
    fmt, body = good
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body)))
        cut = data.draw(st.integers(0, 3))
        body = body[:at] + data.draw(st.binary(max_size=4)) + body[at + cut:]
    try:
        resource = codec.decode(body, fmt)  # type: ignore[arg-type]
    except CodecError:
        return
    assert isinstance(resource, dict)
    codec.check_strings(resource)  # whatever was accepted holds only what FHIR strings may hold


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.binary(max_size=20))
def test_content_types_are_a_format_or_415(content_type: str, body: bytes) -> None:
    try:
        assert codec.request_format(content_type, body) in ("json", "xml")
    except UnsupportedMediaType:
        pass
    fmt, media = codec.response_media_type(content_type, content_type, None)
    assert fmt in ("json", "xml") and codec.declared_format(media) == fmt


@pytest.fixture(scope="module")
def lookup_client(tmp_path_factory):
    config = load_config(DEMO_CONFIG, environ={}).with_overrides(
        storage={"url": f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'gateway.db'}"})
    with client_for(config) as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=fhir_text, fmt=st.sampled_from(["application/fhir+json", "application/fhir+xml"]),
       accept=st.sampled_from(["application/fhir+json", "application/fhir+xml"]))
def test_whatever_a_request_may_hold_its_answer_may_quote(lookup_client, value: str, fmt: str, accept: str) -> None:
    """An original the codec accepts comes back in the answer's error part, in either format."""
    request = {"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": "MIRACUM"}, {"name": "original", "valueString": value}]}
    body = json.dumps(request).encode() if fmt.endswith("json") else to_xml(request)
    response = lookup_client.post(f"{GPAS}/$pseudonymize", content=body,
                                  headers={"Content-Type": fmt, "Accept": accept})
    assert response.status_code == 200, response.text[:300]
    answer = parse_xml(response.content) if accept.endswith("xml") else response.json()
    quoted = answer["parameter"][0]["part"][0]["valueIdentifier"]["value"]
    assert quoted == value or value in ("1001000000022", "1001000000033")


def test_an_invalid_request_is_not_a_codec_crash() -> None:
    with pytest.raises(InvalidRequest):
        codec.decode(b'{"resourceType": 5}', "json")
