"""Everything a store holds, as text: to prove that some value is held nowhere."""

from __future__ import annotations

import base64

from ttp_gateway.backends.base import Repository


def stored_text(repository: Repository) -> str:
    """Every value of every table or collection, rendered as text (bytes also as base64)."""
    if hasattr(repository, "engine"):
        return _sql_text(repository)
    return _mongo_text(repository)


def _render(value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return data.decode("latin-1") + " " + base64.b64encode(data).decode()
    return str(value)


def _sql_text(repository) -> str:
    import sqlalchemy as sa

    engine = repository.engine
    lines = []
    with engine.connect() as connection:
        for table in sa.inspect(engine).get_table_names():
            for row in connection.execute(sa.text(f'SELECT * FROM "{table}"')):
                lines.append(" ".join(_render(v) for v in row))
    if engine.dialect.name == "sqlite":
        # Deleted rows must not linger in the file either (secure_delete), once the WAL is folded in.
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(engine.url.database, "rb") as file:
            lines.append(file.read().decode("latin-1"))
    return "\n".join(lines)


def _mongo_text(repository) -> str:
    database = repository.database
    lines = []
    for name in database.list_collection_names():
        for document in database[name].find():
            lines.append(" ".join(_render(v) for v in _values(document)))
    return "\n".join(lines)


def _values(value: object):
    if isinstance(value, dict):
        for item in value.values():
            yield from _values(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _values(item)
    else:
        yield value


def snapshot(repository: Repository) -> dict[str, list[str]]:
    """Every row of every table (or document of every collection), per table, in a stable order:
    two snapshots are equal exactly when the store holds the same data."""
    if hasattr(repository, "engine"):
        return _sql_snapshot(repository)
    return _mongo_snapshot(repository)


def _sql_snapshot(repository) -> dict[str, list[str]]:
    import sqlalchemy as sa

    engine = repository.engine
    tables: dict[str, list[str]] = {}
    with engine.connect() as connection:
        for table in sa.inspect(connection).get_table_names():
            rows = connection.execute(sa.text(f'SELECT * FROM "{table}"'))
            tables[table] = sorted(repr(tuple(_plain(v) for v in row)) for row in rows)
    return tables


def _mongo_snapshot(repository) -> dict[str, list[str]]:
    database = repository.database
    return {name: sorted(repr(_plain(document)) for document in database[name].find())
            for name in sorted(database.list_collection_names())}


def _plain(value: object) -> object:
    """A value whose repr does not depend on dict order or buffer identity."""
    if isinstance(value, dict):
        return sorted((str(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (memoryview, bytearray)):
        return bytes(value)
    return value
