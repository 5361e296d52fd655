"""The `ttp-gateway` command: serve, check the configuration, and administer storage.

    ttp-gateway serve --config FILE [--host H] [--port P] [--workers N]
    ttp-gateway check-config --config FILE
    ttp-gateway keys list | keys create NAME [--endpoints ...] [--domains ...] ...
    ttp-gateway users hash-password < password-file
    ttp-gateway <plugin commands>, e.g. domains list | domains create NAME ...

`--config` may stand anywhere on the line; without it TTP_GATEWAY_CONFIG names the file.
Commands that set `gateway=False` run without configuration and without opening storage.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ttp_gateway.backends.base import StorageError

from .auth import ScopeKinds, digest, new_secret
from .config import CONFIG_PATH_ENV, Config, ConfigError, load_config
from .errors import FhirError
from .gateway import Gateway
from .observability import configure_logging
from .plugins import load_plugins


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, argv = _take_config_option(argv)
    try:
        plugins = load_plugins()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    kinds = ScopeKinds()
    plugins.hook.ttp_scope_kinds(kinds=kinds)
    parser, commands = _parser(list(kinds))
    plugins.hook.ttp_cli_commands(subparsers=commands)
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
            return int(args.run(args, config))
        configure_logging("WARNING", "text")
        from .app import build_gateway

        # Set up, not started: admin commands neither seed the store nor warm caches.
        gateway, _ = build_gateway(config, start=False)
        try:
            return int(args.run(args, gateway) or 0)
        finally:
            gateway.repository.close()
    except (ConfigError, FhirError, StorageError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def serve(args: argparse.Namespace, config: Config) -> int:
    import tempfile

    import uvicorn

    from ttp_gateway.backends import open_repository
    from ttp_gateway.backends.base import StoreRegistry

    from .app import load_gateway_plugins
    from .server import BoundedHttpToolsProtocol, use_limits

    overrides = {"host": args.host, "port": args.port, "workers": args.workers}
    config = config.with_overrides(server={k: v for k, v in overrides.items() if v is not None})
    server = config.server
    logging_settings = config.data["logging"]
    configure_logging(logging_settings["level"], logging_settings["format"], logging_settings["audit_file"])
    plugins, problems = load_gateway_plugins(config)
    if problems:
        raise ConfigError("; ".join(problems))
    # Migrate once here, so that workers starting together find the schema in place.
    stores = StoreRegistry()
    plugins.hook.ttp_stores(stores=stores)
    repository = open_repository(config.storage_url, stores)
    repository.migrate()
    repository.close()
    # Metrics of all workers are aggregated through files in a directory of this run's own.
    metrics_dir = tempfile.mkdtemp(prefix="ttp-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    metrics = config.data["metrics"]
    if metrics["enabled"] and int(metrics["port"]):
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(int(metrics["port"]), addr=server.host, registry=registry)
    # Workers are separate processes that read their configuration from the environment.
    if config.source != "defaults":
        os.environ[CONFIG_PATH_ENV] = config.source
    for key in ("host", "port", "workers"):
        os.environ[f"TTP_GATEWAY__SERVER__{key.upper()}"] = str(getattr(server, key))
    limits = config.limits
    use_limits(limits)
    uvicorn.run("ttp_gateway.core.app:app_from_environment", factory=True, host=server.host,
                port=server.port, workers=server.workers, access_log=False, log_config=None,
                server_header=False, timeout_keep_alive=30, http=BoundedHttpToolsProtocol,
                limit_concurrency=limits.max_connections,
                h11_max_incomplete_event_size=limits.max_header_bytes)
    return 0


def check_config(args: argparse.Namespace, config: Config) -> int:
    from .app import load_gateway_plugins

    _, problems = load_gateway_plugins(config)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        return 1
    print(f"configuration {config.source} is valid")
    for line in config.limits.describe():
        print(line)
    return 0


def list_keys(args: argparse.Namespace, gateway: Gateway) -> int:
    from .keystore import KEYS

    configured = gateway.config.data["auth"].get("api_keys", [])
    with gateway.repository.read() as unit:
        stored = [key.as_settings() for key in unit[KEYS].get_api_keys()]
    print(f"{'name':<24} {'source':<8} scopes")
    for source, keys in (("config", configured), ("storage", stored)):
        for key in keys:
            scopes = "; ".join(f"{kind}={','.join(values)}" for kind, values in sorted(key.items())
                               if kind not in ("name", "key", "key_sha256")) or "all"
            print(f"{key['name']:<24} {source:<8} {scopes}")
    return 0


def create_key(args: argparse.Namespace, gateway: Gateway) -> int:
    from .keystore import KEYS, StoredApiKey

    secret = new_secret()
    scopes = {kind: tuple(getattr(args, kind.replace("-", "_"))) for kind in args.scope_kinds}
    key = StoredApiKey(name=args.name, key_sha256=digest(secret), scopes=scopes)
    if not gateway.repository.write(lambda unit: unit[KEYS].add_api_key(key)):
        print(f"error: an API key named {args.name!r} exists already", file=sys.stderr)
        return 1
    print(f"created API key {args.name!r}; the secret is shown only now:")
    print(secret)
    return 0


def hash_password(args: argparse.Namespace, gateway: None) -> int:
    """Print the argon2id hash of a password for `[[auth.users]] password_hash`."""
    import getpass

    from .auth import hash_password as argon2id

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")  # one line; only its line break is dropped
    if not password:
        print("error: the password is empty", file=sys.stderr)
        return 1
    print(argon2id(password))
    return 0


def _parser(kinds: list[str]) -> tuple[argparse.ArgumentParser, "argparse._SubParsersAction[argparse.ArgumentParser]"]:
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
    # endpoints and operations, then the scope kinds the plugins declare (domains, studies, ...)
    for scope in ("endpoints", "operations", *kinds):
        create.add_argument(f"--{scope}", nargs="+", default=["*"], metavar=scope.upper().rstrip("S"),
                            help=f"{scope} the key may use (default: all)")
    create.set_defaults(run=create_key, scope_kinds=("endpoints", "operations", *kinds))

    users = commands.add_parser("users", help="HTTP Basic users").add_subparsers(metavar="ACTION")
    users.add_parser("hash-password", help="read a password (stdin or prompt) and print its argon2id hash "
                                           "for [[auth.users]] password_hash").set_defaults(run=hash_password,
                                                                                           gateway=False)
    return parser, commands


def _take_config_option(argv: list[str]) -> tuple[str | None, list[str]]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    return known.config, rest


if __name__ == "__main__":
    sys.exit(main())
