"""Django's ASGI handler, with a synchronous view's request run in one thread hop.

Under ASGI, Django runs the middleware chain on the event loop, and every MiddlewareMixin
middleware (sessions, CSRF, locale, messages...) hops to the request's thread and back for each
of its hooks: some fifteen round trips between the loop and that thread for one sync view, each
a wake-up of both, which costs milliseconds of CPU per request and adds latency. A sync view
(the REST API, the pages) needs no event loop at all between the first middleware and the
response, so here its whole chain runs as WSGI does: one synchronous chain, called once in the
request's thread. Async views (the A1111 calls that wait for their job, config/waiting_calls.py)
keep the async chain, which holds no thread while they wait.

Django also sends `request_started` from the event loop, and its receivers (closing stale
database connections, clearing the query log) are synchronous: one more hop to the request's
thread and back before the view's. Here they run at the start of the view's own hop instead
(the async views' chain: one hop before it, as before).

And the request's thread is one kept from an earlier request (`config.request_threads`), not a
new one started for it and joined after it.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.core.signals import request_started
from django.db import close_old_connections, reset_queries
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, get_resolver

from config.request_threads import RequestThreads


class SyncViewsInOneThread(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()  # the async chain, for async views
        self.sync_handler = BaseHandler()
        self.sync_handler.load_middleware(is_async=False)
        take_over_request_started()
        self.threads = RequestThreads()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Django's entry point, the request's thread-sensitive steps on a kept thread."""
        if scope["type"] != "http":
            raise ValueError(f"Django serves only HTTP connections, not {scope['type']}.")
        executor = self.threads.borrow()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.threads.give_back(executor)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        if is_async_view(request):
            await sync_to_async(started, thread_sensitive=True)()
            return await super().get_response_async(request)
        # Thread-sensitive: the request's own thread (ASGIHandler opened its context), where
        # the response is later closed and the database connection given back.
        return await sync_to_async(self._started_and_response, thread_sensitive=True)(request)

    def _started_and_response(self, request: HttpRequest) -> HttpResponseBase:
        started()
        return self.sync_handler.get_response(request)


REQUEST_STARTED_RECEIVERS = (reset_queries, close_old_connections)


def take_over_request_started() -> None:
    """Disconnect Django's own receivers, which `started` calls instead (no other app connects
    one: a test holds that), so that the signal no longer costs a hop of its own."""
    for receiver in REQUEST_STARTED_RECEIVERS:
        request_started.disconnect(receiver)


def started() -> None:
    """What `request_started`'s receivers did, in the thread that serves the request."""
    for receiver in REQUEST_STARTED_RECEIVERS:
        receiver()


def is_async_view(request: HttpRequest) -> bool:
    """Whether the path resolves to an async view (an unknown path: no, its 404 is sync)."""
    try:
        match: Any = get_resolver().resolve(request.path_info)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)
