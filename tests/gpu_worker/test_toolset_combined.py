"""The creative tools (issue 17) with inpainting (issue 16) and ControlNet (issue 22): prompt
editing, tiling, variation seeds and upscaler models on masked and controlled passes."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image, ImageDraw

from gpu_worker.params import INPAINT_DEFAULTS

from .conftest import demo_request
from .test_controlnet import unit as controlnet_unit

INPAINT_MODEL = "atelier-demo-v1-inpainting"


def png_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def pixels(result: Any) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(result.images[0]["png_b64"]))).tobytes()


def masked_request(**overrides: Any) -> Any:
    source = Image.new("RGB", (64, 64), (90, 140, 200))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    return demo_request(
        mode="img2img",
        init_image_png_b64=png_b64(source),
        mask_png_b64=png_b64(mask),
        denoising_strength=1.0,
        sampler="Euler",
        steps=4,
        seed=11,
        inpaint={**INPAINT_DEFAULTS, "mask_blur_x": 0, "mask_blur_y": 0},
        **overrides,
    )


def unet_conditionings(engine: Any, request: Any) -> tuple[list, Any]:
    """Run a request, recording the text conditioning of every UNet call."""
    pipe = engine.pipeline(engine.resolve("checkpoint", request["checkpoint"]), None)
    seen: list = []

    def record(module: Any, args: Any, kwargs: dict) -> None:
        seen.append(kwargs["encoder_hidden_states"].clone())

    handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = engine.run(request)
    finally:
        handle.remove()
    return seen, result


def test_prompt_editing_switches_the_prompt_inside_a_masked_pass(engine: Any, torch: Any) -> None:
    cats, _ = unet_conditionings(engine, masked_request(prompt="a cat"))
    dogs, _ = unet_conditionings(engine, masked_request(prompt="a dog"))
    edited, result = unet_conditionings(engine, masked_request(prompt="a [cat:dog:2]"))
    assert [torch.equal(e, c) for e, c in zip(edited, cats, strict=True)] == [1, 1, 1, 0]
    assert torch.equal(edited[3], dogs[3])
    assert "Masked content: original" in result.images[0]["infotext"]


def test_a_tiled_inpaint_pass_says_so_and_leaves_the_pipeline_as_it_was(engine: Any) -> None:
    plain = pixels(engine.run(masked_request()))
    tiled = engine.run(masked_request(tiling=True))
    assert "Tiling: True" in tiled.images[0]["infotext"]
    assert pixels(tiled) != plain
    assert pixels(engine.run(masked_request())) == plain


def test_an_inpaint_checkpoint_takes_a_variation_seed_in_txt2img(engine: Any) -> None:
    common = {"checkpoint": INPAINT_MODEL, "seed": 3, "steps": 4, "sampler": "Euler a"}
    plain = pixels(engine.run(demo_request(**common)))
    none = pixels(engine.run(demo_request(**common, subseed=50, subseed_strength=0.0)))
    varied = engine.run(demo_request(**common, subseed=50, subseed_strength=0.5))
    again = engine.run(demo_request(**common, subseed=50, subseed_strength=0.5))
    assert none == plain  # strength 0 is the seed's own noise
    assert pixels(varied) == pixels(again) != plain
    assert "Variation seed: 50, Variation seed strength: 0.5" in varied.images[0]["infotext"]


# --- with ControlNet units (issue 22) -------------------------------------------------------


def controlnet_request(**overrides: Any) -> Any:
    control = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(control).rectangle((16, 16, 48, 48), fill="white")
    unit = controlnet_unit()
    return demo_request(
        sampler="Euler",
        steps=4,
        seed=11,
        controlnet=[unit],
        controlnet_images_png_b64={"0" * 64: png_b64(control)},
        **overrides,
    )


def test_prompt_editing_switches_the_prompt_in_a_controlnet_pass(engine: Any, torch: Any) -> None:
    cats, _ = unet_conditionings(engine, controlnet_request(prompt="a cat"))
    dogs, _ = unet_conditionings(engine, controlnet_request(prompt="a dog"))
    edited, result = unet_conditionings(engine, controlnet_request(prompt="a [cat:dog:2]"))
    assert [torch.equal(e, c) for e, c in zip(edited, cats, strict=True)] == [1, 1, 1, 0]
    assert torch.equal(edited[3], dogs[3])
    assert "ControlNet 0:" in result.images[0]["infotext"]


def test_a_controlnet_job_takes_a_variation_seed_and_an_upscaler_model(engine: Any) -> None:
    hires = {
        "scale": 1.5,
        "resize_x": 0,
        "resize_y": 0,
        "upscaler": "atelier-demo-upscaler",
        "second_pass_steps": 2,
        "denoising_strength": 0.5,
    }
    plain = pixels(engine.run(controlnet_request(hires=hires)))
    varied = engine.run(controlnet_request(hires=hires, subseed=50, subseed_strength=0.5))
    image = varied.images[0]
    assert (image["width"], image["height"]) == (96, 96)
    assert pixels(varied) != plain
    assert "Hires upscaler: atelier-demo-upscaler" in image["infotext"]
    assert "Variation seed: 50" in image["infotext"] and "ControlNet 0:" in image["infotext"]
