"""Django's ASGI handler, with a synchronous view's request run in one thread hop.

Under ASGI, Django runs the middleware chain on the event loop, and every MiddlewareMixin
middleware (sessions, CSRF, locale, messages...) hops to the request's thread and back for each
of its hooks: some fifteen round trips between the loop and that thread for one sync view, each
a wake-up of both, which costs milliseconds of CPU per request and adds latency. A sync view
(the REST API, the pages) needs no event loop at all between the first middleware and the
response, so here its whole chain runs as WSGI does: one synchronous chain, called once in the
request's thread. Async views (the A1111 calls that wait for their job, config/waiting_calls.py)
keep the async chain, which holds no thread while they wait.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, get_resolver


class SyncViewsInOneThread(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()  # the async chain, for async views
        self.sync_handler = BaseHandler()
        self.sync_handler.load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        if is_async_view(request):
            return await super().get_response_async(request)
        # Thread-sensitive: the request's own thread (ASGIHandler opened its context), where
        # the response is later closed and the database connection given back.
        return await sync_to_async(self.sync_handler.get_response, thread_sensitive=True)(request)


def is_async_view(request: HttpRequest) -> bool:
    """Whether the path resolves to an async view (an unknown path: no, its 404 is sync)."""
    try:
        match: Any = get_resolver().resolve(request.path_info)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)
