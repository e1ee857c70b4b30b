"""Fair, model-aware choice of the next jobs for free GPU workers. Pure Python and stateless.

Everything a pass needs comes in as arguments (the waiting jobs, each worker's view from its
heartbeat, each user's recent GPU seconds), so a pass gives the same answer in any platform
process, after any restart; the caller serialises passes and claims the rows.

Fair share. A user's normalised service is `(usage + cost handed out this pass) / weight`. Only
a user's oldest waiting job is a candidate, so a user's jobs are handed out in submit order. The
neediest candidate (lowest normalised service; ties: oldest job, then job id) sets a window:
every user within `slack_s` normalised GPU seconds of it may be served now. With equal costs
that is weighted round-robin, and a backlogged user of weight w gets a share proportional to w.
Between two backlogged users the gap in normalised service stays below `slack_s` + one job's
cost / weight + what the others get while a job waits for a holder of its model (below).

Start order. A user whose job waits behind another on some worker gets the next one queued
there too; elsewhere (where it might start first) only if no other pair in the window can use
the slot, so keeping the order never idles a GPU nor pushes a user past the window.

Model affinity. Within the window the pass picks the (job, worker) pair that loads least: the
checkpoint hot on the worker (after the jobs already pending there), then warm in its RAM, then
on its disk (a load), then one it must first download from the platform's store (a fetch);
within a tier, the fewest seconds of downloads (the job's stored models missing from the
worker's disk cache, at that worker's rate), then an idle worker, then one that has the job's
ControlNets loaded (a smaller load than a checkpoint, but a load), then the neediest user. A
worker only gets a job whose checkpoint, LoRAs and ControlNets are in its inventory, each of its
kind (a LoRA named like a checkpoint is not that checkpoint), or fetchable (in the model store:
members' and staff uploads, keyed by hash since members' names may repeat; a virtual model,
keyed by its recipe hash, computed from its inputs on the worker).

Demand-aware loading. A job whose checkpoint is hot on a working worker waits for that holder's
next free slot (at most its running and its waiting job) instead of loading a copy elsewhere,
unless the work waiting for that checkpoint exceeds what its holders clear in `defer_load_s`,
or an idle worker would otherwise idle while the owner's later jobs queue behind it. When a load
is needed, the pass loads the checkpoint with the most waiting work per holder, on the free
worker whose evicted model has the least waiting work per holder (none if it has room). Popular
models spread over workers and stay hot; SwarmUI and InvokeAI load whatever the next job needs
on whichever GPU is free, which thrashes when jobs alternate between models.

Batch companions. Once no free slot can be filled, a waiting job whose batch key
(gpu_worker.batch_key) equals that of a job running or assigned on a worker goes there too,
up to MAX_BATCH_JOBS of that key: the worker denoises them in one UNet batch
(gpu_worker.batching). Companions are handed out in fair order, one user's oldest job at a
time, and only to a full worker, so below capacity every job still gets a worker to itself.

Ageing and its bound. A job that has waited longer than `max_wait_s` goes before every job that
has not, oldest first, to the best free worker that has its model (no deferral). From then on
only older jobs are handed out before it, so it starts within max_wait_s + the time to clear
the older aged work still waiting + the jobs in flight on its worker (one running, one waiting:
WORKER_SLOTS) + one load. While the workers keep up with arrivals (no older aged backlog) that
is `wait_bound()`: max_wait_s + 2 x the longest job + one load.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gpu_worker.batch_key import MAX_BATCH_JOBS
from gpu_worker.protocol import DEFAULT_DOWNLOAD_BYTES_PER_S, STORED_KEY_PREFIX

Reason = Literal["hot", "warm", "load", "fetch", "aged", "batch"]
HOT, WARM, LOAD, FETCH = 0, 1, 2, 3
_REASONS: tuple[Reason, Reason, Reason, Reason] = ("hot", "warm", "load", "fetch")
MIN_WEIGHT = 1e-6  # a weight of 0 would divide by zero: it means "last", not "never"
# A model as workers hold and fetch it: (kind, name). Names are unique only within a kind.
ModelKey = tuple[str, str]

DEFAULT_MAX_WAIT_S = 600.0
DEFAULT_SLACK_S = 10.0
DEFAULT_DEFER_LOAD_S = 20.0


@dataclass(frozen=True)
class Download:
    """A file in the platform's model store that a job needs: a worker without it fetches it."""

    sha256: str
    size_bytes: int
    # An input of a virtual model (its recipe hash): not needed where that model is computed
    part_of: str = ""


