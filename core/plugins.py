"""The plugin manager: finds plugins through entry points, checks them, orders them by what they
require, and collects their operations."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable

import pluggy

from . import builtin, hookspecs
from .config import ConfigError
from .operations import Operation

log = logging.getLogger("ttp_gateway.plugins")
TRACE_ENV = "TTP_GATEWAY_TRACE_HOOKS"
BUILTIN = "core"


class Plugins:
    """The loaded plugins, in an order where every plugin comes after those it requires."""

    def __init__(self, manager: pluggy.PluginManager, order: list[str]) -> None:
        self.manager = manager
        self.hook = manager.hook
        self.order = order

    def call_in_order(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a hook plugin by plugin, required plugins first (pluggy's own order is the
        reverse of registration, which says nothing about requirements); their results."""
        implementing = {impl.plugin_name for impl in getattr(self.hook, hook_name).get_hookimpls()}
        results = []
        for name in self.order:
            if name in implementing:
                others = [p for p in self.manager.get_plugins() if self.manager.get_name(p) != name]
                # Through pluggy, one plugin at a time, so that hook tracing still sees each call.
                results += self.manager.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
        return results


def load_plugins(disabled: Iterable[str] = (), extra: Iterable[object] = ()) -> Plugins:
    """Every installed plugin of the `ttp_gateway` entry point group (the built-in endpoints
    included) except the `disabled` ones, plus `extra` plugin objects, checked and ordered.

    Raises ConfigError for a plugin whose hooks are misspelled (`check_pending`), for a required
    plugin that is missing or disabled, and for requirements that form a cycle."""
    disabled = list(disabled)
    if BUILTIN in disabled:
        raise ConfigError("[plugins] the core cannot be disabled")
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name=BUILTIN)
    for name in disabled:
        pm.set_blocked(name)
    pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        raise ConfigError(f"plugin {error.plugin!r}: {error}") from None
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(lambda message: log.info("hook %s", message.rstrip()))
        pm.enable_tracing()
    loaded = [pm.get_name(plugin) or "" for plugin in pm.get_plugins()]
    requires: dict[str, list[str]] = {name: [] for name in loaded}
    for impl in pm.hook.ttp_requires.get_hookimpls():
        given: Any = impl.function()
        needed: list[str] = [str(name) for name in given or []]
        for other in needed:
            if other not in requires:
                why = "disabled in [plugins]" if other in disabled else "not installed"
                raise ConfigError(f"plugin {impl.plugin_name!r} requires plugin {other!r}, which is {why}"
                                  + (f"; disable {impl.plugin_name!r} as well" if other in disabled else ""))
        requires[impl.plugin_name] = list(needed)
    return Plugins(pm, _dependency_order(requires))


def _dependency_order(requires: dict[str, list[str]]) -> list[str]:
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ConfigError("plugins require each other in a cycle: " + " -> ".join((*path, name)))
        state[name] = "visiting"
        for other in requires[name]:
            visit(other, (*path, name))
        state[name] = "done"
        order.append(name)

    # The core first, then the others in a stable order.
    for name in [BUILTIN, *sorted(n for n in requires if n != BUILTIN)]:
        visit(name, ())
    return order


@dataclass(frozen=True)
class OperationTable:
    """The operations of all plugins, by endpoint and by every name they answer to."""

    by_endpoint: dict[str, dict[str, Operation]]  # endpoint -> canonical name -> operation
    by_alias: dict[tuple[str, str], Operation]      # (endpoint, name or alias) -> operation

    @classmethod
    def collect(cls, contributions: Iterable[Iterable[Operation]]) -> "OperationTable":
        by_endpoint: dict[str, dict[str, Operation]] = {}
        for contributed in contributions:
            for op in contributed or ():
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
