"""The scheduling policy over simulated workers and clocks: fair share, ageing, model affinity,
inventories, slots. Pure Python (no database, no Redis): fast and deterministic."""

from __future__ import annotations

import random

import pytest

from generation.scheduling.policy import (
    Download,
    FairScheduler,
    ModelKey,
    WaitingJob,
    WorkerView,
    wait_bound,
)
from generation.scheduling.simulation import (
    FifoScheduler,
    SimJob,
    Simulation,
    SimWorker,
    jain_index,
)


def job(job_id: str, user: str, at: float = 0.0, checkpoint: str = "a", **extra) -> WaitingJob:
    return WaitingJob(
        job_id=job_id, user_id=user, weight=extra.pop("weight", 1.0), submitted_at=at,
        checkpoint=checkpoint, **extra,
    )  # fmt: skip


def worker(worker_id: str, free: int = 2, **extra) -> WorkerView:
    return WorkerView(worker_id=worker_id, free_slots=free, hot_capacity=2, **extra)


def disk(*checkpoints: str, lora: str = "", controlnet: str = "") -> frozenset[ModelKey]:
    """A worker's inventory: the checkpoints named, and a LoRA and a ControlNet if given."""
    keys = {("checkpoint", name) for name in checkpoints}
    keys |= {("lora", lora)} if lora else set()
    keys |= {("controlnet", controlnet)} if controlnet else set()
    return frozenset(keys)


def sim_jobs(user: str, count: int, at: float = 0.0, run_s: float = 4.0, checkpoint: str = "a"):
    return [SimJob(f"{user}-{i:03d}", user, at + i * 1e-3, checkpoint, run_s) for i in range(count)]


def happened(times: list[float | None]) -> list[float]:
    """Times the simulation must have reached for every job (none left behind)."""
    assert None not in times
    return [t for t in times if t is not None]


def started_in_order(jobs: list[SimJob]) -> list[str]:
    return [j.job_id for j in sorted(jobs, key=lambda j: (j.started_at, j.job_id))]


# --- fair share ------------------------------------------------------------------------------


def test_one_user_with_40_jobs_does_not_starve_three_others():
    jobs = sim_jobs("alice", 40) + sum(
        (sim_jobs(u, 3, at=1.0) for u in ("bob", "carol", "dan")), []
    )
    result = Simulation(FairScheduler(), [SimWorker("gpu-1")], jobs).run()
    order = started_in_order(result.jobs)
    others = [i for i, job_id in enumerate(order) if not job_id.startswith("alice")]
    # Round-robin: the 9 jobs of the others start among the first 13 (alice got 2 before they
    # arrived, then one turn in four), not after alice's 40 as FIFO does.
    assert max(others) < 13
    fifo = Simulation(FifoScheduler(), [SimWorker("gpu-1")], [SimJob(**vars(j)) for j in jobs])
    assert min(i for i, j in enumerate(started_in_order(fifo.run().jobs)) if "alice" not in j) > 39


def test_a_tier_weight_of_2_gets_about_twice_the_gpu_time():
    jobs = [SimJob(f"gold-{i:03d}", "gold", 0.0, "a", 2.0, weight=2.0) for i in range(200)]
    jobs += sim_jobs("free", 200, run_s=2.0)
    result = Simulation(FairScheduler(), [SimWorker("gpu-1"), SimWorker("gpu-2")], jobs).run()
    service = result.service_in(0.0, 240.0)  # both still backlogged
    assert service["gold"] / service["free"] == pytest.approx(2.0, rel=0.1)


