"""A plugin as a site would write one: `$countPseudonyms` tells how many pseudonyms a domain holds.

It touches no core code: the entry point in pyproject.toml makes the gateway load it, the
declaration below gives it validation, scoping and an OperationDefinition.
"""

from ttp_gateway.core import fhir
from ttp_gateway.core.errors import NotFound
from ttp_gateway.core.hookspecs import hookimpl
from ttp_gateway.core.operations import Operation, Param


def count_pseudonyms(call):
    domain = call.args["target"]
    if call.gateway.service("gpas").domains.get(domain) is None:
        raise NotFound(f"domain {domain!r} is not known")
    with call.repository.transaction() as tx:
        count = tx.count_pseudonyms(domain)
    return fhir.parameters([{"name": "count", "valueInteger": count}])


@hookimpl
def ttp_operations(gateway):
    return [Operation(
        endpoint="gpas",
        name="countPseudonyms",
        handler=count_pseudonyms,
        affects_state=False,
        description="How many pseudonyms a domain holds.",
        parameters=(Param("target", "string", 1, 1, "the domain", scope="domains"),),
        returns=(Param("count", "integer", 1, 1, "number of pseudonyms"),),
    )]
