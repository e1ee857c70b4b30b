"""Run the A1111 views' short synchronous work on the shared thread pool.

`sync_to_async`'s default (thread-sensitive) gives each request its own thread under Django's
ASGI handler, kept until the request ends: a txt2img call waiting minutes for its job would hold
one the whole time, so 500 waiting calls meant 500 threads. These calls touch no request-bound
state, so they run on the loop's bounded pool instead, each closing its database connection as a
request would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

P = ParamSpec("P")
R = TypeVar("R")


def in_pool(function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(run, thread_sensitive=False)
