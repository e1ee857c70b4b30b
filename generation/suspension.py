"""Suspending a member: their account is switched off (`accounts.suspension`) and their queue
empties, each unfinished job cancelled through the owner's own service so its credit hold is
released. Used by the member admin and the gallery's moderation alike."""

from __future__ import annotations

import logging
from typing import Any

from accounts.suspension import deactivate_user
from generation.models import Job
from generation.submission import SubmissionError, cancel_job

logger = logging.getLogger(__name__)


def suspend_user(actor: Any, user: Any, reason: str) -> int:
    """Deactivate `user` and cancel their unfinished jobs (releasing credit holds).

    Returns how many jobs were cancelled or asked to stop.
    """
    deactivate_user(actor, user, reason)
    cancelled = 0
    # After the commit: no new job can start (the user is inactive), so this empties the queue.
    for job in Job.objects.owned_by(user).unfinished():
        try:
            cancel_job(actor, job)
        except SubmissionError:
            # It finished meanwhile; its own terminal state settled the credits.
            logger.info("job %s of suspended user %s finished before cancel", job.pk, user.pk)
            continue
        cancelled += 1
    return cancelled
