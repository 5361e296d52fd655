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
