"""/sdapi/v1/ progress, interrupt, skip, force_task_id and the waiting call under the real ASGI
stack, without the diffusion engine: running jobs are marked started as the worker's event does,
and the worker's latest step is stored as its JobMonitor stores it."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from accounts import ledger
from generation.a1111.progress import current_job
from generation.broker import get_redis
from generation.lifecycle import start_job
from generation.models import Job
from generation.submission import cancel_job, submit_job
from gpu_worker.progress import JobMonitor
from gpu_worker.protocol import CANCEL_KEY, ProgressEvent
from tests.generation.a1111_support import (
    SdapiClient,
    basic_header,
    get,
    post,
    sdapi_client,
    thread_connections_closed,  # noqa: F401 - a fixture
    token_for,
    wait_for_job,
)
from tests.generation.conftest import SMALL, beat

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("thread_connections_closed"),
]

# From reference/a1111-api.md: every key of progress.state.
STATE_KEYS = {
    "skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp",
    "job_no", "sampling_step", "sampling_steps",
}  # fmt: skip


async def client_of(user: Any, bearer: bool = False) -> SdapiClient:
    return await sync_to_async(sdapi_client)(user, bearer)


async def stop(user: Any, job: Job) -> None:
    await sync_to_async(cancel_job)(user, job)


# --- force_task_id, progress, interrupt, skip ------------------------------------------------


async def test_force_task_id_is_per_user_and_a_retry_returns_the_same_job(
    alice, bob, catalogue, broker
):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 4, "force_task_id": "task(ab12)"}
    alice_client, bob_client = await client_of(alice), await client_of(bob)
    alice_call = asyncio.create_task(post(alice_client, "txt2img", body))
    alice_job = await wait_for_job(alice)
    bob_call = asyncio.create_task(post(bob_client, "txt2img", body))
    bob_job = await wait_for_job(bob)
    assert alice_job.pk != bob_job.pk  # the same task id, two users, two jobs
    progress = (await get(alice_client, "progress?id_task=task(ab12)")).json()
    assert progress["textinfo"] == "In queue: 1/2"
    await stop(alice, alice_job)
    await stop(bob, bob_job)
    assert (await alice_call).status_code == (await bob_call).status_code == 200
    retry = await post(alice_client, "txt2img", body)  # the same task again: no second job
    assert retry.status_code == 200
    assert await sync_to_async(Job.objects.owned_by(alice).count)() == 1


async def test_with_no_job_progress_is_all_zeros(alice, catalogue):
    body = (await get(await client_of(alice), "progress?skip_current_image=false")).json()
    assert body == {
        "progress": 0,
        "eta_relative": 0,
        "state": {
            "skipped": False,
            "interrupted": False,
            "stopping_generation": False,
            "job": "",
            "job_count": 0,
            "job_timestamp": "0",
            "job_no": 0,
            "sampling_step": 0,
            "sampling_steps": 0,
        },
        "current_image": None,
        "textinfo": None,
    }


async def test_a_queued_job_reports_its_place_and_an_eta(alice, bob, catalogue, broker):
    await sync_to_async(submit_job)(bob, SMALL)
    await sync_to_async(submit_job)(alice, {**SMALL, "n_iter": 2})
    body = (await get(await client_of(alice), "progress")).json()
    assert body["progress"] == 0 and body["eta_relative"] > 0
    assert body["textinfo"] == "In queue: 2/2"
    assert body["current_image"] is None
    assert set(body["state"]) == STATE_KEYS
    assert body["state"]["job_count"] == 2 and body["state"]["sampling_step"] == 0
    assert body["state"]["job"] == "scripts_txt2img"


def running_job_of(user: Any, broker: Any, **params: Any) -> Job:
    job = submit_job(user, {**SMALL, **params})
    start_job(job, "gpu-1", job.attempt)  # what the worker's 'started' event does
    job.refresh_from_db()
    return job


def store_progress(job: Job, step: int, steps: int) -> None:
    """What the GPU worker's JobMonitor stores at a step."""
    monitor = JobMonitor(job_id=str(job.pk), events_group="", redis_client=get_redis(),
                         publisher=None)  # fmt: skip
    monitor.store_now(
        ProgressEvent(
            type="job.progress",
            job_id=str(job.pk),
            step=step,
            steps=steps,
            eta=1.0,
            preview="data:image/jpeg;base64,/9j/preview",
        )
    )


async def test_a_running_job_reports_a1111s_progress_from_the_workers_latest_step(
    alice, catalogue, broker
):
    job = await sync_to_async(running_job_of)(alice, broker, n_iter=2, steps=4)
    await sync_to_async(store_progress)(job, 6, 8)  # the second batch, step 2 of 4
    client = await client_of(alice)
    body = (await get(client, "progress")).json()
    assert body["progress"] == pytest.approx(0.01 + 1 / 2 + (1 / 2) * 2 / 4)
    assert body["eta_relative"] >= 0 and body["textinfo"] is None
    assert body["current_image"] == "/9j/preview"  # bare base64, as A1111 sends it
    state = body["state"]
    assert (state["job_count"], state["job_no"]) == (2, 1)
    assert (state["sampling_step"], state["sampling_steps"]) == (2, 4)
    assert state["interrupted"] is False and state["skipped"] is False
    body = (await get(client, "progress?skip_current_image=true")).json()
    assert body["current_image"] is None


