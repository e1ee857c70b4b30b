"""ControlNet units in the engine: loading ControlNets offline, preparing each unit's control map,
and running the pipeline's ControlNet variant with every unit's weight, step window and mode.

The engine calls three things (engine.py keeps only small hooks): `ControlSet.prepare` once per
job, `ControlSet.pipeline` for each pass (txt2img, img2img, inpaint or the hires pass), and
`ControlSet.infotext` for the image's parameters. ControlNets sit in the worker's ModelCache under
`controlnet:<sha256>` keys (string keys: the heartbeat's checkpoint list skips them).

On an inpaint pass (img2img with a mask, or outpainting) the units run with diffusers' ControlNet
inpaint pipelines, for ordinary and 9-channel inpaint checkpoints alike. Each unit's image is
lined up with what the pass denoises (the canvas, and for "only masked" the same crop as the
source, gpu_worker.masking.control_view) before its preprocessor runs; `inpaint_only` (the
inpaint ControlNet's preprocessor) is that image with the masked pixels set to -1, as
control_v11p_sd15_inpaint was trained.

Control modes, as sd-webui-controlnet describes them: "Balanced" adds the ControlNet's residuals
at the unit's weight; "My prompt is more important" scales them down towards the shallow layers
(0.825 per layer from the deepest); "ControlNet is more important" does the same but adds them
to the conditional half of classifier-free guidance only, so the prompt's pull is weaker.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
)
from diffusers.models.controlnets.controlnet import ControlNetModel
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from gpu_worker.catalogue import CatalogueItem
from gpu_worker.color_fix import ColorFix, encode_colors
from gpu_worker.infotext import controlnet_unit_text
from gpu_worker.loading import SHIPPED_CONFIGS, ModelLoadError, quiet_libraries
from gpu_worker.model_cache import ModelCache
from gpu_worker.params import ControlNetUnit
from gpu_worker.preprocessors import (
    COLOR_FIX,
    INPAINT_ONLY,
    pixel_perfect_resolution,
    shuffle_seed,
)

CACHE_PREFIX = "controlnet:"
SOFT_INJECTION_BASE = 0.825
PIPELINES = {  # (family is SDXL, pass kind) -> the ControlNet variant of the pipeline
    (False, "txt2img"): StableDiffusionControlNetPipeline,
    (False, "img2img"): StableDiffusionControlNetImg2ImgPipeline,
    (False, "inpaint"): StableDiffusionControlNetInpaintPipeline,
    (True, "txt2img"): StableDiffusionXLControlNetPipeline,
    (True, "img2img"): StableDiffusionXLControlNetImg2ImgPipeline,
    (True, "inpaint"): StableDiffusionXLControlNetInpaintPipeline,
}


class ControlNetError(ValueError):
    """A unit that cannot run (its message is fit to show the job's owner)."""


# --- loading ---------------------------------------------------------------------------------


def controlnet_config_folder(architecture: str, cache_dir: Path) -> Path:
    """A ControlNet config for an architecture, derived from the UNet config we ship: a
    ControlNet is the UNet's encoder and middle block, so it shares their settings."""
    unet_config = SHIPPED_CONFIGS / architecture / "unet" / "config.json"
    if not unet_config.is_file():
        raise ModelLoadError(f"no shipped config for ControlNets of {architecture!r} models")
    target = cache_dir / "configs" / f"controlnet-{architecture}"
    if (target / "config.json").is_file():
        return target
    accepted = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    config = {k: v for k, v in json.loads(unet_config.read_text()).items() if k in accepted}
    config["_class_name"] = "ControlNetModel"
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def load_controlnet(item: CatalogueItem, *, dtype: Any, cache_dir: Path) -> ControlNetModel:
    """A ControlNet from a single file (the original layout or diffusers') or a diffusers
    folder (config.json + diffusion_pytorch_model.safetensors), offline."""
    quiet_libraries()
    if not item.path.exists():
        raise ModelLoadError(f"ControlNet file {item.filename} is missing")
    if item.is_folder:
        try:
            folder_model = ControlNetModel.from_pretrained(
                str(item.path), local_files_only=True, use_safetensors=True, torch_dtype=dtype
            )
        except Exception as exc:  # diffusers raises many kinds for a bad folder
            raise ModelLoadError(f"cannot load ControlNet folder {item.filename}: {exc}") from exc
        return folder_model.eval()
    architecture = item.architecture or {"sd1": "sd1", "sdxl": "sdxl"}.get(item.family)
    if architecture is None:
        raise ModelLoadError(f"{item.filename}: ControlNets for {item.family!r} are not supported")
    folder = controlnet_config_folder(architecture, cache_dir)
    try:
        model = ControlNetModel.from_single_file(
            str(item.path), config=str(folder), local_files_only=True, torch_dtype=dtype
        )
    except Exception as exc:  # safetensors/diffusers raise many kinds for a bad file
        raise ModelLoadError(f"cannot load ControlNet file {item.filename}: {exc}") from exc
    return model.eval()


# --- the units' ControlNets together ---------------------------------------------------------


class UnitControlNets(MultiControlNetModel):
    """MultiControlNet whose units each keep their own control mode. A unit outside its step
    window (the pipeline passes scale 0) is not run at all: weight 0 is exactly no unit."""

    def __init__(self, nets: list[ControlNetModel], modes: list[str]) -> None:
        super().__init__(nets)
        self.modes = modes
        self.halves = False  # classifier-free guidance: the batch is [unconditional, conditional]

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: list[torch.Tensor],
        conditioning_scale: list[float],
        return_dict: bool = True,
        **kwargs: Any,
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        kwargs.pop("guess_mode", None)
        down_sum: list[torch.Tensor] | None = None
        mid_sum: torch.Tensor | None = None
        for image, scale, net, mode in zip(
            controlnet_cond, conditioning_scale, self.nets, self.modes, strict=True
        ):
            if scale == 0:
                continue
            down, mid = net(
                sample=sample,
                timestep=timestep,
                encoder_hidden_states=encoder_hidden_states,
                controlnet_cond=image,
                conditioning_scale=scale,
                return_dict=False,
                **kwargs,
            )
            residuals = [*down, mid]
            if mode != "balanced":
                last = len(residuals) - 1
                residuals = [r * SOFT_INJECTION_BASE ** (last - i) for i, r in enumerate(residuals)]
            if mode == "controlnet" and self.halves:
                residuals = [torch.cat([torch.zeros_like(r), r]) for r in _cond_half(residuals)]
            *down, mid = residuals
            if down_sum is None or mid_sum is None:
                down_sum, mid_sum = down, mid
            else:
                down_sum = [a + b for a, b in zip(down_sum, down, strict=True)]
                mid_sum = mid_sum + mid
        return down_sum, mid_sum


def _cond_half(residuals: list[torch.Tensor]) -> list[torch.Tensor]:
    return [r.chunk(2)[1] for r in residuals]


# --- one job's units -------------------------------------------------------------------------


@dataclass
class PreparedUnit:
    unit: ControlNetUnit
    item: CatalogueItem
    model: ControlNetModel
    control_map: Image.Image  # the preprocessor's output, before fitting it to a pass's size


class ControlSet:
    """The request's units, ready for the passes of one job."""

    def __init__(
        self, units: list[PreparedUnit], family: str, mask: Image.Image | None = None
    ) -> None:
        self.units = units
        self.sdxl = family == "sdxl"
        self.mask = mask  # an inpaint pass's mask (white: repainted), for inpaint_only units

    @classmethod
    def prepare(
        cls,
        request: Any,
        *,
        resolve: Callable[[str, str], CatalogueItem],
        cache: ModelCache,
        dtype: Any,
        cache_dir: Path,
        family: str,
        init_image: Image.Image | None,
        control_map: Callable[..., Image.Image],
        place: Callable[[Image.Image, int], Image.Image] | None = None,
        mask: Image.Image | None = None,
    ) -> ControlSet | None:
        """Load each unit's ControlNet through the cache and compute its control map. On an
        inpaint pass, `place` puts a unit's image where the pass looks (its canvas, and the
        crop of "only masked") before the preprocessor runs, and `mask` is the pass's mask."""
        units = request.get("controlnet") or []
        if not units:
            return None
        images = request.get("controlnet_images_png_b64") or {}
        target = mask.size if mask is not None else (int(request["width"]), int(request["height"]))
        # shuffle's random fields come from the job's seeds, so a re-run makes the same map
        seed = shuffle_seed(
            int(request["seed"]), request.get("subseed"), request.get("subseed_strength", 0.0)
        )
        prepared = []
        for index, unit in enumerate(units):
            if unit["module"] == INPAINT_ONLY and mask is None:
                raise ControlNetError(
                    f"ControlNet unit {index}: {INPAINT_ONLY} needs an inpaint job with a mask"
                )
            item = resolve("controlnet", unit["model"])
            if item.family not in ("unknown", family):
                raise ControlNetError(
                    f"ControlNet {item.name!r} is for {item.family} models, not {family}"
                )

            def load(item: CatalogueItem = item) -> ControlNetModel:
                return load_controlnet(item, dtype=dtype, cache_dir=cache_dir)

            model = cache.get(CACHE_PREFIX + item.sha256, load)
            source = _unit_image(unit, images, init_image, index)
            if place is not None:
                source = place(source, int(unit["resize_mode"]))
            res = unit["processor_res"]
            if unit["pixel_perfect"]:
                res = pixel_perfect_resolution(source.size, target, unit["resize_mode"])
            try:
                made = control_map(
                    unit["module"],
                    source,
                    res,
                    unit["threshold_a"],
                    unit["threshold_b"],
                    seed=seed,
                )
            except ValueError as exc:  # a module this worker does not run
                raise ControlNetError(f"ControlNet unit {index}: {exc}") from exc
            prepared.append(PreparedUnit(unit, item, model, made))
        return cls(prepared, family, mask)

    def pipeline(self, base: Any, *, kind: str, scheduler: Any, guidance_scale: float) -> Any:
        """The pass's pipeline (kind: txt2img, img2img or inpaint), the ControlNet variant
        sharing the base pipeline's weights."""
        nets = UnitControlNets(
            [u.model for u in self.units], [u.unit["control_mode"] for u in self.units]
        )
        nets.halves = guidance_scale > 1
        pipe = PIPELINES[(self.sdxl, kind)].from_pipe(base, controlnet=nets, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def call_kwargs(self, width: int, height: int, *, img2img: bool) -> dict[str, Any]:
        """The pass's ControlNet arguments, the maps fitted to its size as each unit asks."""
        return {
            "control_image" if img2img else "image": [
                self._control_image(u, width, height) for u in self.units
            ],
            "controlnet_conditioning_scale": [float(u.unit["weight"]) for u in self.units],
            "control_guidance_start": [float(u.unit["guidance_start"]) for u in self.units],
            "control_guidance_end": [float(u.unit["guidance_end"]) for u in self.units],
        }

    def color_fixes(
        self, pipe: Any, width: int, height: int, *, guidance_scale: float
    ) -> list[ColorFix]:
        """The pass's colour corrections: one per tile_colorfix(+sharp) unit, its control
        image fitted to the pass and encoded by the pass's VAE."""
        fixes = []
        for prepared in self.units:
            module = prepared.unit["module"]
            if module not in COLOR_FIX:
                continue
            image = fit(prepared.control_map, width, height, prepared.unit["resize_mode"])
            fixes.append(
                ColorFix(
                    latent=encode_colors(pipe.vae, image),
                    variation=int(prepared.unit["threshold_a"]),
                    sharpness=float(prepared.unit["threshold_b"])
                    if module == COLOR_FIX[1]
                    else None,
                    alphas_cumprod=pipe.scheduler.alphas_cumprod.float(),
                    prediction=pipe.scheduler.config.prediction_type,
                    halves=guidance_scale > 1,
                )
            )
        return fixes

    def _control_image(self, prepared: PreparedUnit, width: int, height: int) -> Any:
        image = fit(prepared.control_map, width, height, prepared.unit["resize_mode"])
        if prepared.unit["module"] != INPAINT_ONLY:
            return image
        assert self.mask is not None  # prepare refuses inpaint_only without a mask
        return masked_control(image, self.mask.resize((width, height)))

    def infotext(self) -> dict[str, str]:
        """One entry per unit, as sd-webui-controlnet writes them."""
        return {f"ControlNet {i}": unit_infotext(u) for i, u in enumerate(self.units)}


def masked_control(image: Image.Image, mask: Image.Image) -> torch.Tensor:
    """inpaint_only's control image as the inpaint ControlNet was trained on it: RGB in [0, 1]
    with every masked pixel (mask above half) set to -1, shape (1, 3, H, W)."""
    pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32) / 255.0)
    pixels[torch.from_numpy(np.array(mask.convert("L")) > 127)] = -1.0
    return pixels.permute(2, 0, 1).unsqueeze(0)


