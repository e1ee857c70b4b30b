"""Runs one protocol.GenerationRequest with diffusers: txt2img, img2img, hires fix, batches.

The engine holds no global state: it is built with a models folder and a ModelCache, and each
`run` resolves the request's names in the catalogue (a name never becomes a path), takes the
pipeline from the cache, applies the request's LoRAs for this run only, and returns PNGs with
A1111 infotext. Progress and cancellation go through the `observer` called at every step.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from gpu_worker import infotext as infotext_mod
from gpu_worker.annotators import Annotators
from gpu_worker.cache_dir import default_cache_dir
from gpu_worker.catalogue import Catalogue, CatalogueItem, UnknownModel, scan_models
from gpu_worker.codeformer_arch import CodeFormer
from gpu_worker.color_fix import color_fixed
from gpu_worker.conditioning_schedule import ConditioningSchedule, ScheduleSwitcher, build_schedule
from gpu_worker.controlnet import ControlNetError, ControlSet
from gpu_worker.controlnet import fit as fit_control_map
from gpu_worker.extras import run_extras
from gpu_worker.face_detection import find_detector
from gpu_worker.face_restoration import (
    FaceModelError,
    label_of,
    load_face_restorer,
    restore,
)
from gpu_worker.inpainting import (
    decode_mask,
    inpaint_infotext,
    inpaint_pipeline,
    is_inpaint_model,
    sample_inpaint,
)
from gpu_worker.job_outcome import (
    BatchSkipped,
    GenerationResult,
    JobFailed,
    JobInterrupted,
    StepInfo,
    StepObserver,
)
from gpu_worker.loading import (
    ModelLoadError,
    architecture_for_pipe,
    load_checkpoint,
    load_vae,
)
from gpu_worker.masking import InpaintPlan, control_view, plan_inpaint, whole_image_plan
from gpu_worker.model_cache import ModelCache, release_memory
from gpu_worker.noise import consume, initial_noise, variation_of
from gpu_worker.params import CODE_FORMER_WEIGHT, INPAINT_DEFAULTS
from gpu_worker.passes import (
    UPSCALERS,
    denoised_steps,
    hires_inference_steps,
    hires_size,
    steps_problem,
)
from gpu_worker.prompt_encoding import (
    Embedding,
    chunk_count,
    encode_prompt_pair,
    encode_prompt_pair_xl,
    load_embedding,
)
from gpu_worker.prompt_syntax import (
    PromptSyntaxError,
    check_prompt,
    embedding_pattern,
    extract_loras,
)
from gpu_worker.protocol import GenerationRequest
from gpu_worker.result_encoding import ResultEncoder
from gpu_worker.samplers import SamplerChoice, UnknownSampler, build_scheduler, resolve_sampler
from gpu_worker.speed_options import SpeedOptions
from gpu_worker.tiling import circular_padding
from gpu_worker.upscalers import (
    TileSettings,
    UpscalerLoadError,
    load_upscaler,
    run_dtype,
    upscale_image,
)

ENGINE_VERSION = "atelier-0.1"
# How each of passes.LATENT_UPSCALERS resizes latents: (torch interpolate mode, antialias).
LATENT_UPSCALE_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Engine:
    def __init__(
        self,
        *,
        models_dir: Path | str,
        cache: ModelCache,
        allow_pickle: bool = False,
        cache_dir: Path | None = None,
        dtype: torch.dtype | None = None,
        upscale_tiles: TileSettings | None = None,
        encoder: ResultEncoder | None = None,
        speed: SpeedOptions | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.cache = cache
        self.device = cache.device
        self.allow_pickle = allow_pickle
        self.cache_dir = cache_dir or default_cache_dir()
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self._catalogue: Catalogue | None = None
        self._embedding_cache: dict[tuple, Embedding | None] = {}
        # Models fetched for the running job (members' uploads, model_downloads): they shadow
        # the folder's catalogue for that job only. Set and cleared by the worker service.
        self.job_items: dict[tuple[str, str], CatalogueItem] = {}
        self.upscale_tiles = upscale_tiles or TileSettings()
        self.encoder = encoder or ResultEncoder()  # result PNGs and thumbnails, off this thread
        self.speed = speed or SpeedOptions()  # channels_last / torch.compile of each UNet
        # ControlNet preprocessors, the weight-based ones loaded from the models folder
        self.annotators = Annotators(self.models_dir, self.device)
        self._upscaler: tuple[str, torch.nn.Module] | None = None  # the last one used (small)
        # the face restorers by file hash: the last two (Extras may run GFPGAN and CodeFormer)
        self._faces: dict[str, torch.nn.Module] = {}

    # --- catalogue -------------------------------------------------------------------------
    @property
    def catalogue(self) -> Catalogue:
        if self._catalogue is None:
            self.refresh_catalogue()
        assert self._catalogue is not None
        return self._catalogue

    def refresh_catalogue(self) -> Catalogue:
        self._catalogue = scan_models(
            self.models_dir,
            allow_pickle=self.allow_pickle,
            hash_cache=self.cache_dir / "hashes.json",
        )
        return self._catalogue

    def resolve(self, kind: Any, name: str) -> CatalogueItem:
        """Look up a name, rescanning once so a file dropped in since the last scan is found."""
        if (kind, name) in self.job_items:
            return self.job_items[(kind, name)]
        try:
            return self.catalogue.resolve(kind, name)
        except UnknownModel:
            return self.refresh_catalogue().resolve(kind, name)

    # --- pipelines -------------------------------------------------------------------------
    def pipeline(self, checkpoint: CatalogueItem, vae: CatalogueItem | None) -> Any:
        key = (checkpoint.sha256, vae.sha256 if vae else None)

        def load() -> Any:
            pipe = load_checkpoint(checkpoint, dtype=self.dtype, cache_dir=self.cache_dir)
            if vae is not None:
                pipe.vae = load_vae(
                    vae,
                    architecture=architecture_for_pipe(pipe),
                    dtype=self.dtype,
                    cache_dir=self.cache_dir,
                )
            pipe.set_progress_bar_config(disable=True)
            self.speed.apply(pipe)
            return pipe

        return self.cache.get(key, load)

    def embeddings_in(self, text: str) -> list[CatalogueItem]:
        """Embeddings whose names appear as words in the text (safetensors files only)."""
        items = [
            i
            for i in [*self.catalogue.items.values(), *self.job_items.values()]
            if i.kind == "embedding" and i.path.suffix == ".safetensors"
        ]
        pattern = embedding_pattern([i.name for i in items])
        if pattern is None:
            return []
        found = {m.group(0).lower() for m in pattern.finditer(text)}
        return [i for i in items if i.name.lower() in found]

    def _load_embeddings(
        self, items: list[CatalogueItem], pipe: Any, family: str
    ) -> dict[str, Embedding]:
        sdxl = family == "sdxl"
        encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if sdxl else [])
        dims = tuple(int(e.config.hidden_size) for e in encoders)
        loaded: dict[str, Embedding] = {}
        for item in items:
            key = (item.sha256, dims)
            if key not in self._embedding_cache:
                try:
                    embedding = load_embedding(item.name, str(item.path), sdxl=sdxl, dims=dims)
                except Exception as exc:
                    raise JobFailed(f"cannot read embedding {item.filename}: {exc}") from exc
                self._embedding_cache[key] = embedding
            embedding = self._embedding_cache[key]
            if embedding is not None:  # one made for another architecture is skipped, as A1111
                loaded[item.name] = embedding
        return loaded

    def upscaler_model(self, item: CatalogueItem) -> torch.nn.Module:
        """An upscaler model on the device; the last one stays loaded (they are small)."""
        if self._upscaler is None or self._upscaler[0] != item.sha256:
            try:
                model = load_upscaler(item.path, allow_pickle=self.allow_pickle)
            except UpscalerLoadError as exc:
                raise JobFailed(f"cannot use upscaler {item.name}: {exc}") from exc
            dtype = run_dtype(model, self.dtype)
            self._upscaler = (item.sha256, model.to(self.device, dtype))
        return self._upscaler[1]

    def face_restorer(self, item: CatalogueItem) -> Any:
        """A face-restoration model on the device; the last two stay loaded."""
        if item.sha256 not in self._faces:
            try:
                model = load_face_restorer(item.path, allow_pickle=self.allow_pickle)
            except FaceModelError as exc:
                raise JobFailed(f"cannot use face restorer {item.name}: {exc}") from exc
            # CodeFormer in float32, as A1111 runs it (its code statistics and AdaIN)
            dtype = torch.float32 if isinstance(model, CodeFormer) else self.dtype
            while len(self._faces) >= 2:
                self._faces.pop(next(iter(self._faces)))
            self._faces[item.sha256] = model.to(self.device, dtype)
        return self._faces[item.sha256]

    def face_detector(self) -> Path | None:
        """The face detector's ONNX file, when the operator dropped one into the models folder."""
        return find_detector(self.models_dir)

    def _hires_upscaler(self, request: GenerationRequest) -> CatalogueItem | None:
        """The hires fix's upscaler model, when it names one (not a latent mode nor Lanczos)."""
        hires = request.get("hires") if request["mode"] == "txt2img" else None
        if not hires or hires["upscaler"] in UPSCALERS:
            return None
        return self.resolve("upscaler", hires["upscaler"])

    def preload(self, checkpoint_name: str) -> None:
        self.pipeline(self.resolve("checkpoint", checkpoint_name), None)

    # --- running ---------------------------------------------------------------------------
    def prepare(self, request: GenerationRequest) -> Prepared:
        """The request's names resolved and prompts checked; JobFailed when it cannot run."""
        problem = request_problem(request)
        if problem:
            raise JobFailed(problem)
        try:
            checkpoint = self.resolve("checkpoint", request["checkpoint"])
            vae_name = request.get("vae")
            vae = self.resolve("vae", vae_name) if vae_name else None
            check_prompt(request["prompt"])
            check_prompt(request["negative_prompt"])
            prompt, lora_tags = extract_loras(request["prompt"])
            negative, _ = extract_loras(request["negative_prompt"])
            loras = [(self.resolve("lora", t.name), t) for t in lora_tags]
            choice = resolve_sampler(request["sampler"], request.get("scheduler"))
            embedding_items = self.embeddings_in(prompt + "\n" + negative)
            upscaler = self._hires_upscaler(request)
            face_name = request.get("face_restorer") if request.get("restore_faces") else None
            faces = self.resolve("face_restorer", face_name) if face_name else None
        except (UnknownModel, UnknownSampler, PromptSyntaxError) as exc:
            raise JobFailed(str(exc)) from exc
        return Prepared(
            checkpoint, vae, prompt, negative, loras, choice, embedding_items, upscaler, faces
        )

    def new_run(
        self,
        request: GenerationRequest,
        prepared: Prepared,
        pipe: Any,
        observer: StepObserver | None,
    ) -> _Run:
        """A run of the request on the loaded pipeline, its embeddings loaded."""
        run = _Run(self, request, pipe, prepared.choice, observer)
        run.upscaler = prepared.upscaler
        run.faces = self.face_restorer(prepared.faces) if prepared.faces else None
        run.embeddings = self._load_embeddings(prepared.embedding_items, pipe, run.family)
        run.embedding_hashes = {
            i.name: i.sha256[:12] for i in prepared.embedding_items if i.name in run.embeddings
        }
        return run

    def run(
        self, request: GenerationRequest, observer: StepObserver | None = None
    ) -> GenerationResult:
        if request["mode"] == "extras":  # an upscale of a finished image: its own module
            return run_extras(self, request, observer)
        started = time.perf_counter()
        prepared = self.prepare(request)
        checkpoint, vae, loras = prepared.checkpoint, prepared.vae, prepared.loras
        try:
            t0 = time.perf_counter()
            loads_before = self.cache.stats.loads  # one job at a time: the counter is ours
            pipe = self.pipeline(checkpoint, vae)
            load_s = time.perf_counter() - t0
            model_loaded = self.cache.stats.loads > loads_before
            run = self.new_run(request, prepared, pipe, observer)
            tiling = circular_padding(pipe, bool(request.get("tiling")))
            with torch.no_grad(), _applied_loras(pipe, loras), tiling:
                result = run.execute(prepared.prompt, prepared.negative, checkpoint, vae, loras)
        except ModelLoadError as exc:
            self.cache.discard((checkpoint.sha256, vae.sha256 if vae else None))
            raise JobFailed(str(exc)) from exc
        except (JobInterrupted, BatchSkipped, JobFailed):
            raise
        except Exception as exc:
            failed = self.out_of_memory(exc)
            if failed is None:
                raise
            raise failed from exc
        result.timings["model_load_s"] = round(load_s, 4)
        result.timings["model_loaded"] = model_loaded  # from disk, not a cache hit (ops page)
        result.timings["total_s"] = round(time.perf_counter() - started, 4)
        return result

    def out_of_memory(self, exc: BaseException, *, clear_cache: bool = True) -> JobFailed | None:
        """An out-of-memory error during sampling fails the job, the cache freed; None for any
        other error (raised as is: the worker retries it). `clear_cache=False` while other
        jobs still use the loaded models (a batch): only the garbage is freed."""
        if not is_out_of_memory(exc):
            return None
        if clear_cache:
            self.cache.clear()  # give everything back; the next job loads what it needs
        else:
            release_memory(self.device)
        return JobFailed(
            "out of GPU memory: try a smaller size or batch (the worker goes on)",
            permanent=True,
        )


