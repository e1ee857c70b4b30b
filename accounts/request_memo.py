"""A user's membership tier read once per request instead of once per check.

A submission asks for the tier's limits several times (request bounds, the service's checks,
the unfinished-jobs cap), and `/me/` again: each was a query of the credit account. Inside
`memo_scope()` (opened per request by config/request_memo.py) `tier_of` keeps what it read;
outside one (services, workers, tests) nothing is kept. Changing a tier forgets it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_tiers: ContextVar[dict[Any, Any] | None] = ContextVar("atelier_request_tiers", default=None)


@contextmanager
def memo_scope() -> Iterator[None]:
    token = _tiers.set({})
    try:
        yield
    finally:
        _tiers.reset(token)


def remembered(user_pk: Any) -> Any | None:
    memo = _tiers.get()
    return None if memo is None else memo.get(user_pk)


def remember(user_pk: Any, tier: Any) -> None:
    if (memo := _tiers.get()) is not None:
        memo[user_pk] = tier


def forget(user_pk: Any) -> None:
    if (memo := _tiers.get()) is not None:
        memo.pop(user_pk, None)
