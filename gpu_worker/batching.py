"""Cross-user batching: compatible jobs (gpu_worker.batch_key) denoise in one UNet batch.

The runner drives the sampler loop itself, one model evaluation per tick, instead of calling
the diffusers pipeline once per job. Each job keeps what diffusers' StableDiffusionPipeline
(SD 1.x/2.x) or StableDiffusionXLPipeline would give it alone: its own scheduler instance,
timesteps, CPU generators (seed), prompt embeddings (and SDXL's pooled embeddings and size
ids), CFG scale, step count and step observer (progress and cancel). A tick builds one UNet
input from every active job's scaled latents (negative and positive rows per image, as the
pipeline stacks them), with per-row timesteps and conditioning (gpu_worker/batch_families.py),
then splits the output per job, applies that job's CFG and steps its own scheduler. So jobs of
different step counts and CFG scales share the calls, and a job joins (between ticks, from
`take_more`) or leaves (done, interrupted, skipped, failed) at a step boundary while the others
go on.

A crash of the batch itself (the shared UNet call out of memory: a batch of SDXL jobs at 1024 px
needs far more than one of them) is no one job's fault: the runner frees device memory and hands
the jobs it left unreported back to its caller, which runs each again alone (the serial path).

The only difference from a serial render is the batch itself: the UNet's kernels may sum in
another order for another batch size, so pixels may differ by a rounding step; the bench
(bench/bench_batching.py) measures the largest difference and the tests bound it.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gpu_worker.batch_families import (
    TextRows,
    batchable,
    decode,
    execution_device,
    is_sdxl,
    text_rows,
)
from gpu_worker.batch_key import MAX_BATCH_IMAGES
from gpu_worker.engine import (
    BatchSkipped,
    Engine,
    GenerationResult,
    JobFailed,
    JobInterrupted,
    Prepared,
    StepInfo,
    StepObserver,
    _applied_loras,
    _Run,
)
from gpu_worker.inpainting import is_inpaint_model
from gpu_worker.loading import ModelLoadError
from gpu_worker.model_cache import release_memory
from gpu_worker.protocol import GenerationRequest

log = logging.getLogger(__name__)

Outcome = GenerationResult | BaseException


@dataclass
class BatchJob:
    """One request in a batch; `on_done` is called once with its result or its error."""

    request: GenerationRequest
    observer: StepObserver | None
    on_done: Callable[[BatchJob, Outcome], None]
    started: float = field(default_factory=time.perf_counter)
    # --- set when it joins -----------------------------------------------------------------
    prepared: Prepared | None = None
    run: _Run | None = None
    scheduler: Any = None
    timesteps: list[torch.Tensor] = field(default_factory=list)
    index: int = 0  # the next timestep
    latents: torch.Tensor | None = None
    device: torch.device | None = None  # the pipeline's execution device (its batch's)
    text: TextRows | None = None  # its conditioning rows
    guided: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # scheduler.step's eta / generator
    generators: list[torch.Generator] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    sampling_s: float = 0.0
    joined_at: float = 0.0
    peak: int = 1  # the most jobs that shared one UNet call with it (itself included)
    timings: dict[str, Any] = field(default_factory=dict)
    told: bool = False  # on_done was called

    def finish(self, outcome: Outcome) -> None:
        """Tell the job's owner how it ended, once."""
        if not self.told:
            self.told = True
            self.on_done(self, outcome)

    @property
    def images(self) -> int:
        return int(self.request["batch_size"])

    @property
    def rows(self) -> int:
        return self.images * (2 if self.guided else 1)


# What `take_more(room)` returns: jobs whose requests share the batch's key, at most `room`
# images in all; the service's `_joiners` claims them from the worker's queue.
TakeMore = Callable[[int], list[BatchJob]]


