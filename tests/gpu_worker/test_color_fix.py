"""tile_colorfix and tile_colorfix+sharp in the engine (demo model and ControlNet; 256x256, so
the latent has room for the control image's two colours beside the blur): the image's colours
(its latent's low frequencies) follow the control image's, its details stay the model's;
"+sharp" sharpens through the unconditional half only."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from gpu_worker.color_fix import blur, encode_colors
from gpu_worker.params import CONTROLNET_UNIT_DEFAULTS
from gpu_worker.preprocessors import MODULE_DETAIL, threshold_problem

from .conftest import demo_request

SHA = "c" * 64
SIZE = 256


def control_image() -> Image.Image:
    """Strong colours in large areas: what a tile upscale's source gives the colour fix."""
    image = Image.new("RGB", (SIZE, SIZE), (220, 40, 30))
    image.paste((30, 60, 230), (0, SIZE // 2, SIZE, SIZE))
    return image


def colour_job(engine: Any, module: str, **unit: Any) -> tuple[Any, Any]:
    """(the job's last latents, its image) for one unit of `module` on the control image."""
    out = io.BytesIO()
    control_image().save(out, "PNG")
    fields = {**CONTROLNET_UNIT_DEFAULTS, "module": module, "model": "atelier-demo-controlnet"}
    fields.update(image_sha256=SHA, **unit)
    seen: list[Any] = []
    result = engine.run(
        demo_request(
            sampler="Euler",
            steps=6,
            width=SIZE,
            height=SIZE,
            seed=5,
            controlnet=[fields],
            controlnet_images_png_b64={SHA: base64.b64encode(out.getvalue()).decode()},
        ),
        lambda step: seen.append(step.latents.clone()),
    )
    image = Image.open(io.BytesIO(base64.b64decode(result.images[0]["png_b64"])))
    return seen[-1], image


def test_the_images_colours_follow_the_control_image(engine: Any, torch: Any) -> None:
    pipe = engine.pipeline(engine.resolve("checkpoint", "atelier-demo-v1"), None)
    colours = blur(encode_colors(pipe.vae, control_image()), 3)  # what the fix puts in

    def halves(latents: Any) -> Any:  # each channel's mean over the red half and the blue half
        top, bottom = latents.float().chunk(2, dim=2)
        return torch.stack([top.mean(dim=(2, 3)), bottom.mean(dim=(2, 3))])

    def distance(latents: Any) -> float:
        return float((halves(latents) - halves(colours)).abs().mean())

    fixed, _ = colour_job(engine, "tile_colorfix", threshold_a=3)
    plain, _ = colour_job(engine, "tile_resample", threshold_a=1.0)  # the same map, no fix
    assert distance(fixed) < 0.2 * distance(plain), (distance(fixed), distance(plain))
    # the details are still the model's, not a copy of the control image's latent
    detail = float((fixed - blur(fixed, 3)).abs().mean())
    assert detail > 0.5 * float((plain - blur(plain, 3)).abs().mean())


def test_sharp_works_through_the_unconditional_half(engine: Any, torch: Any) -> None:
    _, fixed = colour_job(engine, "tile_colorfix", threshold_a=4)
    _, unsharpened = colour_job(engine, "tile_colorfix+sharp", threshold_a=4, threshold_b=0.0)
    _, sharp = colour_job(engine, "tile_colorfix+sharp", threshold_a=4, threshold_b=2.0)
    assert unsharpened.tobytes() == fixed.tobytes()  # sharpness 0: the plain colour fix
    assert sharp.tobytes() != fixed.tobytes()
    _, variation = colour_job(engine, "tile_colorfix", threshold_a=12)
    assert variation.tobytes() != fixed.tobytes()


def test_the_sliders_are_the_extensions() -> None:
    assert MODULE_DETAIL["tile_colorfix"]["sliders"] == [
        None,
        {"name": "Variation", "value": 8.0, "min": 3.0, "max": 32.0, "step": 1.0},
    ]
    sharp = MODULE_DETAIL["tile_colorfix+sharp"]["sliders"]
    assert sharp[2] == {"name": "Sharpness", "value": 1.0, "min": 0.0, "max": 2.0, "step": 0.01}
    problem = threshold_problem("tile_colorfix", "threshold_a", 2)
    assert problem == "threshold_a (tile_colorfix's Variation) must be between 3 and 32"


@pytest.mark.parametrize("module", ["tile_colorfix", "tile_colorfix+sharp"])
def test_the_infotext_names_the_module_and_its_values(engine: Any, module: str) -> None:
    from gpu_worker.infotext import parse_controlnet_units, parse_infotext

    _, image = colour_job(engine, module, threshold_a=5, threshold_b=0.5)
    units = parse_controlnet_units(parse_infotext(image.info["parameters"]))
    assert units[0]["module"] == module and float(units[0]["threshold_a"]) == 5
    assert float(units[0]["threshold_b"]) == 0.5
