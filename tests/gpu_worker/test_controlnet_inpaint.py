"""ControlNet units on inpaint passes, on the demo models (random zero-convs, so a unit shows in
the pixels): the unmasked pixels stay the source's, the unit changes the masked ones, it runs
with ordinary and 9-channel inpaint checkpoints, "only masked" hands the unit the same crop the
pass denoises, and inpaint_only marks the masked pixels. Tiny: 64x64 passes, a few steps."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from gpu_worker.batch_key import batch_key
from gpu_worker.controlnet import ControlSet
from gpu_worker.engine import JobFailed, resize_image
from gpu_worker.infotext import parse_infotext
from gpu_worker.masking import plan_inpaint
from gpu_worker.params import INPAINT_DEFAULTS
from tests.inpaint_images import mask_of, pattern, png_b64

from .conftest import demo_request
from .test_controlnet import SHA, unit

BOX = (16, 16, 40, 40)


def squares() -> str:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((20, 20, 36, 36), fill="white")
    return png_b64(image)


def inpaint_request(
    source: Image.Image, box: tuple[int, int, int, int], *units: dict, **inpaint: Any
) -> Any:
    return demo_request(
        mode="img2img",
        sampler="Euler",
        seed=11,
        steps=4,
        denoising_strength=0.9,
        init_image_png_b64=png_b64(source),
        mask_png_b64=png_b64(mask_of(source.size, box)),
        inpaint={**INPAINT_DEFAULTS, "mask_blur_x": 0, "mask_blur_y": 0, **inpaint},
        controlnet=list(units),
        controlnet_images_png_b64={SHA: squares()},
    )


def image_of(result: Any) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(result.images[0]["png_b64"]))).convert("RGB")


def changed(before: Image.Image, after: Image.Image) -> set[tuple[int, int]]:
    a, b = before.load(), after.load()
    assert a is not None and b is not None
    return {(x, y) for x in range(before.width) for y in range(before.height) if a[x, y] != b[x, y]}


def inside(box: tuple[int, int, int, int]) -> set[tuple[int, int]]:
    return {(x, y) for x in range(box[0], box[2]) for y in range(box[1], box[3])}


@pytest.fixture
def control_images(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The control images each pass hands the pipeline."""
    seen: list[Any] = []
    original = ControlSet.call_kwargs

    def recording(self: ControlSet, width: int, height: int, *, img2img: bool) -> dict:
        kwargs = original(self, width, height, img2img=img2img)
        seen.extend(kwargs["control_image" if img2img else "image"])
        return kwargs

    monkeypatch.setattr(ControlSet, "call_kwargs", recording)
    return seen


@pytest.mark.parametrize("checkpoint", ["atelier-demo-v1", "atelier-demo-v1-inpainting"])
def test_a_unit_repaints_the_mask_differently_and_keeps_every_unmasked_pixel(
    engine: Any, checkpoint: str
) -> None:
    source = pattern((64, 64))
    plain = image_of(engine.run({**inpaint_request(source, BOX), "checkpoint": checkpoint}))
    result = engine.run({**inpaint_request(source, BOX, unit()), "checkpoint": checkpoint})
    controlled = image_of(result)
    diff = changed(source, controlled)
    assert diff and diff <= inside(BOX)
    assert changed(plain, controlled)  # the unit acted on the masked pixels
    parsed = parse_infotext(result.images[0]["infotext"])
    assert parsed["ControlNet 0"].startswith("Module: canny, Model: atelier-demo-controlnet [")
    assert parsed["Inpaint area"] == "Whole picture"


def test_only_masked_hands_the_unit_the_crop_the_pass_denoises(
    engine: Any, control_images: list[Any]
) -> None:
    source, box = pattern((160, 128)), (100, 70, 120, 90)
    options = {"inpaint_full_res": True, "inpaint_full_res_padding": 4, "inpainting_fill": 1}
    request = inpaint_request(source, box, unit(image_sha256=None, module="none"), **options)
    result = image_of(engine.run(request))
    assert result.size == (160, 128)
    diff = changed(source, result)
    assert diff and diff <= inside(box)
    plan = plan_inpaint(
        source, mask_of(source.size, box), request["inpaint"], 64, 64, resize_image, 0
    )
    (control,) = control_images
    assert control.size == (64, 64) and control.tobytes() == plan.image.tobytes()


