"""What the dispatcher's work costs the database, so that a job's hop from wake-up to its
worker's queue stays short: a pass reads a fixed number of queries (its message built from the
rows it loaded), whatever the queue; a job start with nobody queued makes no queue snapshot; and
with a dispatcher alive, the queue's new positions are its work, not the caller's."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from generation.events import user_group
from generation.job_messages import build_request
from generation.lifecycle import publish_queue_positions, start_job
from generation.models import Job
from generation.queue import queue_snapshot, store_snapshot, stored_snapshot
from generation.scheduling.dispatcher import LOCK_KEY, answer_wake, schedule_pending
from generation.scheduling.wakeups import ALIVE_KEY, POSITIONS, WAKE_KEY
from generation.submission import submit_job
from tests.conftest import make_user
from tests.generation.conftest import SMALL, beat, fund
from tests.generation.own_model_uploads import upload
from tests.model_file_builder import sd1_lora

pytestmark = pytest.mark.django_db


def requests_on(redis_client, worker_id: str) -> list[dict]:
    return [
        json.loads(raw)["kwargs"]["request"]
        for raw in redis_client.hvals(f"dramatiq:gpu.{worker_id}.msgs")
    ]


def test_handing_one_job_to_an_idle_worker_costs_a_fixed_handful_of_queries_message_included(
    alice,
    alice_api,
    catalogue,
    broker,
    redis_client,
    settings,
    tmp_path,
    django_assert_max_num_queries,
    django_capture_on_commit_callbacks,
):
    settings.MODEL_STORE_DIR = tmp_path / "model-store"
    upload(alice_api, sd1_lora(), "alice-lora")
    job = submit_job(alice, {**SMALL, "prompt": "ink <lora:alice-lora:0.7>"})  # no worker yet
    beat(redis_client, "gpu-1", hot=["model-a"])
    # workers' slots, waiting jobs (with tiers), stored models, speed history, the jobs to
    # hand out, the claim (on PostgreSQL one statement with the jobs' read): the message is
    # built from those rows, nothing read again
    queries = 5 if connection.vendor == "postgresql" else 6
    with (
        django_assert_max_num_queries(queries),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert len(schedule_pending().assigned) == 1
    [request] = requests_on(redis_client, "gpu-1")
    job.refresh_from_db()
    assert (request["job_id"], request["attempt"]) == (str(job.pk), job.attempt)
    assert job.attempt == 1 and request["checkpoint"] == "model-a"
    sent = [(m["kind"], m["name"], m["sha256"]) for m in request["models"]]
    assert sent == [(m["kind"], m["name"], m["sha256"]) for m in build_request(job)["models"]]
    assert [kind for kind, _name, _sha in sent] == ["lora"]


class CountingConnection(redis.Connection):
    """A Redis connection that counts what it sends: one send is one round trip (a pipeline's
    commands go in one)."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sends += 1
        return super().send_packed_command(command, check_health)


def test_a_pass_takes_its_lock_and_reads_the_fleet_in_one_redis_round_trip(
    alice, catalogue, broker, redis_url, redis_client, django_capture_on_commit_callbacks
):
    submit_job(alice, SMALL)
    beat(redis_client, "gpu-1", hot=["model-a"])
    counted = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(
            redis_url, connection_class=CountingConnection
        )
    )
    counted.ping()  # connected (its set-up commands not counted)
    CountingConnection.sends = 0
    with django_capture_on_commit_callbacks(execute=True):
        assert len(schedule_pending(client=counted).assigned) == 1
    # the lock with the fleet; after the round, the waiting set and the lock's release (the
    # job's message goes through the broker's own connection)
    assert CountingConnection.sends == 2
    assert not redis_client.exists(LOCK_KEY)  # released
    assert len(requests_on(redis_client, "gpu-1")) == 1


