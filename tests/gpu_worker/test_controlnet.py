"""ControlNet units in the engine, on the demo model and the demo ControlNet (random zero-convs,
so a unit shows in the pixels): the step window, several units, modes, img2img's source as the
control image, the cache and the infotext. Tiny: 64x64, a few steps."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from gpu_worker.controlnet import CACHE_PREFIX, load_controlnet
from gpu_worker.engine import JobFailed
from gpu_worker.infotext import parse_infotext
from gpu_worker.preprocessors import BUILT_IN

from .conftest import demo_request, make_engine

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


def test_a_diffusers_folder_controlnet_loads_and_acts_like_its_single_file(
    engine: Any, demo_models_dir: Path, tmp_path: Path, atelier_cache_dir: Path
) -> None:
    """config.json + diffusion_pytorch_model.safetensors in models/ControlNet/<name>/ is one
    ControlNet, of its config's family, and makes the same image as the same weights in a file."""
    import dramatiq
    import redis

    from gpu_worker.catalogue import scan_models
    from gpu_worker.service import WorkerService

    models = tmp_path / "models"
    shutil.copytree(demo_models_dir, models, ignore=shutil.ignore_patterns(".atelier-hashes.json"))
    file_net = engine.resolve("controlnet", "atelier-demo-controlnet")
    folder = models / "ControlNet" / "sd15-canny-diffusers"
    load_controlnet(file_net, dtype=engine.dtype, cache_dir=atelier_cache_dir).save_pretrained(
        folder, safe_serialization=True
    )
    # the family comes from the config's context width: 768 SD1, 2048 SDXL (the tiny demo
    # ControlNet's 32 names none, so it goes with any checkpoint, like an unknown file)
    for width in (768, 2048):
        other = models / "ControlNet" / f"width-{width}"
        other.mkdir()
        (other / "config.json").write_text(json.dumps({"cross_attention_dim": width}))
        (other / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    catalogue = scan_models(models, hash_cache=tmp_path / "hashes.json")
    assert catalogue.resolve("controlnet", "width-768").family == "sd1"
    assert catalogue.resolve("controlnet", "width-2048").architecture == "sdxl"
    item = catalogue.resolve("controlnet", "sd15-canny-diffusers")
    assert (item.is_folder, item.family) == (True, "unknown")
    assert not [f for f in catalogue.items if f[1] == "diffusion_pytorch_model"]
    assert not catalogue.refused
    for width in (768, 2048):
        shutil.rmtree(models / "ControlNet" / f"width-{width}")

    folder_engine = make_engine(models, atelier_cache_dir)
    from_file = pixels(run(engine, unit()))
    from_folder = run(folder_engine, unit(model="sd15-canny-diffusers"))
    assert pixels(from_folder) == from_file
    assert "Model: sd15-canny-diffusers [" in from_folder.images[0]["infotext"]

    # the worker's heartbeat names the ControlNet it now holds (scheduler affinity)
    service = WorkerService(
        engine=folder_engine,
        broker=dramatiq.get_broker(),
        redis_client=redis.Redis(),  # never connects: the snapshot reads no Redis
        publisher=None,
        worker_id="folder-test",
    )
    beat = service.heartbeat_snapshot()
    assert beat["loaded_controlnets"] == ["sd15-canny-diffusers"]
    assert beat["preprocessors"] == list(BUILT_IN)


def test_a_running_worker_answers_a_preview_request(worker_world: Any, gw_redis: Any) -> None:
    """WorkerLifecycle starts the preview responder with the worker: a DetectRequest on its
    list gets the edge map back on the reply list."""
    import time

    from gpu_worker.preprocessors import run_preprocessor
    from gpu_worker.protocol import DETECT_QUEUE_KEY, DETECT_REPLY_KEY

    request = {
        "request_id": "r1",
        "module": "canny",
        "images_png_b64": [square_png()],
        "processor_res": 64,
        "threshold_a": 100.0,
        "threshold_b": 200.0,
        "deadline": time.time() + 10,
    }
    gw_redis.rpush(DETECT_QUEUE_KEY.format(worker_id="test-worker"), json.dumps(request))
    popped = gw_redis.blpop([DETECT_REPLY_KEY.format(request_id="r1")], timeout=10)
    assert popped is not None
    reply = json.loads(popped[1])
    made = Image.open(io.BytesIO(base64.b64decode(reply["images_png_b64"][0])))
    source = Image.open(io.BytesIO(base64.b64decode(square_png())))
    assert made.tobytes() == run_preprocessor("canny", source, 64, 100, 200).tobytes()
    assert reply["worker_id"] == "test-worker"
