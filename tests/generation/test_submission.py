"""Submitting jobs: every limit answers 4xx naming the field, names are looked up in the
catalogue only, idempotency keys and the unfinished-jobs cap."""

from __future__ import annotations

import base64
import io
from dataclasses import replace
from decimal import Decimal
from unittest.mock import patch

import pytest
from PIL import Image

from generation.limits import limits_for
from generation.models import Job, UserGenerationSettings
from generation.pricing import price_job
from generation.submission import SubmissionError, submit_job
from tests.generation.conftest import SMALL

pytestmark = pytest.mark.django_db


def png_b64(width: int = 64, height: int = 64) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def refused(alice, **params) -> SubmissionError:
    with pytest.raises(SubmissionError) as caught:
        submit_job(alice, {**SMALL, **params})
    return caught.value


@pytest.mark.parametrize(
    ("make_params", "field", "words"),
    [
        (lambda lim: {"width": 100}, "width", lambda lim: "multiple of 8"),
        (lambda lim: {"height": lim.max_side + 8}, "height", lambda lim: str(lim.max_side)),
        (lambda lim: {"steps": lim.max_steps + 1}, "steps", lambda lim: str(lim.max_steps)),
        (lambda lim: {"steps": 0}, "steps", lambda lim: "between 1"),
        (lambda lim: {"cfg_scale": 31}, "cfg_scale", lambda lim: "30"),
        (lambda lim: {"cfg_scale": 0.5}, "cfg_scale", lambda lim: "between 1"),
        (
            lambda lim: {"batch_size": lim.max_images, "n_iter": 2},
            "batch_size",
            lambda lim: f"limit is {lim.max_images}",
        ),
        (lambda lim: {"prompt": "x" * 2001}, "prompt", lambda lim: "2000"),
        (lambda lim: {"negative_prompt": "x" * 2001}, "negative_prompt", lambda lim: "2000"),
        (lambda lim: {"seed": 2**40}, "seed", lambda lim: "between"),
        (lambda lim: {"clip_skip": 13}, "clip_skip", lambda lim: "12"),
        (
            lambda lim: {"hires": {"scale": 4}, "width": 512, "height": 512},
            "hires",
            lambda lim: "exceeds",
        ),
    ],
)
def test_every_limit_is_refused_naming_the_field_and_the_limit(
    alice, catalogue, make_params, field, words
):
    limits = limits_for(alice)
    error = refused(alice, **make_params(limits))
    assert error.field == field
    assert words(limits) in error.message
    assert error.status == 422


def test_more_pixels_than_the_limit_is_refused(alice, catalogue):
    limits = replace(limits_for(alice), max_pixels=512 * 512)
    with patch("generation.submission.limits_for", return_value=limits):
        error = refused(alice, width=512, height=520)
    assert (error.field, error.status) == ("width", 422)
    assert "262144 pixels" in error.message


def test_a_non_number_is_a_bad_request_naming_the_field(alice, catalogue):
    error = refused(alice, steps="many")
    assert (error.field, error.status) == ("steps", 400)


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "model-off", "nope", "/abs/a"])
def test_a_path_or_unknown_or_disabled_model_is_an_unknown_model(alice, catalogue, name):
    error = refused(alice, checkpoint=name)
    assert error.field == "checkpoint"
    assert "unknown model" in error.message
    assert error.status == 422


def test_a_model_no_worker_has_is_a_conflict(alice, catalogue):
    error = refused(alice, checkpoint="model-gone")
    assert (error.field, error.status) == ("checkpoint", 409)


def test_an_unknown_sampler_lists_the_valid_ones(alice, catalogue):
    error = refused(alice, sampler="Magic")
    assert error.field == "sampler" and error.status == 422
    assert "Euler a" in error.message


def test_a_refused_sampler_is_explained(alice, catalogue):
    error = refused(alice, sampler="DPM fast")
    assert error.field == "sampler" and "not supported" in error.message


def test_an_unknown_schedule_is_refused(alice, catalogue):
    assert refused(alice, scheduler="Wobbly").field == "scheduler"


def test_an_unknown_lora_in_the_prompt_is_refused(alice, catalogue):
    error = refused(alice, prompt="a cat <lora:../../secret:0.8>")
    assert error.field == "prompt" and "unknown LoRA" in error.message


def test_a_known_lora_is_accepted_and_recorded(alice, catalogue):
    job = submit_job(alice, {**SMALL, "prompt": "a cat <lora:style:0.7>"})
    assert job.params["loras"] == ["style"]


