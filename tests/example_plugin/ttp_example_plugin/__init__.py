"""A plugin as a site would write one: `$countPseudonyms` tells how many pseudonyms a domain
holds, and how many it held when it was last counted.

It touches no core code: the entry point in pyproject.toml makes the gateway load it, the
declaration below gives it validation, scoping and an OperationDefinition, `ttp_requires` gives
it gPAS's public API, and `store.py` gives it a table (SQL) and a collection (MongoDB) of its own.
"""

from ttp_gateway.core import fhir
from ttp_gateway.core.hookspecs import hookimpl
from ttp_gateway.core.operations import Operation, Param
from ttp_gateway.plugins.gpas.api import GPAS

from .store import COUNTS, definition


def count_pseudonyms(call):
    gpas = call.gateway.service(GPAS)
    domain = gpas.domain(call.args["target"])  # 404 when unknown
    with call.writing() as unit:
        count = gpas.count(unit, domain)
        previous = unit[COUNTS].remember(domain.name, count)
    answer = [{"name": "count", "valueInteger": count}]
    if previous is not None:
        answer.append({"name": "previous", "valueInteger": previous})
    return fhir.parameters(answer)


@hookimpl
def ttp_requires():
    return ["gpas"]


@hookimpl
def ttp_stores(stores):
    stores.add(definition())


@hookimpl
def ttp_operations(gateway):
    return [Operation(
        endpoint="gpas",
        name="countPseudonyms",
        handler=count_pseudonyms,
        description="How many pseudonyms a domain holds, and how many at its last count.",
        parameters=(Param("target", "string", 1, 1, "the domain", scope="domains"),),
        returns=(Param("count", "integer", 1, 1, "number of pseudonyms"),
                 Param("previous", "integer", 0, 1, "the number at the last count")),
    )]
