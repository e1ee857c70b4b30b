"""/ws/jobs/ over the real ASGI stack (session auth, origin check) and the Redis channel layer:
a user gets the state of their unfinished jobs on connect and only their own events."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from config.asgi import application
from generation.events import JobProgressEvent, send_to_user
from generation.submission import submit_job
from gpu_worker.channel_layer import CHANNEL_LAYER_BACKENDS, channel_layer_settings
from tests.generation.conftest import SMALL

pytestmark = pytest.mark.django_db(transaction=True)


def session_headers(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    return [(b"cookie", cookie.encode()), (b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]


async def connect(user=None, origin: bytes = b"http://127.0.0.1") -> WebsocketCommunicator:
    headers = (
        await database_sync_to_async(session_headers)(user)
        if user
        else [(b"origin", origin), (b"host", b"127.0.0.1")]
    )
    communicator = WebsocketCommunicator(application, "/ws/jobs/", headers=headers)
    return communicator


async def test_an_anonymous_visitor_is_refused(redis_client):
    communicator = await connect()
    connected, _code = await communicator.connect()
    assert not connected
    await communicator.disconnect()


async def test_another_origin_is_refused(alice, redis_client):
    headers = await database_sync_to_async(session_headers)(alice)
    headers = [(k, b"http://evil.example" if k == b"origin" else v) for k, v in headers]
    communicator = WebsocketCommunicator(application, "/ws/jobs/", headers=headers)
    connected, _code = await communicator.connect()
    assert not connected
    await communicator.disconnect()


async def test_on_connect_alice_gets_the_state_of_her_unfinished_jobs(
    alice, bob, catalogue, redis_client
):
    def jobs():
        queued = submit_job(alice, SMALL)
        running = submit_job(alice, SMALL)
        running.mark_assigned("gpu-1")
        running.mark_running("gpu-1", running.attempt)
        submit_job(bob, SMALL)
        return queued, running

    queued, running = await database_sync_to_async(jobs)()
    communicator = await connect(alice)
    assert (await communicator.connect())[0]
    try:
        first = await communicator.receive_json_from(timeout=3)
        second = await communicator.receive_json_from(timeout=3)
        assert first["type"] == "job.queued" and first["job_id"] == str(queued.pk)
        # Fair share: bob, with nothing running, starts before alice's second job.
        assert first["position"] == 2 and first["eta"] > 0
        assert second == {**second, "type": "job.started", "job_id": str(running.pk)}
        assert await communicator.receive_nothing(timeout=0.2)
    finally:
        await communicator.disconnect()


@pytest.fixture(params=list(CHANNEL_LAYER_BACKENDS))
def channel_layer_kind(request, settings, redis_url) -> str:
    """Each CHANNEL_LAYER choice in turn (Channels rebuilds its layer on the settings change)."""
    settings.CHANNEL_LAYERS = {"default": channel_layer_settings(redis_url, request.param)}
    return request.param


async def test_alice_receives_her_events_and_bob_does_not(
    alice, bob, catalogue, redis_client, channel_layer_kind
):
    alice_ws, bob_ws = await connect(alice), await connect(bob)
    assert (await alice_ws.connect())[0] and (await bob_ws.connect())[0]
    try:
        job = await database_sync_to_async(submit_job)(alice, SMALL)  # published on commit
        queued = await alice_ws.receive_json_from(timeout=3)
        assert queued["type"] == "job.queued" and queued["job_id"] == str(job.pk)
        progress: JobProgressEvent = {
            "type": "job.progress",
            "job_id": str(job.pk),
            "step": 2,
            "steps": 4,
            "eta": 1.0,
            "preview": None,
        }
        await database_sync_to_async(send_to_user)(alice.pk, progress)
        assert await alice_ws.receive_json_from(timeout=3) == progress
        assert await bob_ws.receive_nothing(timeout=0.3)
    finally:
        await alice_ws.disconnect()
        await bob_ws.disconnect()


@pytest.fixture
def platform_sender(redis_url):
    """The platform worker's publisher (one PUBLISH from the calling thread), installed as the
    process's background publisher for the test and taken out after it."""
    from generation.events import use_background_publisher
    from gpu_worker.pubsub_sender import pubsub_sender

    sender = pubsub_sender(redis_url, "pubsub")
    assert sender is not None
    yield sender
    use_background_publisher(None)
    sender.close()


