"""MongoDB storage, with multi-document transactions (a replica set, one node is enough).

A plugin's MongoDB store is a `MongoStore` (its collections' indexes and a factory), working
through a `MongoSession` whose collections are bound to the unit's transaction."""

from .repository import BoundCollection, MongoIndex, MongoRepository, MongoSession, MongoStore

__all__ = ["BoundCollection", "MongoIndex", "MongoRepository", "MongoSession", "MongoStore"]
