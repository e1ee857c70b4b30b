"""A1111 sampler and schedule-type names, mapped to diffusers schedulers. Listing is torch-free.

`resolve_sampler` turns what a client sends (canonical name, alias such as k_euler_a, or a legacy
combined name such as "DPM++ 2M Karras") into a `SamplerChoice`; `build_scheduler` makes a fresh
diffusers scheduler for one job (schedulers keep per-run state, and DPM++ SDE needs the seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class UnknownSampler(ValueError):
    """An unknown or unsupported sampler / schedule type; the message lists the valid names."""


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    aliases: tuple[str, ...]
    scheduler_class: str | None  # diffusers class; None: no equivalent (refused)
    kwargs: dict[str, Any] = field(default_factory=dict)
    default_schedule: str = "uniform"  # what "Automatic" means for it in A1111 >= 1.9
    second_order: bool = False
    note: str = ""


_DPMPP_SDE = {"algorithm_type": "sde-dpmsolver++"}
SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), "DPMSolverMultistepScheduler", {}, "karras"),
    SamplerSpec("DPM++ SDE", ("k_dpmpp_sde",), "DPMSolverSDEScheduler", {}, "karras", True),
    SamplerSpec(
        "DPM++ 2M SDE",
        ("k_dpmpp_2m_sde",),
        "DPMSolverMultistepScheduler",
        _DPMPP_SDE,
        "exponential",
    ),
    SamplerSpec(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        "DPMSolverMultistepScheduler",
        {**_DPMPP_SDE, "solver_type": "heun"},
        "exponential",
    ),
    SamplerSpec(
        "DPM++ 2S a",
        ("k_dpmpp_2s_a",),
        "DPMSolverSinglestepScheduler",
        {"solver_order": 2},
        "karras",
        note="approximation",
    ),
    SamplerSpec(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        "DPMSolverMultistepScheduler",
        {**_DPMPP_SDE, "solver_order": 3},
        "exponential",
    ),
    SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), "EulerAncestralDiscreteScheduler"),
    SamplerSpec("Euler", ("k_euler",), "EulerDiscreteScheduler"),
    SamplerSpec("LMS", ("k_lms",), "LMSDiscreteScheduler"),
    SamplerSpec("Heun", ("k_heun",), "HeunDiscreteScheduler", {}, "uniform", True),
    SamplerSpec("DPM2", ("k_dpm_2",), "KDPM2DiscreteScheduler", {}, "karras", True),
    SamplerSpec("DPM2 a", ("k_dpm_2_a",), "KDPM2AncestralDiscreteScheduler", {}, "karras", True),
    SamplerSpec("DPM fast", ("k_dpm_fast",), None, note="no diffusers equivalent"),
    SamplerSpec("DPM adaptive", ("k_dpm_ad",), None, note="no diffusers equivalent"),
    SamplerSpec(
        "Restart",
        ("restart",),
        "EulerDiscreteScheduler",
        {},
        "karras",
        note="approximated by Euler",
    ),
    SamplerSpec("DDIM", ("ddim",), "DDIMScheduler"),
    SamplerSpec("PLMS", ("plms",), "PNDMScheduler", {"skip_prk_steps": True}),
    SamplerSpec("UniPC", ("unipc",), "UniPCMultistepScheduler"),
    SamplerSpec("LCM", ("k_lcm",), "LCMScheduler"),
)


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    label: str
    kwargs: dict[str, Any] | None  # None: not available in this engine


SCHEDULES: tuple[ScheduleSpec, ...] = (
    ScheduleSpec("automatic", "Automatic", {}),
    ScheduleSpec("uniform", "Uniform", {}),
    ScheduleSpec("karras", "Karras", {"use_karras_sigmas": True}),
    ScheduleSpec("exponential", "Exponential", {"use_exponential_sigmas": True}),
    ScheduleSpec("polyexponential", "Polyexponential", None),
    ScheduleSpec("sgm_uniform", "SGM Uniform", {"timestep_spacing": "trailing"}),
    ScheduleSpec("kl_optimal", "KL Optimal", None),
    ScheduleSpec("align_your_steps", "Align Your Steps", None),
    ScheduleSpec("simple", "Simple", {"timestep_spacing": "trailing"}),
    ScheduleSpec("normal", "Normal", {"timestep_spacing": "linspace"}),
    ScheduleSpec("ddim", "DDIM", {"timestep_spacing": "leading"}),
    ScheduleSpec("beta", "Beta", {"use_beta_sigmas": True}),
)

_SAMPLER_INDEX = {s.name.lower(): s for s in SAMPLERS} | {
    a.lower(): s for s in SAMPLERS for a in s.aliases
}
_SCHEDULE_INDEX = {s.name.lower(): s for s in SCHEDULES} | {s.label.lower(): s for s in SCHEDULES}


@dataclass(frozen=True)
class SamplerChoice:
    sampler: SamplerSpec
    schedule: ScheduleSpec  # never "automatic": resolved to the sampler's default

    @property
    def infotext_schedule(self) -> str:
        return self.schedule.label


def list_samplers() -> list[dict[str, Any]]:
    """GET /sdapi/v1/samplers shape; refused samplers are left out."""
    return [
        {"name": s.name, "aliases": list(s.aliases), "options": {"note": s.note} if s.note else {}}
        for s in SAMPLERS
        if s.scheduler_class
    ]


def list_schedulers() -> list[dict[str, Any]]:
    """GET /sdapi/v1/schedulers shape (only the ones this engine can run)."""
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": None,
            "default_rho": -1,
            "need_inner_model": False,
        }
        for s in SCHEDULES
        if s.kwargs is not None
    ]


def split_legacy_sampler(name: str) -> tuple[str, str | None]:
    """ "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); names without a schedule suffix unchanged."""
    if name.lower() in _SAMPLER_INDEX:
        return name, None
    for schedule in SCHEDULES:
        suffix = " " + schedule.label
        if name.endswith(suffix) and name[: -len(suffix)].lower() in _SAMPLER_INDEX:
            return name[: -len(suffix)], schedule.label
    return name, None


