"""Re-sending a stuck job by hand (the admin's "re-dispatch").

A queued job is taken back from the worker it was handed to (if any) and offered to the next
scheduling pass (`generation.scheduling.dispatcher.dispatch_job`; an older message still in Redis
then loses on its attempt number). A running one is never touched here: the sweeper takes back the
jobs of dead workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from django.utils.translation import gettext as _

from generation.broker import get_redis
from generation.fleet import is_present
from generation.models import Job
from generation.scheduling.dispatcher import dispatch_job


@dataclass(frozen=True)
class Redispatch:
    sent: bool
    message: str


def redispatch_stuck_job(job: Job) -> Redispatch:
    if job.status == Job.Status.QUEUED:
        if dispatch_job(job):
            return Redispatch(
                True, _("back in the queue for the next free worker that has its model.")
            )
        return Redispatch(False, _("not sent again: it started or finished meanwhile."))
    if job.status == Job.Status.RUNNING:
        try:
            alive = is_present(get_redis(), job.worker_id)
        except (redis.RedisError, OSError):
            return Redispatch(False, _("Redis is unreachable: cannot tell if its worker lives."))
        if alive:
            return Redispatch(
                False,
                _("running on %(worker)s, which is alive: it is not stuck.")
                % {"worker": job.worker_id},
            )
        return Redispatch(
            False,
            _(
                "running, but its worker %(worker)s is gone: the sweeper puts it back in the "
                "queue once that worker is declared dead (cancel it to end it now)."
            )
            % {"worker": job.worker_id or "?"},
        )
    return Redispatch(
        False, _("already finished (%(status)s).") % {"status": job.get_status_display()}
    )
