"""The binder's tolerant reader for booleans, and scopes named by Identifiers."""

from __future__ import annotations

import pytest

from ttp_gateway.core.errors import InvalidRequest
from ttp_gateway.core.operations import Param, bind, scoped_values

FLAG = (Param("ignoreVersionNumber", "boolean", 0, 1, "a flag"),)


@pytest.mark.parametrize("given, expected", [
    ({"valueBoolean": True}, True), ({"valueBoolean": False}, False),
    ({"valueString": "true"}, True), ({"valueString": "false"}, False), ({"valueCode": "true"}, True),
])
def test_booleans_are_read_as_clients_send_them(given: dict, expected: bool) -> None:
    assert bind(FLAG, [{"name": "ignoreVersionNumber", **given}])["ignoreVersionNumber"] is expected


@pytest.mark.parametrize("given", [{"valueString": "yes"}, {"valueString": "True"}, {"valueString": "1"},
                                   {"valueInteger": 1}, {"valueBoolean": "true"}, {"valueString": ""}])
def test_anything_else_is_not_a_boolean(given: dict) -> None:
    with pytest.raises(InvalidRequest, match="ignoreVersionNumber"):
        bind(FLAG, [{"name": "ignoreVersionNumber", **given}])


def test_an_identifier_names_its_scope_by_its_value() -> None:
    declared = (Param("context", "Identifier", 1, 1, "the domain", scope="domains"),
                Param("target", "string", 0, "*", "more domains", scope="domains"))
    args = bind(declared, [{"name": "context", "valueIdentifier": {"system": "https://x", "value": "Transfer1"}},
                           {"name": "target", "valueString": "MIRACUM"}])
    assert sorted(scoped_values(declared, args)) == [("domains", "MIRACUM"), ("domains", "Transfer1")]
