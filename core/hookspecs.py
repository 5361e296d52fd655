"""The hooks a TTP Gateway plugin can implement: the plugin author's manual.

A plugin is a module (or object) with functions marked `@hookimpl`, registered through the
`ttp_gateway` entry point group of its distribution:

    [project.entry-points.ttp_gateway]
    my_plugin = "my_package.my_module"

The built-in endpoints (gPAS, dispatcher) are plugins of exactly this kind, and the core's own
API-key store comes through the same hooks. The hooks fire in this order:

    ttp_requires, ttp_scope_kinds, ttp_check_config    when plugins are loaded
    ttp_stores                                          before storage is opened and migrated
    ttp_setup                                           in dependency order, storage open
    ttp_operations, ttp_searches                        to collect operations and searches
    ttp_startup / ttp_shutdown                          around serving (not for admin commands)
    ttp_cli_commands                                    when the command line is built
    ttp_readiness                                       on every /readyz

Operations are declared with `ttp_gateway.core.operations.Operation` and `Param`; a handler
receives a `ttp_gateway.core.gateway.Call` and returns a FHIR resource as a dict. A plugin that
stores data contributes a `ttp_gateway.backends.base.StoreDefinition` and reads and writes it
through `call.reading()` / `call.writing()`. Set TTP_GATEWAY_TRACE_HOOKS=1 to log every hook call.
"""

# Hook specifications have no bodies: pluggy calls the plugins' implementations instead.
# mypy: disable-error-code="empty-body"

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from ttp_gateway.backends.base import StoreRegistry

    from .auth import ScopeKinds
    from .config import Config
    from .gateway import Gateway
    from .operations import Operation, Search

PROJECT = "ttp_gateway"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ttp_requires() -> list[str]:
    """When plugins are loaded: the names (entry point names) of the plugins this one needs.

    Their public APIs are available through `gateway.service(...)` from `ttp_setup` on, which
    runs for them first; a required plugin that is missing or disabled stops the start-up with
    a configuration error."""


@hookspec
def ttp_scope_kinds(kinds: "ScopeKinds") -> None:
    """When plugins are loaded: declare the kinds of values that identities may be scoped to,
    e.g. `kinds.add("domains", "pseudonymisation domains")`, for use in `Param(scope=...)`."""


@hookspec
def ttp_stores(stores: "StoreRegistry") -> None:
    """Before storage is opened: add this plugin's stores, `stores.add(StoreDefinition(...))`;
    each brings its SQL tables and Alembic branch and its MongoDB collections and indexes."""


@hookspec
def ttp_setup(gateway: "Gateway") -> None:
    """Storage open, before operations are collected, in dependency order: build this plugin's
    objects and publish its public API with `gateway.provide(key, api)`. Runs in every worker
    and for admin commands; keep it cheap (load nothing that `ttp_startup` can warm)."""


@hookspec
def ttp_operations(gateway: "Gateway") -> list["Operation"]:
    """When an app is built: return the operations this plugin serves.

    An operation with the endpoint and name of another plugin's replaces it only when it sets
    `replaces=True`; otherwise the duplicate stops the start-up."""


@hookspec
def ttp_searches(gateway: "Gateway") -> list["Search"]:
    """When an app is built: the type-level searches this plugin serves
    (`GET [base]/{endpoint}/{ResourceType}?...`), as `ttp_gateway.core.operations.Search`."""


@hookspec
def ttp_startup(gateway: "Gateway") -> None:
    """Before the first request is served: seed the store from the configuration, warm caches.
    Runs in every worker process (not for admin commands), in dependency order."""


@hookspec
def ttp_shutdown(gateway: "Gateway") -> None:
    """When the app stops: release what `ttp_startup` acquired."""


@hookspec
def ttp_check_config(config: "Config") -> list[str]:
    """At start-up and for `ttp-gateway check-config`: problems in this plugin's own
    configuration sections, one sentence each; an empty list when all is well."""


@hookspec
def ttp_cli_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """When the command line is built: add admin sub-commands.

    Give each parser `set_defaults(run=function)`; the CLI calls `function(args, gateway)` with a
    gateway on the configured storage (set up, not started: no seeding, no warm caches) and
    exits with its return value (0 for success). A command that needs no storage sets
    `set_defaults(run=function, gateway=False)` and is called as `function(args, None)`, without
    loading the configuration. A `ValueError` a command raises is printed as `error: ...` with
    exit code 1."""


@hookspec
def ttp_readiness(gateway: "Gateway") -> dict[str, Any] | None:
    """For `/readyz`: the plugin's own readiness facts, e.g. `{"matcher_index": "loaded"}`;
    raise to report the instance as not ready."""