def unit_infotext(prepared: PreparedUnit) -> str:
    return controlnet_unit_text(prepared.unit, f"{prepared.item.name} [{prepared.item.sha256[:8]}]")


def _unit_image(
    unit: ControlNetUnit, images: dict[str, str], init_image: Image.Image | None, index: int
) -> Image.Image:
    sha = unit["image_sha256"]
    if sha is None:
        if init_image is None:
            raise ControlNetError(f"ControlNet unit {index} has no image")
        return init_image
    data = images.get(sha)
    if not data:
        raise ControlNetError(f"the image of ControlNet unit {index} did not arrive")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
    except Exception as exc:
        raise ControlNetError(f"the image of ControlNet unit {index} cannot be read") from exc
    return image.convert("RGB")


def fit(image: Image.Image, width: int, height: int, mode: int) -> Image.Image:
    """A control map at the pass's size: 0 stretch, 1 crop to fill, 2 fit inside with black
    bars (an empty margin means "no control there", not stretched edges)."""
    lanczos = Image.Resampling.LANCZOS
    if mode == 0 or image.size == (width, height):
        return image.resize((width, height), lanczos)
    scale_w, scale_h = width / image.width, height / image.height
    scale = max(scale_w, scale_h) if mode == 1 else min(scale_w, scale_h)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = image.resize((w, h), lanczos)
    canvas = Image.new("RGB", (width, height), "black")
    canvas.paste(resized, ((width - w) // 2, (height - h) // 2))  # crops when larger
    return canvas
