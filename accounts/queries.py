"""Reading the one row a unique key finds, and fixed-shape queries compiled once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.db import connections
from django.db.models import QuerySet

T = TypeVar("T")


def only_row(rows: QuerySet[T]) -> T | None:  # type: ignore[type-var]
    """The row a filter on a unique key (or the primary key) finds, or None: `first()` without
    the ORDER BY it adds. Django compiles an ordered query's select list into position
    references, a cost paid on every call that a request's few such reads add up."""
    return next(iter(rows.order_by()[:1]), None)  # order_by(): not even the model's default


class CompiledOnce:
    """A query whose shape never changes, only one value in it (a user's id): the ORM writes
    its SQL once per process and database, and each call runs that SQL with the value.

    On a submission's path the ORM's building and compiling of a small query costs several
    times the database's work on it. `build(value)` makes the queryset (plain values, no model
    instances: `values_list` of ids or numbers, which need no conversion from the database's
    types); it is called once with a stand-in value, which must reach the
    SQL as a parameter of its own. `count=True` counts the rows instead of returning them."""

    STAND_IN = -7_251_993  # no id: found by value among the compiled parameters

    def __init__(self, build: Callable[[Any], QuerySet[Any]], *, count: bool = False) -> None:
        self.build, self.count = build, count
        self._compiled: dict[str, tuple[str, tuple[Any, ...], int]] = {}

    def _sql(self, using: str) -> tuple[str, tuple[Any, ...], int]:
        if (compiled := self._compiled.get(using)) is None:
            query = self.build(self.STAND_IN).query
            sql, params = query.get_compiler(using=using).as_sql()
            if self.count:
                sql = f"SELECT COUNT(*) FROM ({sql}) counted"  # noqa: S608 (the ORM's own SQL)
            slot = list(params).index(self.STAND_IN)  # ValueError: build lost the value
            compiled = self._compiled[using] = (sql, tuple(params), slot)
        return compiled

    def rows(self, value: Any, using: str = "default") -> list[tuple[Any, ...]]:
        sql, params, slot = self._sql(using)
        with connections[using].cursor() as cursor:
            cursor.execute(sql, (*params[:slot], value, *params[slot + 1 :]))
            return cursor.fetchall()

    def number(self, value: Any, using: str = "default") -> int:
        """The count (`count=True`) for this value."""
        return int(self.rows(value, using)[0][0])
