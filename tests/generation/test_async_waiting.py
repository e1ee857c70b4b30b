"""Waiting A1111 calls cost no thread each: the middleware stack runs on the event loop (no
sync-only middleware), so a txt2img call waiting for its job is a suspended coroutine."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils.module_loading import import_string

from accounts.models import MembershipTier
from accounts.tiers import set_tier
from generation.models import Job
from tests.asgi_calls import call
from tests.generation.a1111_support import (
    basic_header,
    thread_connections_closed,  # noqa: F401 - a fixture
    token_for,
)

CALLS = 24


def test_every_middleware_can_run_on_the_event_loop():
    sync_only = [
        path
        for path in settings.MIDDLEWARE
        if not getattr(import_string(path), "async_capable", False)
    ]
    assert sync_only == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("thread_connections_closed")
async def test_many_waiting_txt2img_calls_keep_the_thread_count_flat(alice, catalogue, broker):
    def roomy_member() -> str:
        tier = MembershipTier.objects.create(
            name="Roomy", slug="roomy", rank=50, max_unfinished_jobs=CALLS + 5
        )
        set_tier(alice, tier)
        return basic_header(alice.get_username(), token_for(alice))

    headers = [("authorization", await sync_to_async(roomy_member)())]
    headers.append(("content-type", "application/json"))
    await call("GET", "/sdapi/v1/options", headers=headers)  # the stack's first-use threads
    before = threading.active_count()
    body = json.dumps({"prompt": "x", "width": 64, "height": 64, "steps": 4}).encode()

    def txt2img() -> Any:
        return call("POST", "/sdapi/v1/txt2img", headers=headers, body=body, timeout=120)

    calls = [asyncio.create_task(txt2img()) for _ in range(CALLS)]
    count = sync_to_async(lambda: Job.objects.filter(owner=alice).count())
    for _ in range(200):  # every call submitted its job and is now waiting for it
        if await count() == CALLS:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    during = threading.active_count()
    assert await count() == CALLS and not any(c.done() for c in calls)
    for c in calls:
        c.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    assert during - before < CALLS // 4, (before, during)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("thread_connections_closed")
async def test_a_waiting_call_answers_when_its_job_finishes_not_at_its_next_check(
    alice, catalogue, broker, monkeypatch
):
    from generation.a1111 import waiting
    from generation.submission import cancel_job

    monkeypatch.setattr(waiting, "CHECK_SECONDS", 30.0)  # a poll would answer 30 s late
    headers = [("authorization", basic_header(alice.get_username(), await token(alice)))]
    headers.append(("content-type", "application/json"))
    body = json.dumps({"prompt": "x", "width": 64, "height": 64, "steps": 4}).encode()
    pending = asyncio.create_task(
        call("POST", "/sdapi/v1/txt2img", headers=headers, body=body, timeout=60)
    )
    first = sync_to_async(lambda: Job.objects.filter(owner=alice).first())
    job = None
    for _ in range(200):
        if (job := await first()) is not None:
            break
        await asyncio.sleep(0.05)
    assert job is not None
    await asyncio.sleep(0.3)  # the call is waiting now
    finished = asyncio.get_running_loop().time()
    await sync_to_async(cancel_job)(alice, job)
    answer = await asyncio.wait_for(pending, 10)
    assert asyncio.get_running_loop().time() - finished < 2.0
    assert answer.status in (200, 409, 502)  # what a cancelled job answers; not a timeout


token = sync_to_async(token_for)
