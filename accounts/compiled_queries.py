"""Querysets of fixed shape, compiled to SQL once per database and run as often as wanted.

The same few queries run on every API call (the token with its user, account and tier), every
submission (the submitter's row lock, their unfinished jobs' count) and every pass of the
dispatcher (the waiting window, the jobs in flight): building and compiling those querysets
cost several times the database's work on them (the token's read: 2.6 -> 0.6 ms of CPU; about
60% of the waiting read, cProfile). A `CompiledQuery` keeps the SQL, its parameters and what
turns a row into values (Django's converters: JSONField, SQLite's datetimes) or model instances
(with their `select_related` rows) per database alias and vendor, so each run is one execute
and the conversions: the rows are those the queryset would give.

Only for querysets whose SQL never changes: a value given anew at each run is one value (a
user's id, a token's hash: `GivenValue`), a list of ids (a `pk__in` or `owner_id__in` of any
length as one parameter, `IdList`) or a time (`GivenTime`); any other value would be compiled
in once and kept (on PostgreSQL written into the SQL as a literal, `_constants_inlined`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from django.db import connections, router
from django.db.models import Model, QuerySet
from django.db.models.expressions import ColPairs, RawSQL
from django.db.models.query import RelatedPopulator, get_related_populators

M = TypeVar("M", bound=Model)

GivenKind = Literal["value", "int_list", "uuid_list", "text_list", "datetime"]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    count_sql: str
    params: tuple[Any, ...]
    given_slots: tuple[tuple[int, str], ...]  # where each run's values go among the params, by name
    # Per selected column that needs it: Django's converters, with the expression they take.
    # Found once with the compiling connection, as a compiler's results_iter would: they read
    # only settings (USE_TZ, the time zone), the same for every connection to this database.
    converters: list[tuple[int, list[Any], Any]]
    # For model instances: the main model's columns and how the related rows attach
    model: Any  # type[M]
    init_names: list[str]
    model_columns: slice
    populators: list[RelatedPopulator]


class CompiledQuery(Generic[M]):
    """`build(*shape, **given)` (a queryset) compiled once per database and `shape` (hashable
    values that change the SQL itself, such as a LIMIT: each is compiled once); `given` names
    the values given at each run and their kind, and `build` receives for each an expression
    that stands for it: one value (`"value"`, passed to the database as given: an id, a hash)
    to compare with, an id list (`"int_list"`, `"uuid_list"`) as a subquery for `__in`, a time
    (`"datetime"`) to compare with.

    `rows(*shape, **values)` for a `values_list` queryset (or one whose rows are only locked:
    `select_for_update`, compiled and run inside the caller's transaction), `objects(*shape,
    **values)` for one of model instances, `count(*shape, **values)` for the number of its
    rows."""

    def __init__(self, build: Callable[..., QuerySet[M, Any]], **given: GivenKind) -> None:
        self._build = build
        self._given: dict[str, Given] = {name: _GIVEN_KINDS[kind]() for name, kind in given.items()}
        self._compiled: dict[tuple[Any, ...], _Compiled] = {}
        self._model: type[Model] | None = None
        self._database_for: Callable[..., str] = router.db_for_read  # as the queryset's `db`

    def rows(self, *shape: Any, **values: Any) -> list[tuple[Any, ...]]:
        """The rows as `list(build(*shape, ...))` gives them for a `values_list` queryset."""
        compiled, connection = self._compiled_for(shape)
        return [tuple(row) for row in self._converted(compiled, connection, values)]

    def objects(self, *shape: Any, **values: Any) -> list[M]:
        """The instances as `list(build(*shape, ...))` gives them (`select_related`, `only`)."""
        return self.objects_with((), [], *shape, **values)

    def objects_with(
        self, cte: tuple[str, ...], cte_params: list[Any], *shape: Any, **values: Any
    ) -> list[M]:
        """`objects`, the statement led by `WITH` these common table expressions (SQL the
        caller writes; a data-modifying one runs in the same statement, the query reading the
        rows as they were before it) with their parameters."""
        compiled, connection = self._compiled_for(shape)
        if not compiled.init_names:
            raise TypeError("objects() is for a queryset of models without annotations")
        found = []
        for row in self._converted(compiled, connection, values, cte, cte_params):
            obj = compiled.model.from_db(
                connection.alias, compiled.init_names, row[compiled.model_columns]
            )
            for populator in compiled.populators:
                populator.populate(row, obj)
            found.append(obj)
        return found

    def count(self, *shape: Any, **values: Any) -> int:
        """How many rows `build(*shape, ...)` finds."""
        compiled, connection = self._compiled_for(shape)
        with connection.cursor() as cursor:
            cursor.execute(compiled.count_sql, self._params(compiled, connection, values))
            return int(cursor.fetchone()[0])

    def _compiled_for(self, shape: tuple[Any, ...]) -> tuple[_Compiled, Any]:
        if self._model is None:
            probe = self._queryset(shape, "")
            self._model = probe.model
            if probe.query.select_for_update:  # a row lock reads where writes go
                self._database_for = router.db_for_write
        connection = connections[self._database_for(self._model)]
        key = (connection.alias, connection.vendor, *shape)
        if (compiled := self._compiled.get(key)) is None:
            queryset = self._queryset(shape, connection.vendor)
            names = {given: name for name, given in self._given.items()}
            compiled = self._compiled[key] = _compile(queryset, connection, names)
        return compiled, connection

    def _queryset(self, shape: tuple[Any, ...], vendor: str) -> QuerySet[M, Any]:
        stand_ins = {name: given.expression(vendor) for name, given in self._given.items()}
        return self._build(*shape, **stand_ins)

    def _params(self, compiled: _Compiled, connection: Any, values: dict[str, Any]) -> list[Any]:
        if values.keys() != self._given.keys():
            raise TypeError(f"give {sorted(self._given)}, not {sorted(values)}")
        params = list(compiled.params)
        for slot, name in compiled.given_slots:
            params[slot] = self._given[name].value(values[name], connection)
        return params

    def _converted(
        self,
        compiled: _Compiled,
        connection: Any,
        values: dict[str, Any],
        cte: tuple[str, ...] = (),
        cte_params: Sequence[Any] = (),
    ) -> list[Sequence[Any]]:
        sql = f"WITH {', '.join(cte)} {compiled.sql}" if cte else compiled.sql
        with connection.cursor() as cursor:
            cursor.execute(sql, [*cte_params, *self._params(compiled, connection, values)])
            rows: list[Sequence[Any]] = cursor.fetchall()
        if not compiled.converters:
            return rows
        converted: list[Sequence[Any]] = []
        for fetched in rows:
            row = list(fetched)
            for i, convs, column in compiled.converters:
                value = row[i]
                for convert in convs:
                    value = convert(value, column, connection)
                row[i] = value
            converted.append(row)
        return converted


class Given:
    """A value given at each run: an expression for `build` that puts this object among the
    compiled parameters, where a run puts the value."""

    def expression(self, vendor: str) -> RawSQL:
        return RawSQL("%s", [self])

    def value(self, given: Any, connection: Any) -> Any:
        raise NotImplementedError


class GivenValue(Given):
    """One value (a user's id, a token's hash), passed to the database as given."""

    def value(self, given: Any, connection: Any) -> Any:
        return given


class IdList(Given):
    """A list of ids (ints or UUIDs) or names as one SQL parameter, for `__in`: the query keeps
    one shape whatever the list's length."""

    def __init__(self, kind: Literal["int", "uuid", "text"]) -> None:
        self.kind = kind

    def expression(self, vendor: str) -> RawSQL:
        if vendor == "postgresql":
            return RawSQL(_PG_UNNEST[self.kind], [self])  # noqa: S611 (constant SQL)
        if vendor == "sqlite":
            return RawSQL("SELECT value FROM json_each(%s)", [self])
        return RawSQL("%s", [self])  # not compiled: only for the model's `db` lookup

    def value(self, given: Iterable[Any], connection: Any) -> Any:
        vendor = connection.vendor
        if self.kind == "text":
            names = [str(i) for i in given]
            return names if vendor == "postgresql" else json.dumps(names)
        if vendor == "postgresql":
            return [uuid.UUID(str(i)) if self.kind == "uuid" else int(i) for i in given]
        if vendor == "sqlite":  # a UUID is kept as 32 hex digits there
            return json.dumps(
                [uuid.UUID(str(i)).hex if self.kind == "uuid" else int(i) for i in given]
            )
        raise NotImplementedError(f"id lists on {vendor}")


_PG_UNNEST = {
    "int": "SELECT unnest(%s::bigint[])",
    "uuid": "SELECT unnest(%s::uuid[])",
    "text": "SELECT unnest(%s::text[])",
}


class GivenTime(Given):
    """A time (aware datetime, or None where unused) as one SQL parameter, as Django adapts it
    for a DateTimeField."""

    def value(self, given: datetime | None, connection: Any) -> Any:
        return connection.ops.adapt_datetimefield_value(given)


def _constants_inlined(sql: str, params: Sequence[Any], connection: Any) -> tuple[str, list[Any]]:
    """The SQL with its compiled-in values written as literals (quoted by psycopg), only the
    given ones left as parameters. PostgreSQL plans a prepared statement once (its generic
    plan) only where that plan is no worse than one made for the values: a status compared
    with a parameter is not (a rare 'queued' against any status), so the dispatcher's waiting
    read was planned anew at each run; its constants written in, it has no parameter left
    and is planned once per connection (`DATABASE_PREPARE_THRESHOLD`)."""
    from psycopg import sql as pg_sql

    values = iter(params)
    kept: list[Any] = []
    with connection.cursor() as cursor:  # quoted with the adapters Django registered on it

        def placeholder(match: re.Match[str]) -> str:
            if match.group() == "%%":
                return "%%"
            value = next(values)
            if isinstance(value, Given):
                kept.append(value)
                return "%s"
            literal = pg_sql.Literal(value).as_string(cursor.cursor)
            return literal.replace("%", "%%")  # the SQL still goes through %s formatting

        return re.sub(r"%[s%]", placeholder, sql), kept


_GIVEN_KINDS: dict[str, Callable[[], Given]] = {
    "value": GivenValue,
    "int_list": lambda: IdList("int"),
    "uuid_list": lambda: IdList("uuid"),
    "text_list": lambda: IdList("text"),
    "datetime": GivenTime,
}


def _compile(queryset: QuerySet[Any, Any], connection: Any, names: dict[Given, str]) -> _Compiled:
    compiler = queryset.query.get_compiler(connection=connection)
    sql, params = compiler.as_sql()
    if connection.vendor == "postgresql":
        sql, params = _constants_inlined(sql, params, connection)
    columns = [column for column, _sql, _alias in compiler.select[: compiler.col_count]]
    if any(isinstance(column, ColPairs) for column in columns):
        raise ValueError("composite keys are not supported")
    # Instances for a queryset of models without annotations (which objects() would drop), as
    # Django's ModelIterable makes them; a values_list queryset's rows are only rows.
    models = compiler.klass_info is not None and not (
        queryset.query.values_select or compiler.annotation_col_map
    )
    klass_info: dict[str, Any] = (
        compiler.klass_info if models else {"model": queryset.model, "select_fields": [0]}
    )
    fields = klass_info["select_fields"]
    model_columns = slice(fields[0], fields[-1] + 1)
    return _Compiled(
        sql=sql,
        count_sql=f"SELECT COUNT(*) FROM ({sql}) counted",  # noqa: S608 (the ORM's own SQL)
        params=tuple(params),
        given_slots=tuple(
            (slot, names[param]) for slot, param in enumerate(params) if isinstance(param, Given)
        ),
        converters=[
            (i, convs, column)
            for i, column in enumerate(columns)
            if (
                convs := connection.ops.get_db_converters(column)
                + column.get_db_converters(connection)
            )
        ],
        model=klass_info["model"],
        init_names=[column.target.attname for column in columns[model_columns]] if models else [],
        model_columns=model_columns,
        # (django-stubs describe a later Django's signature, with a fetch mode)
        populators=get_related_populators(klass_info, compiler.select, connection.alias)  # type: ignore[call-arg]
        if models
        else [],
    )
