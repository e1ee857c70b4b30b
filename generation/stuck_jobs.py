"""Re-sending a stuck job by hand (the admin's "re-dispatch").

One small function, apart from dispatch and the sweeper, so the scheduler's rewrite can rewire
it: a queued job is sent again as its next attempt (`dispatch_job`; an older message still in
Redis then loses on its attempt number), a running one is never touched here.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from django.utils.translation import gettext as _

from generation.broker import get_redis
from generation.dispatch import dispatch_job
from generation.models import Job
from gpu_worker.protocol import HEARTBEAT_KEY


@dataclass(frozen=True)
class Redispatch:
    sent: bool
    message: str


def redispatch_stuck_job(job: Job) -> Redispatch:
    if job.status == Job.Status.QUEUED:
        if dispatch_job(job):
            return Redispatch(True, _("sent again as attempt %(n)d.") % {"n": job.attempt})
        return Redispatch(
            False,
            _("not sent: it started meanwhile, another dispatcher sent it, or Redis is down."),
        )
    if job.status == Job.Status.RUNNING:
        try:
            alive = bool(job.worker_id) and bool(
                get_redis().exists(HEARTBEAT_KEY.format(worker_id=job.worker_id))
            )
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
                "running, but its worker %(worker)s is gone: the sweeper settles such a job on "
                "its own once its deadline passes (cancel it to end it now)."
            )
            % {"worker": job.worker_id or "?"},
        )
    return Redispatch(
        False, _("already finished (%(status)s).") % {"status": job.get_status_display()}
    )
