"""Reading the one row a unique key finds."""

from __future__ import annotations

from typing import TypeVar

from django.db.models import QuerySet

T = TypeVar("T")


def only_row(rows: QuerySet[T]) -> T | None:  # type: ignore[type-var]
    """The row a filter on a unique key (or the primary key) finds, or None: `first()` without
    the ORDER BY it adds. Django compiles an ordered query's select list into position
    references, a cost paid on every call that a request's few such reads add up."""
    return next(iter(rows.order_by()[:1]), None)  # order_by(): not even the model's default
