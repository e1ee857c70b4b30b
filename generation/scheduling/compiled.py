"""Querysets of fixed shape, compiled to SQL once per database and run as often as wanted.

The dispatcher's pass reads the same few queries every time it wakes (the waiting window, the
jobs in flight): building and compiling those querysets cost more CPU than the database spent
answering them (about 60% of the waiting read, cProfile). A `CompiledQuery` keeps the SQL, its
parameters and what turns a row into values (Django's converters: JSONField, SQLite's
datetimes) or model instances (with their `select_related` rows) per database alias and vendor,
so each run is one execute and the conversions: the rows are those the queryset would give.

Only for querysets whose SQL never changes: a value given anew at each run is a list of ids
(a `pk__in` or `owner_id__in` of any length as one parameter, `IdList`) or a time
(`GivenTime`); any other value would be compiled in once and kept.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from django.db import connections, router
from django.db.models import Model, QuerySet
from django.db.models.expressions import ColPairs, RawSQL
from django.db.models.query import RelatedPopulator, get_related_populators

M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class _Compiled:
    sql: str
    params: tuple[Any, ...]
    columns: list[Any]  # the selected expressions, whose converters make the values
    # For model instances: the main model's columns and how the related rows attach
    model: Any  # type[M]
    init_names: list[str]
    model_columns: slice
    populators: list[RelatedPopulator]


class CompiledQuery(Generic[M]):
    """`build(*shape, **lists)` (a queryset) compiled once per database and `shape` (hashable
    values that change the SQL itself, such as a LIMIT: each is compiled once); `given` names
    the values given at each run and their kind: `build` receives an id list (`IdList`) as a
    subquery for `__in`, a time (`GivenTime`) as an expression to compare with.
    `rows(*shape, **values)` for a `values_list` queryset, `objects(*shape, **values)` for
    one of model instances."""

    def __init__(
        self,
        build: Callable[..., QuerySet[M, Any]],
        **given: Literal["int", "uuid", "datetime"],
    ) -> None:
        self._build = build
        self._lists: dict[str, IdList | GivenTime] = {
            name: GivenTime() if kind == "datetime" else IdList(kind)
            for name, kind in given.items()
        }
        self._compiled: dict[tuple[Any, ...], _Compiled] = {}
        self._model: type[Model] | None = None

    def rows(self, *shape: Any, **lists: Any) -> list[tuple[Any, ...]]:
        """The rows as `list(build(*shape, ...))` gives them for a `values_list` queryset."""
        compiled, connection = self._compiled_for(shape)
        return [tuple(row) for row in self._converted(compiled, connection, lists)]

    def objects(self, *shape: Any, **lists: Any) -> list[M]:
        """The instances as `list(build(*shape, ...))` gives them (`select_related`, `only`)."""
        compiled, connection = self._compiled_for(shape)
        found = []
        for row in self._converted(compiled, connection, lists):
            obj = compiled.model.from_db(
                connection.alias, compiled.init_names, row[compiled.model_columns]
            )
            for populator in compiled.populators:
                populator.populate(row, obj)
            found.append(obj)
        return found

    def _compiled_for(self, shape: tuple[Any, ...]) -> tuple[_Compiled, Any]:
        if self._model is None:
            self._model = self._queryset(shape, "").model
        connection = connections[router.db_for_read(self._model)]  # as the queryset's `db`
        key = (connection.alias, connection.vendor, *shape)
        if key not in self._compiled:
            queryset = self._queryset(shape, connection.vendor)
            self._compiled[key] = _compile(queryset, connection)
        return self._compiled[key], connection

    def _queryset(self, shape: tuple[Any, ...], vendor: str) -> QuerySet[M, Any]:
        lists = {name: given.expression(vendor) for name, given in self._lists.items()}
        return self._build(*shape, **lists)

    def _converted(
        self, compiled: _Compiled, connection: Any, lists: dict[str, Any]
    ) -> list[list[Any]]:
        given = {
            self._lists[name]: self._lists[name].value(values, connection)
            for name, values in lists.items()
        }
        params = [given[p] if isinstance(p, IdList | GivenTime) else p for p in compiled.params]
        converters = [
            (i, convs, column)
            for i, column in enumerate(compiled.columns)
            if (
                convs := connection.ops.get_db_converters(column)
                + column.get_db_converters(connection)
            )
        ]
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            rows = [list(row) for row in cursor.fetchall()]
        for row in rows:
            for i, convs, column in converters:
                value = row[i]
                for convert in convs:
                    value = convert(value, column, connection)
                row[i] = value
        return rows


class IdList:
    """A list of ids (ints or UUIDs) as one SQL parameter, for `__in`: the query keeps one
    shape whatever the list's length. It stands for itself among the compiled parameters
    until a run gives the values."""

    def __init__(self, kind: Literal["int", "uuid"]) -> None:
        self.kind = kind

    def expression(self, vendor: str) -> RawSQL:
        if vendor == "postgresql" and self.kind == "uuid":
            return RawSQL("SELECT unnest(%s::uuid[])", [self])
        if vendor == "postgresql":
            return RawSQL("SELECT unnest(%s::bigint[])", [self])
        if vendor == "sqlite":
            return RawSQL("SELECT value FROM json_each(%s)", [self])
        return RawSQL("%s", [self])  # not compiled: only for the model's `db` lookup

    def value(self, ids: Iterable[Any], connection: Any) -> Any:
        vendor = connection.vendor
        if vendor == "postgresql":
            return [uuid.UUID(str(i)) if self.kind == "uuid" else int(i) for i in ids]
        if vendor == "sqlite":  # a UUID is kept as 32 hex digits there
            return json.dumps(
                [uuid.UUID(str(i)).hex if self.kind == "uuid" else int(i) for i in ids]
            )
        raise NotImplementedError(f"id lists on {vendor}")


class GivenTime:
    """A time (aware datetime, or None where unused) as one SQL parameter, as Django adapts it
    for a DateTimeField."""

    def expression(self, vendor: str) -> RawSQL:
        return RawSQL("%s", [self])

    def value(self, when: datetime | None, connection: Any) -> Any:
        return connection.ops.adapt_datetimefield_value(when)


def _compile(queryset: QuerySet[Any, Any], connection: Any) -> _Compiled:
    compiler = queryset.query.get_compiler(connection=connection)
    sql, params = compiler.as_sql()
    columns = [column for column, _sql, _alias in compiler.select[: compiler.col_count]]
    if any(isinstance(column, ColPairs) for column in columns):
        raise ValueError("composite keys are not supported")
    klass_info = compiler.klass_info or {"model": queryset.model, "select_fields": [0]}
    fields = klass_info["select_fields"]
    model_columns = slice(fields[0], fields[-1] + 1)
    return _Compiled(
        sql=sql,
        params=tuple(params),
        columns=columns,
        model=klass_info["model"],
        init_names=[column.target.attname for column in columns[model_columns]]
        if compiler.klass_info
        else [],
        model_columns=model_columns,
        # (django-stubs describe a later Django's signature, with a fetch mode)
        populators=get_related_populators(klass_info, compiler.select, connection.alias)  # type: ignore[call-arg]
        if compiler.klass_info
        else [],
    )