def test_an_unknown_vae_is_refused(alice, catalogue):
    assert refused(alice, vae="../vae").field == "vae"


def test_legacy_combined_sampler_names_are_split(alice, catalogue):
    job = submit_job(alice, {**SMALL, "sampler": "DPM++ 2M Karras"})
    assert (job.params["sampler"], job.params["scheduler"]) == ("DPM++ 2M", "Karras")


def test_seed_minus_one_is_resolved_at_submission(alice, catalogue):
    job = submit_job(alice, {**SMALL, "seed": -1})
    assert 0 <= job.params["seed"] < 2**32


def test_a_job_is_priced_by_its_work_and_the_model_multiplier(alice, catalogue):
    base = {"width": 512, "height": 512, "steps": 20, "batch_size": 1, "n_iter": 1}
    assert price_job(base, catalogue["a"]) == Decimal("1.00")
    assert price_job(base, catalogue["b"]) == Decimal("2.00")
    assert price_job({**base, "n_iter": 2, "steps": 30}, catalogue["a"]) == Decimal("3.00")
    hires = {**base, "hires": {"scale": 2.0, "second_pass_steps": 10, "denoising_strength": 1}}
    assert price_job(hires, catalogue["a"]) == Decimal("3.00")
    assert price_job({**base, "width": 64, "height": 64, "steps": 4}, catalogue["a"]) == Decimal(
        "0.01"
    )


def test_the_users_default_model_is_used_when_none_is_named(alice, bob, catalogue):
    UserGenerationSettings.objects.create(user=alice, default_checkpoint=catalogue["b"])
    params = {k: v for k, v in SMALL.items() if k != "checkpoint"}
    assert submit_job(alice, params).checkpoint == catalogue["b"]
    assert submit_job(bob, params).checkpoint == catalogue["a"]


def test_the_last_used_params_are_remembered_per_user(alice, catalogue):
    submit_job(alice, {**SMALL, "prompt": "remember me"})
    assert UserGenerationSettings.objects.get(user=alice).last_params["prompt"] == "remember me"


def test_an_idempotency_key_returns_the_first_job(alice, catalogue):
    first = submit_job(alice, SMALL, idempotency_key="k-1")
    again = submit_job(alice, {**SMALL, "prompt": "different"}, idempotency_key="k-1")
    assert again.pk == first.pk
    assert Job.objects.count() == 1


def test_the_same_idempotency_key_of_another_user_makes_another_job(alice, bob, catalogue):
    assert submit_job(alice, SMALL, "k").pk != submit_job(bob, SMALL, "k").pk


def test_one_job_past_the_unfinished_cap_is_too_many_requests(alice, bob, catalogue):
    cap = limits_for(alice).max_unfinished_jobs
    for _ in range(cap):
        submit_job(alice, SMALL)
    error = refused(alice)
    assert (error.field, error.status) == ("jobs", 429)
    assert f"limit is {cap}" in error.message
    submit_job(bob, SMALL)  # bob's own quota is untouched


def test_finished_jobs_do_not_count_against_the_cap(alice, catalogue):
    jobs = [submit_job(alice, SMALL) for _ in range(limits_for(alice).max_unfinished_jobs)]
    jobs[0].mark_failed("boom")
    submit_job(alice, SMALL)


def test_img2img_accepts_a_real_image_and_stores_it_re_encoded(alice, catalogue):
    job = submit_job(alice, {**SMALL, "init_image": "data:image/png;base64," + png_b64()})
    assert job.mode == "img2img"
    assert (job.init_image.name or "").startswith("init/")
    with job.init_image.open("rb") as fh:
        assert Image.open(fh).format == "PNG"


def test_img2img_without_an_image_is_refused(alice, catalogue):
    assert refused(alice, mode="img2img").field == "init_image"


def test_an_init_image_that_is_not_an_image_is_refused(alice, catalogue):
    error = refused(alice, init_image=base64.b64encode(b"%PDF-1.4 not an image").decode())
    assert error.field == "init_image" and "not a readable image" in error.message


def test_an_oversized_init_image_is_refused_by_its_byte_cap(alice, catalogue):
    error = refused(alice, init_image="A" * (15 * 1024 * 1024))
    assert error.field == "init_image" and "bytes" in error.message


def test_a_decompression_bomb_is_refused_before_decoding(alice, catalogue):
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, "PNG")  # tiny file, 400 megapixels
    error = refused(alice, init_image=base64.b64encode(out.getvalue()).decode())
    assert error.field == "init_image" and "pixels" in error.message