def test_inpaint_only_marks_the_masked_pixels_on_the_source(
    engine: Any, control_images: list[Any]
) -> None:
    source = pattern((64, 64))
    request = inpaint_request(source, BOX, unit(image_sha256=None, module="inpaint_only"))
    result = engine.run(request)
    (control,) = control_images
    assert isinstance(control, torch.Tensor) and control.shape == (1, 3, 64, 64)
    hole = torch.zeros(64, 64, dtype=torch.bool)
    hole[BOX[1] : BOX[3], BOX[0] : BOX[2]] = True
    assert bool((control[0][:, hole] == -1).all())
    expected = torch.from_numpy(np.array(source, dtype=np.float32)) / 255
    assert torch.allclose(control[0].permute(1, 2, 0)[~hole], expected[~hole])
    assert "Module: inpaint_only" in result.images[0]["infotext"]


def test_inpaint_only_without_a_mask_fails_the_job_naming_it(engine: Any) -> None:
    request = demo_request(
        controlnet=[unit(module="inpaint_only")], controlnet_images_png_b64={SHA: squares()}
    )
    with pytest.raises(JobFailed, match="inpaint_only needs an inpaint job"):
        engine.run(request)


def test_an_inpaint_job_with_units_never_joins_a_shared_batch() -> None:
    request = inpaint_request(pattern((64, 64)), BOX, unit())
    assert batch_key(request) is None
    assert batch_key({**request, "mode": "txt2img", "inpaint": None, "controlnet": []})


def test_sdxl_inpainting_takes_a_unit_too(xl_engine: Any) -> None:
    """diffusers' SDXL ControlNet inpaint pipeline, with a ControlNet (a diffusers folder) made
    from the tiny SDXL demo's UNet, its zero convolutions randomised so that it shows."""
    from diffusers import ControlNetModel

    folder = xl_engine.models_dir / "ControlNet" / "xl-demo-controlnet"
    if not folder.is_dir():
        pipe = xl_engine.pipeline(xl_engine.resolve("checkpoint", "atelier-demo-xl"), None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            net = ControlNetModel.from_unet(pipe.unet)
            for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
                conv.reset_parameters()
        net.save_pretrained(folder, safe_serialization=True)
    source = pattern((64, 64))
    plain = {**inpaint_request(source, BOX), "checkpoint": "atelier-demo-xl"}
    controlled = {**plain, "controlnet": [unit(model="xl-demo-controlnet")]}
    without, with_unit = image_of(xl_engine.run(plain)), image_of(xl_engine.run(controlled))
    diff = changed(source, with_unit)
    assert diff and diff <= inside(BOX)
    assert changed(without, with_unit)


def test_an_inpaint_checkpoint_takes_a_unit_in_txt2img(engine: Any) -> None:
    """A 9-channel checkpoint runs txt2img as an inpaint pass over a fully masked grey canvas
    (as A1111 does); its units ride on that pass."""
    request = demo_request(
        checkpoint="atelier-demo-v1-inpainting",
        sampler="Euler",
        seed=11,
        controlnet_images_png_b64={SHA: squares()},
    )
    plain = image_of(engine.run(request))
    result = engine.run({**request, "controlnet": [unit()]})
    assert changed(plain, image_of(result))
    assert "ControlNet 0" in parse_infotext(result.images[0]["infotext"])


def test_outpainting_with_a_unit_grows_the_canvas_around_the_untouched_source(
    engine: Any, control_images: list[Any]
) -> None:
    source = pattern((64, 64))
    request = inpaint_request(source, BOX, unit(), outpaint_left=32, inpainting_fill=0)
    result = image_of(engine.run({**request, "mask_png_b64": None}))
    assert result.size == (96, 64)
    assert result.crop((32, 0, 96, 64)).tobytes() == source.tobytes()
    (control,) = control_images
    assert control.size == (96, 64)  # the unit covers the grown canvas


@pytest.mark.parametrize("fill", [2, 3])
def test_the_latent_fills_run_with_a_unit_and_keep_the_outside(engine: Any, fill: int) -> None:
    source = pattern((64, 64))
    result = image_of(engine.run(inpaint_request(source, BOX, unit(), inpainting_fill=fill)))
    diff = changed(source, result)
    assert diff and diff <= inside(BOX)
