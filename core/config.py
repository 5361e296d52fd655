"""Configuration: one TOML file, every value overridable from the environment.

Precedence, lowest first: built-in defaults, the TOML file (`--config` or TTP_GATEWAY_CONFIG),
environment variables `TTP_GATEWAY__<SECTION>__<KEY>` (path segments separated by double
underscores, case-insensitive, list items by index: `TTP_GATEWAY__API_KEYS__0__KEY`), and
finally `PORT` for the listening port. Environment values are read as TOML values where they
parse as one (numbers, booleans, arrays, inline tables) and as plain strings otherwise.

The core reads `[server]`, `[storage]`, `[auth]`, `[limits]`, `[metrics]`, `[logging]` and
`[plugins]`; every other section belongs to the plugin of that name (`[gpas]`, `[dispatcher]`, ...).
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .auth.checks import auth_problems

ENV_PREFIX = "TTP_GATEWAY__"
CONFIG_PATH_ENV = "TTP_GATEWAY_CONFIG"

DEFAULTS: dict[str, Any] = {
    "server": {
        "host": "127.0.0.1",
        "port": 8080,
        "workers": 1,
        "base_path": "/ttp-fhir/fhir",
    },
    # group_commit: concurrent write requests of a process share one transaction and one commit.
    # Operations that can (`Operation.coalesce`) are answered in batches on every store unless it
    # is false; other writes share commits where "auto" finds it pays, on SQLite (every commit an
    # fsync behind one write lock), not on a database server, which takes several transactions'
    # commits in one flush by itself.
    "storage": {"url": "sqlite:///ttp-gateway.db", "group_commit": "auto"},
    "auth": {"require_api_key": True, "api_keys": []},
    # Every request is bounded; the defaults protect a small server (see `Limits`).
    "limits": {
        "max_body_bytes": 32 * 1024 * 1024,
        "max_unauthenticated_body_bytes": 1024 * 1024,
        "body_timeout_seconds": 30.0,
        "max_items": 100_000,
        "max_created": 100_000,
        "max_answer_bytes": 64 * 1024 * 1024,
        "max_depth": 32,
        "max_header_bytes": 16 * 1024,
        "max_headers": 100,
        "max_connections": 1000,
    },
    "metrics": {"enabled": True, "key_sha256": "", "port": 0},
    "logging": {"level": "INFO", "format": "json", "audit_file": ""},
    "plugins": {"disabled": []},
}


class ConfigError(Exception):
    """A configuration that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    workers: int
    base_path: str
    public_base_url: str  # e.g. https://ttp.example.org/ttp-fhir/fhir, for absolute links; "" if unset


@dataclass(frozen=True)
class Limits:
    """What one request may cost; a request over a limit is refused before any work.

    max_body_bytes                  request body size (413)
    max_unauthenticated_body_bytes  body size while the caller is not yet known, i.e. when the
                                    credentials can only be in the body (`apikey` parameter) (413)
    body_timeout_seconds            time to send the headers, and again to send the body (408)
    max_items                       values of one repeating parameter (originals, pseudonyms,
                                    Bloom filters, ...) and entries of a Bundle (413)
    max_created                     pseudonyms (or other things) one request may ask to create:
                                    the sum of its `count`s (413)
    max_answer_bytes                encoded answer size (413; nothing is written)
    max_depth                       nesting of a resource given as a parameter (400)
    max_header_bytes, max_headers   request header size and count (431)
    max_connections                 open connections and requests in progress per worker (503)
    """

    max_body_bytes: int
    max_unauthenticated_body_bytes: int
    body_timeout_seconds: float
    max_items: int
    max_created: int
    max_answer_bytes: int
    max_depth: int
    max_header_bytes: int
    max_headers: int
    max_connections: int

    def describe(self) -> list[str]:
        """One line per limit: its name, value, what it bounds and the status beyond it (for
        `check-config`)."""
        return [f"[limits] {name} = {getattr(self, name)}: {what}" for name, what in LIMIT_MEANINGS.items()]