def test_a_pass_costs_the_same_queries_for_many_waiting_members_as_for_two(
    catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    members = [fund(make_user(f"member{i}")) for i in range(8)]
    beat(redis_client, "gpu-busy", hot=["model-a"])
    running, next_one = submit_job(members[0], SMALL), submit_job(members[0], SMALL)
    assert running.mark_assigned("gpu-busy") and running.mark_running("gpu-busy", 1)
    assert next_one.mark_assigned("gpu-busy")  # full: one running, one waiting there

    def pass_queries(users) -> int:
        for user in users:  # sizes of their own: no job joins another's batch
            submit_job(user, {**SMALL, "width": 64 + 8 * members.index(user)})
        beat(redis_client, "gpu-idle", hot=["model-a"])
        with (
            CaptureQueriesContext(connection) as queries,
            django_capture_on_commit_callbacks(execute=True),
        ):
            assert len(schedule_pending().assigned) == 2  # the idle worker's two slots
        redis_client.delete("atelier:worker:gpu-idle")
        Job.objects.filter(worker_id="gpu-idle").update(status=Job.Status.CANCELLED)
        return len(queries)

    few = pass_queries(members[1:3])
    many = pass_queries(members[3:])
    # several members waiting: their recent usage is read too; one claim per hand-out
    assert few == many <= 8, (few, many)


def test_a_wake_up_that_hands_out_a_job_reads_the_queue_once(
    alice, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    """The snapshot stored after the pass is made from the pass's own reads."""
    job = submit_job(alice, SMALL)  # no worker yet
    beat(redis_client, "gpu-1", hot=["model-a"])
    with (
        CaptureQueriesContext(connection) as queries,
        django_capture_on_commit_callbacks(execute=True),
    ):
        answer_wake({str(job.pk)})
    # the pass (as above), then the new job's row for its owner's place: nothing read again
    expected = 6 if connection.vendor == "postgresql" else 7
    assert len(queries) == expected, [q["sql"][:60] for q in queries.captured_queries]
    snapshot = stored_snapshot()
    assert snapshot is not None and snapshot.infos[str(job.pk)].position == 1
    assert requests_on(redis_client, "gpu-1")[0]["job_id"] == str(job.pk)


def test_a_job_start_with_nobody_queued_makes_no_queue_snapshot(
    alice, catalogue, django_assert_num_queries
):
    job = submit_job(alice, SMALL)
    assert job.mark_assigned("gpu-1") and job.mark_running("gpu-1", job.attempt)
    with django_assert_num_queries(1):  # is anything queued? no: nobody to tell
        publish_queue_positions()


def test_recording_a_job_start_reads_no_speed_history_beside_its_engine(
    alice, catalogue, django_capture_on_commit_callbacks
):
    """The started event's ETA comes from the speeds the dispatcher's stored snapshot holds;
    the claim is not read back."""
    job = submit_job(alice, SMALL)
    assert job.mark_assigned("gpu-1")
    store_snapshot(queue_snapshot())  # what the dispatcher keeps in Redis
    with (
        CaptureQueriesContext(connection) as queries,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert start_job(job, "gpu-1", job.attempt)
    statements = [q["sql"].split()[0] for q in queries.captured_queries]
    # the claim, then "is anything queued?" (the test's transaction adds savepoints)
    assert [s for s in statements if "SAVEPOINT" not in s and s != "RELEASE"] == [
        "UPDATE",
        "SELECT",
    ]
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.worker_id == "gpu-1"


def test_with_a_dispatcher_alive_a_job_start_asks_it_for_the_queues_positions(
    alice, catalogue, redis_client, django_assert_num_queries
):
    submit_job(alice, SMALL)
    redis_client.set(ALIVE_KEY, "1", ex=30)  # a dispatcher serves (not this test's thread)
    with django_assert_num_queries(1):
        publish_queue_positions()
    assert redis_client.lrange(WAKE_KEY, 0, -1) == [POSITIONS.encode()]


async def event_of(layer, inbox: str, job: Job) -> dict:
    """The first event about `job` (Redis pub/sub spans database numbers: a test run beside
    this one may publish to a user of the same id)."""
    async with asyncio.timeout(5):
        while (event := await layer.receive(inbox))["job_id"] != str(job.pk):
            pass
    return event


@pytest.mark.django_db(transaction=True)  # the positions go out from another thread
@pytest.mark.parametrize("dispatcher_alive", [True, False])
def test_after_the_queue_moved_every_queued_owner_hears_their_place(
    alice, bob, catalogue, broker, redis_client, dispatcher_alive
):
    """From the dispatcher's snapshot when one is alive (it answers the positions request);
    from a snapshot made by the caller where none is."""
    jobs = {user.pk: submit_job(user, SMALL) for user in (alice, bob)}  # no worker: they wait

    def queue_moved() -> None:
        if dispatcher_alive:
            redis_client.set(ALIVE_KEY, "1", ex=30)
            publish_queue_positions()  # rings the dispatcher, which then runs:
            assert answer_wake({POSITIONS})  # jobs still wait
        else:
            publish_queue_positions()

    async def heard() -> dict[int, dict]:
        layer = get_channel_layer()
        assert layer is not None
        inboxes = {user_id: await layer.new_channel() for user_id in jobs}
        for user_id, inbox in inboxes.items():
            await layer.group_add(user_group(user_id), inbox)
        await database_sync_to_async(queue_moved)()
        return {
            user_id: await event_of(layer, inbox, jobs[user_id])
            for user_id, inbox in inboxes.items()
        }

    events = asyncio.run(heard())
    assert all(event["type"] == "job.queued" for event in events.values())
    assert {event["position"] for event in events.values()} == {1, 2}


def test_after_the_queue_empties_a_new_jobs_answer_reads_no_speed_history(
    alice, catalogue, redis_client
):
    """A job ran and the dispatcher woke to an empty queue (as after every success): the
    snapshot it stores still carries the speed of that kind of job, so the next submission of
    that kind is answered with its measured ETA without reading the history itself."""
    from accounts.models import ApiToken
    from generation.scheduling.estimates import KeptHistory, RecentSpeedKeys

    history, recent = KeptHistory(), RecentSpeedKeys()
    ran = submit_job(alice, SMALL)
    beat(redis_client, "gpu-1", hot=["model-a"])
    answer_wake({str(ran.pk)}, history, recent)  # handed out
    ran.refresh_from_db()
    assert ran.mark_running("gpu-1", ran.attempt)
    assert ran.mark_succeeded(ran.attempt, "gpu-1", {"total_s": 2.0, "sampling_s": 1.5})
    assert answer_wake({""}, history, recent) is False  # the wake after its success
    empty = stored_snapshot()
    assert empty is not None and not empty.infos and empty.speeds.known

    _token, secret = ApiToken.issue(alice, "script")
    headers = {"Authorization": f"Bearer {secret}"}
    api = Client()
    with CaptureQueriesContext(connection) as queries:
        response = api.post(
            "/api/v1/jobs/", SMALL, content_type="application/json", headers=headers
        )
    assert response.status_code == 201 and response.json()["eta_source"] == "history"
    history_reads = [q for q in queries if '"finished_at" >=' in q["sql"]]
    assert not history_reads, "no speed history read"


def test_a_wake_up_for_new_jobs_alone_reuses_the_speed_history_the_last_finish_read(
    alice, bob, catalogue, broker, redis_client, django_capture_on_commit_callbacks
):
    """Only a finished job changes the speed history, and every finish rings the dispatcher:
    a submission's wake-up soon after hands its job out without reading the history, and the
    next finish's wake-up reads it again (its job's speed is seen)."""
    from generation.scheduling.estimates import KeptHistory, RecentSpeedKeys

    history, recent = KeptHistory(), RecentSpeedKeys()
    beat(redis_client, "gpu-1", hot=["model-a"])

    def run_and_finish(job: Job, total_s: float) -> None:
        job.refresh_from_db()
        assert job.mark_running("gpu-1", job.attempt)
        assert job.mark_succeeded(job.attempt, "gpu-1", {"total_s": total_s, "sampling_s": 1})

    def history_reads(queries: CaptureQueriesContext) -> list[dict]:
        return [q for q in queries.captured_queries if '"finished_at" >=' in q["sql"]]

    first = submit_job(alice, SMALL)
    with django_capture_on_commit_callbacks(execute=True):
        answer_wake({str(first.pk)}, history, recent)
    run_and_finish(first, 2.0)
    answer_wake({""}, history, recent)  # the wake-up its success rings: reads what finished

    second = submit_job(bob, SMALL)
    with (
        CaptureQueriesContext(connection) as queries,
        django_capture_on_commit_callbacks(execute=True),
    ):
        answer_wake({str(second.pk)}, history, recent)
    assert not history_reads(queries)
    handed_out = {r["job_id"] for r in requests_on(redis_client, "gpu-1")}  # (a hash: no order)
    assert handed_out == {str(first.pk), str(second.pk)}

    run_and_finish(second, 3.0)
    with CaptureQueriesContext(connection) as queries:
        answer_wake({""}, history, recent)
    assert history_reads(queries)
    assert {row["pk"] for row in history.rows(reuse_within=60)} >= {first.pk, second.pk}