def test_equal_users_get_equal_shares_while_all_are_backlogged():
    rng = random.Random(3)
    jobs = [
        SimJob(f"u{u}-{i:03d}", f"u{u}", rng.uniform(0, 5), rng.choice("abc"), rng.uniform(1, 5))
        for u in range(6)
        for i in range(60 // (u + 1) + 20)
    ]
    workers = [SimWorker(f"gpu-{i}") for i in range(3)]
    fair = Simulation(FairScheduler(), workers, jobs).run().service_in(5.0, 100.0)
    assert jain_index(list(fair.values())) > 0.95


def test_a_users_jobs_are_handed_out_and_started_in_submit_order():
    rng = random.Random(5)
    jobs = [
        SimJob(f"u{u}-{i:03d}", f"u{u}", i * 0.5 + u, rng.choice("abcd"), rng.uniform(1, 4))
        for u in range(4)
        for i in range(25)
    ]
    workers = [SimWorker(f"gpu-{i}", hot_capacity=1) for i in range(2)]
    result = Simulation(FairScheduler(), workers, jobs).run()
    for user in ("u0", "u1", "u2", "u3"):
        mine = sorted((j for j in result.jobs if j.user_id == user), key=lambda j: j.submitted_at)
        assigned = happened([j.assigned_at for j in mine])
        assert assigned == sorted(assigned)
        for gpu in ("gpu-0", "gpu-1"):
            started = happened([j.started_at for j in mine if j.worker_id == gpu])
            assert started == sorted(started)


def test_a_user_whose_job_waits_on_a_busy_worker_does_not_jump_it_on_an_idle_one():
    busy = worker("gpu-1", free=0, hot=("a",), pending=("a", "a"), waiting_owners=("alice",))
    idle = worker("gpu-2", free=1, hot=("a",))
    waiting = [job("alice-2", "alice", 0.0), job("bob-1", "bob", 5.0)]
    [assignment] = FairScheduler().plan(waiting, [busy, idle], now=6.0, usage={"bob": 3.0})
    assert assignment.job_id == "bob-1"  # alice is neediest, but her job could start first


def test_a_lone_user_keeps_every_gpu_busy_even_if_a_later_job_may_start_first():
    rng = random.Random(8)
    jobs = [SimJob(f"solo-{i:03d}", "solo", i * 0.1, rng.choice("ab"), 3.0) for i in range(60)]
    workers = [SimWorker(f"gpu-{i}", hot_capacity=1, warm_capacity=0) for i in range(3)]
    result = Simulation(FairScheduler(), workers, jobs).run()
    finished = happened([j.finished_at for j in result.jobs])
    makespan = max(finished)
    busy = sum(finished) - sum(happened([j.started_at for j in result.jobs]))
    assert busy / (3 * makespan) > 0.85


def test_a_later_job_on_a_hot_model_does_not_jump_its_owners_older_job():
    plan = FairScheduler().plan(
        [job("old", "alice", 0.0, "cold"), job("new", "alice", 1.0, "hot")],
        [worker("gpu-1", free=1, hot=("hot",))],
        now=2.0,
        usage={},
    )
    assert [a.job_id for a in plan] == ["old"]


def test_a_job_returned_by_a_dead_worker_goes_ahead_of_newer_ones():
    waiting = [
        job("alice-new", "alice", 50.0),
        job("bob-new", "bob", 40.0),
        job("alice-returned", "alice", 10.0),  # keeps its first submission time
    ]
    plan = FairScheduler().plan(waiting, [worker("gpu-1", free=1)], now=60.0, usage={})
    assert [a.job_id for a in plan] == ["alice-returned"]
    order = FairScheduler().fair_order(waiting, now=60.0, usage={})
    assert [j.job_id for j in order] == ["alice-returned", "bob-new", "alice-new"]


def test_fair_order_is_round_robin_by_recent_usage_with_aged_jobs_first():
    waiting = [job(f"a{i}", "alice", float(i)) for i in range(3)]
    waiting += [job(f"b{i}", "bob", 10.0 + i) for i in range(2)]
    waiting.append(job("c0", "carol", 0.5))
    scheduler = FairScheduler(max_wait_s=100.0)
    order = scheduler.fair_order(waiting, now=50.0, usage={"carol": 5.0})
    assert [j.job_id for j in order] == ["a0", "b0", "a1", "b1", "a2", "c0"]
    aged = scheduler.fair_order(waiting, now=100.8, usage={"carol": 5.0})
    # a0 and c0 waited more than 100 s: first, oldest first; then round-robin again.
    assert [j.job_id for j in aged] == ["a0", "c0", "b0", "a1", "b1", "a2"]


# --- ageing ----------------------------------------------------------------------------------


def ageing_workload() -> tuple[list[SimJob], float]:
    """alice has 30 jobs and used the GPUs a lot; a stream of new users with no usage keeps
    the two workers 90 % busy, so fair share alone would keep putting alice last."""
    jobs = sim_jobs("alice", 30, run_s=4.0)
    at, n = 0.0, 0
    while at < 900.0:
        jobs.append(SimJob(f"new-{n:04d}", f"new-{n:04d}", at, "a", 4.0))
        at, n = at + 4.0 / (2 * 0.9), n + 1
    return jobs, 4.0


def stated_bound(job: SimJob, jobs: list[SimJob], max_wait_s: float, workers: int) -> float:
    """The module docstring's bound for `job`: max_wait_s, then the older aged work still
    waiting when it aged (spread over the workers), one running and one waiting job, one load."""
    aged_at = job.submitted_at + max_wait_s
    older = [
        j
        for j in jobs
        if j.submitted_at < job.submitted_at and (j.started_at is None or j.started_at > aged_at)
    ]
    longest = max(j.run_s for j in jobs)
    return max_wait_s + sum(j.run_s for j in older) / workers + wait_bound(0.0, longest, 6.0)


def test_no_job_waits_past_the_ageing_bound_in_a_long_simulation():
    jobs, _longest = ageing_workload()
    workers = [SimWorker("gpu-1"), SimWorker("gpu-2")]
    result = Simulation(FairScheduler(max_wait_s=60.0), workers, jobs).run()
    assert len(result.finished) == len(jobs)
    late = [j.job_id for j in result.jobs if j.wait > stated_bound(j, result.jobs, 60.0, 2)]
    assert late == []
    assert result.max_wait() > 60.0  # the bound was tested: alice's jobs did age


def test_without_ageing_the_same_workload_starves_the_heavy_user():
    jobs, longest = ageing_workload()
    workers = [SimWorker("gpu-1"), SimWorker("gpu-2")]
    result = Simulation(FairScheduler(max_wait_s=1e9), workers, jobs).run()
    last = max(result.jobs, key=lambda j: j.wait)
    assert last.user_id == "alice" and last.wait > 400.0  # fed only the stream's leftovers


# --- model affinity --------------------------------------------------------------------------


def test_a_free_worker_prefers_its_hot_model_then_a_warm_one_then_a_load():
    gpu = worker("gpu-1", free=1, hot=("x",), warm=("y",))
    waiting = [job("z", "alice", 0.0, "z"), job("y", "bob", 1.0, "y"), job("x", "carol", 2.0, "x")]
    picks = []
    for _ in range(3):
        [assignment] = FairScheduler().plan(waiting, [gpu], now=3.0, usage={})
        picks.append((assignment.job_id, assignment.reason))
        waiting = [j for j in waiting if j.job_id != assignment.job_id]
    assert picks == [("x", "hot"), ("y", "warm"), ("z", "load")]


GiB = 2**30
UPLOAD = Download("a" * 64, 2 * GiB)  # a member's 2 GiB checkpoint in the model store
UPLOAD_KEY = f"sha256:{UPLOAD.sha256}"
STYLE = Download("b" * 64, 200 * 2**20)  # her 200 MiB LoRA


def stored_job(job_id: str, user: str = "alice", at: float = 0.0, lora: bool = False):
    """A job on alice's uploaded checkpoint (and LoRA): any worker may fetch them."""
    fetchable = {("checkpoint", UPLOAD_KEY)} | ({("lora", "style")} if lora else set())
    return job(
        job_id, user, at, UPLOAD_KEY, loras=frozenset({"style"} if lora else ()),
        fetchable=frozenset(fetchable), downloads=(UPLOAD, STYLE) if lora else (UPLOAD,),
        stored_checkpoint=UPLOAD,
    )  # fmt: skip


def test_an_uploaded_model_goes_hot_then_warm_then_on_disk_then_to_a_worker_that_must_fetch_it():
    tiers = {
        "hot": worker("gpu-1", free=1, hot=(UPLOAD_KEY,), disk=frozenset({UPLOAD.sha256})),
        "warm": worker("gpu-2", free=1, warm=(UPLOAD_KEY,), disk=frozenset({UPLOAD.sha256})),
        "load": worker("gpu-3", free=1, disk=frozenset({UPLOAD.sha256})),
        "fetch": worker("gpu-4", free=1),
    }
    workers = list(tiers.values())
    picks = []
    for _ in range(4):
        [assignment] = FairScheduler().plan([stored_job("j")], workers, now=1.0, usage={})
        picks.append((assignment.worker_id, assignment.reason))
        workers = [w for w in workers if w.worker_id != assignment.worker_id]
    assert picks == [(w.worker_id, reason) for reason, w in tiers.items()]


def test_between_two_workers_that_must_fetch_the_faster_download_wins():
    slow = worker("gpu-1", download_bytes_per_s=20 * 2**20)
    fast = worker("gpu-2", download_bytes_per_s=200 * 2**20)
    [assignment] = FairScheduler().plan([stored_job("j")], [slow, fast], now=1.0, usage={})
    assert (assignment.worker_id, assignment.reason) == ("gpu-2", "fetch")


def test_with_the_checkpoint_hot_on_both_the_worker_holding_the_lora_file_wins():
    holds = frozenset({UPLOAD.sha256})
    lacking = worker("gpu-1", hot=(UPLOAD_KEY,), disk=holds)
    having = worker("gpu-2", hot=(UPLOAD_KEY,), disk=holds | {STYLE.sha256})
    [assignment] = FairScheduler().plan(
        [stored_job("j", lora=True)], [lacking, having], now=1.0, usage={}
    )
    assert assignment.worker_id == "gpu-2"


def test_a_second_job_on_an_upload_waits_for_the_worker_that_fetched_it_over_a_second_fetch():
    first, second = stored_job("first", "alice", 0.0), stored_job("second", "bob", 1.0)
    idle = [worker("gpu-1", free=1), worker("gpu-2", free=1)]
    plan = FairScheduler().plan([first, second], idle, now=2.0, usage={})
    assert [(a.job_id, a.reason) for a in plan] == [("first", "fetch")]
    roomy = [worker("gpu-1", free=2), worker("gpu-2", free=2, hot=("other",))]
    plan = FairScheduler().plan([first, second], roomy, now=2.0, usage={})
    assert [(a.worker_id, a.reason) for a in plan] == [("gpu-1", "fetch"), ("gpu-1", "hot")]


def test_affinity_never_serves_a_user_past_the_fairness_window():
    gpu = worker("gpu-1", free=1, hot=("x",))
    waiting = [job("cold", "alice", 0.0, "z"), job("hot", "bob", 1.0, "x")]
    scheduler = FairScheduler(slack_s=10.0)
    [near] = scheduler.plan(waiting, [gpu], now=2.0, usage={"bob": 8.0})
    [far] = scheduler.plan(waiting, [gpu], now=2.0, usage={"bob": 12.0})
    assert (near.job_id, near.reason) == ("hot", "hot")
    assert (far.job_id, far.reason) == ("cold", "load")


def test_a_worker_never_gets_a_model_missing_from_its_inventory():
    lacking = worker("gpu-1", inventory=disk("a"))
    waiting = [job("sdxl", "alice", 0.0, "xl"), job("plain", "bob", 1.0, "a")]
    plan = FairScheduler().plan(waiting, [lacking], now=5.0, usage={})
    assert [a.job_id for a in plan] == ["plain"]  # the SDXL job waits for a worker that has it
    having = worker("gpu-2", free=1, inventory=disk("a", "xl"))
    plan = FairScheduler().plan(waiting[:1], [lacking, having], now=6.0, usage={})
    assert [(a.job_id, a.worker_id) for a in plan] == [("sdxl", "gpu-2")]


def test_a_job_with_a_lora_only_goes_to_a_worker_that_has_the_lora():
    waiting = [job("styled", "alice", 0.0, "a", loras=frozenset({"ink"}))]
    workers = [
        worker("gpu-1", hot=("a",), inventory=disk("a")),
        worker("gpu-2", inventory=disk("a", lora="ink")),
    ]
    [assignment] = FairScheduler().plan(waiting, workers, now=1.0, usage={})
    assert assignment.worker_id == "gpu-2"


def test_a_job_with_a_controlnet_unit_only_goes_to_a_worker_that_has_the_controlnet():
    waiting = [job("guided", "alice", 0.0, "a", controlnets=frozenset({"canny"}))]
    workers = [
        worker("gpu-1", hot=("a",), inventory=disk("a")),
        worker("gpu-2", inventory=disk("a", controlnet="canny")),
    ]
    [assignment] = FairScheduler().plan(waiting, workers, now=1.0, usage={})
    assert assignment.worker_id == "gpu-2"


def test_a_worker_with_the_jobs_controlnet_loaded_ranks_above_one_without():
    guided = job("guided", "alice", 0.0, "a", controlnets=frozenset({"canny"}))
    both_hot = [
        worker("gpu-1", hot=("a",)),
        worker("gpu-2", hot=("a",), controlnets=frozenset({"canny"})),
    ]
    [assignment] = FairScheduler().plan([guided], both_hot, now=1.0, usage={})
    assert (assignment.worker_id, assignment.reason) == ("gpu-2", "hot")
    # a load either way: still where the ControlNet is
    both_cold = [worker("gpu-1"), worker("gpu-2", controlnets=frozenset({"canny"}))]
    [assignment] = FairScheduler().plan([guided], both_cold, now=1.0, usage={})
    assert (assignment.worker_id, assignment.reason) == ("gpu-2", "load")
    # aged: the same preference
    [assignment] = FairScheduler(max_wait_s=1.0).plan([guided], both_hot, now=5.0, usage={})
    assert (assignment.worker_id, assignment.reason) == ("gpu-2", "aged")
    # but the checkpoint counts first: hot checkpoint without the ControlNet beats a load
    mixed = [worker("gpu-1", hot=("a",)), worker("gpu-2", controlnets=frozenset({"canny"}))]
    [assignment] = FairScheduler().plan([guided], mixed, now=1.0, usage={})
    assert assignment.worker_id == "gpu-1"


def test_the_worker_holding_a_controlnet_takes_the_job_that_needs_it():
    plain = job("plain", "alice", 0.0, "a")
    guided = job("guided", "bob", 0.5, "a", controlnets=frozenset({"canny"}))
    workers = [
        worker("gpu-1", free=1, hot=("a",), controlnets=frozenset({"canny"})),
        worker("gpu-2", free=1, hot=("a",)),
    ]
    plan = FairScheduler().plan([plain, guided], workers, now=1.0, usage={})
    assert {(a.job_id, a.worker_id) for a in plan} == {("guided", "gpu-1"), ("plain", "gpu-2")}


def test_a_job_on_an_uploaded_checkpoint_with_a_controlnet_goes_where_the_controlnet_is():
    # The upload is fetched by any worker; the ControlNet comes only from a worker's folder.
    waiting = [
        job("own", "alice", 0.0, "mine", controlnets=frozenset({"canny"}),
            fetchable=frozenset({("checkpoint", "mine")})),
    ]  # fmt: skip
    workers = [
        worker("gpu-1", hot=("a",), inventory=disk("a")),
        worker("gpu-2", inventory=disk("a", controlnet="canny")),
    ]
    [assignment] = FairScheduler().plan(waiting, workers, now=1.0, usage={})
    assert assignment.worker_id == "gpu-2"


def test_a_lora_or_controlnet_named_like_a_checkpoint_does_not_stand_in_for_it():
    waiting = [job("sdxl", "alice", 0.0, "xl")]
    namesakes = [
        worker("gpu-1", inventory=disk("a", lora="xl")),
        worker("gpu-2", inventory=disk("a", controlnet="xl")),
    ]
    assert FairScheduler().plan(waiting, namesakes, now=1.0, usage={}) == []
    having = worker("gpu-3", inventory=disk("xl"))
    [assignment] = FairScheduler().plan(waiting, [*namesakes, having], now=1.0, usage={})
    assert assignment.worker_id == "gpu-3"


def test_a_members_uploaded_lora_does_not_make_a_checkpoint_of_its_name_fetchable():
    # Alice uploaded a LoRA "xl"; her job runs the platform checkpoint "xl" with it.
    waiting = [
        job("mixed", "alice", 0.0, "xl", loras=frozenset({"xl"}),
            fetchable=frozenset({("lora", "xl")})),
    ]  # fmt: skip
    lacking = worker("gpu-1", inventory=disk("a"))
    assert FairScheduler().plan(waiting, [lacking], now=1.0, usage={}) == []
    having = worker("gpu-2", inventory=disk("a", "xl"))
    [assignment] = FairScheduler().plan(waiting, [lacking, having], now=1.0, usage={})
    assert assignment.worker_id == "gpu-2"


def test_in_a_simulation_no_worker_runs_a_model_it_lacks_and_every_job_finishes():
    rng = random.Random(11)
    jobs = [
        SimJob(f"j{i:03d}", f"u{i % 5}", i * 0.7, rng.choice("abc"), rng.uniform(1, 3))
        for i in range(150)
    ]
    workers = [
        SimWorker("gpu-1", inventory=frozenset("ab")),
        SimWorker("gpu-2", inventory=frozenset("bc")),
    ]
    result = Simulation(FairScheduler(), workers, jobs).run()  # the simulator asserts inventory
    assert len(result.finished) == 150
    assert {j.worker_id for j in result.jobs if j.checkpoint == "a"} == {"gpu-1"}
    assert {j.worker_id for j in result.jobs if j.checkpoint == "c"} == {"gpu-2"}


def test_a_load_goes_to_the_worker_whose_models_are_least_wanted():
    waiting = [job(f"x{i}", f"u{i}", float(i), "x") for i in range(1, 6)]
    waiting.insert(0, job("z", "alice", 0.0, "z"))
    workers = [
        worker("gpu-1", free=1, hot=("x", "w"), pending=("x",)),  # x and w are wanted
        worker("gpu-2", free=1, hot=("y", "v"), pending=("y",)),  # nobody waits for y or v
    ]
    waiting.append(job("w1", "walt", 9.0, "w"))
    scheduler = FairScheduler(slack_s=0.0)  # alice, who used nothing, must go first
    usage = {j.user_id: 1.0 for j in waiting if j.user_id != "alice"}
    first = scheduler.plan(waiting, workers, now=10.0, usage=usage)[0]
    assert (first.job_id, first.worker_id, first.reason) == ("z", "gpu-2", "load")


def test_two_popular_models_spread_over_two_workers_instead_of_thrashing():
    rng = random.Random(2)
    jobs = [
        SimJob(f"j{i:03d}", f"u{i % 6}", i * 1.0, rng.choice("xy"), rng.uniform(1.5, 2.5))
        for i in range(200)
    ]

    def run(policy):  # noqa: E306
        workers = [SimWorker(f"gpu-{i}", hot_capacity=1, warm_capacity=0) for i in (1, 2)]
        return Simulation(policy, workers, [SimJob(**vars(j)) for j in jobs]).run()

    fair, fifo = run(FairScheduler()), run(FifoScheduler())
    assert fifo.loads() > 3 * fair.loads()
    hot = sorted(tuple(w.hot) for w in fair.workers)
    assert hot == [("x",), ("y",)]


def test_a_job_waits_for_the_busy_worker_that_holds_its_model_instead_of_loading_it():
    waiting = [job("x", "alice", 100.0, "x")]
    holder = worker("gpu-1", free=0, hot=("x",), pending=("x", "x"))  # running one, one waiting
    idle = worker("gpu-2", hot=("y",))
    scheduler = FairScheduler(max_wait_s=300.0)
    assert scheduler.plan(waiting, [holder, idle], now=150.0, usage={}) == []
    freed = worker("gpu-1", free=1, hot=("x",), pending=("x",))
    [hot] = scheduler.plan(waiting, [freed, idle], now=155.0, usage={})
    assert (hot.worker_id, hot.reason) == ("gpu-1", "hot")
    [aged] = scheduler.plan(waiting, [holder, idle], now=401.0, usage={})
    assert (aged.worker_id, aged.reason) == ("gpu-2", "aged")


def test_a_model_wanted_by_more_work_than_its_holder_clears_soon_gets_a_second_copy():
    waiting = [job(f"x{i}", f"u{i}", 100.0 + i, "x", cost=5.0) for i in range(5)]
    holder = worker("gpu-1", free=0, hot=("x",), pending=("x", "x"))
    idle = worker("gpu-2", hot=("y",))
    plan = FairScheduler(defer_load_s=20.0).plan(waiting, [holder, idle], now=106.0, usage={})
    assert [(a.worker_id, a.reason) for a in plan] == [("gpu-2", "load"), ("gpu-2", "hot")]


def test_a_draining_worker_that_holds_the_model_is_not_waited_for():
    draining = worker("gpu-1", free=0, hot=("x",))  # nothing running, takes nothing
    [assignment] = FairScheduler().plan(
        [job("x", "alice", 0.0, "x")], [draining, worker("gpu-2")], now=1.0, usage={}
    )
    assert (assignment.worker_id, assignment.reason) == ("gpu-2", "load")


def test_a_worker_counts_the_models_its_pending_jobs_will_load():
    # gpu-1 holds x now but its queued job will load z, pushing x off its only device slot.
    workers = [
        WorkerView("gpu-1", free_slots=1, hot=("x",), hot_capacity=1, pending=("x", "z")),
        WorkerView("gpu-2", free_slots=1, hot=("z",), hot_capacity=1, pending=("x",)),
    ]
    [assignment] = FairScheduler().plan([job("z2", "bob", 0.0, "z")], workers, now=1.0, usage={})
    assert (assignment.worker_id, assignment.reason) == ("gpu-1", "hot")


# --- slots and determinism -------------------------------------------------------------------


def test_free_slots_are_respected():
    waiting = [job(f"j{i}", f"u{i % 3}", float(i)) for i in range(10)]
    workers = [worker(f"gpu-{i}", free=i, hot=("a",)) for i in range(3)]
    plan = FairScheduler().plan(waiting, workers, now=20.0, usage={})
    given = {w: sum(a.worker_id == w for a in plan) for w in ("gpu-0", "gpu-1", "gpu-2")}
    assert given == {"gpu-0": 0, "gpu-1": 1, "gpu-2": 2}


def test_a_plan_does_not_depend_on_the_order_of_its_inputs():
    rng = random.Random(9)
    waiting = [
        job(f"j{i}", f"u{i % 4}", rng.uniform(0, 50), rng.choice("abc"), cost=rng.uniform(1, 5))
        for i in range(30)
    ]
    workers = [worker(f"gpu-{i}", hot=(rng.choice("abc"),)) for i in range(3)]
    usage = {"u1": 12.0, "u2": 3.0}
    first = FairScheduler().plan(waiting, workers, now=60.0, usage=usage)
    rng.shuffle(waiting)
    assert FairScheduler().plan(waiting, workers[::-1], now=60.0, usage=usage) == first


def test_an_upscale_needs_no_checkpoint_only_its_upscaler_and_loads_nothing():
    upscale = job("up", "alice", checkpoint="", other_models=frozenset({("upscaler", "4x")}))
    without = worker("gpu-1", hot=("a",), inventory=disk("a"))
    holding = worker("gpu-2", hot=("b",), inventory=disk("b") | {("upscaler", "4x")})
    [assignment] = FairScheduler().plan([upscale], [without, holding], now=1.0, usage={})
    assert assignment.worker_id == "gpu-2"  # the one with the model, its hot checkpoint kept
    plan = FairScheduler().plan([upscale], [without], now=1.0, usage={})
    assert plan == []  # nobody has the upscaler: it waits
