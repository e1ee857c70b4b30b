"""Inpainting and outpainting on the demo models: paste-back, crop geometry, fills, invert, the
dedicated inpaint checkpoint beside an ordinary one."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from PIL import Image, ImageDraw

from gpu_worker.engine import JobFailed, resize_image
from gpu_worker.masking import (
    crop_region,
    expand_to_ratio,
    fill_masked,
    plan_inpaint,
)
from gpu_worker.params import INPAINT_DEFAULTS, InpaintParams

from .conftest import demo_request

SQUARE = (16, 16, 40, 40)  # the painted part of a 64x64 mask


def png_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def decoded(result_image: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(result_image["png_b64"]))).convert("RGB")


def square_mask(size: tuple[int, int] = (64, 64), box: tuple = SQUARE) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
    return mask


@pytest.fixture(scope="module")
def source(engine: Any) -> Image.Image:
    return decoded(engine.run(demo_request(seed=7)).images[0])


def inpaint(engine: Any, source: Image.Image, mask: Image.Image | None, **options: Any) -> Any:
    request_options = {k: options.pop(k) for k in list(options) if k not in INPAINT_DEFAULTS}
    return engine.run(
        demo_request(
            mode="img2img",
            init_image_png_b64=png_b64(source),
            mask_png_b64=png_b64(mask) if mask is not None else None,
            denoising_strength=0.75,
            steps=4,
            inpaint={**INPAINT_DEFAULTS, "mask_blur_x": 0, "mask_blur_y": 0, **options},
            **request_options,
        )
    )


def changed(before: Image.Image, after: Image.Image) -> set[tuple[int, int]]:
    a, b = before.load(), after.load()
    assert a is not None and b is not None
    return {(x, y) for x in range(before.width) for y in range(before.height) if a[x, y] != b[x, y]}


def inside(box: tuple, margin: int = 0) -> set[tuple[int, int]]:
    x1, y1, x2, y2 = box
    return {
        (x, y) for x in range(x1 - margin, x2 + margin) for y in range(y1 - margin, y2 + margin)
    }


@pytest.mark.parametrize("checkpoint", ["atelier-demo-v1", "atelier-demo-v1-inpainting"])
def test_only_the_masked_pixels_change_with_an_ordinary_and_an_inpaint_model(
    engine: Any, source: Image.Image, checkpoint: str
) -> None:
    result = inpaint(engine, source, square_mask(), checkpoint=checkpoint)
    after = decoded(result.images[0])
    diff = changed(source, after)
    assert diff and diff <= inside(SQUARE)
    assert len(diff) > len(inside(SQUARE)) // 2  # the square itself was repainted


def test_a_blurred_mask_keeps_every_pixel_beyond_the_blur(engine: Any, source: Image.Image) -> None:
    result = inpaint(engine, source, square_mask(), mask_blur_x=4, mask_blur_y=4)
    diff = changed(source, decoded(result.images[0]))
    assert diff and diff <= inside(SQUARE, margin=4 * 3)
    infotext = result.images[0]["infotext"]
    assert "Mask blur: 4" in infotext and "Inpaint area: Whole picture" in infotext
    assert "Masked content: original" in infotext


def test_an_inverted_mask_repaints_the_outside_and_keeps_the_square(
    engine: Any, source: Image.Image
) -> None:
    result = inpaint(engine, source, square_mask(), inpainting_mask_invert=True)
    diff = changed(source, decoded(result.images[0]))
    assert diff and not diff & inside(SQUARE)
    assert "Mask mode: Inpaint not masked" in result.images[0]["infotext"]


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_each_masked_content_fill_runs_and_keeps_the_outside(
    engine: Any, source: Image.Image, fill: int
) -> None:
    result = inpaint(engine, source, square_mask(), inpainting_fill=fill)
    after = decoded(result.images[0])
    assert changed(source, after) <= inside(SQUARE)
    name = ("fill", "original", "latent noise", "latent nothing")[fill]
    assert f"Masked content: {name}" in result.images[0]["infotext"]


def test_the_fills_start_from_different_latents(engine: Any, source: Image.Image) -> None:
    images = [
        decoded(inpaint(engine, source, square_mask(), inpainting_fill=f).images[0]).tobytes()
        for f in (0, 1, 2, 3)
    ]
    assert len(set(images)) == 4


def test_only_masked_keeps_the_source_size_and_changes_only_the_crop(
    engine: Any, source: Image.Image
) -> None:
    big = source.resize((128, 128))
    mask = square_mask((128, 128), (40, 40, 56, 56))
    result = inpaint(
        engine, big, mask, inpaint_full_res=True, inpaint_full_res_padding=8, width=64, height=64
    )
    image = result.images[0]
    assert (image["width"], image["height"]) == (128, 128)  # the source's, not the job's
    diff = changed(big, decoded(image))
    assert diff and diff <= inside((40, 40, 56, 56))
    assert "Inpaint area: Only masked" in image["infotext"]
    assert "Masked area padding: 8" in image["infotext"]


def test_the_only_masked_crop_is_the_mask_box_plus_padding_widened_to_the_job_ratio() -> None:
    mask = square_mask((200, 100), (90, 40, 110, 60))
    box = crop_region(mask, 10)
    assert box == (80, 30, 120, 70)
    assert expand_to_ratio(box, 128, 64, 200, 100) == (60, 30, 140, 70)  # 2:1 like the job
    # Near an edge the widened box moves inside the image instead of leaving it.
    assert expand_to_ratio((0, 30, 40, 70), 128, 64, 200, 100) == (0, 30, 80, 70)
    plan = plan_inpaint(
        Image.new("RGB", (200, 100)),
        mask,
        InpaintParams(
            **{
                **INPAINT_DEFAULTS,
                "inpaint_full_res": True,
                "inpaint_full_res_padding": 10,
                "mask_blur_x": 0,
                "mask_blur_y": 0,
            }
        ),
        128,
        64,
        resize_image,
        0,
    )
    assert plan.crop == (60, 30, 140, 70) and plan.size == (128, 64)


def test_fill_paints_the_hole_with_the_colours_around_it() -> None:
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    ImageDraw.Draw(image).rectangle((16, 16, 39, 39), fill=(0, 255, 0))
    filled = fill_masked(image, square_mask())
    red, green, blue = filled.getpixel((28, 28))  # type: ignore[misc]
    assert red > 150 and green < 80 and blue < 80


def test_outpainting_grows_the_canvas_and_keeps_the_source(
    engine: Any, source: Image.Image
) -> None:
    result = inpaint(engine, source, None, outpaint_right=32, outpaint_top=16)
    image = result.images[0]
    assert (image["width"], image["height"]) == (96, 80)
    after = decoded(image)
    assert after.crop((0, 16, 64, 80)).tobytes() == source.tobytes()
    assert after.crop((64, 0, 96, 80)).tobytes() != Image.new("RGB", (32, 80)).tobytes()
    assert "Outpaint: " in image["infotext"]


def test_an_inpaint_model_also_runs_txt2img_and_plain_img2img(
    engine: Any, source: Image.Image
) -> None:
    txt2img = engine.run(demo_request(checkpoint="atelier-demo-v1-inpainting", seed=3))
    again = engine.run(demo_request(checkpoint="atelier-demo-v1-inpainting", seed=3))
    assert decoded(txt2img.images[0]).tobytes() == decoded(again.images[0]).tobytes()
    img2img = engine.run(
        demo_request(
            checkpoint="atelier-demo-v1-inpainting",
            mode="img2img",
            init_image_png_b64=png_b64(source),
            denoising_strength=0.5,
            steps=4,
        )
    )
    assert img2img.steps_done == 2 and (
        img2img.images[0]["width"],
        img2img.images[0]["height"],
    ) == (64, 64)
    assert "Inpaint area" not in img2img.images[0]["infotext"]
    hires = {"scale": 2.0, "resize_x": 0, "resize_y": 0, "upscaler": "Latent"}
    hires |= {"second_pass_steps": 0, "denoising_strength": 0.5}
    with pytest.raises(JobFailed, match="inpainting model"):
        engine.run(demo_request(checkpoint="atelier-demo-v1-inpainting", hires=hires))


def test_the_inpaint_checkpoint_is_recognised_from_its_file(engine: Any) -> None:
    item = engine.resolve("checkpoint", "atelier-demo-v1-inpainting")
    assert item.architecture == "tiny-sd1-inpaint" and item.family == "sd1"


def test_nine_channel_checkpoints_are_inpaint_models_from_their_header(tmp_path: Any) -> None:
    from gpu_worker.catalogue import scan_models
    from gpu_worker.loading import config_folder

    from .test_catalogue import write_safetensors

    unet = "model.diffusion_model.input_blocks.0.0.weight"
    sd1 = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
    xl = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
    sd = tmp_path / "Stable-diffusion"
    write_safetensors(sd / "one.safetensors", {sd1: [77, 2], unet: [320, 4, 3, 3]})
    write_safetensors(sd / "one-inpaint.safetensors", {sd1: [77, 2], unet: [320, 9, 3, 3]})
    write_safetensors(sd / "xl-inpaint.safetensors", {xl: [4], unet: [320, 9, 3, 3]})
    catalogue = scan_models(tmp_path, hash_cache=tmp_path / "h.json")
    found = {name: (i.family, i.architecture) for (_, name), i in catalogue.items.items()}
    assert found == {
        "one": ("sd1", "sd1"),
        "one-inpaint": ("sd1", "sd1-inpaint"),
        "xl-inpaint": ("sdxl", "sdxl-inpaint"),
    }
    for architecture in ("sd1-inpaint", "sdxl-inpaint"):
        unet_config = config_folder(architecture, tmp_path / "cache") / "unet" / "config.json"
        assert json.loads(unet_config.read_text())["in_channels"] == 9


def test_sdxl_inpainting_keeps_the_unmasked_pixels(xl_engine: Any) -> None:
    source = decoded(xl_engine.run(demo_request(checkpoint="atelier-demo-xl", seed=3)).images[0])
    result = inpaint(xl_engine, source, square_mask(), checkpoint="atelier-demo-xl")
    diff = changed(source, decoded(result.images[0]))
    assert diff and diff <= inside(SQUARE)


def test_resize_and_fill_stretches_the_edge_rows_into_the_bars() -> None:
    image = Image.new("RGB", (64, 32), "blue")
    ImageDraw.Draw(image).line((0, 0, 63, 0), fill="red")  # top row red
    ImageDraw.Draw(image).line((0, 31, 63, 31), fill="green")  # bottom row green
    filled = resize_image(image, 64, 64, 2)
    assert filled.size == (64, 64)
    assert filled.getpixel((10, 2)) == (255, 0, 0)  # the top bar repeats the top row
    assert filled.getpixel((10, 62)) == (0, 128, 0)  # the bottom bar the bottom row
    assert filled.getpixel((10, 32)) == (0, 0, 255)
    mask = resize_image(Image.new("L", (64, 32), 255), 64, 64, 2)
    assert mask.mode == "L" and mask.getextrema() == (255, 255)
