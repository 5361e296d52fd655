"""Problems in the `[auth]` section, one sentence each, found before anything starts."""

from __future__ import annotations

from typing import Any, Mapping

from .oidc import ASYMMETRIC_ALGORITHMS, url_problem
from .passwords import password_hash_problem
from .scopes import CALL_KEYS, scope_keys

SECTION_KEYS = {"require_api_key", "api_keys", "users", "oidc", "anonymous", "realm",
                "basic_remember_seconds"}
# Tables that carry a scope also take one array per scope kind; which kinds exist, the plugins
# say (checked once they are loaded: `ScopeKinds.problems`).
API_KEY_KEYS = {"name", "key", "key_sha256", "description", *CALL_KEYS}
USER_KEYS = {"name", "password_hash", "description", *CALL_KEYS}
ISSUER_KEYS = {"issuer", "audience", "authorized_parties", "jwks_uri", "algorithms", "leeway_seconds",
               "client_id", "roles_claim", "name_claim", "roles", "jwks_refresh_seconds",
               "jwks_max_age_seconds", "fetch_timeout_seconds", "ca_file"}
ROLE_KEYS = {"role", "scope", *CALL_KEYS}
ANONYMOUS_KEYS = {"endpoint", *CALL_KEYS}


def auth_problems(auth: Mapping[str, Any]) -> list[str]:
    problems = _unknown("[auth]", auth, SECTION_KEYS)
    names: dict[str, str] = {}  # caller name -> where it was first given, across keys and users
    for where, entry in _tables(auth, "api_keys", problems):
        problems += _unknown(where, entry, API_KEY_KEYS) + _scope_problems(where, entry)
        if _named(where, entry, names, problems) and bool(entry.get("key")) == bool(entry.get("key_sha256")):
            problems.append(f"{where} ({entry['name']}) needs exactly one of key or key_sha256")
    for where, entry in _tables(auth, "users", problems):
        problems += _unknown(where, entry, USER_KEYS) + _scope_problems(where, entry)
        if _named(where, entry, names, problems):
            if ":" in entry["name"]:
                problems.append(f"{where} ({entry['name']}): a Basic user name cannot contain ':'")
            problem = password_hash_problem(entry.get("password_hash"))
            if problem:
                problems.append(f"{where} ({entry['name']}): {problem}")
    issuers: set[str] = set()
    for where, entry in _tables(auth, "oidc", problems):
        problems += _issuer_problems(where, entry, issuers)
    endpoints: set[str] = set()
    for where, entry in _tables(auth, "anonymous", problems):
        problems += _unknown(where, entry, ANONYMOUS_KEYS) + _scope_problems(where, entry)
        endpoint = entry.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            problems.append(f"{where} needs an endpoint")
        elif endpoint in endpoints:
            problems.append(f"{where}: endpoint {endpoint!r} is listed twice")
        else:
            endpoints.add(endpoint)
    if not isinstance(auth.get("require_api_key", True), bool):
        problems.append("[auth] require_api_key must be true or false")
    if not isinstance(auth.get("realm", ""), str):
        problems.append("[auth] realm must be a string")
    if not _number_between(auth.get("basic_remember_seconds", 60), 0, 3600):
        problems.append("[auth] basic_remember_seconds must be a number from 0 to 3600")
    return problems