async def test_bob_can_neither_see_nor_stop_alices_running_job(alice, bob, catalogue, broker):
    job = await sync_to_async(running_job_of)(alice, broker)
    flag = CANCEL_KEY.format(job_id=job.pk)
    bob_client = await client_of(bob)
    assert (await get(bob_client, "progress")).json()["progress"] == 0
    assert (await post(bob_client, "interrupt")).json() == {}
    assert (await post(bob_client, "skip")).status_code == 200
    assert await sync_to_async(get_redis().get)(flag) is None
    assert (await sync_to_async(Job.objects.get)(pk=job.pk)).cancel_requested_at is None

    alice_client = await client_of(alice)
    assert (await get(alice_client, "progress")).json()["progress"] > 0
    assert (await post(alice_client, "skip")).status_code == 200
    assert await sync_to_async(get_redis().get)(flag) == b"skip"
    assert (await post(alice_client, "interrupt")).json() == {}
    assert await sync_to_async(get_redis().get)(flag) == b"interrupt"
    assert (await post(alice_client, "skip")).status_code == 200
    assert await sync_to_async(get_redis().get)(flag) == b"interrupt"  # a skip never undoes it
    assert (await sync_to_async(Job.objects.get)(pk=job.pk)).cancel_requested_at is not None
    assert (await get(alice_client, "progress")).json()["state"]["interrupted"] is True


async def test_interrupt_leaves_the_callers_queued_jobs_alone(alice, catalogue, broker):
    running = await sync_to_async(running_job_of)(alice, broker)
    queued = await sync_to_async(submit_job)(alice, SMALL)
    await post(await client_of(alice), "interrupt")
    assert await sync_to_async(get_redis().get)(CANCEL_KEY.format(job_id=running.pk))
    assert await sync_to_async(get_redis().get)(CANCEL_KEY.format(job_id=queued.pk)) is None
    current = await sync_to_async(current_job)(alice)
    assert current is not None and current.pk == running.pk


# --- the waiting call under the real ASGI stack ----------------------------------------------


async def test_a_waiting_txt2img_does_not_hold_up_other_requests(alice, bob, catalogue, broker):
    from tests.generation.a1111_support import asgi_request, asgi_response

    alice_auth = basic_header("alice", await sync_to_async(token_for)(alice))
    bob_auth = basic_header("bob", await sync_to_async(token_for)(bob))
    waiting = await asgi_request(
        "POST", "/sdapi/v1/txt2img", alice_auth, {**SMALL, "checkpoint": None}
    )
    job = await wait_for_job(alice)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for path in ("/sdapi/v1/sd-models", "/sdapi/v1/options", "/healthz"):
        status, _body = await asgi_response(await asgi_request("GET", path, bob_auth), timeout=5)
        assert status == 200, path
    assert loop.time() - started < 5
    await stop(alice, job)
    status, body = await asgi_response(waiting)
    assert status == 200 and body["images"] == []
    await waiting.wait(5)


async def test_a_price_is_held_while_waiting_and_released_by_a_stop(alice, catalogue, broker):
    before = (await sync_to_async(ledger.account_for)(alice)).balance
    call = asyncio.create_task(post(await client_of(alice), "txt2img", {**SMALL, "n_iter": 2}))
    job = await wait_for_job(alice)
    held = (await sync_to_async(ledger.account_for)(alice)).balance
    assert held == before - job.price and job.price > Decimal(0)
    await stop(alice, job)
    await call
    assert (await sync_to_async(ledger.account_for)(alice)).balance == before


async def test_a_hang_up_during_submission_still_dispatches_the_job(
    alice, catalogue, broker, redis_client, monkeypatch
):
    """The after-commit hooks make nested async calls (the queue position goes out over the
    channel layer): a client hanging up right then must not skip the dispatch that follows."""
    from generation.job_messages import MESSAGE_ID_KEY
    from generation.scheduling import dispatcher

    in_hook = threading.Event()
    publish = dispatcher.publish_positions

    def slow_channel_layer(job_ids: list[str]) -> None:
        in_hook.set()
        async_to_sync(asyncio.sleep)(0.5)
        publish(job_ids)

    monkeypatch.setattr(dispatcher, "publish_positions", slow_channel_layer)
    beat(redis_client, "gpu-1")  # an idle worker: the pass after commit hands the job to it
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 4}
    call = asyncio.create_task(post(await client_of(alice), "txt2img", body))
    assert await asyncio.get_running_loop().run_in_executor(None, in_hook.wait, 10)
    call.cancel()  # the client is gone
    with pytest.raises(asyncio.CancelledError):
        await call
    job = await wait_for_job(alice)
    key = MESSAGE_ID_KEY.format(job_id=job.pk)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not await sync_to_async(get_redis().exists)(key):  # sent to the GPU queue
        assert loop.time() < deadline, "the job was never dispatched"
        await asyncio.sleep(0.05)
