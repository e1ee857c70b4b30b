"""ControlNet units in the engine, on the demo model and the demo ControlNet (random zero-convs,
so a unit shows in the pixels): the step window, several units, modes, img2img's source as the
control image, the cache and the infotext. Tiny: 64x64, a few steps."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image, ImageDraw

from gpu_worker.controlnet import CACHE_PREFIX
from gpu_worker.engine import JobFailed
from gpu_worker.infotext import parse_infotext

from .conftest import demo_request

SHA = "0" * 64


def square_png() -> str:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill="white")
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def unit(**overrides: Any) -> dict[str, Any]:
    return {
        "image_sha256": SHA,
        "module": "canny",
        "model": "atelier-demo-controlnet",
        "weight": 1.0,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "control_mode": "balanced",
        "resize_mode": 1,
        "pixel_perfect": False,
        "processor_res": 64,
        "threshold_a": 100.0,
        "threshold_b": 200.0,
        **overrides,
    }


def run(engine: Any, *units: dict[str, Any], **overrides: Any) -> Any:
    request = demo_request(
        sampler="Euler",  # one model call a step: the step window test counts them
        seed=11,
        controlnet=list(units),
        controlnet_images_png_b64={SHA: square_png()},
        **overrides,
    )
    return engine.run(request)


def pixels(result: Any) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(result.images[0]["png_b64"]))).tobytes()


def test_a_unit_changes_the_image_and_weight_zero_is_no_unit(engine: Any) -> None:
    plain = pixels(run(engine))
    assert pixels(run(engine, unit())) != plain
    assert pixels(run(engine, unit(weight=0.0))) == plain


def test_the_guidance_window_picks_the_steps_the_controlnet_runs_on(engine: Any) -> None:
    run(engine, unit())  # loaded into the cache
    controlnet = engine.cache.entry(
        CACHE_PREFIX + engine.resolve("controlnet", unit()["model"]).sha256
    ).pipe
    steps_seen: list[int] = []
    calls = iter(range(100))
    handle = controlnet.register_forward_hook(lambda *args: steps_seen.append(next(calls)))
    try:
        steps: list[int] = []

        def observer(info: Any) -> None:
            steps.append(len(steps_seen))  # ControlNet calls made by the end of each step

        engine.run(
            demo_request(
                sampler="Euler",
                steps=4,
                controlnet=[unit(guidance_start=0.5, guidance_end=1.0)],
                controlnet_images_png_b64={SHA: square_png()},
            ),
            observer,
        )
    finally:
        handle.remove()
    # 4 steps, window [0.5, 1]: steps 3 and 4 run the ControlNet, steps 1 and 2 do not.
    assert steps == [0, 0, 1, 2]


def test_two_units_work_together_each_in_its_own_mode(engine: Any) -> None:
    one = pixels(run(engine, unit()))
    two = pixels(run(engine, unit(), unit(module="none", control_mode="controlnet", weight=0.5)))
    prompt_mode = pixels(run(engine, unit(control_mode="prompt")))
    assert len({one, two, prompt_mode}) == 3
    result = run(engine, unit(), unit(module="none", weight=0.5))
    parsed = parse_infotext(result.images[0]["infotext"])
    assert parsed["ControlNet 0"].startswith("Module: canny, Model: atelier-demo-controlnet [")
    assert (
        "Weight: 0.5" in parsed["ControlNet 1"]
        and "Control Mode: Balanced" in parsed["ControlNet 1"]
    )


def test_img2img_uses_its_source_as_the_control_image_when_a_unit_has_none(engine: Any) -> None:
    source = square_png()
    common = {"mode": "img2img", "init_image_png_b64": source, "denoising_strength": 0.75}
    plain = pixels(run(engine, **common))
    assert pixels(run(engine, unit(image_sha256=None), **common)) != plain


def test_a_unit_acts_on_the_hires_pass_too(engine: Any) -> None:
    hires = {
        "scale": 2.0,
        "resize_x": 0,
        "resize_y": 0,
        "upscaler": "Latent",
        "second_pass_steps": 2,
        "denoising_strength": 0.5,
    }
    result = run(engine, unit(), hires=hires)
    assert (result.images[0]["width"], result.images[0]["height"]) == (128, 128)


def test_an_unknown_controlnet_fails_the_job_naming_it(engine: Any) -> None:
    with pytest.raises(JobFailed, match="unknown controlnet 'nope'"):
        run(engine, unit(model="nope"))
