"""A job's place behind the scheduler's window comes from the waiting set in Redis (a rank, the
same cost at any queue length) and equals the count of the waiting jobs ahead of it, through
submissions, cancels, claims and returns; when Redis loses the set, or a path misses a job,
the place is still right and the dispatcher's next snapshot repairs the set."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import MembershipTier
from accounts.tiers import set_tier
from generation import queue, waiting_set
from generation.models import Job
from generation.queue import QueueSnapshot, queue_snapshot, store_snapshot
from generation.scheduling import dispatcher, waiting_scrub
from generation.scheduling.dispatcher import schedule_pending
from generation.submission import cancel_job, submit_job
from tests.conftest import make_user
from tests.generation.conftest import SMALL, beat, fund

pytestmark = pytest.mark.django_db

WINDOW = 2  # the scheduler's window, made small so that most jobs are behind it


@pytest.fixture(autouse=True)
def small_window(monkeypatch):
    monkeypatch.setattr(queue, "MAX_SIMULATED", WINDOW)
    monkeypatch.setattr(dispatcher, "SCHEDULING_WINDOW", WINDOW)


@pytest.fixture
def members(alice, bob, catalogue, redis_client):
    carol = make_user("dora")
    for user in (alice, bob, carol):
        set_tier(fund(user), MembershipTier.objects.get(slug="pro"))
    return [alice, bob, carol]


def submit(user, django_capture_on_commit_callbacks) -> Job:
    with django_capture_on_commit_callbacks(execute=True):  # the wake-up adds it to the set
        return submit_job(user, SMALL)


def dispatcher_snapshot() -> QueueSnapshot:
    """What the dispatcher does after a pass: a snapshot, stored (which repairs the set)."""
    snapshot = queue_snapshot(workers=1)
    store_snapshot(snapshot)
    return snapshot


def counted_place(snapshot: QueueSnapshot, job: Job) -> int:
    """The place by counting the waiting jobs ahead of `job` that the snapshot did not place."""
    assert snapshot.window_end is not None
    ahead = (
        Job.objects.waiting()
        .filter(created_at__lte=job.created_at)
        .exclude(pk=job.pk)
        .exclude(pk__in=list(snapshot.infos))
        .count()
    )
    return snapshot.window_end[0] + ahead + 1


def behind_window(snapshot: QueueSnapshot) -> list[Job]:
    jobs = Job.objects.waiting().order_by("created_at", "pk")
    return [job for job in jobs if str(job.pk) not in snapshot.infos]


def place_of(snapshot: QueueSnapshot, job: Job) -> int:
    info = snapshot.beyond(job)
    assert info is not None
    return info.position


def places_from_the_set(snapshot: QueueSnapshot, django_assert_num_queries) -> list[int]:
    """The places of the jobs behind the window, asked without a count in the database."""
    jobs = behind_window(snapshot)
    with django_assert_num_queries(0):
        return [place_of(snapshot, job) for job in jobs]


def test_places_behind_the_window_match_the_count_through_the_queues_changes(
    members, redis_client, django_capture_on_commit_callbacks, django_assert_num_queries
):
    jobs = [submit(user, django_capture_on_commit_callbacks) for _ in range(3) for user in members]
    snapshot = dispatcher_snapshot()  # the set is complete from here
    expected = [counted_place(snapshot, job) for job in behind_window(snapshot)]
    assert places_from_the_set(snapshot, django_assert_num_queries) == expected
    assert expected == list(range(WINDOW + 1, len(jobs) + 1))

    # bob cancels a job behind the window, a worker claims two, one comes back, alice submits
    with django_capture_on_commit_callbacks(execute=True):
        cancel_job(members[1], jobs[4])
    beat(redis_client, "gpu-1", hot=["model-a"], batch_max_images=0)  # no batch companions
    with django_capture_on_commit_callbacks(execute=True):
        report = schedule_pending(client=redis_client)
    assert len(report.assigned) == 2
    redis_client.delete("atelier:worker:gpu-1", "atelier:workers")  # gone: no pass claims more
    returned = Job.objects.get(pk=report.assigned[0].job_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert returned.return_to_queue()
    submit(members[0], django_capture_on_commit_callbacks)

    snapshot = queue_snapshot(workers=1)  # a reader's, before the dispatcher's next repair
    expected = [counted_place(snapshot, job) for job in behind_window(snapshot)]
    assert places_from_the_set(snapshot, django_assert_num_queries) == expected
    assert len(expected) == len(jobs) - 1 - 2 + 1 + 1 - WINDOW


def test_the_place_stays_right_when_redis_loses_the_set_and_the_next_snapshot_rebuilds_it(
    members, redis_client, django_capture_on_commit_callbacks, django_assert_num_queries
):
    for _ in range(2):
        for user in members:
            submit(user, django_capture_on_commit_callbacks)
    dispatcher_snapshot()
    redis_client.flushdb()  # Redis restarted empty
    snapshot = queue_snapshot(workers=1)
    expected = [counted_place(snapshot, job) for job in behind_window(snapshot)]
    assert [place_of(snapshot, job) for job in behind_window(snapshot)] == expected

    newest = submit(members[2], django_capture_on_commit_callbacks)  # in an incomplete set
    snapshot = dispatcher_snapshot()  # rebuilds it
    assert redis_client.zscore(waiting_set.KEY, waiting_set.COMPLETE) is not None
    expected = [counted_place(snapshot, job) for job in behind_window(snapshot)]
    assert places_from_the_set(snapshot, django_assert_num_queries) == expected
    assert expected[-1] == Job.objects.waiting().count() and behind_window(snapshot)[-1] == newest


def test_a_job_a_path_missed_is_placed_by_counting_and_goes_back_into_the_set(
    members, redis_client, django_capture_on_commit_callbacks, django_assert_num_queries
):
    for user in members * 2:
        submit(user, django_capture_on_commit_callbacks)
    snapshot = dispatcher_snapshot()
    last = behind_window(snapshot)[-1]
    redis_client.zrem(waiting_set.KEY, str(last.pk))  # its wake-up never reached Redis
    assert place_of(snapshot, last) == counted_place(snapshot, last)
    assert places_from_the_set(snapshot, django_assert_num_queries)[-1] == Job.objects.count()


def test_a_pass_removes_stale_members_ahead_of_the_window_and_adds_what_it_lacks(
    members, redis_client, django_capture_on_commit_callbacks, django_assert_num_queries
):
    jobs = [submit(user, django_capture_on_commit_callbacks) for user in members * 2]
    dispatcher_snapshot()
    # Removals that never reached Redis: the oldest job cancelled, the next one claimed ...
    Job.objects.filter(pk=jobs[0].pk).update(status=Job.Status.CANCELLED)
    Job.objects.filter(pk=jobs[1].pk).update(worker_id="gpu-1")
    # ... and an addition: a window job missing from the set.
    redis_client.zrem(waiting_set.KEY, str(jobs[2].pk))
    snapshot = dispatcher_snapshot()
    in_set = set(redis_client.zrange(waiting_set.KEY, 0, -1)) - {waiting_set.COMPLETE.encode()}
    assert in_set == {str(job.pk).encode() for job in Job.objects.waiting()}
    expected = [counted_place(snapshot, job) for job in behind_window(snapshot)]
    assert places_from_the_set(snapshot, django_assert_num_queries) == expected


def test_the_set_orders_jobs_submitted_in_the_same_microsecond_as_the_database_does(
    members, redis_client, django_capture_on_commit_callbacks
):
    jobs = [submit(user, django_capture_on_commit_callbacks) for user in members * 2]
    same = timezone.now() - timedelta(minutes=1)
    Job.objects.filter(pk__in=[job.pk for job in jobs[2:]]).update(created_at=same)
    queue.rebuild_waiting_set()
    in_database = [
        str(pk)
        for pk in Job.objects.waiting().order_by("created_at", "pk").values_list("pk", flat=True)
    ]
    in_set = [m.decode() for m in redis_client.zrange(waiting_set.KEY, 1, -1)]
    assert in_set == in_database


def test_the_dispatchers_sweep_sets_right_what_paths_missed_behind_the_window(
    members,
    redis_client,
    monkeypatch,
    django_capture_on_commit_callbacks,
    django_assert_num_queries,
):
    """A cancel whose removal never reached Redis and a submission whose addition never did,
    both behind the window: the sweep, a slice at a time, sets the set right."""
    monkeypatch.setattr(waiting_scrub, "SLICE", 3)
    monkeypatch.setattr(waiting_scrub, "COMMIT_GRACE_S", 0.0)
    jobs = [submit(user, django_capture_on_commit_callbacks) for user in members * 3]
    dispatcher_snapshot()
    Job.objects.filter(pk=jobs[4].pk).update(status=Job.Status.CANCELLED)
    redis_client.zrem(waiting_set.KEY, str(jobs[7].pk))
    sweep = waiting_scrub.WaitingScrub()
    fixed = []
    for _ in range(4):  # 9 waiting jobs, 3 a slice, then the end
        sweep.last = 0.0  # its second has passed
        fixed.append(sweep.turn())
    assert fixed == [(0, 0), (0, 1), (1, 0), (0, 0)]
    in_set = set(redis_client.zrange(waiting_set.KEY, 1, -1))
    assert in_set == {str(job.pk).encode() for job in Job.objects.waiting()}
    snapshot = queue_snapshot(workers=1)
    expected = [counted_place(snapshot, job) for job in behind_window(snapshot)]
    assert places_from_the_set(snapshot, django_assert_num_queries) == expected
