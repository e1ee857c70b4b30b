"""Submit a job through the one submission service and wait for it without tying anything up.

The wait is pushed, not polled: the coroutine listens on the owner's channel-layer group for
the job's terminal event (what the websocket relays; the channel layer serves every waiting call
of a process over one Redis connection) and reads the job row only at the start and, since
channel messages can be lost, every CHECK_SECONDS. No transaction stays open and no database
connection is kept while waiting (a hundred waiting clients must not take a hundred Postgres
connections). If the client goes away, Django cancels the waiting coroutine
and only the coroutine: the job was committed and dispatched already, so it runs to the end, is
charged as usual and appears in the user's history.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.utils.translation import gettext as _

from generation.a1111.errors import A1111Error
from generation.a1111.responses import generation_response
from generation.a1111.translation import Translated
from generation.events import user_group
from generation.models import Job
from generation.submission import SubmissionError, submit_job

logger = logging.getLogger(__name__)

CHECK_SECONDS = 5.0  # the row is read this often too, in case the finish event was lost
WAIT_LIMIT_SECONDS = 3600.0
FINISH_EVENTS = {"job.succeeded", "job.failed", "job.cancelled"}


async def submit(user: Any, request: Translated) -> Job:
    # Shielded: a hang-up must not cancel a submission half-way. Its after-commit hooks (queue
    # position to the browser, then dispatch) make nested async calls that a cancellation would
    # interrupt, leaving a committed job undispatched until the sweeper finds it.
    call = sync_to_async(submit_job)(
        user, request.params, idempotency_key=request.task_id, remember=False
    )
    try:
        return await asyncio.shield(call)
    except SubmissionError as exc:
        raise A1111Error.from_submission(exc) from None


def _status(job_id: Any) -> str | None:
    try:
        return Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
    finally:
        if not connection.in_atomic_block:
            connection.close()


async def _next_finish(layer: Any, channel: str, job_id: str) -> None:
    """Until the job's terminal event arrives on `channel`."""
    while True:
        message = await layer.receive(channel)
        if message.get("job_id") == job_id and message.get("type") in FINISH_EVENTS:
            return


def _listen(layer: Any, channel: str, job_id: str) -> asyncio.Future[None]:
    return asyncio.ensure_future(_next_finish(layer, channel, job_id))


async def wait_until_finished(job_id: Any, owner_id: Any, limit: float = WAIT_LIMIT_SECONDS) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    layer = get_channel_layer()
    group = user_group(owner_id)
    channel = await layer.new_channel() if layer is not None else ""
    listener: asyncio.Future[None] | None = None
    if layer is not None:
        await layer.group_add(group, channel)  # before the first read: no finish slips between
        # One receive for the whole wait, never cancelled by the row checks: a cancelled
        # receive may unsubscribe (the pub/sub layer), and an event sent meanwhile is lost.
        listener = _listen(layer, channel, str(job_id))
    try:
        while True:
            status = await sync_to_async(_status)(job_id)
            if status is None:  # deleted meanwhile (the account went away)
                raise A1111Error(404, _("job %(id)s no longer exists") % {"id": job_id})
            if status in Job.TERMINAL:
                return status
            if loop.time() >= deadline:
                raise A1111Error(
                    504,
                    _("job %(id)s is still unfinished; it goes on and will be in your history")
                    % {"id": job_id},
                )
            wait = min(CHECK_SECONDS, max(0.0, deadline - loop.time()))
            if listener is not None and listener.done():
                if listener.cancelled() or listener.exception() is not None:
                    logger.warning("job %s: the channel layer failed, reading the row only", job_id)
                    listener = None
                else:  # an event came, yet the row was not final: listen for the next one
                    listener = _listen(layer, channel, str(job_id))
            if listener is None:
                await asyncio.sleep(wait)
            else:
                await asyncio.wait({listener}, timeout=wait)
    finally:
        if listener is not None:
            listener.cancel()
        if layer is not None:
            await asyncio.shield(layer.group_discard(group, channel))


async def generate(user: Any, request: Translated) -> dict[str, Any]:
    """Submit, wait, answer with the images (a cancelled job answers with what it kept)."""
    job = await submit(user, request)
    status = await wait_until_finished(job.pk, job.owner_id)
    job = await Job.objects.select_related("checkpoint").aget(pk=job.pk)
    if status == Job.Status.FAILED:
        raise A1111Error(502, _("the job failed: %s") % (job.error or _("unknown error")))
    return await sync_to_async(generation_response)(job, request)
