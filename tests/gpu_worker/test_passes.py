"""The denoising passes' sizes and steps, as the platform prices them and the engine runs them
(torch-free: gpu_worker.passes)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gpu_worker.params import HIRES_DEFAULTS, HiresParams
from gpu_worker.passes import hires_pass_steps, hires_size, progress_steps, steps_problem


def hires(**given: Any) -> HiresParams:
    return cast(HiresParams, {**HIRES_DEFAULTS, **given})


@pytest.mark.parametrize(
    ("size", "given", "target"),
    [
        ((512, 1024), {"resize_x": 2048}, (2048, 4096)),  # the other side keeps the ratio
        ((512, 1024), {"resize_y": 1536}, (768, 1536)),
        ((512, 768), {"resize_x": 1000, "resize_y": 600}, (1000, 600)),  # both: as given
        ((512, 768), {"scale": 1.5}, (768, 1152)),
        ((512, 512), {"scale": 1.3}, (664, 664)),  # 665.6 -> 665 -> the latent grid
        ((768, 512), {"resize_y": 1000}, (1496, 1000)),  # A1111 floors: 1500 -> 1496
    ],
)
def test_the_hires_target_is_a1111s(size, given, target):
    width, height = size
    assert hires_size(width, height, hires(**given)) == target


@pytest.mark.parametrize("strength", [0.05, 0.3, 0.45, 0.6, 0.7, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("second", [0, 1, 7, 10, 20, 33])
def test_the_hires_pass_runs_its_second_pass_steps_at_any_strength(strength, second):
    params = {"mode": "txt2img", "steps": 20, "n_iter": 1}
    params["hires"] = hires(second_pass_steps=second, denoising_strength=strength)
    assert hires_pass_steps(params) == (second or 20)


def test_img2img_runs_steps_times_strength_and_progress_counts_every_batch():
    params = {"mode": "img2img", "steps": 20, "denoising_strength": 0.5, "n_iter": 3}
    assert progress_steps(params) == 30


def test_a_pass_that_would_denoise_nothing_is_a_problem_naming_its_field():
    img2img = {"mode": "img2img", "steps": 1, "denoising_strength": 0.5, "n_iter": 1}
    problem = steps_problem(img2img)
    assert problem and problem[0] == "denoising_strength"
    txt2img = {"mode": "txt2img", "steps": 4, "hires": hires(denoising_strength=0)}
    problem = steps_problem(txt2img)
    assert problem and problem[0] == "hires.denoising_strength"


@pytest.mark.parametrize("sampler", ["Heun", "DPM2", "DPM2 a Karras", "k_dpmpp_sde"])
def test_a_second_order_sampler_counts_2n_minus_1_evaluations_per_pass(sampler):
    img2img = {"mode": "img2img", "steps": 20, "denoising_strength": 0.5, "n_iter": 2}
    assert progress_steps({**img2img, "sampler": sampler}) == (2 * 10 - 1) * 2
    txt2img = {"mode": "txt2img", "steps": 4, "n_iter": 1, "sampler": sampler}
    txt2img["hires"] = hires(second_pass_steps=3, denoising_strength=0.5)
    assert progress_steps(txt2img) == (2 * 4 - 1) + (2 * 3 - 1)
    assert progress_steps({**txt2img, "sampler": "DPM++ 2M SDE Heun"}) == 4 + 3
