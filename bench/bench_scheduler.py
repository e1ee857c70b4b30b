"""Scheduler: FairScheduler vs FIFO on simulated mixed workloads, in one run, same jobs.

    python bench/bench_scheduler.py

A simulation with the real policy code (generation/scheduling/policy.py, default settings) over
the shared simulator (generation/scheduling/simulation.py); no Django, no Redis; fixed seed
(BENCH_SEED, default 7); a second or two.

Setting: 20 users, 6 checkpoints, 4 workers each holding 2 checkpoints on the device (and 2 more
in RAM). Every job picks its checkpoint with Zipf(s=1) popularity; two of the six are SDXL-sized
(2.5x run time, 10 s load from disk, 3 s from RAM), four SD1.5 (5 s, 1.5 s). A job runs 1.5-6 s
on SD1.5 (sizes and step counts vary); the scheduler is told an estimate within +-20 %.
Two workloads, user k of 20 always submitting in proportion to 1 / k (Zipf job counts):
  rush    in 20 s every user submits a batch of max(8, 40 / k) jobs (40, 20, 13, 10, 8, ...)
  steady  30 minutes of users submitting 1-4 jobs at a time (Poisson), 55 % of the workers'
          run capacity (FIFO's extra loads take it to ~90 %)
Figures, each for FIFO and fair, with the ratio (the better one over the other):
  model loads per 100 jobs (from disk + from RAM)
  p95 wait per user (wait = submit to start): the worst user and the median user
  Jain's index of per-user throughput (GPU seconds of run time received, rush only) in the
          window 20-120 s, while every user still has a rush job waiting (checked, printed)
  max wait against the policy's stated bound (policy.wait_bound)
Goals: >= 3x fewer loads than FIFO, Jain >= 0.9 where FIFO's is far lower, no job past the bound.
The same figures, shorter, for five more seeds show how much they depend on the draw.
A short real run with live processes (2 CPU gpu_workers, demo models): bench_scheduler_live.py.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation.scheduling.policy import FairScheduler, wait_bound  # noqa: E402
from generation.scheduling.simulation import (  # noqa: E402
    FifoScheduler,
    Policy,
    SimJob,
    SimResult,
    Simulation,
    SimWorker,
    jain_index,
    percentile,
)

SEED = int(os.environ.get("BENCH_SEED", "7"))
USERS = 20
WORKERS = 4
CHECKPOINTS = ("sd15-a", "sdxl-b", "sd15-c", "sd15-d", "sdxl-e", "sd15-f")  # by popularity
ZIPF = [1 / k for k in range(1, len(CHECKPOINTS) + 1)]
SDXL = {"sdxl-b", "sdxl-e"}
DISK_LOAD_S = {c: 10.0 if c in SDXL else 5.0 for c in CHECKPOINTS}
RAM_LOAD_S = {c: 3.0 if c in SDXL else 1.5 for c in CHECKPOINTS}
RUSH_S = 20.0
STEADY_S = 1800.0
STEADY_LOAD = 0.55
WINDOW = (20.0, 120.0)
OTHER_SEEDS = (1, 2, 3, 4, 5)


def run_scale(checkpoint: str) -> float:
    return 2.5 if checkpoint in SDXL else 1.0


class Jobs:
    """Jobs of the 20 users, numbered per user in the order they are made."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.jobs: list[SimJob] = []
        self.made = dict.fromkeys(range(1, USERS + 1), 0)

    def add(self, user: int, at: float) -> None:
        checkpoint = self.rng.choices(CHECKPOINTS, weights=ZIPF)[0]
        run_s = self.rng.uniform(1.5, 6.0) * run_scale(checkpoint)
        self.jobs.append(
            SimJob(
                job_id=f"u{user:02d}-{self.made[user]:04d}",
                user_id=f"u{user:02d}",
                submitted_at=at,
                checkpoint=checkpoint,
                run_s=run_s,
                cost=run_s * self.rng.uniform(0.8, 1.2),
            )
        )
        self.made[user] += 1


def rush(seed: int) -> list[SimJob]:
    jobs = Jobs(seed)
    for user in range(1, USERS + 1):
        for _ in range(max(8, round(40 / user))):
            jobs.add(user, jobs.rng.uniform(0, RUSH_S))
    return jobs.jobs


def steady(seed: int) -> list[SimJob]:
    jobs = Jobs(seed)
    popularity = sum(z * run_scale(c) for z, c in zip(ZIPF, CHECKPOINTS, strict=True)) / sum(ZIPF)
    mean_run = 3.75 * popularity
    batch_mean = 2.5
    batches_per_s = STEADY_LOAD * WORKERS / mean_run / batch_mean
    rates = [1 / k for k in range(1, USERS + 1)]
    for user, rate in enumerate(rates, start=1):
        per_s = batches_per_s * rate / sum(rates)
        at = jobs.rng.expovariate(per_s)
        while at < STEADY_S:
            for _ in range(jobs.rng.randint(1, 4)):
                jobs.add(user, at + jobs.rng.uniform(0, 2))
            at += jobs.rng.expovariate(per_s)
    return jobs.jobs


