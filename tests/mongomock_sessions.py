"""mongomock with client sessions and transactions, for the tests (`mongomock://host/db` URLs).

mongomock has no sessions. This stand-in gives the MongoDB repository what it needs of them:
`start_session()`, `start_transaction()`, `commit_transaction()` and `abort_transaction()`, with
collections that accept a `session` argument. A transaction is run alone — transactions of the
mocked server wait for each other, and calls from other threads outside a transaction wait until
it ends — and an aborted transaction restores the data as they were when it began.

What it cannot prove: isolation between concurrent transactions, write conflicts and their
retries, and the server's own locking; it serialises all of that away. The isolation tests run
against a real MongoDB when `TTP_TEST_MONGODB_URL` names one (a replica set).
"""

from __future__ import annotations

import copy
import threading
from typing import Any
from urllib.parse import urlsplit

import mongomock

_servers: dict[str, "StandInClient"] = {}
_servers_lock = threading.Lock()


def client_for(url: str) -> tuple["StandInClient", str]:
    """The stand-in server of a `mongomock://host/database` URL (one per host) and the database."""
    parts = urlsplit(url)
    with _servers_lock:
        server = _servers.get(parts.netloc)
        if server is None:
            server = _servers[parts.netloc] = StandInClient(mongomock.MongoClient())
    return server, parts.path.strip("/") or "ttp_gateway"


class StandInClient:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._condition = threading.Condition(threading.RLock())
        self._active: _Session | None = None
        self.admin = _Admin()

    def __getitem__(self, name: str) -> "_Database":
        return _Database(self, self._client[name], name)

    def start_session(self) -> "_Session":
        return _Session(self)

    def close(self) -> None:
        return None

    def drop_database(self, name: str) -> None:
        self.run(None, lambda: self._client.drop_database(name))

    # --- what the wrappers and sessions use ---------------------------------------------------
    def run(self, session: "_Session | None", call: Any, collection: Any = None) -> Any:
        with self._condition:
            if session is None or session is not self._active:
                owner = self._active.thread if self._active is not None else None
                # A thread reads its own transaction's data: the stand-in has no snapshots.
                while self._active is not None and owner != threading.get_ident():
                    self._condition.wait()
                    owner = self._active.thread if self._active is not None else None
            active = self._active
            if collection is not None and active is not None and owner_is_current(active):
                # A collection's documents as they were before the transaction first touched it:
                # what an abort restores. Copying only what a transaction touches keeps the cost
                # of a transaction independent of how many databases the process holds.
                key = (collection.database.name, collection.name)
                if key not in active.snapshot:
                    active.snapshot[key] = copy.deepcopy(collection._store._documents)
            return call()

    def begin(self, session: "_Session", database: str | None) -> None:
        with self._condition:
            while self._active is not None:
                self._condition.wait()
            self._active = session
            session.thread = threading.get_ident()
            session.snapshot = {}

    def end(self, session: "_Session", restore: bool) -> None:
        with self._condition:
            if self._active is session:
                if restore:
                    self._restore(session.snapshot)
                self._active = None
                session.snapshot = None
                self._condition.notify_all()

    def _restore(self, snapshot: dict[tuple[str, str], Any] | None) -> None:
        store = self._client._store
        for (db_name, name), documents in (snapshot or {}).items():
            store[db_name][name]._documents = documents


def owner_is_current(session: "_Session") -> bool:
    return session.thread == threading.get_ident()


class _Admin:
    def command(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if name == "hello":
            return {"ok": 1.0, "isWritablePrimary": True, "setName": "stand-in"}
        return {"ok": 1.0}


class _Session:
    def __init__(self, server: StandInClient) -> None:
        self._server = server
        self.in_transaction = False
        self.thread: int | None = None
        self.snapshot: Any = None

    def start_transaction(self, **options: Any) -> None:
        self._server.begin(self, None)
        self.in_transaction = True

    def commit_transaction(self) -> None:
        self.in_transaction = False
        self._server.end(self, restore=False)

    def abort_transaction(self) -> None:
        self.in_transaction = False
        self._server.end(self, restore=True)

    def end_session(self) -> None:
        if self.in_transaction:
            self.abort_transaction()


class _Database:
    def __init__(self, server: StandInClient, database: Any, name: str) -> None:
        self._server = server
        self._database = database
        self.name = name

    def __getitem__(self, name: str) -> "_Collection":
        return _Collection(self._server, self._database[name])

    def list_collection_names(self) -> list[str]:
        return self._server.run(None, self._database.list_collection_names)  # type: ignore[no-any-return]

    def command(self, *args: Any, **kwargs: Any) -> Any:
        return self._server.run(None, lambda: self._database.command(*args, **kwargs))


class _Collection:
    def __init__(self, server: StandInClient, collection: Any) -> None:
        self._server = server
        self._collection = collection

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._collection, name)

        def call(*args: Any, session: _Session | None = None, **kwargs: Any) -> Any:
            def run() -> Any:
                result = method(*args, **kwargs)
                # Results are read inside the call, while no other transaction runs.
                return list(result) if name in ("find", "aggregate") else result
            return self._server.run(session, run, self._collection)

        return call
