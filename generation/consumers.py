"""/ws/jobs/: a signed-in user's own job events, live. Relays only; writes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer

from generation.events import EVENT_TYPES, JobEvent, user_group
from generation.lifecycle import queued_event
from generation.models import Job
from generation.queue import current_snapshot
from generation.scheduling.estimates import running_eta


def unfinished_job_events(user: Any) -> list[JobEvent]:
    """The state of `user`'s unfinished jobs from the database, oldest first, as events."""
    jobs = list(Job.objects.owned_by(user).unfinished().order_by("created_at"))
    if not jobs:
        return []
    snapshot = current_snapshot() if any(j.status == Job.Status.QUEUED for j in jobs) else None
    events: list[JobEvent] = []
    for job in jobs:
        if job.status == Job.Status.RUNNING:
            events.append(
                {
                    "type": "job.started",
                    "job_id": str(job.pk),
                    "steps": job.total_steps,
                    "steps_done": job.steps_done,
                    "eta": running_eta(job),
                }
            )
            continue
        info = snapshot.place(job) if snapshot else None
        events.append(
            queued_event(
                job,
                info.position if info else 0,
                info.eta if info else 0.0,
                info.source if info else "default",
            )
        )
    return events


Source = Callable[[], Awaitable[Any]]


async def dispatch_in_turn(
    sources: list[Source], dispatch: Callable[[dict[str, Any]], Awaitable[None]]
) -> None:
    """channels.utils.await_many_dispatch with one long-lived reader per source: messages are
    dispatched one at a time in the order they arrive, each source read again only after its
    message's dispatch, as there; without a new task and an asyncio.wait per message (a relayed
    event costs ~7 us here against ~15 there)."""
    turn = asyncio.Lock()

    async def read(source: Source) -> None:
        while True:
            message = await source()
            async with turn:
                await dispatch(message)

    readers = [asyncio.ensure_future(read(source)) for source in sources]
    try:
        await asyncio.gather(*readers)
    finally:  # a reader cancelled in a channel-layer receive unsubscribes: wait for that
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


class JobsConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """AsyncConsumer.__call__ (channels 4.3) with dispatch_in_turn for its loop."""
        layer = get_channel_layer(self.channel_layer_alias)
        if layer is None:
            raise RuntimeError("/ws/jobs/ relays channel-layer events: CHANNEL_LAYERS is empty")
        self.scope, self.channel_layer, self.base_send = scope, layer, send
        self.channel_name = await layer.new_channel()
        with contextlib.suppress(StopConsumer):
            await dispatch_in_turn(
                [receive, functools.partial(layer.receive, self.channel_name)], self.dispatch
            )

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.group = user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        # Messages on the channel layer can be lost: start from the database's truth.
        for event in await database_sync_to_async(unfinished_job_events)(user):
            await self.send_json(dict(event))

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients only listen; anything they send is ignored."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Relay job events from the channel layer; the rest is Channels' own routing."""
        if message.get("type") in EVENT_TYPES:
            # Straight out: Channels' dispatch first closes stale database connections in a
            # worker thread, a thread hop per message that was half of daphne's CPU per
            # relayed event (bench_idle_and_waiting), and a relay reads no database.
            # The pub/sub layer keeps the JSON an event was published as: the same text
            # send_json would encode again (gpu_worker.pubsub_layer.RelayedMessage).
            text = getattr(message, "text", None)
            await (self.send(text_data=text) if text is not None else self.send_json(message))
            return
        await super().dispatch(message)
