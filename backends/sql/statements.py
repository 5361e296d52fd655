"""SQLAlchemy Core statements, compiled once per dialect, run on a unit's driver connection.

A store builds its statements from its `Table` definitions with a `SqlBuilder` for the dialect at
hand, once per process, and runs them through `SqlSession.run`: the compiled SQL goes straight to
the driver's cursor, because SQLAlchemy's per-execution machinery costs more than a single-row
query itself. Nothing is written as SQL text.

Batches are one statement whatever their size. `in_batch(column, name)` matches a column against
a list given as one parameter and `rows(name, ...)` turns a list of tuples into a selectable:
SQLite receives the list as one JSON array and unpacks it with `json_each`, PostgreSQL receives
arrays (`= ANY(...)`, `unnest(...) WITH ORDINALITY`). The compiled statement knows which of its
parameters are batches and converts them for the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import orjson
from sqlalchemy import Integer, Text, any_, bindparam, func, select, true
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import ClauseElement, Subquery
from sqlalchemy.types import ARRAY, TypeEngine

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _RowsBatch:
    columns: tuple[str, ...]


class Compiled:
    """One statement compiled for one dialect: its SQL and how to lay out its parameters."""

    __slots__ = ("sql", "_names", "_defaults", "_lists", "_rows", "_positional", "_json_lists")

    def __init__(self, statement: ClauseElement, dialect: Dialect, lists: set[str],
                 rows: dict[str, _RowsBatch]) -> None:
        compiled: Any = statement.compile(dialect=dialect)  # an SQLCompiler: positiontup, binds
        self.sql: str = compiled.string
        self._positional = compiled.positiontup is not None
        self._names: tuple[str, ...] = tuple(compiled.positiontup or compiled.binds)
        # Values the statement carries itself (literals, `values(x=None)`); named parameters
        # without a value must be given by the caller.
        self._defaults = {name: value for name, value in compiled.params.items()
                          if not compiled.binds[name].required}
        self._lists = lists
        self._rows = rows
        self._json_lists = dialect.name == "sqlite"

    def parameters(self, given: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        values = dict(self._defaults)
        for name, value in given.items():
            if name in self._rows:
                if self._json_lists:
                    values[name] = orjson.dumps(value, default=_as_json).decode()
                else:
                    columns = self._rows[name].columns
                    for position, column in enumerate(columns):
                        values[f"{name}_{column}"] = [row[position] for row in value]
            elif name in self._lists:
                values[name] = orjson.dumps(value, default=_as_json).decode() if self._json_lists else list(value)
            else:
                values[name] = value
        if self._positional:
            return tuple(values[name] for name in self._names)
        return values


def _as_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} cannot go into a JSON batch")


class SqlBuilder:
    """Builds and compiles a store's statements for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.name: str = dialect.name
        self._lists: set[str] = set()
        self._rows: dict[str, _RowsBatch] = {}

    def compile(self, statement: ClauseElement) -> Compiled:
        return Compiled(statement, self.dialect, set(self._lists), dict(self._rows))

    def in_batch(self, column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
        """`column` is one of the values of the list parameter `name`."""
        self._lists.add(name)
        if self.name == "sqlite":
            each = func.json_each(bindparam(name, type_=Text)).table_valued("value")
            return column.in_(select(each.c.value))
        return column == any_(bindparam(name, type_=ARRAY(column.type)))

    def rows(self, name: str, **columns: TypeEngine[Any]) -> Subquery:
        """The list parameter `name` of tuples as rows with the given columns, plus `i`, the
        position of each row in the list (to keep the caller's order)."""
        self._rows[name] = _RowsBatch(tuple(columns))
        if self.name == "sqlite":
            each = func.json_each(bindparam(name, type_=Text)).table_valued("key", "value")
            selected = [func.json_extract(each.c.value, f"$[{position}]").label(column)
                        for position, column in enumerate(columns)]
            return select(*selected, each.c.key.label("i")).select_from(each).where(true()).subquery()
        arrays = [bindparam(f"{name}_{column}", type_=ARRAY(kind)) for column, kind in columns.items()]
        unnested = func.unnest(*arrays).table_valued(*columns, with_ordinality="i").render_derived()
        return select(*(unnested.c[column] for column in columns), unnested.c.i).subquery()


def rows_of(items: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Tuples for a `rows` parameter (lists of lists work as well; this only copies)."""
    return [tuple(item) for item in items]


_prepared: dict[tuple[Any, str], Any] = {}  # values: what each factory made


def prepared(factory: Callable[[SqlBuilder], T], dialect: Dialect) -> T:
    """`factory(SqlBuilder(dialect))`, made once per process and dialect: a store's statements."""
    key = (factory, dialect.name)
    found = _prepared.get(key)
    if found is None:
        found = _prepared[key] = factory(SqlBuilder(dialect))
    return found
