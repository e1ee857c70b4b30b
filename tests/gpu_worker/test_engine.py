"""The engine on the demo model: determinism, seeds, modes, LoRA hygiene, failures."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gpu_worker.infotext import infotext_to_fields, parse_infotext, read_infotext

from .conftest import demo_request, make_engine


def pixels(result_image: dict) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(result_image["png_b64"]))).tobytes()


def run(engine: Any, **overrides: Any) -> Any:
    return engine.run(demo_request(**overrides))


def test_same_seed_same_image_and_parameters_round_trip(engine: Any) -> None:
    first = run(engine, seed=7)
    second = run(engine, seed=7)
    other = run(engine, seed=8)
    assert pixels(first.images[0]) == pixels(second.images[0])
    assert pixels(first.images[0]) != pixels(other.images[0])
    png = base64.b64decode(first.images[0]["png_b64"])
    fields = infotext_to_fields(parse_infotext(read_infotext(png) or ""))
    request = demo_request(seed=7)
    for key in (
        "prompt",
        "negative_prompt",
        "steps",
        "cfg_scale",
        "seed",
        "width",
        "height",
        "checkpoint",
        "clip_skip",
    ):
        assert fields[key] == request[key], key
    assert fields["sampler"] == "Euler a"


def test_batch_and_iterations_use_consecutive_seeds(engine: Any) -> None:
    result = run(engine, seed=100, batch_size=2, n_iter=2)
    assert [i["seed"] for i in result.images] == [100, 101, 102, 103]
    assert result.steps_done == 4 * 3 // 2  # 2 iterations x 3 steps (a batch steps together)
    single = run(engine, seed=101)
    a = Image.open(io.BytesIO(base64.b64decode(result.images[1]["png_b64"])))
    b = Image.open(io.BytesIO(base64.b64decode(single.images[0]["png_b64"])))
    diff = max(abs(x - y) for x, y in zip(a.tobytes(), b.tobytes(), strict=True))
    assert diff <= 2  # image i of a batch is the image of seed+i (batched math may round)


def test_a_request_without_lora_after_one_with_lora_is_bit_identical(engine: Any) -> None:
    before = run(engine, seed=5)
    with_lora = run(engine, seed=5, prompt="a photo of a (cat:1.2) <lora:atelier-demo-lora:1>")
    after = run(engine, seed=5)
    assert pixels(with_lora.images[0]) != pixels(before.images[0])
    assert pixels(after.images[0]) == pixels(before.images[0])
    assert "Lora hashes" in with_lora.images[0]["infotext"]


def test_emphasis_and_clip_skip_change_the_image(engine: Any) -> None:
    plain = pixels(run(engine, prompt="a photo of a cat").images[0])
    assert pixels(run(engine, prompt="a photo of a (cat:1.8)").images[0]) != plain
    skipped = run(engine, prompt="a photo of a cat", clip_skip=2).images[0]
    assert pixels(skipped) != plain and "Clip skip: 2" in skipped["infotext"]


@pytest.mark.parametrize("sampler", ["DPM++ 2M Karras", "DPM++ SDE", "Heun", "DDIM", "UniPC"])
def test_samplers_run_and_reproduce(engine: Any, sampler: str) -> None:
    a = run(engine, sampler=sampler, seed=3)
    b = run(engine, sampler=sampler, seed=3)
    assert pixels(a.images[0]) == pixels(b.images[0])


def test_second_order_samplers_count_every_callback(engine: Any) -> None:
    steps = []
    engine.run(demo_request(sampler="Heun", steps=3), lambda info: steps.append(info.total))
    assert len(steps) == 5 and steps[-1] == 5  # 2N-1 model calls for N steps


@pytest.mark.parametrize(("mode", "size"), [(0, (64, 96)), (1, (64, 96)), (2, (96, 64))])
def test_img2img_resize_modes(engine: Any, mode: int, size: tuple[int, int]) -> None:
    source = run(engine, seed=1).images[0]["png_b64"]
    result = run(
        engine,
        mode="img2img",
        init_image_png_b64=source,
        resize_mode=mode,
        width=size[0],
        height=size[1],
        denoising_strength=0.5,
        steps=4,
    )
    image = result.images[0]
    assert (image["width"], image["height"]) == size
    assert result.steps_done == 2  # diffusers runs int(steps x strength)
    assert "Denoising strength: 0.5" in image["infotext"]


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_runs_two_passes(engine: Any, upscaler: str) -> None:
    hires = {
        "scale": 2.0,
        "resize_x": 0,
        "resize_y": 0,
        "upscaler": upscaler,
        "second_pass_steps": 2,
        "denoising_strength": 0.5,
    }
    result = run(engine, hires=hires)
    image = result.images[0]
    assert (image["width"], image["height"]) == (128, 128)
    assert result.steps_done == 3 + 2
    assert "Hires upscale: 2" in image["infotext"] and "Size: 64x64" in image["infotext"]


def test_vae_override(engine: Any) -> None:
    plain = run(engine, seed=2).images[0]
    other = run(engine, seed=2, vae="atelier-demo-vae").images[0]
    assert pixels(plain) != pixels(other)
    assert "VAE: atelier-demo-vae" in other["infotext"]


def test_unknown_names_fail_the_job_with_the_list(engine: Any) -> None:
    from gpu_worker.engine import JobFailed

    with pytest.raises(JobFailed, match="atelier-demo-v1"):
        run(engine, checkpoint="../Stable-diffusion/atelier-demo-v1")
    with pytest.raises(JobFailed, match="unknown lora"):
        run(engine, prompt="x <lora:../../etc/passwd:1>")
    with pytest.raises(JobFailed, match="valid samplers"):
        run(engine, sampler="Nope")


def test_corrupt_and_missing_model_files_fail_with_their_name(
    tmp_path: Path, demo_models_dir: Path, atelier_cache_dir: Path
) -> None:
    from gpu_worker.engine import JobFailed

    models = tmp_path / "models"
    shutil.copytree(demo_models_dir, models)
    engine = make_engine(models, tmp_path / "cache")
    engine.refresh_catalogue()  # scanned while the files were sound
    path = models / "Stable-diffusion/atelier-demo-v2.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(JobFailed, match="atelier-demo-v2.safetensors"):
        run(engine, checkpoint="atelier-demo-v2")
    (models / "Stable-diffusion/atelier-demo-v1.safetensors").unlink()
    with pytest.raises(JobFailed, match="atelier-demo-v1.safetensors is missing"):
        run(engine, checkpoint="atelier-demo-v1")


def test_out_of_memory_frees_the_cache_and_fails_only_that_job(engine: Any, torch: Any) -> None:
    from gpu_worker.engine import JobFailed

    run(engine)  # something is cached
    assert engine.cache.keys_hottest_first()

    def exhausted(info: Any) -> None:  # what CUDA raises when an allocation fails mid-run
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(JobFailed, match="out of GPU memory"):
        engine.run(demo_request(), exhausted)
    assert engine.cache.keys_hottest_first() == []
    assert run(engine).images  # the next job runs


def test_observer_interrupt_keeps_finished_images(engine: Any) -> None:
    from gpu_worker.engine import JobInterrupted

    def stop_in_second_iteration(info: Any) -> None:
        if info.iteration == 1 and info.done == 4:
            raise JobInterrupted()

    result = engine.run(demo_request(n_iter=3, seed=10), stop_in_second_iteration)
    assert result.interrupted and result.steps_done == 4
    assert [i["seed"] for i in result.images] == [10]


def test_plain_prompts_encode_exactly_like_diffusers(engine: Any, torch: Any) -> None:
    from gpu_worker.prompt_encoding import encode_prompt_pair

    pipe = engine.pipeline(engine.resolve("checkpoint", "atelier-demo-v1"), None)
    ours, ours_negative = encode_prompt_pair(pipe, "a photo of a cat", "blurry", clip_skip=1)
    theirs, theirs_negative = pipe.encode_prompt("a photo of a cat", "cpu", 1, True, "blurry")
    assert torch.equal(ours, theirs) and torch.equal(ours_negative, theirs_negative)
    long_prompt = " ".join(["cat"] * 100)
    cond, uncond = encode_prompt_pair(pipe, long_prompt, "", clip_skip=1)
    assert cond.shape == uncond.shape == (1, 154, 32)  # two 77-token chunks, padded to match


@pytest.mark.parametrize(
    "overrides",
    [
        {"width": 60},
        {"height": 32},
        {"steps": 0},
        {"batch_size": 0},
        {"mode": "img2img", "denoising_strength": 0.0},
    ],
)
def test_impossible_requests_fail_at_once(engine: Any, overrides: dict) -> None:
    from gpu_worker.engine import JobFailed

    with pytest.raises(JobFailed, match="must"):
        run(engine, **overrides)


def test_an_embedding_named_in_the_prompt_is_used_and_leaves_no_trace(
    engine: Any, tmp_path: Path, demo_models_dir: Path
) -> None:
    prompt = "a photo of atelier-demo-embedding"
    plain_before = pixels(run(engine, seed=4).images[0])
    used = run(engine, seed=4, prompt=prompt).images[0]
    assert 'TI hashes: "atelier-demo-embedding: ' in used["infotext"]
    without = tmp_path / "models"
    shutil.copytree(demo_models_dir, without, ignore=shutil.ignore_patterns("embeddings"))
    as_text = make_engine(without, tmp_path / "cache")
    assert pixels(as_text.run(demo_request(seed=4, prompt=prompt)).images[0]) != pixels(used)
    assert pixels(run(engine, seed=4).images[0]) == plain_before


def test_timings_tell_a_model_load_from_a_cache_hit(engine: Any) -> None:
    engine.cache.clear()
    cold = run(engine, seed=3)
    warm = run(engine, seed=3)
    assert (cold.timings["model_loaded"], warm.timings["model_loaded"]) == (True, False)
