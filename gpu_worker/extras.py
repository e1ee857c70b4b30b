"""Runs an Extras job (issue 17): upscale a finished image, as A1111's extras tab does.

The sizes and the number of progress units come from gpu_worker.extras_plan (the platform priced
and limited the job with the same numbers). Upscaler 1 makes the image; upscaler 2, when it runs,
upscales the source again and is blended in at its visibility; "to width x height" with crop
centres the result on a canvas of exactly the target; then face restoration
(gpu_worker.face_restoration) when asked. Progress counts tiles; a cancel stops at the next tile.
The result keeps the source's `parameters` chunk (PNG Info still shows how it was made) and adds
A1111's `postprocessing` chunk ("Postprocess upscale by: 2, Postprocess upscaler: ...").
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any, Protocol

from PIL import Image, PngImagePlugin

from gpu_worker import extras_plan, face_restoration
from gpu_worker.catalogue import CatalogueItem, UnknownModel
from gpu_worker.infotext import PNG_CHUNK, build_infotext, read_infotext
from gpu_worker.job_outcome import GenerationResult, JobFailed, JobInterrupted, StepInfo
from gpu_worker.job_outcome import StepObserver as Observer
from gpu_worker.params import ExtrasParams
from gpu_worker.protocol import GenerationRequest
from gpu_worker.result_encoding import packed_result
from gpu_worker.upscalers import TileSettings, upscale_image

POSTPROCESSING_CHUNK = "postprocessing"  # A1111's PNG text chunk for extras' own infotext
RESAMPLING = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}


class ExtrasEngine(Protocol):
    """What an extras job needs from the engine (gpu_worker.engine.Engine)."""

    upscale_tiles: TileSettings

    def resolve(self, kind: Any, name: str) -> CatalogueItem: ...

    def upscaler_model(self, item: CatalogueItem) -> Any: ...

    def face_restorer(self, item: CatalogueItem) -> Any: ...

    def face_detector(self) -> Any: ...


class _Progress:
    """Counts the worker's own units (its tile grid) and reports them on the platform's scale
    (extras_plan's default grid), so `Job.total_steps` and a cancel's share stay right."""

    def __init__(self, extras: ExtrasParams, tiles: TileSettings, observer: Observer | None):
        self.planned = extras_plan.progress_units(extras)
        self.actual = extras_plan.progress_units(extras, tiles.size, tiles.overlap)
        self.observer = observer
        self.count = 0

    @property
    def done(self) -> int:
        return min(self.planned, self.count * self.planned // max(1, self.actual))

    def tick(self) -> None:
        self.count += 1
        if self.observer is not None:
            self.observer(StepInfo(self.done, self.planned, 0, None, "extras"))


def run_extras(
    engine: ExtrasEngine, request: GenerationRequest, observer: Observer | None = None
) -> GenerationResult:
    started = time.perf_counter()
    extras = request.get("extras")
    if not extras:
        raise JobFailed("an extras job needs its extras parameters")
    source, source_infotext = _decode_source(request)
    if source.size != (extras["source_width"], extras["source_height"]):
        raise JobFailed("the source image is not the size the job was priced for")
    progress = _Progress(extras, engine.upscale_tiles, observer)
    result = GenerationResult()
    try:
        image = _postprocess(engine, extras, source, progress)
    except JobInterrupted:
        result.interrupted = True
        result.steps_done = progress.done
        return result
    except UnknownModel as exc:
        raise JobFailed(str(exc)) from exc
    text = build_line(extras_plan.infotext_fields(extras))
    png = _png(image, source_infotext, text)
    raw = bool(request.get("result_pngs_in_redis"))  # (gpu_worker.result_store)
    result.images.append(
        packed_result(image, png, int(request.get("seed") or 0), text, raw_png=raw)
    )
    result.steps_done = progress.planned
    result.timings["total_s"] = round(time.perf_counter() - started, 4)
    return result


def _postprocess(
    engine: ExtrasEngine, extras: ExtrasParams, source: Image.Image, progress: _Progress
) -> Image.Image:
    image = source
    if extras["upscaler_1"] != "None":
        size = extras_plan.upscaled_size(extras)
        image = _upscale(engine, extras["upscaler_1"], source, size, progress)
        if extras_plan.second_upscaler_runs(extras):
            second = _upscale(engine, extras["upscaler_2"], source, size, progress)
            image = Image.blend(image, second, float(extras["upscaler_2_visibility"]))
        if extras["resize_mode"] == 1 and extras["crop"]:
            image = _crop_to(image, extras["target_width"], extras["target_height"])
    return face_restoration.restore_for_extras(engine, extras, image, progress.tick)


def _upscale(
    engine: ExtrasEngine,
    name: str,
    image: Image.Image,
    size: tuple[int, int],
    progress: _Progress,
) -> Image.Image:
    if name in RESAMPLING:
        resized = image.resize(size, RESAMPLING[name])
        progress.tick()
        return resized
    model = engine.upscaler_model(engine.resolve("upscaler", name))
    return upscale_image(model, image, size, engine.upscale_tiles, on_tile=progress.tick)


def _crop_to(image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's crop: the upscaled image centred on a canvas of exactly width x height."""
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, (width // 2 - image.width // 2, height // 2 - image.height // 2))
    return canvas


def build_line(fields: dict[str, Any]) -> str:
    """The extras infotext: one line of "Key: value" pairs (no prompt)."""
    return build_infotext("", "", fields).strip()


def _decode_source(request: GenerationRequest) -> tuple[Image.Image, str | None]:
    data = request.get("init_image_png_b64")
    if not data:
        raise JobFailed("an extras job needs its source image")
    try:
        raw = base64.b64decode(data)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except Exception as exc:
        raise JobFailed(f"the source image cannot be read: {exc}") from exc
    return image.convert("RGB"), read_infotext(raw)


def _png(image: Image.Image, parameters: str | None, postprocessing: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text(PNG_CHUNK, parameters)
    info.add_text(POSTPROCESSING_CHUNK, postprocessing)
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info)
    return out.getvalue()