def workers() -> list[SimWorker]:
    return [
        SimWorker(f"gpu-{i}", load_s=DISK_LOAD_S, warm_load_s=RAM_LOAD_S)
        for i in range(1, WORKERS + 1)
    ]


def backlogged_throughout(result: SimResult, start: float, end: float) -> bool:
    """Every user has a job submitted by `start` that starts after `end`."""
    users = {j.user_id for j in result.jobs}
    waiting = {
        j.user_id
        for j in result.jobs
        if j.submitted_at <= start and j.started_at is not None and j.started_at > end
    }
    return users == waiting


def measure(policy: Policy, jobs: list[SimJob]) -> dict[str, float]:
    result = Simulation(policy, workers(), jobs).run()
    p95 = [percentile(w, 95) for w in result.waits_by_user().values()]
    return {
        "jobs": len(result.finished),
        "loads": result.loads_per_100_jobs(),
        "p95_max": max(p95),
        "p95_median": statistics.median(p95),
        "jain": jain_index(list(result.service_in(*WINDOW).values())),
        "backlogged": float(backlogged_throughout(result, *WINDOW)),
        "max_wait": result.max_wait(),
        "longest": max(j.run_s for j in result.jobs),
    }


def row(label: str, fifo: float, fair: float, fmt: str, lower_is_better: bool = True) -> None:
    better, worse = (fair, fifo) if not lower_is_better else (fifo, fair)
    ratio = better / worse if worse > 0 else float("inf")
    direction = "FIFO/fair" if lower_is_better else "fair/FIFO"
    print(f"  {label:<34}{fmt.format(fifo)}{fmt.format(fair)}   {direction} = {ratio:.2f}x")


def report(name: str, jobs: list[SimJob], policy: FairScheduler) -> None:
    fifo = measure(FifoScheduler(), jobs)
    fair = measure(policy, [replace(j) for j in jobs])
    print(f"{name}: {len(jobs)} jobs")
    print(f"  {'':34}{'FIFO':>10}{'fair':>10}")
    row("model loads per 100 jobs", fifo["loads"], fair["loads"], "{:10.1f}")
    row("p95 wait, worst user (s)", fifo["p95_max"], fair["p95_max"], "{:10.1f}")
    row("p95 wait, median user (s)", fifo["p95_median"], fair["p95_median"], "{:10.1f}")
    if name == "rush":
        label = f"Jain, throughput {WINDOW[0]:.0f}-{WINDOW[1]:.0f} s"
        row(label, fifo["jain"], fair["jain"], "{:10.3f}", lower_is_better=False)
        print(
            f"  {'every user backlogged in window':<34}{bool(fifo['backlogged'])!s:>10}"
            f"{bool(fair['backlogged'])!s:>10}"
        )
    bound = wait_bound(policy.max_wait_s, fair["longest"], max(DISK_LOAD_S.values()))
    row("max wait (s)", fifo["max_wait"], fair["max_wait"], "{:10.1f}")
    verdict = "within" if fair["max_wait"] <= bound else "PAST"
    print(
        f"  stated bound {bound:.0f} s (max_wait {policy.max_wait_s:.0f} + 2 x longest job "
        f"{fair['longest']:.1f} + load {max(DISK_LOAD_S.values()):.0f}): fair {verdict}"
    )


def main() -> None:
    began = time.perf_counter()
    policy = FairScheduler()
    print(
        f"{USERS} users, {len(CHECKPOINTS)} checkpoints (Zipf), {WORKERS} workers x 2 hot + 2 "
        f"in RAM, seed {SEED}; FairScheduler(max_wait_s={policy.max_wait_s:.0f}, "
        f"slack_s={policy.slack_s:.0f}, defer_load_s={policy.defer_load_s:.0f})"
    )
    report("rush", rush(SEED), policy)
    report("steady", steady(SEED), policy)
    print("other seeds (loads FIFO/fair, Jain FIFO -> fair, fair max wait / bound):")
    for seed in OTHER_SEEDS:
        line = []
        for name, make in (("rush", rush), ("steady", steady)):
            jobs = make(seed)
            fifo, fair = measure(FifoScheduler(), jobs), measure(policy, [replace(j) for j in jobs])
            bound = wait_bound(policy.max_wait_s, fair["longest"], max(DISK_LOAD_S.values()))
            jain = f", Jain {fifo['jain']:.2f} -> {fair['jain']:.2f}" if name == "rush" else ""
            line.append(
                f"{name} {fifo['loads'] / fair['loads']:.1f}x{jain}, "
                f"{fair['max_wait']:.0f}/{bound:.0f} s"
            )
        print(f"  seed {seed}: " + "; ".join(line))
    print(f"simulated in {time.perf_counter() - began:.2f} s")


if __name__ == "__main__":
    main()
