"""The plugin manager: finds plugins through entry points and collects their operations."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable

import pluggy

from . import hookspecs
from .operations import Operation

log = logging.getLogger("ttp_gateway.plugins")
TRACE_ENV = "TTP_GATEWAY_TRACE_HOOKS"


def plugin_manager(disabled: Iterable[str] = (), extra: Iterable[object] = ()) -> pluggy.PluginManager:
    """A manager holding every installed plugin of the `ttp_gateway` entry point group (the
    built-in endpoints included) except the `disabled` ones, plus `extra` plugin objects."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in disabled:
        pm.set_blocked(name)
    pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in extra:
        pm.register(plugin)
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(lambda message: log.info("hook %s", message.rstrip()))
        pm.enable_tracing()
    return pm


@dataclass(frozen=True)
class OperationTable:
    """The operations of all plugins, by endpoint and by every name they answer to."""

    by_endpoint: dict[str, dict[str, Operation]]  # endpoint -> canonical name -> operation
    by_alias: dict[tuple[str, str], Operation]      # (endpoint, name or alias) -> operation

    @classmethod
    def collect(cls, contributions: Iterable[Iterable[Operation]]) -> "OperationTable":
        by_endpoint: dict[str, dict[str, Operation]] = {}
        for operations in contributions:
            for op in operations or ():
                known = by_endpoint.setdefault(op.endpoint, {})
                existing = known.get(op.name)
                if existing is not None and not op.replaces:
                    if existing.replaces:
                        continue
                    raise ValueError(f"two plugins provide ${op.name} on endpoint {op.endpoint!r}; "
                                     "the replacing one must set replaces=True")
                known[op.name] = op
        by_alias: dict[tuple[str, str], Operation] = {}
        for endpoint, operations in by_endpoint.items():
            for op in operations.values():
                for name in (op.name, *op.aliases):
                    other = by_alias.get((endpoint, name))
                    if other is not None and other is not op:
                        raise ValueError(f"${name} on endpoint {endpoint!r} names two operations")
                    by_alias[(endpoint, name)] = op
        return cls(by_endpoint, by_alias)

    def lookup(self, endpoint: str, name: str) -> Operation | None:
        return self.by_alias.get((endpoint, name))

    @property
    def endpoints(self) -> list[str]:
        return sorted(self.by_endpoint)
