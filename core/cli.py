"""The `ttp-gateway` command: serve, check the configuration, and administer storage.

    ttp-gateway serve --config FILE [--host H] [--port P] [--workers N]
    ttp-gateway check-config --config FILE
    ttp-gateway keys list | keys create NAME [--endpoints ...] [--domains ...] ...
    ttp-gateway <plugin commands>, e.g. domains list | domains create NAME ...

`--config` may stand anywhere on the line; without it TTP_GATEWAY_CONFIG names the file.
Commands that set `gateway=False` run without configuration and without opening storage.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .auth import digest, new_secret
from .config import CONFIG_PATH_ENV, ConfigError, load_config
from .errors import FhirError
from .observability import configure_logging
from .plugins import plugin_manager


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, argv = _take_config_option(argv)
    parser, commands = _parser()
    plugin_manager().hook.ttp_cli_commands(subparsers=commands)
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        if getattr(args, "gateway", True) is False:
            # A command that only transforms files needs neither configuration nor storage.
            return int(args.run(args, None) or 0)
        config = load_config(config_path)
        if args.run in (serve, check_config):
            return args.run(args, config)
        configure_logging("WARNING", "text")
        from .app import build_gateway

        gateway, _ = build_gateway(config)
        try:
            return int(args.run(args, gateway) or 0)
        finally:
            gateway.repository.close()
    except (ConfigError, FhirError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def serve(args: argparse.Namespace, config) -> int:
    import uvicorn

    from ttp_gateway.backends import open_repository

    overrides = {"host": args.host, "port": args.port, "workers": args.workers}
    config = config.with_overrides(server={k: v for k, v in overrides.items() if v is not None})
    server = config.server
    logging_settings = config.data["logging"]
    configure_logging(logging_settings["level"], logging_settings["format"], logging_settings["audit_file"])
    # Migrate once here, so that workers starting together find the schema in place.
    repository = open_repository(config.storage_url)
    repository.migrate()
    repository.close()
    # Workers are separate processes that read their configuration from the environment.
    if config.source != "defaults":
        os.environ[CONFIG_PATH_ENV] = config.source
    for key in ("host", "port", "workers"):
        os.environ[f"TTP_GATEWAY__SERVER__{key.upper()}"] = str(getattr(server, key))
    uvicorn.run("ttp_gateway.core.app:app_from_environment", factory=True, host=server.host,
                port=server.port, workers=server.workers, access_log=False, log_config=None,
                server_header=False, timeout_keep_alive=30)
    return 0


def check_config(args: argparse.Namespace, config) -> int:
    from .app import config_problems

    problems = config_problems(config, plugin_manager(config.data["plugins"].get("disabled", [])))
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        return 1
    print(f"configuration {config.source} is valid")
    return 0


def list_keys(args: argparse.Namespace, gateway) -> int:
    configured = gateway.config.data["auth"].get("api_keys", [])
    with gateway.repository.transaction() as tx:
        stored = tx.get_api_keys()
    print(f"{'name':<24} {'source':<8} endpoints / operations / domains / studies")
    for key in configured:
        print(f"{key['name']:<24} {'config':<8} " + " / ".join(
            ",".join(key.get(scope, ["*"])) for scope in ("endpoints", "operations", "domains", "studies")))
    for key in stored:
        print(f"{key.name:<24} {'storage':<8} " + " / ".join(
            ",".join(getattr(key, scope)) for scope in ("endpoints", "operations", "domains", "studies")))
    return 0


def create_key(args: argparse.Namespace, gateway) -> int:
    from ttp_gateway.backends.base import StoredApiKey

    secret = new_secret()
    key = StoredApiKey(name=args.name, key_sha256=digest(secret),
                       endpoints=tuple(args.endpoints), operations=tuple(args.operations),
                       domains=tuple(args.domains), studies=tuple(args.studies))
    with gateway.repository.transaction(write=True) as tx:
        if not tx.add_api_key(key):
            print(f"error: an API key named {args.name!r} exists already", file=sys.stderr)
            return 1
    print(f"created API key {args.name!r}; the secret is shown only now:")
    print(secret)
    return 0


def _parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="ttp-gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help=f"TOML configuration file (default: ${CONFIG_PATH_ENV})")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("serve", help="serve the FHIR endpoints over HTTP")
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.add_argument("--workers", type=int)
    run.set_defaults(run=serve)

    check = commands.add_parser("check-config", help="validate the configuration and exit")
    check.set_defaults(run=check_config)

    keys = commands.add_parser("keys", help="API keys in storage").add_subparsers(metavar="ACTION")
    keys.add_parser("list", help="list configured and stored keys").set_defaults(run=list_keys)
    create = keys.add_parser("create", help="create a key and print its secret once")
    create.add_argument("name")
    for scope in ("endpoints", "operations", "domains", "studies"):
        create.add_argument(f"--{scope}", nargs="+", default=["*"], metavar=scope.upper()[:-1],
                            help=f"{scope} the key may use (default: all)")
    create.set_defaults(run=create_key)
    return parser, commands


def _take_config_option(argv: list[str]) -> tuple[str | None, list[str]]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    return known.config, rest


if __name__ == "__main__":
    sys.exit(main())
