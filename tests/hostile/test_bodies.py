"""Bad bodies: values, names, types, structure, resources and XML documents of every operation."""

from __future__ import annotations

import pytest

from .checks import assert_refused
from .generator import generate, name_cases, resource_cases, structure_cases, value_cases, xml_cases

CASES = generate(value_cases, name_cases, structure_cases, resource_cases, xml_cases)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_body_is_refused(gateway, case) -> None:
    assert_refused(gateway, case)