async def test_the_platform_workers_sender_tells_alice_her_job_succeeded_and_not_bob(
    alice, bob, catalogue, platform_sender
):
    """The platform worker publishes from the recording thread (one PUBLISH, no event loop):
    alice's websocket hears her job's success, images included, once it is recorded."""
    from generation.events import use_background_publisher
    from generation.worker_events import handle_job_event
    from tests.generation.test_job_lifecycle import dispatched, succeeded

    alice_ws, bob_ws = await connect(alice), await connect(bob)
    assert (await alice_ws.connect())[0] and (await bob_ws.connect())[0]
    use_background_publisher(platform_sender)
    try:
        job = await database_sync_to_async(lambda: dispatched(submit_job(alice, SMALL)))()
        assert (await alice_ws.receive_json_from(timeout=3))["type"] == "job.queued"
        assert await database_sync_to_async(handle_job_event)(succeeded(job, count=2))
        event = await alice_ws.receive_json_from(timeout=3)
        assert (event["type"], event["job_id"]) == ("job.succeeded", str(job.pk))
        assert [image["seed"] for image in event["images"]] == [7, 8]
        assert await bob_ws.receive_nothing(timeout=0.3)
    finally:
        await alice_ws.disconnect()
        await bob_ws.disconnect()


async def test_through_the_sender_a_queues_owners_hear_their_own_places_in_one_go(
    alice, bob, catalogue, platform_sender
):
    """The dispatcher's new places for a queue's window leave in one pipelined round trip:
    each owner still hears only their own job's place."""
    from generation.events import use_background_publisher
    from generation.lifecycle import publish_snapshot_positions
    from generation.queue import queue_snapshot

    alice_job = await database_sync_to_async(submit_job)(alice, SMALL)
    bob_job = await database_sync_to_async(submit_job)(bob, SMALL)
    alice_ws, bob_ws = await connect(alice), await connect(bob)
    assert (await alice_ws.connect())[0] and (await bob_ws.connect())[0]
    try:
        for ws in (alice_ws, bob_ws):  # the state sent on connect
            assert (await ws.receive_json_from(timeout=3))["type"] == "job.queued"
        use_background_publisher(platform_sender)
        await database_sync_to_async(lambda: publish_snapshot_positions(queue_snapshot()))()
        heard = await alice_ws.receive_json_from(timeout=3)
        assert (heard["type"], heard["job_id"], heard["position"]) == (
            "job.queued",
            str(alice_job.pk),
            1,
        )
        heard = await bob_ws.receive_json_from(timeout=3)
        assert (heard["job_id"], heard["position"]) == (str(bob_job.pk), 2)
        assert await alice_ws.receive_nothing(timeout=0.3)
    finally:
        await alice_ws.disconnect()
        await bob_ws.disconnect()


async def test_alices_progress_arrives_in_the_order_it_was_sent_and_ends_on_disconnect(
    alice, catalogue, redis_client, channel_layer_kind
):
    alice_ws = await connect(alice)
    assert (await alice_ws.connect())[0]
    job = await database_sync_to_async(submit_job)(alice, SMALL)
    assert (await alice_ws.receive_json_from(timeout=3))["type"] == "job.queued"
    steps = list(range(1, 21))
    for step in steps:  # back to back, as a fast sampler's steps
        event: JobProgressEvent = {
            "type": "job.progress",
            "job_id": str(job.pk),
            "step": step,
            "steps": 20,
            "eta": 0.0,
            "preview": None,
        }
        await database_sync_to_async(send_to_user)(alice.pk, event)
    heard = [(await alice_ws.receive_json_from(timeout=3))["step"] for _ in steps]
    assert heard == steps
    await alice_ws.disconnect()  # fails unless the consumer ends within its second
