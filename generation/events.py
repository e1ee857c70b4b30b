"""Websocket events of /ws/jobs/ (one TypedDict each) and how they are published.

Every event goes to the owner's group only, and only after the transaction that caused it
commits, so a browser never hears of a row it cannot read yet. Channel-layer delivery can drop
messages: the consumer re-sends the state of unfinished jobs from the database on each connect.
The GPU worker publishes `job.progress` (gpu_worker.protocol.ProgressEvent) to the same group.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Union

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

if TYPE_CHECKING:
    from generation.models import Job

logger = logging.getLogger(__name__)


def user_group(user_id: int | str) -> str:
    """The channel-layer group of one user's job events (also GenerationRequest.events_group)."""
    return f"jobs.user.{user_id}"


EtaSource = Literal["history", "default"]  # measured speed, or the default guess


class ImagePayload(TypedDict):
    id: str
    url: str
    thumbnail_url: str
    seed: int
    infotext: str
    width: int
    height: int


class JobQueuedEvent(TypedDict):
    type: Literal["job.queued"]
    job_id: str
    position: int  # 1 = next to start
    eta: float  # seconds until the job should be finished
    eta_source: EtaSource


class JobStartedEvent(TypedDict):
    type: Literal["job.started"]
    job_id: str
    steps: int  # total sampling steps of the job
    steps_done: int
    eta: float


class JobProgressEvent(TypedDict):
    type: Literal["job.progress"]
    job_id: str
    step: int
    steps: int
    eta: float
    preview: str | None  # data: URI


class JobSucceededEvent(TypedDict):
    type: Literal["job.succeeded"]
    job_id: str
    images: list[ImagePayload]


class JobFailedEvent(TypedDict):
    type: Literal["job.failed"]
    job_id: str
    error: str


class JobCancelledEvent(TypedDict):
    type: Literal["job.cancelled"]
    job_id: str


JobEvent = Union[  # noqa: UP007 - a runtime alias
    JobQueuedEvent,
    JobStartedEvent,
    JobProgressEvent,
    JobSucceededEvent,
    JobFailedEvent,
    JobCancelledEvent,
]
EVENT_TYPES = (
    "job.queued",
    "job.started",
    "job.progress",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
)


# A process with no ASGI event loop (the platform worker) installs a publisher: one PUBLISH from
# the calling thread on the "pubsub" layer (gpu_worker.pubsub_sender), else one loop that keeps
# its Redis connections (gpu_worker.progress.ChannelPublisher); otherwise each event would pay
# async_to_sync's fresh loop and a new connection.
_publisher: Any = None


def use_background_publisher(publisher: Any) -> None:
    """Send this process's events through `publisher` (None: back to async_to_sync)."""
    global _publisher
    _publisher = publisher


def send_to_user(user_id: int | str, event: JobEvent) -> None:
    """Send now (outside any transaction). Delivery is best effort: a dead layer only logs."""
    try:
        if _publisher is not None:
            _publisher.publish(user_group(user_id), dict(event))
            return
        layer = get_channel_layer()
        if layer is None:
            return
        async_to_sync(layer.group_send)(user_group(user_id), dict(event))
    except Exception:  # a lost event is repaired by the consumer's snapshot on reconnect
        logger.warning(
            "could not publish %s for job %s", event["type"], event["job_id"], exc_info=True
        )


def send_to_users(events: list[tuple[int | str, JobEvent]]) -> None:
    """`send_to_user` for each (user id, event), in one round trip where the publisher can
    (the platform worker's dispatcher telling a queue's owners their new places)."""
    publish_many = getattr(_publisher, "publish_many", None)
    if publish_many is None or len(events) < 2:
        for user_id, event in events:
            send_to_user(user_id, event)
        return
    try:
        publish_many([(user_group(user_id), dict(event)) for user_id, event in events])
    except Exception:  # as send_to_user: repaired by the consumer's snapshot on reconnect
        logger.warning("could not publish %d events", len(events), exc_info=True)


def publish_job_event(job: Job, event: JobEvent) -> None:
    """Send `event` to the job owner's group once the current transaction commits."""
    owner_id = job.owner_id
    transaction.on_commit(lambda: send_to_user(owner_id, event))
