"""What a running gateway is made of, and what a handler receives for one call."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from .auth import Client
from .config import Config
from .observability import audit_trail
from .operations import Args, Operation

if TYPE_CHECKING:
    import pluggy

    from ttp_gateway.backends.base import Repository

def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Gateway:
    """One gateway instance: configuration, storage, plugins, clock.

    `services` is where plugins keep the objects they build at start-up and share with other
    plugins (the dispatcher uses the gPAS plugin's domains through it)."""

    config: Config
    repository: "Repository"
    plugins: "pluggy.PluginManager"
    clock: Callable[[], datetime] = utc_now
    services: dict[str, Any] = field(default_factory=dict)

    def service(self, name: str) -> Any:
        try:
            return self.services[name]
        except KeyError:
            raise LookupError(f"service {name!r} is not available; is its plugin loaded?") from None


@dataclass
class Call:
    """One invocation of an operation, as its handler sees it."""

    gateway: Gateway
    operation: Operation
    args: Args
    client: Client
    # The name and method the request used: an alias of an older gateway version asks for the
    # answer in that version's shape.
    invoked_as: str = ""
    http_method: str = "POST"

    @property
    def repository(self) -> "Repository":
        return self.gateway.repository

    def now(self) -> datetime:
        return self.gateway.clock()

    def audit(self, action: str, **facts: Any) -> None:
        """Record who did what to which domain or study. Facts name targets and counts, never
        originals, pseudonyms or IDAT."""
        audit_trail.record(action, {"client": self.client.name, "endpoint": self.operation.endpoint,
                                    "operation": self.operation.name, **facts})
