"""Reading the one row a unique key finds, and fixed-shape queries compiled once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators
from django.db.models.sql.compiler import SQLCompiler

T = TypeVar("T")


def only_row(rows: QuerySet[T]) -> T | None:  # type: ignore[type-var]
    """The row a filter on a unique key (or the primary key) finds, or None: `first()` without
    the ORDER BY it adds. Django compiles an ordered query's select list into position
    references, a cost paid on every call that a request's few such reads add up."""
    return next(iter(rows.order_by()[:1]), None)  # order_by(): not even the model's default


class CompiledOnce:
    """A query whose shape never changes, only one value in it (a user's id, a token's hash):
    the ORM writes its SQL once per process and database, and each call runs that SQL with the
    value.

    On a submission's path the ORM's building and compiling of a small query costs several
    times the database's work on it. `build(value)` makes the queryset; it is called once with
    a stand-in value, which must reach the SQL as a parameter of its own. `rows` returns plain
    tuples (a `values_list` of ids or numbers, which need no conversion), `number` the count of
    the rows (`count=True`), `instances` the models (select_related included) as the queryset
    would."""

    def __init__(
        self,
        build: Callable[[Any], QuerySet[Any]],
        *,
        stand_in: Any = -7_251_993,  # of the value's type, no real value: found among the params
        count: bool = False,
    ) -> None:
        self.build, self.stand_in, self.count = build, stand_in, count
        self._compiled: dict[str, tuple[str, tuple[Any, ...], int, SQLCompiler]] = {}

    def _sql(self, using: str) -> tuple[str, tuple[Any, ...], int, SQLCompiler]:
        if (compiled := self._compiled.get(using)) is None:
            compiler = self.build(self.stand_in).query.get_compiler(using=using)
            sql, params = compiler.as_sql()
            if self.count:
                sql = f"SELECT COUNT(*) FROM ({sql}) counted"  # noqa: S608 (the ORM's own SQL)
            slot = list(params).index(self.stand_in)  # ValueError: build lost the value
            compiled = self._compiled[using] = (sql, tuple(params), slot, compiler)
        return compiled

    def rows(self, value: Any, using: str = "default") -> list[tuple[Any, ...]]:
        sql, params, slot, _compiler = self._sql(using)
        with connections[using].cursor() as cursor:
            cursor.execute(sql, (*params[:slot], value, *params[slot + 1 :]))
            return cursor.fetchall()

    def number(self, value: Any, using: str = "default") -> int:
        """The count (`count=True`) for this value."""
        return int(self.rows(value, using)[0][0])

    def instances(self, value: Any, using: str = "default") -> list[Model]:
        """The rows as model instances, their select_related rows attached: what Django's
        ModelIterable does with a compiler's rows. The compiler kept from the first call only
        converts values (its connection's operations, the same for every connection to this
        database)."""
        rows: list[Sequence[Any]] = list(self.rows(value, using))
        compiler = self._compiled[using][3]
        select, klass_info = compiler.select, compiler.klass_info
        if klass_info is None or compiler.annotation_col_map:
            raise TypeError("instances() is for a queryset of models without annotations")
        first, last = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
        names = [column[0].target.attname for column in select[first:last]]
        # django-stubs describe a later Django's signature (a fetch mode added)
        populators = get_related_populators(klass_info, select, using)  # type: ignore[call-arg]
        found = []
        for row in compiler.results_iter([rows]):
            obj = klass_info["model"].from_db(using, names, row[first:last])
            for populator in populators:
                populator.populate(row, obj)
            found.append(obj)
        return found
