"""Cross-user batching in the scheduling policy and the shared batch key: which waiting jobs a
full worker is handed as companions of the batch it runs. Pure Python, no database."""

from __future__ import annotations

from typing import Any

from generation.scheduling.policy import FairScheduler, WaitingJob, WorkerView
from gpu_worker.batch_key import MAX_BATCH_JOBS, batch_key

BASE: dict[str, Any] = {
    "mode": "txt2img", "checkpoint": "demo", "vae": None, "prompt": "a fox <lora:ink:0.5>",
    "negative_prompt": "", "sampler": "Euler a", "scheduler": "Automatic", "steps": 20,
    "cfg_scale": 7.0, "width": 512, "height": 512, "seed": 1, "batch_size": 1, "n_iter": 1,
    "hires": None, "controlnet": [], "tiling": False, "subseed_strength": 0.0,
}  # fmt: skip
KEY = batch_key(BASE)


def job(job_id: str, user: str, at: float, key: str | None = KEY, checkpoint: str = "demo"):
    return WaitingJob(
        job_id=job_id, user_id=user, weight=1.0, submitted_at=at, checkpoint=checkpoint,
        batch_key=key,
    )  # fmt: skip


def busy(worker_id: str, keys: tuple[str | None, ...], **extra) -> WorkerView:
    """A worker running and holding jobs of these batch keys (no free slot)."""
    return WorkerView(
        worker_id=worker_id, free_slots=0, hot=("demo",), pending=("demo",) * len(keys),
        batch_keys=keys, **extra,
    )  # fmt: skip


def plan(waiting, workers):
    return FairScheduler().plan(waiting, workers, now=100.0, usage={})


def test_jobs_differing_in_seed_prompt_cfg_and_steps_share_a_key_others_do_not():
    same = {"seed": 9, "prompt": "a dog <lora:ink:0.5>", "cfg_scale": 3.0, "steps": 7}
    assert batch_key({**BASE, **same}) == KEY
    assert batch_key({**BASE, "sampler": "Euler"}) != KEY  # another scheduler class
    assert batch_key({**BASE, "sampler": "Restart"}) == batch_key({**BASE, "sampler": "Euler"})
    for change in (
        {"checkpoint": "other"},
        {"prompt": "a fox <lora:ink:0.6>"},  # LoRA weight
        {"prompt": "a fox"},  # LoRA set
        {"width": 576},
        {"vae": "kl-f8"},
    ):
        assert batch_key({**BASE, **change}) not in (None, KEY), change


def test_features_kept_on_the_serial_path_have_no_key():
    for change in (
        {"mode": "img2img"},
        {"hires": {"scale": 2}},
        {"controlnet": [{"model": "canny"}]},
        {"tiling": True},
        {"subseed_strength": 0.3},
        {"n_iter": 2},
        {"prompt": "a [fox:wolf:5]"},
        {"prompt": "a [fox|wolf]"},
        {"sampler": "no such sampler"},
    ):
        assert batch_key({**BASE, **change}) is None, change
    assert batch_key(BASE, has_uploads=True) is None


def test_a_full_worker_gets_compatible_companions_in_fair_order_up_to_the_cap():
    waiting = [job(f"a{i}", "alice", i) for i in range(6)] + [
        job(f"b{i}", "bob", 0.5 + i) for i in range(6)
    ]
    made = plan(waiting, [busy("w1", (KEY, KEY))])
    assert all(a.worker_id == "w1" and a.reason == "batch" for a in made)
    assert len(made) == MAX_BATCH_JOBS - 2
    # alternating users, each user's jobs in submit order
    assert [a.job_id for a in made] == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_no_companion_for_another_key_a_serial_job_or_a_draining_worker():
    other = batch_key({**BASE, "checkpoint": "other"})
    waiting = [job("x", "alice", 0, key=other), job("y", "bob", 1, key=None)]
    assert plan(waiting, [busy("w1", (KEY,))]) == []
    assert plan([job("z", "carol", 0)], [busy("w1", (KEY,), batches=False)]) == []
    assert plan([job("z", "carol", 0)], [busy("w1", (None,))]) == []


def test_below_capacity_a_compatible_job_gets_an_idle_worker_not_a_batch():
    idle = WorkerView(worker_id="w2", free_slots=2, hot=("demo",))
    made = plan([job("a0", "alice", 0)], [busy("w1", (KEY,)), idle])
    assert [(a.job_id, a.worker_id, a.reason) for a in made] == [("a0", "w2", "hot")]


def test_an_sdxl_job_joins_a_busy_sdxl_worker_and_an_sd1_job_never_joins_its_batch():
    # the same size, sampler and LoRA set: only the checkpoint (and so the family) differs
    sdxl = {**BASE, "checkpoint": "sdxl-base", "prompt": "a castle <lora:ink:0.5>", "seed": 4}
    xl_key = batch_key(sdxl)
    assert xl_key is not None and xl_key != KEY
    assert batch_key({**sdxl, "cfg_scale": 4.0, "steps": 30}) == xl_key
    waiting = [
        job("sd1", "alice", 0),
        job("xl", "bob", 1, key=xl_key, checkpoint="sdxl-base"),
    ]  # fmt: skip
    worker = WorkerView(
        worker_id="w1", free_slots=0, hot=("sdxl-base",), pending=("sdxl-base",),
        batch_keys=(xl_key,),
    )  # fmt: skip
    assert [(a.job_id, a.worker_id, a.reason) for a in plan(waiting, [worker])] == [
        ("xl", "w1", "batch")
    ]