class BatchRunner:
    def __init__(self, engine: Engine, *, max_images: int = MAX_BATCH_IMAGES) -> None:
        self.engine = engine
        self.max_images = max(1, max_images)

    @staticmethod
    def supports(pipe: Any) -> bool:
        """Whether this pipeline's UNet batches as the runner drives it (SD 1.x / 2.x or SDXL
        with a plain 4-channel UNet; inpainting UNets, LCM's guidance embedding and SDXL
        refiners run alone)."""
        unet = getattr(pipe, "unet", None)
        return (
            unet is not None
            and batchable(pipe)
            and unet.config.time_cond_proj_dim is None
            and not is_inpaint_model(pipe)
        )

    # --- the batch ---------------------------------------------------------------------------
    def run(self, first: BatchJob, take_more: TakeMore) -> list[BatchJob]:
        """Run `first` and every job `take_more` hands in, until none is left. Each job's
        outcome, a result or its own error, goes to its `on_done`. An unexpected error of the
        batch itself fails none of them: the jobs not told yet are returned, in the order they
        joined, for the caller to run each alone. Only what is no Exception (Dramatiq's time
        limit, a stop) is raised again, after every job in the batch was told."""
        joined: list[BatchJob] = [first]  # every job handed in, in order
        try:
            self._run(first, take_more, joined)
            return []
        except Exception as exc:
            stranded = [job for job in joined if not job.told]
            names = ", ".join(job.request["job_id"] for job in stranded)
            log.warning(
                "the batch of %s failed (%s: %s), not one job's fault: %d job(s) run again "
                "alone: %s",
                first.request["job_id"], type(exc).__name__, exc, len(stranded), names,
                exc_info=exc,
            )  # fmt: skip
        except BaseException as exc:  # a time limit or a stop: tell every job, then go on up
            for job in joined:
                job.finish(exc)
            raise
        # Out of the handler, the error's frames (the batch's activations) are released: give
        # their memory back before the jobs run again one by one.
        release_memory(self.engine.device)
        return stranded

    def _run(self, first: BatchJob, take_more: TakeMore, joined: list[BatchJob]) -> None:
        engine = self.engine
        try:
            prepared = engine.prepare(first.request)
        except JobFailed as exc:
            first.finish(exc)
            return
        checkpoint, vae = prepared.checkpoint, prepared.vae
        t0 = time.perf_counter()
        loads_before = engine.cache.stats.loads
        try:
            pipe = engine.pipeline(checkpoint, vae)
        except ModelLoadError as exc:
            engine.cache.discard((checkpoint.sha256, vae.sha256 if vae else None))
            first.finish(JobFailed(str(exc)))
            return
        load = {
            "model_load_s": round(time.perf_counter() - t0, 4),
            "model_loaded": engine.cache.stats.loads > loads_before,
        }
        if not self.supports(pipe):  # this checkpoint runs alone: the engine's own path
            outcome: Outcome
            try:
                outcome = engine.run(first.request, first.observer)
            except Exception as exc:
                outcome = exc
            first.finish(outcome)
            return
        try:
            loras = _applied_loras(pipe, prepared.loras)
            loras.__enter__()
        except JobFailed as exc:
            first.finish(exc)
            return
        try:
            with torch.no_grad():
                self._loop(first, prepared, pipe, load, take_more, joined)
        finally:
            loras.__exit__(None, None, None)

    def _loop(
        self,
        first: BatchJob,
        prepared: Prepared,
        pipe: Any,
        load: dict[str, Any],
        take_more: TakeMore,
        joined: list[BatchJob],
    ) -> None:
        engine = self.engine
        active: list[BatchJob] = []
        device = execution_device(pipe)  # the batch's pipeline stays: read once
        self._join(first, prepared, pipe, device, load, active)
        while active:
            room = self.max_images - sum(job.images for job in active)
            taken = take_more(room) if room > 0 else []
            joined.extend(taken)
            for job in taken:
                try:
                    job_prepared = engine.prepare(job.request)
                except JobFailed as exc:
                    job.finish(exc)
                    continue
                joined_load = {**load, "model_loaded": False}
                self._join(job, job_prepared, pipe, device, joined_load, active)
            self._tick(pipe, active)  # its error is the batch's, for `run`

    def _join(
        self,
        job: BatchJob,
        prepared: Prepared,
        pipe: Any,
        device: torch.device,
        load: dict[str, Any],
        active: list[BatchJob],
    ) -> None:
        job.prepared, job.timings = prepared, dict(load)
        job.joined_at = time.perf_counter()
        try:
            self._setup(job, prepared, pipe, device)
        except Exception as exc:  # this job cannot start (a bad embedding...): it alone fails
            # The others go on with the loaded models: out of memory must not clear the cache.
            job.finish(self.engine.out_of_memory(exc, clear_cache=False) or exc)
            return
        active.append(job)

    def _setup(self, job: BatchJob, prepared: Prepared, pipe: Any, device: torch.device) -> None:
        """Set the job up as the engine and the pipeline's __call__ do before the denoising
        loop, in the same order (so the same noise and schedule)."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
            retrieve_timesteps,
        )
        from diffusers.utils.torch_utils import randn_tensor

        r = job.request
        run = job.run = self.engine.new_run(r, prepared, pipe, job.observer)
        run.total = run._count(r["steps"], None)
        conditioning = run._schedules(prepared.prompt, prepared.negative, 0)[0].at(0)
        job.device = device
        job.guided = float(r["cfg_scale"]) > 1
        size = (r["width"], r["height"])
        job.text = text_rows(pipe, conditioning, job.images, job.guided, size, device)
        job.seeds = [r["seed"] + b for b in range(job.images)]
        job.scheduler = run._scheduler(job.seeds[0])
        pipe.scheduler = job.scheduler  # as the serial path leaves it (the next base config)
        timesteps, _ = retrieve_timesteps(job.scheduler, r["steps"], device)
        job.timesteps = list(timesteps)
        if is_sdxl(pipe) and hasattr(job.scheduler, "set_begin_index"):
            job.scheduler.set_begin_index(0)  # as StableDiffusionXLPipeline, before its loop
        job.generators = run._generators(job.seeds)
        scale = int(pipe.vae_scale_factor)
        shape = (
            job.images,
            pipe.unet.config.in_channels,
            r["height"] // scale,
            r["width"] // scale,
        )
        dtype = job.text.hidden.dtype
        noise = randn_tensor(shape, generator=job.generators, device=device, dtype=dtype)
        job.latents = noise * job.scheduler.init_noise_sigma
        accepted = set(inspect.signature(job.scheduler.step).parameters)
        job.extra = {"eta": 0.0} if "eta" in accepted else {}
        if "generator" in accepted:
            job.extra["generator"] = job.generators

    def _tick(self, pipe: Any, active: list[BatchJob]) -> None:
        """One UNet evaluation for every active job, then each job's own step."""
        started = time.perf_counter()
        inputs, times = [], []
        for job in active:
            assert job.latents is not None
            t = job.timesteps[job.index]
            latents = torch.cat([job.latents] * 2) if job.guided else job.latents
            inputs.append(job.scheduler.scale_model_input(latents, t))
            times.append(t.reshape(1).expand(job.rows))
            job.peak = max(job.peak, len(active))
        outputs = _unet_by_length(pipe.unet, active, inputs, times)
        for job in active:
            job.sampling_s += (time.perf_counter() - started) / len(active)
        for job, noise in zip(list(active), outputs, strict=True):
            t0 = time.perf_counter()
            finished = self._step(job, noise, pipe)
            job.sampling_s += time.perf_counter() - t0
            if finished is not None:
                active.remove(job)
                job.finish(finished)

    def _step(self, job: BatchJob, noise: torch.Tensor, pipe: Any) -> Outcome | None:
        """The job's own scheduler step and step callback; its outcome once it leaves."""
        run = job.run
        assert run is not None
        if job.guided:
            uncond, text = noise.chunk(2)
            noise = uncond + float(job.request["cfg_scale"]) * (text - uncond)
        t = job.timesteps[job.index]
        job.latents = job.scheduler.step(noise, t, job.latents, **job.extra, return_dict=False)[0]
        job.index += 1
        run.done += 1
        try:
            if run.observer is not None:
                run.observer(
                    StepInfo(run.done, max(run.total, run.done), 0, job.latents, run.family)
                )
        except JobInterrupted:
            return self._result(job, interrupted=True)
        except BatchSkipped:
            run.done = run.total  # as the serial path counts a skipped batch
            result = self._result(job)
            result.skipped_batches = 1
            return result
        except Exception as exc:
            return exc
        if job.index < len(job.timesteps):
            return None
        try:
            return self._finish(job, pipe)
        except Exception as exc:
            return exc

    def _finish(self, job: BatchJob, pipe: Any) -> GenerationResult:
        """Decode the job's latents and hand its images to the encoder, as the engine does."""
        run, prepared = job.run, job.prepared
        assert run is not None and prepared is not None and job.text is not None
        assert job.latents is not None and job.device is not None
        t0 = time.perf_counter()
        images = decode(pipe, job.latents, job.generators, job.text.hidden.dtype, job.device)
        job.sampling_s += time.perf_counter() - t0
        result = self._result(job)
        t0 = time.perf_counter()
        size = (job.request["width"], job.request["height"])
        for seed, image in zip(job.seeds, images, strict=True):
            text = run._infotext(
                seed, size, prepared.checkpoint, prepared.vae, prepared.loras, None
            )
            # Not waited for here: the batch's other jobs step on while its PNGs are written;
            # whoever reports the job awaits them (`GenerationResult.await_images`).
            raw = bool(job.request.get("result_pngs_in_redis"))
            result.pending.append(self.engine.encoder.submit(image, seed, text, raw_png=raw))
        result.timings["encode_s"] = round(time.perf_counter() - t0, 4)
        result.timings["total_s"] = round(time.perf_counter() - job.started, 4)
        return result

    @staticmethod
    def _result(job: BatchJob, *, interrupted: bool = False) -> GenerationResult:
        assert job.run is not None
        result = GenerationResult(steps_done=job.run.done, interrupted=interrupted)
        result.timings.update(job.timings)  # type: ignore[typeddict-item]
        result.timings["sampling_s"] = round(job.sampling_s, 4)
        result.timings["total_s"] = round(time.perf_counter() - job.started, 4)
        result.timings["batch_jobs"] = job.peak
        return result


