"""The dispatcher keeps the speed history between its turns and reads only what finished since
(`estimates.KeptHistory`); the queue's ETAs it gives are those of a fresh read, also when a
job's finish is recorded after a later one's."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from generation.models import Job
from generation.queue import queue_snapshot
from generation.scheduling.estimates import KeptHistory, SpeedCache
from generation.submission import submit_job
from tests.generation.conftest import SMALL

pytestmark = pytest.mark.django_db


def finished(user, seconds: float, *, ago: float = 30.0) -> Job:
    """A model-a job that sampled for `seconds` and finished `ago` seconds ago."""
    job = submit_job(user, SMALL)
    end = timezone.now() - timedelta(seconds=ago)
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.SUCCEEDED,
        started_at=end - timedelta(seconds=seconds),
        finished_at=end,
        timings={"sampling_s": seconds, "total_s": seconds + 1},
    )
    return job


def eta(job: Job, history: KeptHistory | None = None) -> float:
    speeds = SpeedCache(history.rows) if history is not None else None
    return queue_snapshot(workers=1, speeds=speeds).infos[str(job.pk)].eta


def test_the_eta_follows_jobs_finished_since_the_dispatchers_last_turn(
    alice, bob, catalogue, redis_client
):
    history = KeptHistory()
    finished(bob, 8.0, ago=60)
    waiting = submit_job(alice, SMALL)
    assert eta(waiting, history) == pytest.approx(9.0, abs=0.2)  # 8 s sampling + 1 s
    finished(bob, 80.0, ago=20)
    finished(bob, 80.0, ago=10)
    assert eta(waiting, history) == eta(waiting) == pytest.approx(81.0, abs=0.5)  # the median


def test_a_finish_recorded_after_a_later_one_still_counts(alice, bob, catalogue, redis_client):
    history = KeptHistory()
    finished(bob, 8.0, ago=5)
    waiting = submit_job(alice, SMALL)
    eta(waiting, history)
    # stamped before the newest the dispatcher holds, committed after its read
    late = finished(bob, 80.0, ago=8)
    finished(bob, 80.0, ago=7)
    assert late.pk in {row["pk"] for row in history.rows()}
    assert eta(waiting, history) == eta(waiting) == pytest.approx(81.0, abs=0.5)
