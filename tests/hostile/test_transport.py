"""Bad transport: methods, paths, query strings, content types, charsets, headers, sizes."""

from __future__ import annotations

import pytest

from .checks import assert_refused
from .generator import generate, transport_cases

CASES = generate(transport_cases)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_transport_is_refused(gateway, case) -> None:
    assert_refused(gateway, case)
