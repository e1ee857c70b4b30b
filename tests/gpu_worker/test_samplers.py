"""A1111 sampler names, aliases, legacy combined names and schedule types -> diffusers."""

from __future__ import annotations

import pytest

from gpu_worker.samplers import (
    UnknownSampler,
    list_samplers,
    list_schedulers,
    resolve_sampler,
    split_legacy_sampler,
)


@pytest.mark.parametrize(
    ("sent", "schedule", "sampler", "label", "cls"),
    [
        ("Euler a", None, "Euler a", "Uniform", "EulerAncestralDiscreteScheduler"),
        ("k_euler_a", "Automatic", "Euler a", "Uniform", "EulerAncestralDiscreteScheduler"),
        ("Euler", "karras", "Euler", "Karras", "EulerDiscreteScheduler"),
        ("DPM++ 2M", "Automatic", "DPM++ 2M", "Karras", "DPMSolverMultistepScheduler"),
        ("DPM++ 2M Karras", None, "DPM++ 2M", "Karras", "DPMSolverMultistepScheduler"),
        ("DPM++ 2M", "Exponential", "DPM++ 2M", "Exponential", "DPMSolverMultistepScheduler"),
        ("DPM++ SDE Karras", None, "DPM++ SDE", "Karras", "DPMSolverSDEScheduler"),
        ("k_dpmpp_2m_sde", "", "DPM++ 2M SDE", "Exponential", "DPMSolverMultistepScheduler"),
        ("LMS", "Uniform", "LMS", "Uniform", "LMSDiscreteScheduler"),
        ("Heun", None, "Heun", "Uniform", "HeunDiscreteScheduler"),
        ("DPM2 a", None, "DPM2 a", "Karras", "KDPM2AncestralDiscreteScheduler"),
        ("DDIM", None, "DDIM", "Uniform", "DDIMScheduler"),
        ("PLMS", None, "PLMS", "Uniform", "PNDMScheduler"),
        ("UniPC", "SGM Uniform", "UniPC", "SGM Uniform", "UniPCMultistepScheduler"),
        ("LCM", None, "LCM", "Uniform", "LCMScheduler"),
    ],
)
def test_names_resolve(sent: str, schedule: str | None, sampler: str, label: str, cls: str) -> None:
    choice = resolve_sampler(sent, schedule)
    assert choice.sampler.name == sampler
    assert choice.schedule.label == label
    assert choice.sampler.scheduler_class == cls


def test_unknown_sampler_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownSampler) as err:
        resolve_sampler("Euler z")
    assert "DPM++ 2M" in str(err.value) and "Euler a" in str(err.value)


@pytest.mark.parametrize("name", ["DPM fast", "DPM adaptive", "k_dpm_fast"])
def test_samplers_without_equivalent_are_refused_clearly(name: str) -> None:
    with pytest.raises(UnknownSampler, match="not supported"):
        resolve_sampler(name)


def test_unsupported_schedule_type_is_refused() -> None:
    with pytest.raises(UnknownSampler, match="Karras"):
        resolve_sampler("Euler", "Align Your Steps")


def test_split_legacy_names() -> None:
    assert split_legacy_sampler("DPM++ 2M SDE Karras") == ("DPM++ 2M SDE", "Karras")
    assert split_legacy_sampler("Euler a") == ("Euler a", None)
    assert split_legacy_sampler("DPM++ 2M SDE Heun") == ("DPM++ 2M SDE Heun", None)


def test_listings_have_the_api_shape() -> None:
    names = [s["name"] for s in list_samplers()]
    assert "DPM fast" not in names and "Euler a" in names
    assert {"k_euler_a"} <= set(
        next(s for s in list_samplers() if s["name"] == "Euler a")["aliases"]
    )
    assert {s["label"] for s in list_schedulers()} >= {"Automatic", "Karras", "Exponential"}


def test_build_scheduler_gives_a_fresh_configured_scheduler() -> None:
    from gpu_worker.samplers import build_scheduler

    base = {
        "_class_name": "PNDMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "steps_offset": 1,
    }
    karras = build_scheduler(resolve_sampler("DPM++ 2M Karras"), base, seed=1)
    assert type(karras).__name__ == "DPMSolverMultistepScheduler"
    assert karras.config.use_karras_sigmas is True
    sde = build_scheduler(resolve_sampler("DPM++ SDE"), base, seed=77)
    assert sde.config.noise_sampler_seed == 77
    other = build_scheduler(resolve_sampler("DPM++ 2M Karras"), base, seed=1)
    assert other is not karras
    sde2m = build_scheduler(resolve_sampler("DPM++ 2M SDE Heun"), base, seed=1)
    assert sde2m.config.algorithm_type == "sde-dpmsolver++" and sde2m.config.solver_type == "heun"
