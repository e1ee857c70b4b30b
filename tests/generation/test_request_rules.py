"""The rules the platform and the worker share (gpu_worker.passes, gpu_worker.prompt_syntax),
tried through the REST API where they once disagreed: what the worker would refuse is refused at
submission, naming the field, and no credits are held."""

from __future__ import annotations

import pytest

from accounts.ledger import account_for
from accounts.models import MembershipTier
from accounts.tiers import tier_of
from generation.models import Job
from tests.generation.conftest import SMALL

pytestmark = pytest.mark.django_db


def refused_without_a_hold(client, user, body: dict) -> dict:
    before = account_for(user).balance
    response = client.post("/api/v1/jobs/", body, format="json")
    assert 400 <= response.status_code < 500, response.content
    assert not Job.objects.filter(owner=user).exists()
    assert account_for(user).balance == before
    return response.json()


def quote(client, body: dict) -> dict:
    response = client.post("/api/v1/jobs/quote/", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


# --- hires target size: one side given, the other keeps the aspect ratio (A1111) ------------


def test_a_hires_width_alone_keeps_the_aspect_ratio_in_the_price_and_the_limits(
    alice, alice_api, catalogue
):
    MembershipTier.objects.filter(pk=tier_of(alice).pk).update(max_side=2048, max_pixels=2048**2)
    body = {**SMALL, "width": 512, "height": 1024, "hires": {"resize_x": 2048}}
    # 2048x4096 is what the engine renders: past the tier's 2048 per side.
    error = refused_without_a_hold(alice_api, alice, body)
    assert error["field"] == "hires" and "2048x4096" in error["detail"]


def test_a_hires_height_alone_is_priced_at_the_size_the_engine_renders(alice_api, catalogue):
    one_side = quote(alice_api, {**SMALL, "width": 64, "height": 128, "hires": {"resize_y": 256}})
    both = quote(
        alice_api,
        {**SMALL, "width": 64, "height": 128, "hires": {"resize_x": 128, "resize_y": 256}},
    )
    assert one_side["price"] == both["price"]


# --- hires second pass: priced and counted for the steps it runs -----------------------------


def test_the_hires_pass_is_counted_for_the_steps_it_runs_whatever_its_strength(
    alice_api, catalogue
):
    body = {**SMALL, "steps": 10, "width": 64, "height": 64}
    strong = quote(
        alice_api, {**body, "hires": {"second_pass_steps": 10, "denoising_strength": 0.9}}
    )
    weak = quote(alice_api, {**body, "hires": {"second_pass_steps": 10, "denoising_strength": 0.5}})
    assert strong["total_steps"] == weak["total_steps"] == 20
    assert strong["price"] == weak["price"]


def test_a_hires_pass_that_would_run_no_step_is_refused(alice, alice_api, catalogue):
    body = {**SMALL, "steps": 1, "hires": {"denoising_strength": 0.0}}
    error = refused_without_a_hold(alice_api, alice, body)
    assert error["field"] == "hires.denoising_strength"


# --- LoRA tags: one grammar, any case, lora and lyco -----------------------------------------


def test_a_lyco_tag_is_checked_in_the_catalogue_like_a_lora_tag(alice, alice_api, catalogue):
    error = refused_without_a_hold(alice_api, alice, {**SMALL, "prompt": "a <lyco:nope:0.8>"})
    assert error["field"] == "prompt" and "unknown LoRA" in error["detail"]
    job = alice_api.post("/api/v1/jobs/", {**SMALL, "prompt": "a <lyco:style:0.8>"}, format="json")
    assert job.status_code == 201 and job.json()["params"]["loras"] == ["style"]


def test_an_upper_case_lora_tag_is_applied_like_a_lower_case_one(alice_api, catalogue):
    response = alice_api.post(
        "/api/v1/jobs/", {**SMALL, "prompt": "a <LORA:style:1>"}, format="json"
    )
    assert response.status_code == 201 and response.json()["params"]["loras"] == ["style"]


def test_a_lora_weight_that_is_not_a_number_is_refused_before_any_hold(alice, alice_api, catalogue):
    error = refused_without_a_hold(alice_api, alice, {**SMALL, "prompt": "a <lora:style:abc>"})
    assert error["field"] == "prompt" and "not a number" in error["detail"]


# --- emphasis --------------------------------------------------------------------------------


def test_a_malformed_emphasis_weight_is_refused_naming_the_prompt(alice, alice_api, catalogue):
    error = refused_without_a_hold(alice_api, alice, {**SMALL, "prompt": "a (cat:1.2.3)"})
    assert error["field"] == "prompt" and "1.2.3" in error["detail"]
    negative = refused_without_a_hold(alice_api, alice, {**SMALL, "negative_prompt": "(blurry:.)"})
    assert negative["field"] == "negative_prompt"


# --- the rest of what the worker refuses -----------------------------------------------------


def test_an_unknown_hires_upscaler_is_refused_listing_the_valid_ones(alice, alice_api, catalogue):
    error = refused_without_a_hold(
        alice_api, alice, {**SMALL, "hires": {"scale": 1.5, "upscaler": "Magic"}}
    )
    assert error["field"] == "hires.upscaler" and "Latent (bicubic)" in error["detail"]


def test_img2img_at_strength_zero_is_refused(alice, alice_api, catalogue):
    from tests.generation.test_submission import png_b64

    body = {**SMALL, "init_image": png_b64(), "denoising_strength": 0}
    assert refused_without_a_hold(alice_api, alice, body)["field"] == "denoising_strength"


def test_an_a1111_spelling_sent_to_the_rest_api_is_refused_naming_it(alice, alice_api, catalogue):
    error = refused_without_a_hold(alice_api, alice, {**SMALL, "enable_hr": True})
    assert error["field"] == "enable_hr" and "/sdapi/v1/" in error["detail"]


def test_a_hires_that_is_not_an_object_is_a_bad_request_naming_hires(alice, alice_api, catalogue):
    error = refused_without_a_hold(alice_api, alice, {**SMALL, "hires": "yes"})
    assert error["field"] == "hires"


def test_a_hires_field_out_of_bounds_names_the_nested_field(alice, alice_api, catalogue):
    error = refused_without_a_hold(alice_api, alice, {**SMALL, "hires": {"scale": 9}})
    assert error["field"] == "hires.scale" and "between 1 and 4" in error["detail"]