@dataclass
class Prepared:
    """A request's names resolved in the catalogue (Engine.prepare)."""

    checkpoint: CatalogueItem
    vae: CatalogueItem | None
    prompt: str  # without its LoRA tags
    negative: str
    loras: list[tuple[CatalogueItem, Any]]
    choice: SamplerChoice
    embedding_items: list[CatalogueItem]
    upscaler: CatalogueItem | None
    faces: CatalogueItem | None  # the face restorer of `restore_faces`


class _applied_loras:  # noqa: N801 - used as a context manager
    """Load the request's LoRAs as adapters for one run and remove them fully afterwards."""

    def __init__(self, pipe: Any, loras: list[tuple[CatalogueItem, Any]]) -> None:
        self.pipe, self.loras = pipe, loras

    def __enter__(self) -> None:
        if not self.loras:
            return
        names, weights = [], []
        try:
            for index, (item, tag) in enumerate(self.loras):
                name = f"request_lora_{index}"
                self.pipe.load_lora_weights(str(item.path), adapter_name=name)
                names.append(name)
                weights.append({"unet": tag.unet_weight, "text_encoder": tag.text_encoder_weight})
            self.pipe.set_adapters(names, adapter_weights=weights)
        except Exception as exc:
            self.__exit__(None, None, None)
            raise JobFailed(f"cannot apply LoRA {item.filename}: {exc}") from exc

    def __exit__(self, *exc_info: object) -> None:
        if self.loras:
            self.pipe.unload_lora_weights()


