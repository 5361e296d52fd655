"""What a caller may do: the one authorisation model behind every way of authenticating.

A scope lists the endpoints and operations a caller may call and, per scope kind, the values it
may name; "*" allows all, and a kind a scope does not mention is not restricted. Scope kinds are
declared by plugins (`ttp_scope_kinds`): gPAS declares "domains", the dispatcher "studies". An API
key, a Basic user, an anonymous endpoint and each role a token maps to all carry a scope of this
shape: in their configuration tables, `endpoints`, `operations` and one array per scope kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

WILDCARD = "*"
CALL_KEYS = ("endpoints", "operations")
# What else the tables that carry a scope hold; every other key of them names a scope kind.
_NOT_SCOPE_KINDS = frozenset({"name", "key", "key_sha256", "description", "password_hash", "endpoint",
                              "role", "scope", *CALL_KEYS})


class ScopeKinds:
    """The kinds of values callers may be scoped to, as the loaded plugins declare them."""

    def __init__(self) -> None:
        self._kinds: dict[str, str] = {}

    def add(self, name: str, doc: str = "") -> None:
        if name in CALL_KEYS or not name.replace("-", "_").isidentifier():
            raise ValueError(f"{name!r} cannot be a scope kind")
        self._kinds.setdefault(name, doc)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._kinds))

    def problems(self, auth: Mapping[str, Any]) -> list[str]:
        """Scope keys in the `[auth]` tables that no plugin declared (typos, removed plugins)."""
        found: list[str] = []
        tables: list[tuple[str, Any]] = [(f"[[auth.{name}]] #{i + 1}", table) for name in ("api_keys", "users", "anonymous")
                                         for i, table in enumerate(auth.get(name) or [])]
        tables += [(f"[[auth.oidc]] #{i + 1} roles #{j + 1}", role) for i, issuer in enumerate(auth.get("oidc") or [])
                   if isinstance(issuer, dict) for j, role in enumerate(issuer.get("roles") or [])]
        for where, table in tables:
            for key in scope_keys(table) if isinstance(table, Mapping) else ():
                if key not in self._kinds:
                    found.append(f"{where}: {key!r} is not a scope kind of the loaded plugins "
                                 f"(known: {', '.join(self) or 'none'})")
        return found


def scope_keys(settings: Mapping[str, Any]) -> list[str]:
    """The scope kinds a scope-carrying table names (an API key, a user, an anonymous endpoint,
    a token role): its keys other than the table's own settings."""
    return [key for key in settings if key not in _NOT_SCOPE_KINDS]


@dataclass(frozen=True)
class Client:
    """The caller of a request and what it may do.

    A caller whose roles map to several scopes (a token with several roles) keeps them apart in
    `grants`: the union of grants is what it may do, but one grant's domains never combine with
    another grant's operations. `for_call` narrows such a caller to the grants that allow the
    call at hand, so that the scope checks of its values see only those.
    """

    name: str
    endpoints: frozenset[str] = frozenset({WILDCARD})
    operations: frozenset[str] = frozenset({WILDCARD})
    scopes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    grants: tuple["Client", ...] = ()
    # Whether a scope kind this caller's scope does not mention is open to it (it is, except for
    # the caller that may do nothing).
    unmentioned_open: bool = True

    def may_call(self, endpoint: str, operation: str) -> bool:
        if self.grants:
            return any(grant.may_call(endpoint, operation) for grant in self.grants)
        return (_allows(self.endpoints, endpoint)
                and (_allows(self.operations, operation)
                     or _allows(self.operations, f"{endpoint}/{operation}")))

    def may_enter(self, endpoint: str) -> bool:
        """Whether any operation of the endpoint may be allowed to this caller."""
        if self.grants:
            return any(grant.may_enter(endpoint) for grant in self.grants)
        return _allows(self.endpoints, endpoint)

    def may_use(self, scope: str, value: str) -> bool:
        if self.grants:
            return any(grant.may_use(scope, value) for grant in self.grants)
        allowed = self.scopes.get(scope)
        if allowed is None:
            return self.unmentioned_open
        return _allows(allowed, value)

    def for_call(self, endpoint: str, operation: str) -> "Client":
        """This caller as far as one call is concerned: only the grants that allow the call."""
        if not self.grants:
            return self
        return Client.union(self.name, [g for g in self.grants if g.may_call(endpoint, operation)])

    @staticmethod
    def union(name: str, grants: Iterable["Client"]) -> "Client":
        """A caller who may do what any of `grants` allows (and nothing when there is none)."""
        grants = tuple(grants)
        if len(grants) == 1:
            return Client(name, grants[0].endpoints, grants[0].operations, grants[0].scopes)
        kinds = {kind for grant in grants for kind in grant.scopes}
        # The flat fields describe the caller (listings, logs); the checks consult the grants.
        return Client(
            name=name,
            endpoints=frozenset().union(*(g.endpoints for g in grants)),
            operations=frozenset().union(*(g.operations for g in grants)),
            scopes={kind: frozenset().union(*(g.scopes.get(kind, {WILDCARD}) for g in grants))
                    for kind in kinds},
            grants=grants or (NOBODY,),
        )


def client_from_settings(name: str, settings: Mapping[str, Any]) -> Client:
    """A Client named `name` with the scope keys of a configuration table (absent: all)."""
    return Client(
        name=name,
        endpoints=frozenset(settings.get("endpoints", [WILDCARD])),
        operations=frozenset(settings.get("operations", [WILDCARD])),
        scopes={kind: frozenset(settings[kind]) for kind in scope_keys(settings)},
    )


ANONYMOUS = Client(name="anonymous")
NOBODY = Client(name="nobody", endpoints=frozenset(), operations=frozenset(), unmentioned_open=False)


def _allows(allowed: frozenset[str], value: str) -> bool:
    return WILDCARD in allowed or value in allowed
