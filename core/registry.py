"""Objects that live in storage and are cached in every process (domains, studies, ...)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class StoredObjects(Generic[T]):
    """A per-process cache of named objects loaded from storage.

    Asked for a name it lacks, it reloads, at most once per `reload_interval` seconds, so that an
    object created by another process (the admin command line, another worker or replica) is
    found within a second without a store round trip on every request."""

    def __init__(self, load: Callable[[], dict[str, T]], reload_interval: float = 1.0) -> None:
        self._load = load
        self._reload_interval = reload_interval
        self._objects: dict[str, T] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def get(self, name: str) -> T | None:
        found = self._objects.get(name)
        if found is None and time.monotonic() - self._loaded_at >= self._reload_interval:
            self.reload()
            found = self._objects.get(name)
        return found

    def all(self) -> list[T]:
        """Every object, freshly loaded, by name."""
        self.reload()
        return [self._objects[name] for name in sorted(self._objects)]

    def reload(self) -> None:
        with self._lock:
            self._objects = self._load()
            self._loaded_at = time.monotonic()

    def remember(self, name: str, value: T) -> None:
        """Cache an object this process has just stored."""
        self._objects[name] = value