def _unet_by_length(
    unet: Any,
    active: list[BatchJob],
    inputs: list[torch.Tensor],
    times: list[torch.Tensor],
) -> list[torch.Tensor]:
    """The UNet's noise prediction for each job: one call per text length (a long prompt has
    more 77-token chunks; padding it would change the attention), in the jobs' order."""
    texts: list[TextRows] = []
    by_length: dict[int, list[int]] = {}
    for position, job in enumerate(active):
        assert job.text is not None
        texts.append(job.text)
        by_length.setdefault(int(job.text.hidden.shape[1]), []).append(position)
    outputs: list[torch.Tensor | None] = [None] * len(active)
    for positions in by_length.values():
        sample = torch.cat([inputs[p] for p in positions])
        timesteps = torch.cat([times[p] for p in positions])
        hidden, added = _stacked([texts[p] for p in positions])
        noise = unet(
            sample,
            timesteps,
            encoder_hidden_states=hidden,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]
        for p, part in zip(
            positions, noise.split([active[p].rows for p in positions]), strict=True
        ):
            outputs[p] = part
    return [o for o in outputs if o is not None]


def _stacked(texts: list[TextRows]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """The jobs' conditioning rows as one UNet call's: hidden states and, for SDXL, the added
    conditioning (None for SD 1.x, as its pipeline passes)."""
    hidden = torch.cat([t.hidden for t in texts])
    names = texts[0].added.keys()
    added = {name: torch.cat([t.added[name] for t in texts]) for name in names}
    return hidden, added or None
