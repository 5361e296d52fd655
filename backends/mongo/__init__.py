"""MongoDB storage (pymongo), and mongomock:// for an in-memory store in tests and demos."""

from .repository import MongoRepository

__all__ = ["MongoRepository"]