class _Run:
    """One request's passes over one pipeline."""

    def __init__(
        self,
        engine: Engine,
        request: GenerationRequest,
        pipe: Any,
        choice: SamplerChoice,
        observer: StepObserver | None,
    ) -> None:
        self.engine, self.request, self.pipe, self.choice = engine, request, pipe, choice
        self.observer = observer
        self.family = architecture_for_pipe(pipe)
        self.done = 0
        self.iteration = 0
        self.total = 0
        self.embeddings: dict[str, Embedding] = {}
        self.embedding_hashes: dict[str, str] = {}
        self.switcher: ScheduleSwitcher | None = None  # prompt editing of the pass running
        self.upscaler: CatalogueItem | None = None  # the hires fix's upscaler model, if any
        self.control: ControlSet | None = None  # the request's ControlNet units
        self.color_fix = contextlib.ExitStack()  # tile_colorfix on the pass running, if any
        self.inpaint_plan: InpaintPlan | None = None
        self.faces: Any = None  # restore_faces: the face-restoration model

    # The step callback diffusers calls; it must return its kwargs.
    def _callback(self, pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        self.done += 1
        if self.observer is not None:
            self.observer(
                StepInfo(
                    self.done,
                    max(self.total, self.done),
                    self.iteration,
                    kwargs["latents"],
                    self.family,
                )
            )
        if self.switcher is not None:
            kwargs = self.switcher.after_step(pipe, kwargs)
        return kwargs

    def _scheduler(self, seed: int) -> Any:
        return build_scheduler(self.choice, self.pipe.scheduler.config, seed=seed)

    def _count(self, steps: int, strength: float | None) -> int:
        scheduler = self._scheduler(0)
        scheduler.set_timesteps(steps)
        count = len(scheduler.timesteps)
        if strength is not None:
            t_start = max(steps - denoised_steps(steps, strength), 0)
            count -= t_start * getattr(scheduler, "order", 1)
        return max(count, 0)

    def execute(
        self,
        prompt: str,
        negative: str,
        checkpoint: CatalogueItem,
        vae: CatalogueItem | None,
        loras: list[tuple[CatalogueItem, Any]],
    ) -> GenerationResult:
        r = self.request
        result = GenerationResult()
        hires = r.get("hires") if r["mode"] == "txt2img" else None
        init = _decode_init_image(r) if r["mode"] == "img2img" else None
        if init is not None and r.get("inpaint"):
            self.inpaint_plan = self._plan_inpaint(init)
        elif is_inpaint_model(self.pipe):  # no mask: the whole image is "masked", as in A1111
            if hires:
                raise JobFailed("hires fix is not available with an inpainting model")
            self.inpaint_plan = whole_image_plan(
                resize_image(init, r["width"], r["height"], int(r.get("resize_mode", 0)))
                if init is not None
                else Image.new("RGB", (r["width"], r["height"]), (127, 127, 127))
            )
        self.control = self._prepare_control(init)
        hires_steps = 0
        if hires:
            hires_steps = hires_inference_steps(r["steps"], hires)
        per_iter = self._count(r["steps"], r["denoising_strength"] if init else None)
        if hires:
            per_iter += self._count(hires_steps, hires["denoising_strength"])
        self.total = per_iter * r["n_iter"]
        schedules = self._schedules(prompt, negative, hires_steps if hires else 0)
        sampling_s = encode_s = 0.0
        for iteration in range(r["n_iter"]):
            self.iteration = iteration
            seeds = [r["seed"] + iteration * r["batch_size"] + b for b in range(r["batch_size"])]
            t0 = time.perf_counter()
            try:
                images, size = self._sample(schedules, seeds, init, hires, hires_steps)
            except BatchSkipped:
                result.skipped_batches += 1
                self.done = per_iter * (iteration + 1)
                continue
            except JobInterrupted:
                result.interrupted = True
                break
            finally:
                self.color_fix.close()
                sampling_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            if self.faces is not None:  # A1111: on each finished image, after any hires pass
                detector = self.engine.face_detector()
                weight = float(self.request.get("code_former_weight", CODE_FORMER_WEIGHT))
                images = [restore(self.faces, i, 1.0, detector, weight) for i in images]
            for seed, image in zip(seeds, images, strict=True):
                text = self._infotext(seed, size, checkpoint, vae, loras, hires)
                # written beside the next iteration's sampling (gpu_worker.result_encoding)
                raw = bool(self.request.get("result_pngs_in_redis"))  # gpu_worker.result_store
                result.pending.append(self.engine.encoder.submit(image, seed, text, raw_png=raw))
            encode_s += time.perf_counter() - t0
        result.steps_done = self.done
        result.timings["sampling_s"] = round(sampling_s, 4)
        result.timings["encode_s"] = round(encode_s, 4)
        result.await_images()
        return result

    def _prepare_control(self, init: Image.Image | None) -> ControlSet | None:
        engine, plan = self.engine, self.inpaint_plan
        place = mask = None
        if plan is not None:  # units see the canvas the pass paints on, and its crop
            init, mask = plan.base, plan.mask
            place = partial(control_view, plan, fit=fit_control_map, resize=resize_image)
        try:
            return ControlSet.prepare(
                self.request,
                resolve=engine.resolve,
                cache=engine.cache,
                dtype=engine.dtype,
                cache_dir=engine.cache_dir,
                family=self.family,
                init_image=init,
                control_map=engine.annotators.control_map,
                place=place,
                mask=mask,
            )
        except (UnknownModel, ControlNetError, ModelLoadError) as exc:
            raise JobFailed(str(exc)) from exc

    def _controlled(
        self, pipe: Any, width: int, height: int, *, kind: str
    ) -> tuple[Any, dict[str, Any]]:
        """The pass's pipeline (kind: txt2img, img2img or inpaint) and its ControlNet
        arguments (none without units)."""
        if self.control is None:
            return pipe, {}
        guidance = self.request["cfg_scale"]
        controlled = self.control.pipeline(
            pipe, kind=kind, scheduler=pipe.scheduler, guidance_scale=guidance
        )
        self.color_fix.close()  # the previous pass's (hires: the first pass's)
        fixes = self.control.color_fixes(controlled, width, height, guidance_scale=guidance)
        self.color_fix.enter_context(color_fixed(controlled.unet, fixes))
        return controlled, self.control.call_kwargs(width, height, img2img=kind != "txt2img")

    def _encode(self, prompt: str, negative: str, min_chunks: int = 0) -> dict[str, Any]:
        clip_skip = max(1, int(self.request.get("clip_skip") or 1))
        embeddings = self.embeddings
        if self.family == "sdxl":
            return encode_prompt_pair_xl(
                self.pipe,
                prompt,
                negative,
                clip_skip=clip_skip,
                embeddings=embeddings,
                min_chunks=min_chunks,
            )
        cond, uncond = encode_prompt_pair(
            self.pipe,
            prompt,
            negative,
            clip_skip=clip_skip,
            embeddings=embeddings,
            min_chunks=min_chunks,
        )
        return {"prompt_embeds": cond, "negative_prompt_embeds": uncond}

    def _schedules(
        self, prompt: str, negative: str, hires_steps: int
    ) -> tuple[ConditioningSchedule, ConditioningSchedule | None]:
        """The conditioning per step of the first pass, and of the hires pass (its own steps,
        edits counted on from the first pass's, as A1111)."""

        def count(text: str) -> int:
            return chunk_count(self.pipe.tokenizer, text, self.embeddings)

        steps = self.request["steps"]
        first = build_schedule(self._encode, count, prompt, negative, steps)
        if not hires_steps:
            return first, None
        hires = self.request["hires"]
        assert hires is not None
        own_steps = int(hires["second_pass_steps"] or steps)
        second = build_schedule(
            self._encode, count, prompt, negative, own_steps, first_pass_steps=steps
        )
        return first, second

    def _generators(self, seeds: list[int]) -> list[torch.Generator]:
        # CPU noise: the same seed gives the same image on any machine (A1111's "RNG: CPU").
        return [torch.Generator("cpu").manual_seed(s) for s in seeds]

    def _common(self, schedule: ConditioningSchedule, seeds: list[int]) -> dict[str, Any]:
        """Arguments of one pipeline call (one pass): its conditioning starts at step 0."""
        self.switcher = ScheduleSwitcher(schedule, len(seeds))
        return {
            **schedule.at(0),
            "num_images_per_prompt": len(seeds),
            "guidance_scale": self.request["cfg_scale"],
            "generator": self._generators(seeds),
            "callback_on_step_end": self._callback,
            "callback_on_step_end_tensor_inputs": ["latents", *self.switcher.tensor_inputs],
        }

    def _sample(
        self,
        schedules: tuple[ConditioningSchedule, ConditioningSchedule | None],
        seeds: list[int],
        init: Image.Image | None,
        hires: Any,
        hires_steps: int,
    ) -> tuple[list[Image.Image], tuple[int, int]]:
        r = self.request
        width, height = r["width"], r["height"]
        if self.inpaint_plan is not None:
            pipe, control = self._controlled(
                inpaint_pipeline(self.pipe, self.family, self._scheduler(seeds[0])),
                *self.inpaint_plan.size,
                kind="inpaint",
            )
            common = self._common(schedules[0], seeds)
            if init is None:  # txt2img on an inpaint checkpoint: its noise may be a variation
                common |= self._variation_latents(seeds, width, height, common["generator"])
            images = sample_inpaint(
                pipe,
                self.inpaint_plan,
                r.get("inpaint") or INPAINT_DEFAULTS,
                strength=r["denoising_strength"] if init is not None else 1.0,
                steps=r["steps"],
                common={**control, **common},
            )
            return images, (width, height)
        if init is not None:
            pipe, control = self._controlled(
                self._img2img_pipe(seeds[0]), width, height, kind="img2img"
            )
            out = pipe(
                image=resize_image(init, width, height, r.get("resize_mode", 0)),
                strength=r["denoising_strength"],
                num_inference_steps=r["steps"],
                **control,
                **self._common(schedules[0], seeds),
            )
            return out.images, (width, height)
        self.pipe.scheduler = self._scheduler(seeds[0])
        latent_upscale = hires and hires["upscaler"] in LATENT_UPSCALE_MODES
        pipe, control = self._controlled(self.pipe, width, height, kind="txt2img")
        common = self._common(schedules[0], seeds)
        out = pipe(
            width=width,
            height=height,
            num_inference_steps=r["steps"],
            output_type="latent" if latent_upscale else "pil",
            **control,
            **common,
            **self._variation_latents(seeds, width, height, common["generator"]),
        )
        if not hires:
            return out.images, (width, height)
        target_w, target_h = hires_size(width, height, hires)
        if latent_upscale:
            mode, antialias = LATENT_UPSCALE_MODES[hires["upscaler"]]
            first: Any = torch.nn.functional.interpolate(
                out.images,
                size=(target_h // 8, target_w // 8),
                mode=mode,
                antialias=antialias and mode in {"bilinear", "bicubic"},
            )
        else:
            first = [self._upscale(im, (target_w, target_h)) for im in out.images]
        pipe, control = self._controlled(
            self._img2img_pipe(seeds[0]), target_w, target_h, kind="img2img"
        )
        out = pipe(
            image=first,
            strength=hires["denoising_strength"],
            num_inference_steps=hires_steps,
            **control,
            **self._common(schedules[1] or schedules[0], seeds),
        )
        return out.images, (width, height)

    def _upscale(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        if self.upscaler is None:
            hires = self.request.get("hires")
            nearest = bool(hires) and hires is not None and hires["upscaler"] == "Nearest"
            resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
            return image.resize(size, resample)
        model = self.engine.upscaler_model(self.upscaler)
        return upscale_image(model, image, size, self.engine.upscale_tiles)

    def _variation_latents(
        self, seeds: list[int], width: int, height: int, generators: list[torch.Generator]
    ) -> dict[str, Any]:
        """`latents` for a txt2img pass with a variation seed; none without one (diffusers
        draws the same noise from the generators then)."""
        variation = variation_of(self.request)
        if not variation.active:
            return {}
        factor = int(getattr(self.pipe, "vae_scale_factor", 8))
        # the latents' channels (an inpaint UNet reads 9: latents, mask and masked image)
        shape = (int(self.pipe.vae.config.latent_channels), height // factor, width // factor)
        noise = initial_noise(seeds, variation, shape)
        consume(generators, shape)
        return {"latents": noise.to(self.pipe.unet.device, self.pipe.unet.dtype)}

    def _plan_inpaint(self, init: Image.Image) -> InpaintPlan:
        r = self.request
        mask = decode_mask(r.get("mask_png_b64"))
        if mask is None:  # outpainting alone: the grown sides are the whole mask
            mask = Image.new("L", init.size, 0)
        inpaint = r.get("inpaint")
        if inpaint is None:
            raise ValueError("an inpaint plan needs the request's inpaint options")
        return plan_inpaint(
            init,
            mask,
            inpaint,
            r["width"],
            r["height"],
            resize_image,
            int(r.get("resize_mode", 0)),
        )

    def _img2img_pipe(self, seed: int) -> Any:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

        cls = (
            StableDiffusionXLImg2ImgPipeline
            if self.family == "sdxl"
            else StableDiffusionImg2ImgPipeline
        )
        pipe = cls.from_pipe(self.pipe, scheduler=self._scheduler(seed))  # shares the weights
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _toolset_infotext(self, seed: int) -> dict[str, Any]:
        """Variation seed and tiling keys, as A1111 writes them (absent when off)."""
        r = self.request
        variation = variation_of(r)
        return {
            "Variation seed": variation.subseed + seed - r["seed"] if variation.strength else None,
            "Variation seed strength": variation.strength or None,
            "Seed resize from": "{}x{}".format(*variation.resize_from)
            if variation.resize_from
            else None,
            "Tiling": "True" if r.get("tiling") else None,
        }

    def _infotext(
        self,
        seed: int,
        size: tuple[int, int],
        checkpoint: CatalogueItem,
        vae: CatalogueItem | None,
        loras: list[tuple[CatalogueItem, Any]],
        hires: Any,
    ) -> str:
        r = self.request
        params: dict[str, Any] = {
            "Steps": r["steps"],
            "Sampler": self.choice.sampler.name,
            "Schedule type": self.choice.infotext_schedule,
            "CFG scale": float(r["cfg_scale"]),
            "Seed": seed,
            "Face restoration": label_of(self.faces) if self.faces is not None else None,
            "Size": f"{size[0]}x{size[1]}",
            "Model hash": checkpoint.short_hash,
            "Model": checkpoint.name,
            "VAE hash": vae.short_hash if vae else None,
            "VAE": vae.name if vae else None,
            "Denoising strength": r["denoising_strength"] if r["mode"] == "img2img" else None,
            "Clip skip": r["clip_skip"] if r.get("clip_skip", 1) > 1 else None,
            **self._toolset_infotext(seed),
            "RNG": "CPU",
        }
        if hires:
            params["Denoising strength"] = hires["denoising_strength"]
            if hires["resize_x"] or hires["resize_y"]:
                params["Hires resize"] = "{}x{}".format(*hires_size(size[0], size[1], hires))
            else:
                params["Hires upscale"] = hires["scale"]
            params["Hires steps"] = hires["second_pass_steps"] or None
            params["Hires upscaler"] = (
                hires["upscaler"]
                if hires["upscaler"] in (*LATENT_UPSCALE_MODES, "Nearest") or self.upscaler
                else "Lanczos"
            )
        if r.get("inpaint") and r["mode"] == "img2img":
            params.update(inpaint_infotext(r["inpaint"]))  # type: ignore[arg-type]
        if loras:
            params["Lora hashes"] = ", ".join(f"{t.name}: {i.sha256[:12]}" for i, t in loras)
        if self.embedding_hashes:
            params["TI hashes"] = ", ".join(f"{n}: {h}" for n, h in self.embedding_hashes.items())
        if self.control is not None:
            params.update(self.control.infotext())
        params["Version"] = ENGINE_VERSION
        return infotext_mod.build_infotext(r["prompt"], r["negative_prompt"], params)


def request_problem(request: GenerationRequest) -> str | None:
    """What makes a request impossible to run (the platform validates first, with the same
    rules; this is the engine's own guard, so a bad message fails at once instead of deep
    inside diffusers)."""
    sizes = [request["width"], request["height"]]
    if any(v < 64 or v % 8 for v in sizes):
        return "width and height must be multiples of 8, at least 64"
    if request["steps"] < 1 or request["batch_size"] < 1 or request["n_iter"] < 1:
        return "steps, batch size and batch count must be at least 1"
    problem = steps_problem(request)
    return problem[1] if problem else None


def _decode_init_image(request: GenerationRequest) -> Image.Image:
    data = request.get("init_image_png_b64")
    if not data:
        raise JobFailed("img2img needs an init image")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
    except Exception as exc:
        raise JobFailed(f"the init image cannot be read: {exc}") from exc
    return image.convert("RGB")


def resize_image(image: Image.Image, width: int, height: int, mode: int) -> Image.Image:
    """A1111 resize modes: 0 just resize, 1 crop and resize, 2 resize and fill (3, latent
    upscale, resizes like 0 here). Works on RGB images and on "L" masks alike."""
    lanczos = Image.Resampling.LANCZOS
    if mode == 1:
        ratio = max(width / image.width, height / image.height)
        w, h = math.ceil(image.width * ratio), math.ceil(image.height * ratio)
        resized = image.resize((w, h), lanczos)
        left, top = (w - width) // 2, (h - height) // 2
        return resized.crop((left, top, left + width, top + height))
    if mode == 2:
        ratio = min(width / image.width, height / image.height)
        w, h = max(1, round(image.width * ratio)), max(1, round(image.height * ratio))
        fitted = image.resize((w, h), lanczos)
        left, top = (width - w) // 2, (height - h) // 2
        canvas = Image.new(image.mode, (width, height))
        # A1111's bars: the fitted image's outermost row (or column) stretched across each.
        for box, size, at in (
            ((0, 0, w, 1), (w, top), (left, 0)),
            ((0, h - 1, w, h), (w, height - top - h), (left, top + h)),
            ((0, 0, 1, h), (left, h), (0, top)),
            ((w - 1, 0, w, h), (width - left - w, h), (left + w, top)),
        ):
            if size[0] > 0 and size[1] > 0:
                canvas.paste(fitted.crop(box).resize(size, Image.Resampling.NEAREST), at)
        canvas.paste(fitted, (left, top))
        return canvas
    return image.resize((width, height), lanczos)