def download_seconds(
    downloads: Iterable[Download], on_disk: Collection[str], bytes_per_s: float
) -> float:
    """Seconds to fetch what is not on a worker's disk yet, at its download rate."""
    missing = {
        d.sha256: d.size_bytes
        for d in downloads
        if d.sha256 not in on_disk and not (d.part_of and d.part_of in on_disk)
    }
    return sum(missing.values()) / max(bytes_per_s, 1.0)


@dataclass(frozen=True)
class WaitingJob:
    job_id: str
    user_id: str
    weight: float  # the owner's tier priority weight (> 0; bigger = larger share)
    submitted_at: float  # seconds, caller's clock; a job returned by a dead worker keeps its own
    checkpoint: str  # catalogue name, or gpu_worker.protocol.stored_model_key(sha256) if stored
    loras: frozenset[str] = frozenset()
    controlnets: frozenset[str] = frozenset()  # catalogue names of its ControlNet units' models
    cost: float = 1.0  # estimated GPU seconds of the job
    fetchable: frozenset[ModelKey] = frozenset()  # stored models: any worker fetches them
    downloads: tuple[Download, ...] = ()  # their files (and a stored VAE's), for fetch times
    # the checkpoint's file, if from the store (a virtual model: computed under its recipe hash)
    stored_checkpoint: Download | None = None
    other_models: frozenset[ModelKey] = frozenset()  # e.g. an extras job's upscalers
    batch_key: str | None = None  # gpu_worker.batch_key: None runs alone

    def needs(self) -> frozenset[ModelKey]:
        """The models a worker must hold (or fetch) to run it."""
        return frozenset(
            ({("checkpoint", self.checkpoint)} if self.checkpoint else set())
            | {("lora", name) for name in self.loras}
            | {("controlnet", name) for name in self.controlnets}
            | self.other_models
        )


@dataclass(frozen=True)
class WorkerView:
    worker_id: str
    free_slots: int  # jobs it may be given now: 2 - (running + assigned-not-started), 0 if draining
    hot: tuple[str, ...] = ()  # checkpoints on the device, hottest first (heartbeat loaded_models)
    warm: tuple[str, ...] = ()  # checkpoints held in RAM
    controlnets: frozenset[str] = frozenset()  # ControlNets on the device (loaded_controlnets)
    hot_capacity: int = 1  # checkpoints that fit on the device at once
    inventory: frozenset[ModelKey] | None = None  # models on its disk; None = unknown
    pending: tuple[str, ...] = ()  # checkpoints of jobs already running/assigned there, in order
    waiting_owners: tuple[str, ...] = ()  # owners of its assigned jobs that have not started
    disk: frozenset[str] = frozenset()  # sha256s in its download cache (heartbeat disk_models)
    download_bytes_per_s: float = DEFAULT_DOWNLOAD_BYTES_PER_S
    batch_keys: tuple[str | None, ...] = ()  # batch keys of its running and assigned jobs
    batches: bool = True  # takes batch companions (not while draining)


@dataclass(frozen=True)
class Assignment:
    job_id: str
    worker_id: str
    reason: Reason  # for logs and the bench


def wait_bound(max_wait_s: float, longest_job_s: float, load_s: float) -> float:
    """The longest a job waits while the workers keep up with arrivals (module docstring)."""
    return max_wait_s + 2 * longest_job_s + load_s


def usage_matters(waiting: Iterable[WaitingJob]) -> bool:
    """Whether users' recent usage can change a plan or the fair order: it only ranks users
    against each other, so not while a single user has jobs waiting (the caller need not read
    it then)."""
    return len({job.user_id for job in waiting}) > 1


def _submit_key(job: WaitingJob) -> tuple[float, str]:
    return (job.submitted_at, job.job_id)


