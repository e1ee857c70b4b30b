"""SDXL on the tiny SDXL demo (a diffusers-format folder): two encoders, weights, hires."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from .conftest import demo_request


def pixels(image: dict) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(image["png_b64"]))).tobytes()


def test_diffusers_folder_is_catalogued_as_sdxl(xl_engine: Any) -> None:
    item = xl_engine.resolve("checkpoint", "atelier-demo-xl")
    assert item.family == "sdxl" and item.is_folder and len(item.sha256) == 64


def test_plain_prompts_encode_exactly_like_diffusers(xl_engine: Any, torch: Any) -> None:
    from gpu_worker.prompt_encoding import encode_prompt_pair_xl

    pipe = xl_engine.pipeline(xl_engine.resolve("checkpoint", "atelier-demo-xl"), None)
    ours = encode_prompt_pair_xl(pipe, "a photo of a cat", "blurry", clip_skip=1)
    theirs = pipe.encode_prompt(
        "a photo of a cat",
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt="blurry",
    )
    names = (
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    )
    for name, tensor in zip(names, theirs, strict=True):
        assert torch.equal(ours[name], tensor), name
    long = encode_prompt_pair_xl(pipe, " ".join(["cat"] * 100), "", clip_skip=1)
    assert long["prompt_embeds"].shape == long["negative_prompt_embeds"].shape == (1, 154, 64)


def test_sdxl_txt2img_is_reproducible_and_weights_matter(xl_engine: Any) -> None:
    request = {"checkpoint": "atelier-demo-xl", "seed": 11}
    a = xl_engine.run(demo_request(**request, prompt="a cat")).images[0]
    b = xl_engine.run(demo_request(**request, prompt="a cat")).images[0]
    c = xl_engine.run(demo_request(**request, prompt="a (cat:1.6)")).images[0]
    assert pixels(a) == pixels(b) != pixels(c)
    assert "Model: atelier-demo-xl" in a["infotext"]


def test_sdxl_hires_and_img2img(xl_engine: Any) -> None:
    hires = {
        "scale": 1.5,
        "resize_x": 0,
        "resize_y": 0,
        "upscaler": "Latent",
        "second_pass_steps": 2,
        "denoising_strength": 0.5,
    }
    result = xl_engine.run(demo_request(checkpoint="atelier-demo-xl", hires=hires))
    assert (result.images[0]["width"], result.images[0]["height"]) == (96, 96)
    img = xl_engine.run(
        demo_request(
            checkpoint="atelier-demo-xl",
            mode="img2img",
            init_image_png_b64=result.images[0]["png_b64"],
        )
    )
    assert img.images[0]["width"] == 64