# What each limit bounds, and the answer beyond it.
LIMIT_MEANINGS = {
    "max_body_bytes": "request body size (413)",
    "max_unauthenticated_body_bytes": "body size while the caller is unknown, i.e. the API key is only in "
                                      "the body (413)",
    "body_timeout_seconds": "time to send the request headers, and again the body (408)",
    "max_items": "values of one repeating parameter and entries of a Bundle (413)",
    "max_created": "pseudonyms one request may ask to create, the sum of its counts (413)",
    "max_answer_bytes": "encoded answer size (413, nothing written)",
    "max_depth": "nesting of a resource given as a parameter (400)",
    "max_header_bytes": "request line and headers size (431)",
    "max_headers": "number of request headers (431)",
    "max_connections": "open connections and requests in progress per worker (503)",
}


@dataclass(frozen=True)
class Config:
    data: dict[str, Any]
    source: str  # the file it came from, or "defaults"

    @property
    def server(self) -> ServerSettings:
        s = self.data["server"]
        return ServerSettings(host=str(s["host"]), port=int(s["port"]), workers=int(s["workers"]),
                              base_path="/" + str(s["base_path"]).strip("/"),
                              public_base_url=str(s.get("public_base_url", "")).rstrip("/"))

    @property
    def limits(self) -> Limits:
        given = self.data["limits"]
        unknown = set(given) - set(Limits.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"[limits] unknown settings {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, spec in Limits.__dataclass_fields__.items():
            value = given[name]
            kind = float if spec.type == "float" else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"[limits] {name} must be a positive number")
            values[name] = kind(value)
        return Limits(**values)

    @property
    def storage_url(self) -> str:
        return str(self.data["storage"]["url"])

    @property
    def group_commit(self) -> bool | None:
        """True or False as configured; None for "auto" (the store's own choice)."""
        value = self.data["storage"].get("group_commit", "auto")
        if value == "auto":
            return None
        if not isinstance(value, bool):
            raise ConfigError('[storage] group_commit must be true, false or "auto"')
        return value

    def section(self, name: str) -> dict[str, Any]:
        """A plugin's own section (empty when absent)."""
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
        return value

    def with_overrides(self, **sections: Mapping[str, Any]) -> "Config":
        """A copy with some values replaced, e.g. `with_overrides(storage={"url": ...})`."""
        data = copy.deepcopy(self.data)
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return Config(data, self.source)


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    data = copy.deepcopy(DEFAULTS)
    path = path or environ.get(CONFIG_PATH_ENV) or None
    source = "defaults"
    if path:
        file = Path(path)
        try:
            loaded = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from None
        _merge(data, loaded)
        source = str(file)
    _apply_environment(data, environ)
    if environ.get("PORT"):
        data["server"]["port"] = _parse_env_value(environ["PORT"])
    config = Config(data, source)
    check_core_settings(config)
    return config


def check_core_settings(config: Config) -> None:
    """Raise ConfigError for core settings that cannot work."""
    try:
        server = config.server
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[server]: {exc}") from None
    if not 0 < server.port < 65536:
        raise ConfigError("[server] port must be between 1 and 65535")
    if server.workers < 1:
        raise ConfigError("[server] workers must be at least 1")
    limits = config.limits
    if limits.max_body_bytes < 1024 or limits.max_unauthenticated_body_bytes < 1024:
        raise ConfigError("[limits] body sizes must be at least 1024 bytes")
    if not config.storage_url.startswith(("sqlite://", "postgresql", "mongodb://", "mongodb+srv://",
                                          "mongomock://")):
        raise ConfigError("[storage] url must start with sqlite://, postgresql:// or mongodb://")
    config.group_commit  # noqa: B018 - raises for a value that is none of true, false, "auto"
    metrics = config.data["metrics"]
    if not isinstance(metrics.get("enabled"), bool) or not isinstance(metrics.get("port"), int):
        raise ConfigError("[metrics] enabled must be true or false and port a number")
    auth = config.data["auth"]
    if not isinstance(auth, dict):
        raise ConfigError("[auth] must be a table")
    problems = auth_problems(auth)
    if problems:
        raise ConfigError("; ".join(problems))


def _merge(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = [segment.lower() for segment in name[len(ENV_PREFIX):].split("__") if segment]
        if not path:
            continue
        try:
            _set_path(data, path, _parse_env_value(raw))
        except (KeyError, IndexError, TypeError):
            raise ConfigError(f"environment variable {name} does not name a configuration value") from None


def _set_path(data: Any, path: list[str], value: Any) -> None:
    node = data
    for depth, segment in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            index = int(segment)
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise TypeError(segment)
        key = next((k for k in node if k.lower() == segment), segment)
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
