"""The ASGI handler (config/asgi_handler.py): a sync view's request crosses from the event loop
to its thread once, not once per middleware hook, and answers exactly as before (the
middleware still applies); async views keep the async chain."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from asgiref import sync
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import RequestFactory

from accounts.models import ApiToken
from config import asgi_handler
from config.asgi_handler import is_async_view, take_over_request_started
from config.request_threads import RequestThreads
from tests.asgi_calls import call

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def hops(monkeypatch) -> Iterator[list[str]]:
    """Every loop -> thread hop (asgiref's SyncToAsync calls) during a request, by callee."""
    seen: list[str] = []
    original = sync.SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        seen.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__call__", counted)
    yield seen


@pytest.fixture
async def closed_connections():
    yield
    await sync_to_async(connections.close_all)()


@pytest.mark.usefixtures("closed_connections")
async def test_a_rest_call_crosses_to_its_thread_once_and_keeps_its_middleware(alice, hops):
    _, secret = await sync_to_async(ApiToken.issue)(alice, "script")
    # As in the web process: Django's test client, used by other tests in this one, connects
    # close_old_connections again after each of its requests.
    take_over_request_started()
    hops.clear()
    answer = await call("GET", "/api/v1/samplers/", headers=[("authorization", f"Bearer {secret}")])
    assert answer.status == 200 and answer.json()
    # What the middleware adds is still there (security headers, the frame refusal).
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    # The view, its whole chain and request_started's receivers in one hop; the other one
    # closes the response (request_finished: the connection goes back to the pool).
    assert hops.count("SyncViewsInOneThread._started_and_response") == 1
    assert hops == ["SyncViewsInOneThread._started_and_response", "HttpResponseBase.close"]


@pytest.mark.usefixtures("closed_connections")
async def test_a_page_and_an_unknown_path_answer_through_the_sync_chain(hops):
    page = await call("GET", "/accounts/login/")
    assert page.status == 200 and "csrftoken" in page.cookies  # CSRF middleware ran
    missing = await call("GET", "/no/such/page/")
    assert missing.status == 404
    assert hops.count("SyncViewsInOneThread._started_and_response") == 2


@pytest.fixture
def view_threads(monkeypatch) -> Iterator[list[str]]:
    """The name of the thread each sync view's request ran on, in order."""
    seen: list[str] = []
    original = asgi_handler.SyncViewsInOneThread._started_and_response

    def recorded(self, request):
        seen.append(threading.current_thread().name)
        return original(self, request)

    monkeypatch.setattr(asgi_handler.SyncViewsInOneThread, "_started_and_response", recorded)
    yield seen


@pytest.mark.usefixtures("closed_connections")
async def test_requests_one_after_another_run_on_a_kept_thread(view_threads):
    """No thread is started (and joined) for each request: the next one runs on the thread
    the last one finished with."""
    for _ in range(2):
        assert (await call("GET", "/accounts/login/")).status == 200
    threads_before = threading.active_count()
    for _ in range(3):
        assert (await call("GET", "/accounts/login/")).status == 200
    assert threading.active_count() == threads_before
    assert len(set(view_threads)) == 1 and view_threads[0].startswith("request")


@pytest.mark.usefixtures("closed_connections")
async def test_concurrent_requests_each_have_a_thread_of_their_own(view_threads, monkeypatch):
    """Two requests at once run side by side, never one behind the other on a shared thread:
    each view waits until both have started."""
    both_started = threading.Barrier(2, timeout=10)
    original = asgi_handler.SyncViewsInOneThread._started_and_response

    def meeting(self, request):
        both_started.wait()  # raises BrokenBarrierError if the other never comes
        return original(self, request)

    monkeypatch.setattr(asgi_handler.SyncViewsInOneThread, "_started_and_response", meeting)
    answers = await asyncio.gather(call("GET", "/no/such/page/"), call("GET", "/no/such/page/"))
    assert [a.status for a in answers] == [404, 404]


def test_a_thread_left_busy_by_its_request_is_not_lent_again():
    """A client that went away mid-request leaves its step running: the next request gets
    another thread rather than waiting behind it; idle threads are kept up to a bound."""
    threads = RequestThreads(keep_idle=1)
    release = threading.Event()
    busy = threads.borrow()
    busy.submit(release.wait, 10)
    threads.give_back(busy)
    assert threads.idle == 0 and threads.borrow() is not busy
    release.set()

    first, second = threads.borrow(), threads.borrow()
    for executor in (first, second):
        executor.submit(int).result()
    threads.give_back(first)
    threads.give_back(second)  # beyond keep_idle: its thread ends
    assert threads.idle == 1 and threads.borrow() is first
    assert second._shutdown


def test_request_started_receivers_run_in_the_view_thread(monkeypatch):
    """Django's own receivers of request_started (stale connections closed, the query log
    reset) still run for every request, in its view's hop; no other receiver is connected,
    which would bring the signal's own hop back."""
    from django.core.signals import request_started

    from config import asgi_handler

    handler = asgi_handler.SyncViewsInOneThread()  # takes Django's receivers over
    assert not request_started.receivers
    ran: list[str] = []
    monkeypatch.setattr(
        asgi_handler,
        "REQUEST_STARTED_RECEIVERS",
        tuple(
            (lambda name=receiver.__name__: ran.append(name))
            for receiver in asgi_handler.REQUEST_STARTED_RECEIVERS
        ),
    )
    handler._started_and_response(RequestFactory().get("/no/such/page/"))
    assert ran == ["reset_queries", "close_old_connections"]


def test_only_async_views_take_the_async_chain():
    factory = RequestFactory()
    assert is_async_view(factory.post("/sdapi/v1/txt2img"))
    assert is_async_view(factory.get("/sdapi/v1/progress"))
    assert not is_async_view(factory.post("/api/v1/jobs/"))
    assert not is_async_view(factory.get("/"))
    assert not is_async_view(factory.get("/no/such/page/"))