class _Worker:
    """A worker as this pass sees it: its device after the jobs already pending there, updated
    as the pass hands it more."""

    def __init__(self, view: WorkerView) -> None:
        self.view = view
        self.slots = max(0, view.free_slots)
        self.capacity = max(1, view.hot_capacity)
        self.hot: list[str] = list(view.hot)[: self.capacity]
        self.warm: list[str] = [c for c in view.warm if c not in self.hot]
        self.queued = len(view.pending)  # jobs that start before a new one here
        self.keys: dict[str, int] = {}
        for key in view.batch_keys:
            if key is not None:
                self.keys[key] = self.keys.get(key, 0) + 1
        self.controlnets = set(view.controlnets)  # and those the pass's jobs will load here
        self.disk: set[str] = set(view.disk)  # grows with what the pass's jobs fetch here
        for checkpoint in view.pending:
            self.touch(checkpoint)
            if checkpoint.startswith(STORED_KEY_PREFIX):  # fetched for that job by now
                self.disk.add(checkpoint.removeprefix(STORED_KEY_PREFIX))

    @property
    def id(self) -> str:
        return self.view.worker_id

    @property
    def busy(self) -> bool:
        return self.queued > 0

    def has(self, job: WaitingJob) -> bool:
        inventory = self.view.inventory
        return inventory is None or job.needs() - job.fetchable <= inventory

    def batch_room(self, key: str | None) -> int:
        """Companions of batch key `key` it may still take (none unless it holds that key)."""
        held = self.keys.get(key, 0) if key is not None and self.view.batches else 0
        return MAX_BATCH_JOBS - held if held else 0

    def affinity(self, job: WaitingJob) -> int:
        """Where `job`'s checkpoint is here: on the device, in RAM, on disk, or to download."""
        if not job.checkpoint or job.checkpoint in self.hot:  # none to load: any worker is hot
            return HOT
        if job.checkpoint in self.warm:
            return WARM
        stored = job.stored_checkpoint
        return FETCH if stored is not None and stored.sha256 not in self.disk else LOAD

    def download_s(self, job: WaitingJob) -> float:
        if not job.downloads:
            return 0.0
        held = set(self.disk)
        if job.stored_checkpoint is not None and job.checkpoint in (*self.hot, *self.warm):
            held.add(job.stored_checkpoint.sha256)  # in memory: nothing to fetch
        return download_seconds(job.downloads, held, self.view.download_bytes_per_s)

    def controlnets_held(self, job: WaitingJob) -> int:
        """How many of the job's ControlNets this worker has loaded (each one a load saved)."""
        return len(job.controlnets & self.controlnets)

    def victim(self) -> str | None:
        """The checkpoint a load would push off the device (least recently used), if any."""
        return self.hot[-1] if len(self.hot) >= self.capacity else None

    def fetched(self, job: WaitingJob) -> None:
        """`job` runs here: what it downloads is on this worker's disk for the next ones."""
        self.disk.update(d.sha256 for d in job.downloads)
        if job.stored_checkpoint is not None:  # a virtual model is computed into it
            self.disk.add(job.stored_checkpoint.sha256)

    def touch(self, checkpoint: str) -> None:
        """Run a job of `checkpoint` here: it becomes hottest, the LRU one drops to RAM."""
        if not checkpoint:
            return
        if checkpoint in self.hot:
            self.hot.remove(checkpoint)
        elif checkpoint in self.warm:
            self.warm.remove(checkpoint)
        self.hot.insert(0, checkpoint)
        while len(self.hot) > self.capacity:
            self.warm.insert(0, self.hot.pop())