def is_second_order(name: str | None) -> bool:
    """Whether the sampler evaluates the UNet twice per step (Heun, DPM2, DPM2 a, DPM++ SDE);
    unknown names are not (submission refuses them)."""
    spec = _SAMPLER_INDEX.get(split_legacy_sampler((name or "").strip())[0].lower())
    return spec is not None and spec.second_order


def resolve_sampler(name: str | None, schedule: str | None = None) -> SamplerChoice:
    base_name, legacy_schedule = split_legacy_sampler((name or "Euler").strip())
    spec = _SAMPLER_INDEX.get(base_name.lower())
    if spec is None:
        valid = ", ".join(s["name"] for s in list_samplers())
        raise UnknownSampler(f"unknown sampler {name!r}; valid samplers: {valid}")
    if spec.scheduler_class is None:
        raise UnknownSampler(f"sampler {spec.name!r} is not supported by this engine ({spec.note})")
    wanted = (schedule or "").strip()
    if not wanted or wanted.lower() == "automatic":
        wanted = legacy_schedule or spec.default_schedule
    schedule_spec = _SCHEDULE_INDEX.get(wanted.lower())
    if schedule_spec is None or schedule_spec.kwargs is None:
        valid = ", ".join(s["label"] for s in list_schedulers())
        raise UnknownSampler(f"unknown or unsupported schedule type {schedule!r}; valid: {valid}")
    if schedule_spec.name == "automatic":
        schedule_spec = _SCHEDULE_INDEX[spec.default_schedule]
    return SamplerChoice(spec, schedule_spec)


def build_scheduler(choice: SamplerChoice, base_config: Any, *, seed: int) -> Any:
    """A fresh diffusers scheduler for one job, from the checkpoint's own scheduler config."""
    import inspect

    import diffusers

    cls = getattr(diffusers, choice.sampler.scheduler_class or "")
    accepted = set(inspect.signature(cls.__init__).parameters)
    kwargs = dict(choice.sampler.kwargs)
    for key, value in (choice.schedule.kwargs or {}).items():
        if key in accepted:  # a schedule a class cannot express falls back to its default
            kwargs[key] = value
    if "noise_sampler_seed" in accepted:
        kwargs["noise_sampler_seed"] = seed  # DPM++ SDE's Brownian noise ignores the generator
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        config.pop(flag, None)
    return cls.from_config(config, **kwargs)
