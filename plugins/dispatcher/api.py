"""The dispatcher plugin's public API, for plugins that require it (`ttp_requires` -> ["dispatcher"])."""

from __future__ import annotations

from ttp_gateway.core.gateway import ServiceKey

from .operations import DispatcherOperations

DISPATCHER: ServiceKey[DispatcherOperations] = ServiceKey("dispatcher")

__all__ = ["DISPATCHER", "DispatcherOperations"]