class _Pass:
    """The bookkeeping of one `plan` call: per-user queues, service handed out, demand."""

    def __init__(
        self,
        waiting: Sequence[WaitingJob],
        workers: Sequence[WorkerView],
        usage: Mapping[str, float],
        *,
        defer_load_s: float = 0.0,
    ) -> None:
        self.defer_load_s = defer_load_s
        self.queues = _user_queues(waiting)
        self.weights = {u: max(q[0].weight, MIN_WEIGHT) for u, q in self.queues.items()}
        self.service = {u: float(usage.get(u, 0.0)) for u in self.queues}
        self.demand: dict[str, float] = {}
        for job in waiting:
            self.demand[job.checkpoint] = self.demand.get(job.checkpoint, 0.0) + job.cost
        self.workers = [_Worker(v) for v in sorted(workers, key=lambda v: v.worker_id)]
        # Users with a job waiting behind another on some worker: their next job goes there too,
        # or elsewhere only when no other user's job can use the slot (it might start first).
        self.pins: dict[str, str] = {}
        for view in workers:
            running = len(view.pending) - len(view.waiting_owners)
            for place, owner in enumerate(view.waiting_owners):
                if running > 0 or place > 0:
                    self.pins.setdefault(owner, view.worker_id)

    def normalised(self, user_id: str) -> float:
        return self.service[user_id] / self.weights[user_id]

    def fair_key(self, job: WaitingJob) -> tuple[float, float, str]:
        return (self.normalised(job.user_id), job.submitted_at, job.job_id)

    def holders(self, checkpoint: str) -> int:
        return sum(checkpoint in w.hot for w in self.workers)

    def unmet_demand(self, checkpoint: str) -> float:
        return self.demand.get(checkpoint, 0.0) / (1 + self.holders(checkpoint))

    def eviction_cost(self, worker: _Worker) -> tuple[float, int]:
        """What a load on `worker` costs the others: the waiting work per holder of the model
        it evicts, then (ties) a model with fewer other copies costs more."""
        victim = worker.victim()
        if victim is None:
            return (0.0, -len(self.workers))
        holders = self.holders(victim)
        return (self.demand.get(victim, 0.0) / max(1, holders), -holders)

    def worth_loading(self, job: WaitingJob) -> bool:
        """Load `job`'s checkpoint on a worker that lacks it only if no working worker holds it
        hot or the work waiting for it is more than its holders clear in `defer_load_s`:
        otherwise waiting for a holder's next free slot (at most its running and waiting job)
        beats a load and an eviction. Ageing still overrides."""
        holders = sum(
            job.checkpoint in w.hot and w.has(job) and (w.slots > 0 or w.busy) for w in self.workers
        )  # a draining worker with nothing left to run is no holder
        if not holders:
            return True
        return self.demand.get(job.checkpoint, 0.0) > holders * self.defer_load_s

    def targets(self, job: WaitingJob, *, aged: bool) -> list[_Worker]:
        """Free workers that may take `job` now."""
        able = [w for w in self.workers if w.slots > 0 and w.has(job)]
        if aged or self.worth_loading(job):
            return able
        # A user's later jobs wait behind this one: an idle worker takes it rather than idle.
        blocking = len(self.queues[job.user_id]) > 1
        return [w for w in able if w.affinity(job) == HOT or (blocking and not w.busy)]

    def in_order(self, job: WaitingJob, worker: _Worker) -> bool:
        """False if `job` could start on `worker` before its owner's older job waiting
        elsewhere."""
        pin = self.pins.get(job.user_id)
        return pin is None or pin == worker.id

    def heads(self) -> list[WaitingJob]:
        return [q[0] for q in self.queues.values() if q]

    def assign(self, job: WaitingJob, worker: _Worker) -> None:
        queue = self.queues[job.user_id]
        assert queue[0] is job, "only a user's oldest waiting job is handed out"
        queue.popleft()
        self.service[job.user_id] += job.cost
        self.demand[job.checkpoint] -= job.cost
        if worker.busy:
            self.pins.setdefault(job.user_id, worker.id)
        worker.slots -= 1
        worker.queued += 1
        worker.fetched(job)
        worker.touch(job.checkpoint)
        worker.controlnets |= job.controlnets
        if job.batch_key is not None:
            worker.keys[job.batch_key] = worker.keys.get(job.batch_key, 0) + 1

    def join(self, job: WaitingJob, worker: _Worker) -> None:
        """Hand `job` to `worker` as a companion of its jobs of the same batch key."""
        assert job.batch_key is not None and self.queues[job.user_id][0] is job
        self.queues[job.user_id].popleft()
        self.service[job.user_id] += job.cost
        self.demand[job.checkpoint] -= job.cost
        worker.keys[job.batch_key] = worker.keys.get(job.batch_key, 0) + 1


def _user_queues(waiting: Iterable[WaitingJob]) -> dict[str, deque[WaitingJob]]:
    by_user: dict[str, list[WaitingJob]] = {}
    for job in waiting:
        by_user.setdefault(job.user_id, []).append(job)
    return {u: deque(sorted(jobs, key=_submit_key)) for u, jobs in sorted(by_user.items())}


