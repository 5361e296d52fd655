"""What a running gateway is made of, and what a handler receives for one call."""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, TypeVar

from .auth import Client
from .config import Config, Limits
from .observability import audit_trail
from .operations import Args, Operation

if TYPE_CHECKING:
    import pluggy

    from ttp_gateway.backends.base import Repository, UnitOfWork, WriteUnit

T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ServiceKey(Generic[T]):
    """Names the public API a plugin offers other plugins; `gateway.service(key)` gives it, typed."""

    name: str


@dataclass
class Gateway:
    """One gateway instance: configuration, storage, plugins, clock, and the plugins' public APIs."""

    config: Config
    repository: "Repository"
    plugins: "pluggy.PluginManager"
    clock: Callable[[], datetime] = utc_now
    services: dict[str, Any] = field(default_factory=dict)
    searches: list[Any] = field(default_factory=list)  # the plugins' `Search`es

    @property
    def limits(self) -> Limits:
        return self.config.limits

    def provide(self, key: ServiceKey[T], api: T) -> None:
        """Publish a plugin's public API (in `ttp_setup`) for the plugins that require it."""
        if key.name in self.services:
            raise ValueError(f"two plugins provide the service {key.name!r}")
        self.services[key.name] = api

    def service(self, key: ServiceKey[T]) -> T:
        """The public API of a plugin this plugin requires (`ttp_requires`)."""
        try:
            return self.services[key.name]  # type: ignore[no-any-return]
        except KeyError:
            raise LookupError(f"service {key.name!r} is not available; does the plugin require "
                              "the plugin that provides it?") from None


class RequestWork:
    """The write unit of one request, begun when the handler first writes and committed by the
    core only after the answer is encoded, so that a request that fails at any stage — the
    handler, the answer's encoding, a limit on its size — writes nothing."""

    def __init__(self, repository: "Repository") -> None:
        self._repository = repository
        self.unit: "WriteUnit | None" = None

    def begin(self) -> "WriteUnit":
        if self.unit is None:
            self.unit = self._repository.begin()
        return self.unit

    def commit(self) -> None:
        if self.unit is not None:
            unit, self.unit = self.unit, None
            unit.commit()

    def rollback(self) -> None:
        if self.unit is not None:
            unit, self.unit = self.unit, None
            unit.rollback()


@dataclass
class Call:
    """One invocation of an operation, as its handler sees it.

    `writing()` gives the request's write unit (every write of the request, committed together
    once the answer is ready); `reading()` a read unit that sees committed data and never waits
    for writers. A handler may be run again from the start when the store was busy, so it must
    not act outside them except through `audit`, which the core records once the answer is out."""

    gateway: Gateway
    operation: Operation
    args: Args
    client: Client
    # The name and method the request used: an alias of an older gateway version asks for the
    # answer in that version's shape.
    invoked_as: str = ""
    http_method: str = "POST"
    # The request's URL query (a search's parameters, or control parameters such as `_count`
    # that clients send beside an operation's body).
    query: dict[str, list[str]] = field(default_factory=dict)
    work: RequestWork | None = None
    audits: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def writing(self) -> AbstractContextManager["UnitOfWork"]:
        return self._writing()

    @contextmanager
    def _writing(self) -> Iterator["UnitOfWork"]:
        if self.work is None:  # a call run outside the core's executor (tests, scripts)
            self.work = RequestWork(self.gateway.repository)
        yield self.work.begin()

    def reading(self) -> AbstractContextManager["UnitOfWork"]:
        return self.gateway.repository.read()

    def now(self) -> datetime:
        return self.gateway.clock()

    @property
    def base_url(self) -> str:
        """The base of this call's endpoint, for links in answers: `[server] public_base_url` (an
        absolute URL) where configured, else the server-relative base path."""
        server = self.gateway.config.server
        return f"{server.public_base_url or server.base_path}/{self.operation.endpoint}"

    def audit(self, action: str, **facts: Any) -> None:
        """Record who did what to which domain or study, once the answer is sent. Facts name
        targets and counts, never originals, pseudonyms or IDAT."""
        self.audits.append((action, facts))

    def flush_audits(self) -> None:
        for action, facts in self.audits:
            audit_trail.record(action, {"client": self.client.name, "endpoint": self.operation.endpoint,
                                        "operation": self.operation.name, **facts})
        self.audits.clear()
