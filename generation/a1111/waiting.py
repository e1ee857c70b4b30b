"""Submit a job through the one submission service and wait for it without tying anything up.

The wait polls the job row with short, growing sleeps in the event loop: no transaction stays
open, and no database connection is kept between polls (a hundred waiting clients must not take
a hundred Postgres connections). If the client goes away, Django cancels the waiting coroutine
and only the coroutine: the job was committed and dispatched already, so it runs to the end, is
charged as usual and appears in the user's history.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.db import connection
from django.utils.translation import gettext as _

from generation.a1111.errors import A1111Error
from generation.a1111.responses import generation_response
from generation.a1111.threads import in_pool
from generation.a1111.translation import Translated
from generation.models import Job
from generation.submission import SubmissionError, submit_job

FIRST_POLL_SECONDS = 0.1
MAX_POLL_SECONDS = 0.5
WAIT_LIMIT_SECONDS = 3600.0


async def submit(user: Any, request: Translated) -> Job:
    # Shielded: a hang-up must not cancel a submission half-way. Its after-commit hooks (queue
    # position to the browser, then dispatch) make nested async calls that a cancellation would
    # interrupt, leaving a committed job undispatched until the sweeper finds it.
    call = in_pool(submit_job)(user, request.params, idempotency_key=request.task_id)
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


async def wait_until_finished(job_id: Any, limit: float = WAIT_LIMIT_SECONDS) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    delay = FIRST_POLL_SECONDS
    while True:
        status = await in_pool(_status)(job_id)
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
        await asyncio.sleep(delay)
        delay = min(delay * 1.25, MAX_POLL_SECONDS)


async def generate(user: Any, request: Translated) -> dict[str, Any]:
    """Submit, wait, answer with the images (a cancelled job answers with what it kept)."""
    job = await submit(user, request)
    status = await wait_until_finished(job.pk)
    job = await Job.objects.select_related("checkpoint").aget(pk=job.pk)
    if status == Job.Status.FAILED:
        raise A1111Error(502, _("the job failed: %s") % (job.error or _("unknown error")))
    return await in_pool(generation_response)(job, request)
