"""The gPAS plugin's public API, for plugins that require it (`ttp_requires` -> ["gpas"]).

    from ttp_gateway.plugins.gpas.api import GPAS
    pseudonyms = gateway.service(GPAS)            # a Pseudonymizer
    domain = pseudonyms.domain("MIRACUM")         # 404 (core NotFound) if unknown
    with call.writing() as unit:
        found = pseudonyms.get_or_create(unit, domain, originals)   # created=set(): which are new

Everything else in this package is internal and may change.
"""

from __future__ import annotations

from ttp_gateway.core.gateway import ServiceKey

from .domains import Domain
from .pseudonyms import PseudonymFormat
from .service import PairOutcome, Pseudonymizer

GPAS: ServiceKey[Pseudonymizer] = ServiceKey("gpas")

__all__ = ["GPAS", "Domain", "PairOutcome", "PseudonymFormat", "Pseudonymizer"]
