"""Kill things and check that users notice nothing but a delay: every accepted job finishes once,
charged once with one set of images, or fails with a clear error and a full refund; the ledger
is clean after every drill (the `world` fixture checks it)."""

from __future__ import annotations

import signal
import time

from tests.drills.conftest import JOB, LONG_JOB, WORKER_GRACE, DrillWorld

OUTAGE_SECONDS = 10


def test_a_worker_killed_mid_job_hands_it_to_the_survivor_charged_once(world: DrillWorld):
    first, second = world.start_gpu(), world.start_gpu()
    world.wait_ready(first, second)
    [job] = world.submit(("drill-ann", 1, JOB))
    victim = world.wait_running(job)
    survivor = second if victim == first else first
    world.signal(victim, signal.SIGKILL)

    world.wait_finished([job])
    row = world.job(job)
    assert row["status"] == "succeeded" and row["worker_id"] == survivor
    assert row["lost"] == 1
    assert world.images(job) == 1
    assert world.settlements(job) == ["capture"]


def test_a_poison_job_that_kills_three_workers_fails_and_is_refunded(world: DrillWorld):
    workers = [world.start_gpu(), world.start_gpu()]
    world.wait_ready(*workers)
    [job] = world.submit(("drill-ben", 1, JOB))
    killed: set[str] = set()
    for kill in range(3):
        victim = world.wait_running(job, not_on=killed)
        world.signal(victim, signal.SIGKILL)
        killed.add(victim)
        if kill < 2:
            world.start_gpu(preload=False)  # a fresh one replaces it: no endless loop

    world.wait_finished([job])
    row = world.job(job)
    assert row["status"] == "failed" and row["lost"] == 3
    assert "3 GPU workers" in row["error"] and "given back" in row["error"]
    assert world.images(job) == 0
    assert world.settlements(job) == ["release"]


def test_redis_restarting_empty_mid_queue_loses_no_accepted_job(world: DrillWorld):
    workers = [world.start_gpu(), world.start_gpu()]
    world.wait_ready(*workers)
    # Two running, two assigned behind them, two waiting on the platform.
    jobs = world.submit(("drill-ann", 2, JOB), ("drill-ben", 2, JOB), ("drill-cat", 2, JOB))
    world.wait_running(jobs[0])
    world.stop_redis()  # running, assigned and waiting jobs: every message is gone
    world.start_redis()

    world.wait_finished(jobs, timeout=120)
    for job in jobs:
        assert world.job(job)["status"] == "succeeded", world.job(job)
        assert world.images(job) == 1
        assert world.settlements(job) == ["capture"]


def test_sigterm_drains_a_worker_its_running_job_finishes_and_nothing_is_lost(
    world: DrillWorld,
):
    draining, other = world.start_gpu(), world.start_gpu()
    world.wait_ready(draining, other)
    jobs = world.submit(("drill-ann", 2, JOB), ("drill-ben", 2, JOB))
    world.wait(
        lambda: world.query(
            "SELECT count(*) FROM generation_job WHERE worker_id = ? AND status = 'running'",
            draining,
        )[0][0],
        60,
        "a job running on the worker to drain",
    )
    # one job, or a batch of them (identical jobs share UNet calls: cross-user batching)
    running = [
        j
        for j in jobs
        if world.job(j)["worker_id"] == draining and world.job(j)["status"] == "running"
    ]
    proc = world.signal(draining, signal.SIGTERM)

    assert proc.wait(timeout=60) == 0  # it finished its running jobs and left cleanly
    world.wait_finished(jobs, timeout=120)
    assert running and all(world.job(j)["worker_id"] == draining for j in running)
    for job in jobs:
        assert world.job(job)["status"] == "succeeded"
        assert world.images(job) == 1 and world.settlements(job) == ["capture"]
    assert {world.job(j)["worker_id"] for j in jobs if j not in running} == {other}


def test_three_redis_outages_during_one_long_job_kill_no_worker_and_run_it_once(
    world: DrillWorld,
):
    worker = world.start_gpu()
    world.wait_ready(worker)
    platform_log = len(world.log("platform"))
    [job] = world.submit(("drill-cat", 1, LONG_JOB))
    world.wait_running(job)
    for outage in range(1, 4):
        assert world.job(job)["status"] == "running", f"it finished before outage {outage}"
        world.redis_outage(OUTAGE_SECONDS)  # many times the drills' grace of 1.5 s
        world.wait(lambda: world.redis.exists(f"atelier:worker:{worker}"), 30, "a beat again")
        time.sleep(3 * WORKER_GRACE)  # a false death would show in this time
        assert world.job(job)["attempt"] == 1, f"taken back after outage {outage}"

    world.wait_finished([job], timeout=600)
    row = world.job(job)
    assert row["status"] == "succeeded" and row["worker_id"] == worker, row
    assert row["attempt"] == 1 and row["lost"] == 0  # handed out once, never taken back
    assert world.images(job) == 1
    assert world.settlements(job) == ["capture"]
    assert "dead workers ['" not in world.log("platform")[platform_log:]


def test_a_worker_killed_and_restarted_at_once_under_its_id_has_its_job_taken_back_once(
    world: DrillWorld,
):
    # A grace as in production (longer than a restart takes), so the new life beats before
    # the old one could be declared dead: the job is "unreported", not lost with its worker.
    world.restart_platform(worker_grace=60)
    try:
        worker = world.start_gpu()
        world.wait_ready(worker)
        [job] = world.submit(("drill-ann", 1, JOB))
        world.wait_running(job)
        world.signal(worker, signal.SIGKILL)
        world.start_gpu(worker_id=worker)  # the new life knows nothing of the job

        world.wait_finished([job], timeout=180)
        row = world.job(job)
        assert row["status"] == "succeeded" and row["lost"] == 0, row
        assert row["attempt"] == 3  # handed out, taken back once, handed out again
        assert world.images(job) == 1
        assert world.settlements(job) == ["capture"]
    finally:
        world.restart_platform(worker_grace=WORKER_GRACE)