class FairScheduler:
    """Weighted fair share with model affinity and ageing; see the module docstring."""

    def __init__(
        self,
        *,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        slack_s: float = DEFAULT_SLACK_S,
        defer_load_s: float = DEFAULT_DEFER_LOAD_S,
    ) -> None:
        self.max_wait_s = max_wait_s
        self.slack_s = slack_s
        self.defer_load_s = defer_load_s

    def plan(
        self,
        waiting: Sequence[WaitingJob],
        workers: Sequence[WorkerView],
        *,
        now: float,
        usage: Mapping[str, float],
    ) -> list[Assignment]:
        """Which waiting job each free worker slot gets now (in the order to send them)."""
        state = _Pass(waiting, workers, usage, defer_load_s=self.defer_load_s)
        assignments: list[Assignment] = []
        while (pick := self._pick(state, now)) is not None:
            job, worker, reason = pick
            state.assign(job, worker)
            assignments.append(Assignment(job.job_id, worker.id, reason))
        while (companion := self._companion(state)) is not None:
            job, worker = companion
            state.join(job, worker)
            assignments.append(Assignment(job.job_id, worker.id, "batch"))
        return assignments

    @staticmethod
    def _companion(state: _Pass) -> tuple[WaitingJob, _Worker] | None:
        """The neediest user's oldest job that can join a batch of its key on some worker (the
        worker holding most of that key first: a bigger batch)."""
        for job in sorted(state.heads(), key=state.fair_key):
            able = [w for w in state.workers if w.batch_room(job.batch_key) > 0 and w.has(job)]
            if able:
                return job, min(able, key=lambda w: (-w.keys[job.batch_key or ""], w.id))
        return None

    def fair_order(
        self, waiting: Sequence[WaitingJob], *, now: float, usage: Mapping[str, float]
    ) -> list[WaitingJob]:
        """The order jobs would start in with no model preference: aged jobs oldest first, then
        weighted round-robin by normalised service. Queue positions and ETAs come from it."""
        state = _Pass(waiting, (), usage)
        aged = sorted((j for j in waiting if self._aged(j, now)), key=_submit_key)
        order: list[WaitingJob] = []
        for job in aged:
            state.queues[job.user_id].popleft()
            state.service[job.user_id] += job.cost
            order.append(job)
        # A user's key changes only when its head is taken: a heap of heads, O(n log users).
        heap = [(*state.fair_key(q[0]), u) for u, q in state.queues.items() if q]
        heapq.heapify(heap)
        while heap:
            user = heapq.heappop(heap)[-1]
            job = state.queues[user].popleft()
            state.service[user] += job.cost
            order.append(job)
            if state.queues[user]:
                heapq.heappush(heap, (*state.fair_key(state.queues[user][0]), user))
        return order

    def _aged(self, job: WaitingJob, now: float) -> bool:
        return now - job.submitted_at > self.max_wait_s

    def _pick(self, state: _Pass, now: float) -> tuple[WaitingJob, _Worker, Reason] | None:
        """The next assignment: aged jobs first, then the least loading pair in the fairness
        window. Pairs that keep each user's start order win; one that may start a user's job
        before its older one waiting on another worker is taken only if no other pair in the
        window exists (so order never pushes a user past the window)."""
        heads = state.heads()
        for job in sorted((j for j in heads if self._aged(j, now)), key=_submit_key):
            if targets := state.targets(job, aged=True):
                in_order = [w for w in targets if state.in_order(job, w)] or targets
                worker = min(in_order, key=lambda w: self._aged_key(state, job, w))
                return job, worker, "aged"
        ceiling: float | None = None
        best: tuple[tuple, WaitingJob, _Worker] | None = None
        rank = -1
        for job in sorted(heads, key=state.fair_key):
            if ceiling is not None and state.normalised(job.user_id) > ceiling:
                break  # past the window: the rest are further still
            if not (targets := state.targets(job, aged=False)):
                continue
            if ceiling is None:  # the neediest user that some free worker can serve
                ceiling = state.normalised(job.user_id) + self.slack_s
            rank += 1
            for worker in targets:
                key = (not state.in_order(job, worker), *self._pair_key(state, job, worker, rank))
                if best is None or key < best[0]:
                    best = (key, job, worker)
        if best is None:
            return None
        _key, job, worker = best
        return job, worker, _REASONS[worker.affinity(job)]

    @staticmethod
    def _pair_key(state: _Pass, job: WaitingJob, worker: _Worker, rank: int) -> tuple:
        """Smaller is better: the least loading first (hot, warm, on disk, to fetch), then the
        fewest seconds of downloads; among hot or warm pairs an idle worker, then one holding
        the job's ControlNets, then the neediest user; among loads the most wanted model, on the
        least useful worker, preferring one holding the ControlNets."""
        affinity = worker.affinity(job)
        controlnets = -worker.controlnets_held(job)
        if affinity >= LOAD:
            unmet = state.unmet_demand(job.checkpoint)
            detail: tuple = (-unmet, rank, *state.eviction_cost(worker), controlnets, worker.busy)
        else:
            detail = (worker.busy, controlnets, rank, -len(job.loras & set(worker.hot)))
        return (affinity, round(worker.download_s(job), 1), *detail, worker.id)

    @staticmethod
    def _aged_key(state: _Pass, job: WaitingJob, worker: _Worker) -> tuple:
        affinity = worker.affinity(job)
        cost = state.eviction_cost(worker) if affinity >= LOAD else (0.0, 0)
        download = round(worker.download_s(job), 1)
        return (affinity, download, worker.busy, *cost, -worker.controlnets_held(job), worker.id)
