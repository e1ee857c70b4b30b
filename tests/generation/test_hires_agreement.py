"""A hires job is quoted, limited, counted and rendered at one size with one step count: the
REST quote, the tier's pixel limit, `Job.total_steps` and the real engine (the tiny demo model)
agree, whichever way the target size is given."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: the CPU thread cliff

from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import pytest

from accounts.models import MembershipTier
from accounts.tiers import tier_of
from generation.job_messages import build_request
from generation.models import Job
from generation.pricing import UNIT_WORK

pytest.importorskip("diffusers")
pytestmark = [pytest.mark.engine, pytest.mark.django_db]

DEMO = "atelier-demo-v1"
# A 64x128 first pass, then the hires pass: (how the target is given, the size rendered).
TARGETS: dict[str, tuple[dict[str, float], tuple[int, int]]] = {
    "resize_x only": ({"resize_x": 128}, (128, 256)),
    "resize_y only": ({"resize_y": 192}, (96, 192)),
    "both sides": ({"resize_x": 128, "resize_y": 128}, (128, 128)),
    "scale": ({"scale": 1.5}, (96, 192)),
}


@pytest.fixture(scope="module")
def engine(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gpu_worker.engine import Engine
    from gpu_worker.model_cache import ModelCache

    return Engine(
        models_dir=demo_models,
        cache=ModelCache(device="cpu", device_budget_bytes=1 << 30, ram_budget_bytes=2 << 30),
        cache_dir=tmp_path_factory.mktemp("cache"),
    )


def set_max_pixels(user: Any, pixels: int) -> None:
    MembershipTier.objects.filter(pk=tier_of(user).pk).update(max_pixels=pixels)


@pytest.mark.parametrize("way", list(TARGETS))
def test_quote_limits_progress_and_image_agree_on_the_hires_target(
    alice, alice_api, demo_catalogue, engine, way
):
    hires, (width, height) = TARGETS[way]
    body = {
        "checkpoint": DEMO,
        "prompt": "a lighthouse",
        "width": 64,
        "height": 128,
        "steps": 3,
        "seed": 7,
        "hires": {**hires, "second_pass_steps": 2, "denoising_strength": 0.6},
    }
    quote = alice_api.post("/api/v1/jobs/quote/", body, format="json").json()
    work = 64 * 128 * 3 + width * height * 2  # pixel-steps of both passes, at the rendered size
    price = (Decimal(work) / UNIT_WORK).quantize(Decimal("0.01"), rounding=ROUND_CEILING)
    assert quote["price"] == str(price)

    set_max_pixels(alice, width * height - 1)
    refused = alice_api.post("/api/v1/jobs/", body, format="json")
    assert refused.status_code == 422 and refused.json()["field"] == "hires"
    assert f"{width}x{height}" in refused.json()["detail"]
    set_max_pixels(alice, width * height)
    response = alice_api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert str(job.price) == quote["price"] and job.total_steps == quote["total_steps"] == 3 + 2

    totals: list[int] = []
    result = engine.run(build_request(job), observer=lambda step: totals.append(step.total))
    assert [(i["width"], i["height"]) for i in result.images] == [(width, height)]
    assert result.steps_done == job.total_steps and set(totals) == {job.total_steps}


def test_a_second_order_sampler_is_counted_priced_and_run_by_its_unet_evaluations(
    alice, alice_api, demo_catalogue, engine
):
    body = {
        "checkpoint": DEMO,
        "prompt": "a lighthouse",
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 7,
        "sampler": "Heun",
    }
    quote = alice_api.post("/api/v1/jobs/quote/", body, format="json").json()
    evaluations = 2 * 3 - 1  # Heun evaluates twice on every step but the last
    price = (Decimal(64 * 64 * evaluations) / UNIT_WORK).quantize(
        Decimal("0.01"), rounding=ROUND_CEILING
    )
    assert quote["price"] == str(price)
    response = alice_api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.total_steps == quote["total_steps"] == evaluations

    seen: list[tuple[int, int]] = []
    result = engine.run(build_request(job), observer=lambda s: seen.append((s.done, s.total)))
    assert result.steps_done == job.total_steps
    assert seen == [(done, evaluations) for done in range(1, evaluations + 1)]
