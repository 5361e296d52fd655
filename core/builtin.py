"""The core's own plugin: it brings the API-key store through the same hook as every plugin."""

from __future__ import annotations

from ttp_gateway.backends.base import StoreRegistry

from .hookspecs import hookimpl
from .keystore import STORE


@hookimpl
def ttp_stores(stores: StoreRegistry) -> None:
    stores.add(STORE)
