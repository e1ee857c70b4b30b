"""A discrete-event simulation of GPU workers for the scheduling policy: tests and bench share it.

Pure Python, deterministic (no clock, no randomness: the caller builds the jobs). Each simulated
worker has an LRU set of checkpoints on its device (`hot_capacity`), an LRU set in RAM
(`warm_capacity`), a load time from disk and from RAM, and runs one job at a time with one more
waiting in its queue, like a gpu_worker with its own Dramatiq queue. A scheduling pass runs after
every submission and every job start and finish, as the platform's dispatcher does; an idle
worker picks up a job `pickup_s` after it was assigned. `usage` is what the dispatcher's inputs
give: the estimated cost of each user's assigned and running jobs plus the GPU seconds of those
finished within `usage_window_s`.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from generation.scheduling.policy import Assignment, Reason, WaitingJob, WorkerView

WORKER_SLOTS = 2  # one running, one waiting (gpu_worker.protocol.WORKER_SLOTS)


@dataclass
class SimJob:
    job_id: str
    user_id: str
    submitted_at: float
    checkpoint: str
    run_s: float  # what the job really takes on the GPU, once its model is loaded
    cost: float | None = None  # what the scheduler is told (an estimate); None: run_s
    weight: float = 1.0
    loras: frozenset[str] = frozenset()
    # Filled by the simulation.
    assigned_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    load: str = ""  # "", "ram" or "disk": what its start had to load

    @property
    def estimate(self) -> float:
        return self.run_s if self.cost is None else self.cost

    @property
    def wait(self) -> float:
        assert self.started_at is not None, f"{self.job_id} never started"
        return self.started_at - self.submitted_at

    def waiting_job(self) -> WaitingJob:
        return WaitingJob(
            job_id=self.job_id,
            user_id=self.user_id,
            weight=self.weight,
            submitted_at=self.submitted_at,
            checkpoint=self.checkpoint,
            loras=self.loras,
            cost=self.estimate,
        )


@dataclass
class SimWorker:
    worker_id: str
    hot_capacity: int = 2
    warm_capacity: int = 2
    inventory: frozenset[str] | None = None  # checkpoint names
    load_s: Mapping[str, float] | float = 6.0  # from disk to the device, per checkpoint
    warm_load_s: Mapping[str, float] | float = 1.5  # from RAM to the device
    hot: list[str] = field(default_factory=list)  # hottest first
    warm: list[str] = field(default_factory=list)
    queue: deque[SimJob] = field(default_factory=deque)
    running: SimJob | None = None
    starting: bool = False  # a pick-up is scheduled
    disk_loads: int = 0
    ram_loads: int = 0

    def view(self) -> WorkerView:
        in_flight = ([self.running] if self.running else []) + list(self.queue)
        return WorkerView(
            worker_id=self.worker_id,
            free_slots=max(0, WORKER_SLOTS - len(in_flight)),
            hot=tuple(self.hot),
            warm=tuple(self.warm),
            hot_capacity=self.hot_capacity,
            inventory=None
            if self.inventory is None
            else frozenset(("checkpoint", name) for name in self.inventory),
            pending=tuple(j.checkpoint for j in in_flight),
            waiting_owners=tuple(j.user_id for j in self.queue),
        )

    def load(self, checkpoint: str) -> tuple[str, float]:
        """Bring `checkpoint` onto the device (LRU): what was loaded and how long it took."""
        if checkpoint in self.hot:
            self.hot.remove(checkpoint)
            self.hot.insert(0, checkpoint)
            return "", 0.0
        if checkpoint in self.warm:
            self.warm.remove(checkpoint)
            kind, seconds = "ram", _per_model(self.warm_load_s, checkpoint)
            self.ram_loads += 1
        else:
            kind, seconds = "disk", _per_model(self.load_s, checkpoint)
            self.disk_loads += 1
        self.hot.insert(0, checkpoint)
        while len(self.hot) > self.hot_capacity:
            self.warm.insert(0, self.hot.pop())
        del self.warm[self.warm_capacity :]
        return kind, seconds


def _per_model(value: Mapping[str, float] | float, checkpoint: str) -> float:
    return value[checkpoint] if isinstance(value, Mapping) else float(value)


class Policy(Protocol):
    def plan(
        self,
        waiting: Sequence[WaitingJob],
        workers: Sequence[WorkerView],
        *,
        now: float,
        usage: Mapping[str, float],
    ) -> list[Assignment]: ...


class FifoScheduler:
    """The baseline: one shared queue, oldest job first to whichever worker has a free slot
    (idle ones first), blind to models; only the inventory is respected."""

    def plan(
        self,
        waiting: Sequence[WaitingJob],
        workers: Sequence[WorkerView],
        *,
        now: float,
        usage: Mapping[str, float],
    ) -> list[Assignment]:
        slots = {w.worker_id: w.free_slots for w in workers}
        queued = {w.worker_id: len(w.pending) for w in workers}
        assignments = []
        for job in sorted(waiting, key=lambda j: (j.submitted_at, j.job_id)):
            able = [
                w
                for w in workers
                if slots[w.worker_id] > 0
                and (w.inventory is None or job.needs() - job.fetchable <= w.inventory)
            ]
            if not able:
                continue
            worker = min(able, key=lambda w: (queued[w.worker_id], w.worker_id))
            slots[worker.worker_id] -= 1
            queued[worker.worker_id] += 1
            reason: Reason = "hot" if job.checkpoint in worker.hot else "load"
            assignments.append(Assignment(job.job_id, worker.worker_id, reason))
        return assignments


@dataclass
class SimResult:
    jobs: list[SimJob]
    workers: list[SimWorker]
    passes: int
    assignments: list[Assignment]

    @property
    def finished(self) -> list[SimJob]:
        return [j for j in self.jobs if j.finished_at is not None]

    def loads(self) -> int:
        return sum(w.disk_loads + w.ram_loads for w in self.workers)

    def loads_per_100_jobs(self) -> float:
        return 100.0 * self.loads() / max(1, len(self.finished))

    def waits_by_user(self) -> dict[str, list[float]]:
        waits: dict[str, list[float]] = {}
        for job in self.jobs:
            if job.started_at is not None:
                waits.setdefault(job.user_id, []).append(job.wait)
        return waits

    def max_wait(self) -> float:
        return max((j.wait for j in self.jobs if j.started_at is not None), default=0.0)

    def service_in(self, start: float, end: float) -> dict[str, float]:
        """GPU seconds of run time each user received between `start` and `end`."""
        service = {j.user_id: 0.0 for j in self.jobs}
        for job in self.jobs:
            if job.started_at is None:
                continue
            begin = job.started_at
            finish = job.finished_at if job.finished_at is not None else math.inf
            run_start = finish - job.run_s
            overlap = min(finish, end) - max(run_start, begin, start)
            if overlap > 0:
                service[job.user_id] += overlap
        return service


class Simulation:
    """Run `jobs` through `workers` under `policy` until every job has finished (or `until`)."""

    def __init__(
        self,
        policy: Policy,
        workers: Iterable[SimWorker],
        jobs: Iterable[SimJob],
        *,
        pickup_s: float = 0.05,
        usage_window_s: float = 600.0,
    ) -> None:
        self.policy = policy
        self.workers = {w.worker_id: w for w in workers}
        self.jobs = sorted(jobs, key=lambda j: (j.submitted_at, j.job_id))
        self.pickup_s = pickup_s
        self.usage_window_s = usage_window_s
        self.now = 0.0
        self.waiting: dict[str, SimJob] = {}
        self.in_flight_cost: dict[str, float] = {}
        self.finished_usage: deque[tuple[float, str, float]] = deque()
        self.passes = 0
        self.assignments: list[Assignment] = []
        self._events: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()

    def at(self, time: float, kind: str, subject: object) -> None:
        heapq.heappush(self._events, (time, next(self._seq), kind, subject))

    def run(self, until: float = math.inf) -> SimResult:
        for job in self.jobs:
            self.at(job.submitted_at, "submit", job)
        while self._events and self._events[0][0] <= until:
            self.now, _seq, kind, subject = heapq.heappop(self._events)
            if kind == "submit":
                assert isinstance(subject, SimJob)
                self.waiting[subject.job_id] = subject
            elif kind == "start":
                assert isinstance(subject, SimWorker)
                subject.starting = False
                self._start_next(subject)
            elif kind == "finish":
                assert isinstance(subject, SimWorker)
                self._finish(subject)
            self.schedule()
        return SimResult(self.jobs, list(self.workers.values()), self.passes, self.assignments)

    def usage(self) -> dict[str, float]:
        horizon = self.now - self.usage_window_s
        while self.finished_usage and self.finished_usage[0][0] < horizon:
            self.finished_usage.popleft()
        usage = dict(self.in_flight_cost)
        for _at, user, seconds in self.finished_usage:
            usage[user] = usage.get(user, 0.0) + seconds
        return usage

    def schedule(self) -> None:
        if not self.waiting:
            return
        views = [w.view() for w in self.workers.values()]
        if not any(v.free_slots for v in views):
            return
        self.passes += 1
        waiting = [j.waiting_job() for j in self.waiting.values()]
        plan = self.policy.plan(waiting, views, now=self.now, usage=self.usage())
        for assignment in plan:
            job = self.waiting.pop(assignment.job_id)
            worker = self.workers[assignment.worker_id]
            assert worker.view().free_slots > 0, f"{worker.worker_id} got more than its slots"
            assert worker.inventory is None or job.checkpoint in worker.inventory
            job.assigned_at, job.worker_id = self.now, worker.worker_id
            worker.queue.append(job)
            cost = self.in_flight_cost.get(job.user_id, 0.0)
            self.in_flight_cost[job.user_id] = cost + job.estimate
            self.assignments.append(assignment)
            if worker.running is None and not worker.starting:
                worker.starting = True
                self.at(self.now + self.pickup_s, "start", worker)

    def _start_next(self, worker: SimWorker) -> None:
        if worker.running is not None or not worker.queue:
            return
        job = worker.queue.popleft()
        job.load, load_seconds = worker.load(job.checkpoint)
        job.started_at = self.now
        worker.running = job
        self.at(self.now + load_seconds + job.run_s, "finish", worker)

    def _finish(self, worker: SimWorker) -> None:
        job = worker.running
        assert job is not None
        job.finished_at = self.now
        worker.running = None
        self.in_flight_cost[job.user_id] -= job.estimate
        self.finished_usage.append((self.now, job.user_id, job.run_s))
        self._start_next(worker)  # its waiting job is already in its queue: no pick-up delay


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all are equal, 1/n when one value takes everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return (total * total) / (len(values) * squares) if squares else 1.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
