"""What running a job reports back to the worker service, whatever its kind (generation,
extras): the result, each step for progress, and the signals that stop it. Kept apart from the
engine so that each job kind's module (gpu_worker.extras, ...) uses them without importing the
engine that dispatches to it."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from gpu_worker.protocol import JobTimings, MergedModel, ResultImage


class JobFailed(Exception):
    """The job cannot succeed; `permanent` errors would fail again on retry."""

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


class JobInterrupted(Exception):  # noqa: N818 - a signal, not an error
    """Raised from a step observer: stop the whole job, keep finished images."""


class BatchSkipped(Exception):  # noqa: N818
    """Raised from a step observer: drop the batch being sampled, go on with the next."""


@dataclass
class StepInfo:
    done: int  # steps finished in this job so far (sampling steps; tiles for an extras job)
    total: int  # all steps this job will take (estimate before the first pass)
    iteration: int  # which of n_iter
    latents: Any  # torch.Tensor of the step, for the preview; None: work without latents
    # (an extras job counts tiles, a merge tensors)
    family: str


StepObserver = Callable[[StepInfo], None]


@dataclass
class GenerationResult:
    images: list[ResultImage] = field(default_factory=list)
    timings: JobTimings = field(default_factory=lambda: JobTimings())
    steps_done: int = 0
    interrupted: bool = False
    skipped_batches: int = 0
    handed_over: bool = False  # a training job stopped between epochs for another worker
    model: MergedModel | None = None  # a merge job's output (gpu_worker/merging.py)
    # Images still being encoded (gpu_worker.result_encoding), in order after `images`.
    pending: list[Future[ResultImage]] = field(default_factory=list)

    def await_images(self) -> None:
        """Wait for the images still being encoded; the wait is added to `encode_s` (what the
        job's time spent on them beyond its sampling), and to `total_s` where that was already
        stamped (a batch's job, which leaves the batch before its PNGs are written): a job's
        total covers its images, as `Engine.run`'s does. An image that could not be encoded
        fails the job."""
        started = time.perf_counter()
        try:
            for image in self.pending:
                self.images.append(image.result())
        except Exception as exc:
            raise JobFailed(f"cannot write the result image: {exc}") from exc
        finally:
            self.pending.clear()
        waited = time.perf_counter() - started
        self.timings["encode_s"] = round(self.timings.get("encode_s", 0.0) + waited, 4)
        if "total_s" in self.timings:
            self.timings["total_s"] = round(self.timings["total_s"] + waited, 4)