def _issuer_problems(where: str, entry: Mapping[str, Any], issuers: set[str]) -> list[str]:
    problems = _unknown(where, entry, ISSUER_KEYS)
    issuer = entry.get("issuer")
    if not isinstance(issuer, str) or url_problem(issuer):
        problems.append(f"{where}: issuer {url_problem(issuer)}")
    elif issuer in issuers:
        problems.append(f"{where}: issuer {issuer!r} is configured twice")
    else:
        issuers.add(issuer)
        where = f"{where} ({issuer})"
    if "jwks_uri" in entry and url_problem(entry["jwks_uri"]):
        problems.append(f"{where}: jwks_uri {url_problem(entry['jwks_uri'])}")
    for name in ("audience", "authorized_parties"):
        value = entry.get(name, "" if name == "audience" else [])
        if isinstance(value, str):
            value = [value] if value else []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append(f"{where}: {name} must be a string or an array of strings")
        elif name == "audience" and not value:
            problems.append(f"{where} needs an audience (Keycloak: add an audience mapper for the gateway)")
    algorithms = entry.get("algorithms", ["RS256"])
    if (not isinstance(algorithms, list) or not algorithms
            or not all(a in ASYMMETRIC_ALGORITHMS for a in algorithms)):
        problems.append(f"{where}: algorithms must list asymmetric algorithms from "
                        f"{', '.join(ASYMMETRIC_ALGORITHMS)} (never none or HS*)")
    for name, low, high in (("leeway_seconds", 0, 300), ("jwks_refresh_seconds", 0, 86400),
                            ("jwks_max_age_seconds", 1, 7 * 86400), ("fetch_timeout_seconds", 0.1, 60)):
        if name in entry and not _number_between(entry[name], low, high):
            problems.append(f"{where}: {name} must be a number from {low} to {high}")
    for name in ("client_id", "roles_claim", "name_claim", "ca_file"):
        if name in entry and (not isinstance(entry[name], str) or not entry[name]):
            problems.append(f"{where}: {name} must be a non-empty string")
    mappings = entry.get("roles", [])
    if not isinstance(mappings, list) or not mappings:
        problems.append(f"{where} needs [[auth.oidc.roles]]: a token without a mapped role has no scope")
        return problems
    for index, mapping in enumerate(mappings):
        inner = f"{where} roles #{index + 1}"
        if not isinstance(mapping, dict):
            problems.append(f"{inner} must be a table")
            continue
        problems += _unknown(inner, mapping, ROLE_KEYS) + _scope_problems(inner, mapping)
        if not any(isinstance(mapping.get(k), str) and mapping.get(k) for k in ("role", "scope")):
            problems.append(f"{inner} needs a role or a scope (strings)")
    return problems


def _tables(auth: Mapping[str, Any], name: str, problems: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The tables of an array of tables, each with a label for messages."""
    value = auth.get(name, [])
    if not isinstance(value, list):
        problems.append(f"[auth] {name} must be an array of tables")
        return []
    found = []
    for index, entry in enumerate(value):
        where = f"[[auth.{name}]] #{index + 1}"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be a table")
        else:
            found.append((where, entry))
    return found


def _named(where: str, entry: Mapping[str, Any], names: dict[str, str], problems: list[str]) -> bool:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"{where} needs a name")
        return False
    if name in names:
        problems.append(f"{where}: the name {name!r} is used twice (also {names[name]}); "
                        "the audit trail could not tell them apart")
    names.setdefault(name, where)
    return True


def _scope_problems(where: str, entry: Mapping[str, Any]) -> list[str]:
    """Scope values that are not arrays of strings. Keys beside a table's own settings name scope
    kinds, which the loaded plugins declare (checked against them later, `ScopeKinds.problems`)."""
    label = f"{where} ({entry['name']})" if isinstance(entry.get("name"), str) else where
    problems = []
    for scope in (*CALL_KEYS, *scope_keys(entry)):
        value = entry.get(scope)
        if scope in entry and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems.append(f"{label}: {scope} must be an array of strings" if scope in CALL_KEYS else
                            f"{label}: unknown setting {scope} (if it names a scope kind, it must be an "
                            "array of strings)")
    return problems


def _unknown(where: str, entry: Mapping[str, Any], known: set[str]) -> list[str]:
    scoped = CALL_KEYS[0] in known  # a table with a scope: its other keys name scope kinds
    unknown = sorted(set(entry) - known - (set(scope_keys(entry)) if scoped else set()))
    return [f"{where}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"] if unknown else []


def _number_between(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
