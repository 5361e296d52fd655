"""The hooks a TTP Gateway plugin can implement: the plugin author's manual.

A plugin is a module (or object) with functions marked `@hookimpl`, registered through the
`ttp_gateway` entry point group of its distribution:

    [project.entry-points.ttp_gateway]
    my_plugin = "my_package.my_module"

The built-in gPAS and dispatcher endpoints are plugins of exactly this kind. Operations are
declared with `ttp_gateway.core.operations.Operation` and `Param`; a handler receives a
`ttp_gateway.core.gateway.Call` and returns a FHIR resource as a dict. Set
TTP_GATEWAY_TRACE_HOOKS=1 to log every hook call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from .config import Config
    from .gateway import Gateway
    from .operations import Operation

PROJECT = "ttp_gateway"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ttp_operations(gateway: "Gateway") -> list["Operation"]:
    """When an app is built: return the operations this plugin serves.

    An operation with the endpoint and name of another plugin's replaces it only when it sets
    `replaces=True`; otherwise the duplicate stops the start-up."""


@hookspec
def ttp_startup(gateway: "Gateway") -> None:
    """After storage is migrated and before the first request: seed the store from the
    configuration, warm caches. Runs in every worker process."""


@hookspec
def ttp_shutdown(gateway: "Gateway") -> None:
    """When the app stops: release what `ttp_startup` acquired."""


@hookspec
def ttp_check_config(config: "Config") -> list[str]:
    """At start-up and for `ttp-gateway check-config`: problems in this plugin's own
    configuration sections, one sentence each; an empty list when all is well."""


@hookspec
def ttp_cli_commands(subparsers: "argparse._SubParsersAction") -> None:
    """When the command line is built: add admin sub-commands.

    Give each parser `set_defaults(run=function)`; the CLI calls `function(args, gateway)` with
    a gateway on the configured storage and exits with its return value (0 for success).
    A command that needs no storage sets `set_defaults(run=function, gateway=False)` and is
    called as `function(args, None)`, without loading the configuration. A `ValueError` a
    command raises is printed as `error: ...` with exit code 1."""


@hookspec
def ttp_readiness(gateway: "Gateway") -> dict[str, Any] | None:
    """For `/readyz`: the plugin's own readiness facts, e.g. `{"matcher_index": "loaded"}`;
    raise to report the instance as not ready."""
