"""Queue positions and ETAs follow the scheduler's order: fair share by recent GPU use and tier
weight, jobs already handed to a worker first; the policy's inputs come from the database in a
constant number of queries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import MembershipTier
from accounts.tiers import set_tier
from generation.models import Job
from generation.queue import queue_snapshot
from generation.scheduling.estimates import DEFAULT_SPEED
from generation.scheduling.inputs import recent_usage, tier_weights, waiting_jobs
from generation.submission import submit_job
from tests.conftest import make_user
from tests.generation.conftest import SMALL, fund

pytestmark = pytest.mark.django_db


def on_tier(user, slug: str):
    set_tier(user, MembershipTier.objects.get(slug=slug))
    return user


def positions(*jobs: Job) -> list[int]:
    snapshot = queue_snapshot(workers=1)
    return [snapshot.infos[str(job.pk)].position for job in jobs]


def test_bobs_one_job_is_placed_between_alices_not_behind_them(alice, bob, catalogue):
    on_tier(alice, "pro")
    mine = [submit_job(alice, SMALL) for _ in range(3)]
    his = submit_job(bob, SMALL)
    assert positions(*mine, his) == [1, 3, 4, 2]


def test_the_etas_add_up_in_that_order(alice, bob, catalogue):
    on_tier(alice, "pro")
    first, second = submit_job(alice, SMALL), submit_job(alice, SMALL)
    his = submit_job(bob, SMALL)
    snapshot = queue_snapshot(workers=1)
    one = DEFAULT_SPEED.duration({**SMALL, "mode": "txt2img", "steps": 4, "batch_size": 1})
    assert snapshot.infos[str(first.pk)].eta == pytest.approx(one, abs=0.2)
    assert snapshot.infos[str(his.pk)].eta == pytest.approx(2 * one, abs=0.2)
    assert snapshot.infos[str(second.pk)].eta == pytest.approx(3 * one, abs=0.2)


def test_a_member_tier_weight_moves_bobs_jobs_up(alice, bob, catalogue):
    on_tier(alice, "member")  # weight 3, room for 4 jobs
    on_tier(bob, "pro")  # weight 6
    alices = [submit_job(alice, SMALL) for _ in range(2)]
    bobs = [submit_job(bob, SMALL) for _ in range(2)]
    # Equal jobs: bob's normalised use grows half as fast, so he gets two turns to her one.
    assert positions(*alices, *bobs) == [1, 4, 2, 3]


def test_recent_gpu_use_puts_a_user_behind_someone_who_used_none(alice, bob, catalogue):
    earlier = submit_job(bob, SMALL)
    start = timezone.now() - timedelta(minutes=2)
    Job.objects.filter(pk=earlier.pk).update(
        status="succeeded", started_at=start, finished_at=start + timedelta(seconds=60)
    )
    his = submit_job(bob, SMALL)
    hers = submit_job(alice, SMALL)
    assert positions(hers, his) == [1, 2]
    assert recent_usage()[str(bob.pk)] == pytest.approx(60.0, abs=0.5)


def test_a_job_handed_to_a_worker_comes_before_the_waiting_ones(alice, bob, catalogue):
    hers = submit_job(alice, SMALL)
    his = submit_job(bob, SMALL)
    assert his.mark_assigned("gpu-1")
    assert positions(hers, his) == [2, 1]
    # It counts against bob at its estimated cost from the moment it is handed out.
    assert recent_usage()[str(bob.pk)] > 0
    assert [j.job_id for j in waiting_jobs().jobs] == [str(hers.pk)]


def test_an_expired_tier_weighs_like_the_default(alice, bob, catalogue):
    pro = MembershipTier.objects.get(slug="pro")
    set_tier(alice, pro)
    set_tier(bob, pro, until=timezone.now() - timedelta(minutes=1))
    carol = make_user("nobody")  # no credit account yet
    weights = tier_weights([alice.pk, bob.pk, carol.pk])
    assert weights == {alice.pk: 6.0, bob.pk: 1.0, carol.pk: 1.0}


def test_waiting_jobs_weigh_their_owners_by_the_same_rule(alice, bob, catalogue):
    """The pass reads the owners' tiers with the waiting jobs: same weights as tier_weights."""
    pro = MembershipTier.objects.get(slug="pro")
    set_tier(alice, pro)
    set_tier(bob, pro, until=timezone.now() - timedelta(minutes=1))
    nobody = make_user("nobody")  # no credit account yet
    first = submit_job(alice, SMALL)
    submit_job(bob, SMALL)
    Job.objects.create(owner=nobody, params=first.params, checkpoint=first.checkpoint)
    weights = {job.user_id: job.weight for job in waiting_jobs().jobs}
    assert weights == {str(alice.pk): 6.0, str(bob.pk): 1.0, str(nobody.pk): 1.0}


def snapshot_queries() -> int:
    with CaptureQueriesContext(connection) as queries:
        queue_snapshot(workers=2)
    return len(queries)


def test_a_snapshot_costs_the_same_queries_for_a_long_queue_as_a_short_one(catalogue):
    users = [on_tier(fund(make_user(f"user{i}")), "pro") for i in range(12)]
    for user in users[:2]:
        submit_job(user, SMALL)
    short = snapshot_queries()
    for user in users:
        for _ in range(4):
            submit_job(user, {**SMALL, "width": 64 + 8 * (user.pk % 3)})
    assert len(queue_snapshot(workers=2).infos) == 50
    assert snapshot_queries() == short


def test_jobs_newer_than_the_snapshot_are_placed_behind_its_jobs_in_their_order(
    alice, bob, catalogue
):
    """A job the snapshot did not simulate counts only the waiting jobs before it that the
    snapshot left out (its own window is already behind its last place)."""
    on_tier(fund(alice), "pro")
    for _ in range(3):
        submit_job(alice, SMALL)
    snapshot = queue_snapshot(workers=1)
    fourth, fifth = submit_job(bob, SMALL), submit_job(bob, SMALL)
    placed = [snapshot.place(job) for job in (fourth, fifth)]
    assert [info.position for info in placed if info] == [4, 5]
