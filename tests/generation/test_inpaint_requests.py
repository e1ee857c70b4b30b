"""Inpainting requests at the front doors, before any worker: the mask's checks (422 naming the
field), its storage with the job and in the worker's message, pricing by the pixels denoised,
and the A1111 translation of the mask fields."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image, ImageDraw

from generation.a1111.translation import translate
from generation.job_messages import build_request
from generation.limits import limits_for
from generation.models import Job
from generation.pricing import work_units
from generation.submission import SubmissionError, validate_params
from gpu_worker.params import INPAINT_DEFAULTS
from tests.generation.conftest import SMALL

pytestmark = pytest.mark.django_db


def png_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def square_mask(size: tuple[int, int] = (64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    w, h = size
    ImageDraw.Draw(mask).rectangle((w // 4, h // 4, w // 2, h // 2), fill=255)
    return mask


SOURCE = png_b64(Image.new("RGB", (64, 64), "teal"))
INPAINT = {**SMALL, "mode": "img2img", "init_image": SOURCE, "mask": png_b64(square_mask())}


def refused(user: Any, **params: Any) -> SubmissionError:
    with pytest.raises(SubmissionError) as caught:
        validate_params(user, {**INPAINT, **params})
    return caught.value


def test_a_mask_that_is_not_an_image_is_refused_naming_mask(alice, catalogue):
    error = refused(alice, mask=base64.b64encode(b"not a picture").decode())
    assert (error.status, error.field) == (422, "mask")


def test_an_all_black_mask_is_refused_as_nothing_to_repaint(alice, catalogue):
    error = refused(alice, mask=png_b64(Image.new("L", (64, 64), 0)))
    assert (error.status, error.field) == (422, "mask") and "nothing to repaint" in error.message


def test_an_all_white_mask_inverted_is_refused_too(alice, catalogue):
    white = png_b64(Image.new("L", (64, 64), 255))
    error = refused(alice, mask=white, inpaint={"inpainting_mask_invert": True})
    assert (error.status, error.field) == (422, "mask")


def test_a_mask_over_the_upload_pixel_cap_is_refused(alice, catalogue):
    error = refused(alice, mask=png_b64(Image.new("L", (4100, 4100), 255)))
    assert (error.status, error.field) == (422, "mask") and "pixels" in error.message


def test_a_mask_without_a_source_image_is_refused(alice, catalogue):
    error = refused(alice, mode="txt2img", init_image=None)
    assert (error.status, error.field) == (422, "mask")


def test_unknown_and_out_of_range_inpaint_options_name_their_field(alice, catalogue):
    assert refused(alice, inpaint={"inpainting_fill": 4}).field == "inpaint.inpainting_fill"
    assert refused(alice, inpaint={"brush": 3}).field == "inpaint.brush"
    assert refused(alice, inpaint={"outpaint_left": 12}).field == "inpaint.outpaint_left"


def test_a_mask_alone_takes_the_web_ui_defaults(alice, catalogue):
    params = validate_params(alice, INPAINT).params
    assert params["inpaint"] == INPAINT_DEFAULTS


def test_mask_blur_sets_both_axes_as_in_a1111(alice, catalogue):
    inpaint = validate_params(alice, {**INPAINT, "inpaint": {"mask_blur": 9}}).params["inpaint"]
    assert inpaint is not None
    assert inpaint["mask_blur_x"] == inpaint["mask_blur_y"] == 9


def test_plain_img2img_has_no_inpaint(alice, catalogue):
    params = validate_params(alice, {**INPAINT, "mask": None}).params
    assert params["inpaint"] is None


def test_the_mask_is_stored_with_the_job_at_the_sources_size_and_sent_to_the_worker(
    alice, alice_api, catalogue
):
    small_mask = png_b64(square_mask((32, 32)))  # half the source's size: stretched to it
    response = alice_api.post("/api/v1/jobs/", {**INPAINT, "mask": small_mask}, format="json")
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    with job.mask_image.open("rb") as fh, Image.open(fh) as stored:
        assert stored.size == (64, 64) and stored.mode == "L"
    request = build_request(job)
    assert request["mask_png_b64"] and request["init_image_png_b64"]
    assert request["inpaint"] == INPAINT_DEFAULTS


def test_the_rest_api_answers_422_naming_mask(alice_api, catalogue):
    response = alice_api.post(
        "/api/v1/jobs/", {**INPAINT, "mask": png_b64(Image.new("L", (64, 64), 0))}, format="json"
    )
    assert response.status_code == 422 and response.json()["field"] == "mask"


def test_only_masked_on_a_large_source_costs_its_crop_not_the_whole_picture(alice, catalogue):
    big = {
        **INPAINT,
        "init_image": png_b64(Image.new("RGB", (512, 512), "teal")),
        "mask": png_b64(square_mask((512, 512))),
    }
    whole = validate_params(alice, {**big, "width": 512, "height": 512})
    only_masked = validate_params(
        alice, {**big, "width": 128, "height": 128, "inpaint": {"inpaint_full_res": True}}
    )
    # 128x128 denoised instead of 512x512
    assert work_units(only_masked.params) * 16 == work_units(whole.params)
    assert only_masked.price < whole.price


def test_outpainting_is_priced_for_the_grown_canvas_and_limited_by_it(alice, catalogue):
    plain = validate_params(alice, INPAINT).params
    grown = validate_params(alice, {**INPAINT, "inpaint": {"outpaint_right": 64}}).params
    assert work_units(grown) == work_units(plain) * 2  # 128x64 denoised instead of 64x64
    side = limits_for(alice).max_side // 8 * 8  # allowed alone, too much beside the source
    error = refused(alice, inpaint={"outpaint_right": side})
    assert (error.status, error.field) == (422, "inpaint")


def test_outpainting_alone_needs_no_mask(alice, catalogue):
    params = validate_params(
        alice, {**INPAINT, "mask": None, "inpaint": {"outpaint_bottom": 32}}
    ).params
    assert params["inpaint"] is not None
    assert params["inpaint"]["outpaint_bottom"] == 32


def test_a1111_takes_the_mask_as_a_data_url_or_bare_base64_with_its_api_defaults(alice, catalogue):
    mask = png_b64(square_mask())
    for sent in (mask, "data:image/png;base64," + mask):
        body = {"init_images": [SOURCE], "mask": sent, "mask_blur": 2, "inpainting_fill": 2}
        translated = translate(alice, body, "img2img")
        assert translated.params["mask"] == sent
        assert translated.params["inpaint"] == {
            "mask_blur_x": 2,
            "mask_blur_y": 2,
            "inpainting_fill": 2,
            "inpaint_full_res": True,  # A1111's API default
            "inpaint_full_res_padding": 0,
            "inpainting_mask_invert": 0,
            "initial_noise_multiplier": 1.0,
        }
        assert translated.parameters["mask"] is None  # not echoed, like init_images
        valid = validate_params(alice, {**translated.params, "width": 64, "height": 64})
        inpaint = valid.params["inpaint"]
        assert valid.mask_png and inpaint is not None and inpaint["inpaint_full_res"] is True


def test_the_generator_form_without_javascript_posts_a_mask_and_its_options(
    client, alice, catalogue
):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.urls import reverse

    from tests.generation.conftest import GENERATOR_FORM

    def upload(name: str, b64: str) -> SimpleUploadedFile:
        return SimpleUploadedFile(name, base64.b64decode(b64), content_type="image/png")

    client.force_login(alice)
    posted = {
        **GENERATOR_FORM,
        "checkpoint": "model-a",
        "denoising_strength": "0.6",
        "init_image": upload("source.png", SOURCE),
        "mask": upload("mask.png", png_b64(square_mask())),
        "inpaint_mask_blur_x": "6",
        "inpaint_mask_blur_y": "6",
        "inpaint_inpainting_fill": "2",
        "inpaint_inpaint_full_res": "on",
        "inpaint_outpaint_left": "0",
    }
    client.post(reverse("generate"), posted)
    job = Job.objects.get(owner=alice)
    assert job.mask_image and job.params["inpaint"]["inpainting_fill"] == 2
    assert job.params["inpaint"]["inpaint_full_res"] is True
    assert job.params["inpaint"]["inpainting_mask_invert"] is False
    assert job.params["inpaint"]["mask_blur_x"] == 6


def inpainted_image(owner: Any, catalogue: dict) -> Any:
    from django.core.files.base import ContentFile

    from tests.generation.test_pages import make_image

    image = make_image(
        owner, catalogue["a"], mode="img2img", inpaint={**INPAINT_DEFAULTS, "mask_blur_x": 7}
    )
    job = image.job
    job.init_image.save("init.png", ContentFile(base64.b64decode(SOURCE)), save=False)
    job.mask_image.save("mask.png", ContentFile(base64.b64decode(png_b64(square_mask()))))
    return image


def test_a_remix_of_an_inpaint_result_lays_out_its_source_mask_and_options(
    client, alice, catalogue
):
    from django.urls import reverse

    from tests.generation.test_pages import page_data

    image = inpainted_image(alice, catalogue)
    client.force_login(alice)
    response = client.get(reverse("generate") + f"?from_image={image.pk}")
    source_url = reverse("generation-job-source", args=[image.job.pk])
    mask_url = reverse("generation-job-mask", args=[image.job.pk])
    assert page_data(response)["init_image_url"] == source_url
    html = response.content.decode()
    assert f'data-mask-url="{mask_url}"' in html
    assert 'name="inpaint_mask_blur_x" type="number" min="0" max="64" value="7"' in html
    assert client.get(mask_url).status_code == 200
    assert client.get(source_url).status_code == 200


def test_bob_cannot_see_alices_mask_or_source(client, alice, bob, catalogue):
    from django.urls import reverse

    image = inpainted_image(alice, catalogue)
    client.force_login(bob)
    for name in ("generation-job-mask", "generation-job-source"):
        assert client.get(reverse(name, args=[image.job.pk])).status_code == 404


def test_the_image_page_shows_the_source_and_mask_of_an_inpaint_job(client, alice, catalogue):
    from django.urls import reverse

    image = inpainted_image(alice, catalogue)
    client.force_login(alice)
    html = client.get(reverse("image_detail", args=[image.pk])).content.decode()
    assert reverse("generation-job-mask", args=[image.job.pk]) in html
    assert "Send to inpaint" in html


def test_send_to_inpaint_opens_the_editor_on_the_image(client, alice, catalogue):
    from django.urls import reverse

    from tests.generation.test_pages import make_image, page_data

    image = make_image(alice, catalogue["a"])
    client.force_login(alice)
    response = client.get(reverse("generate") + f"?from_image={image.pk}&img2img=1&inpaint=1")
    assert page_data(response)["init_image_url"]
    assert 'id="mask-editor" class="mask-editor" data-open="1"' in response.content.decode()


def test_the_job_page_shows_the_source_and_mask_of_an_inpaint_job(client, alice, catalogue):
    from django.urls import reverse

    image = inpainted_image(alice, catalogue)
    client.force_login(alice)
    html = client.get(reverse("job_detail", args=[image.job.pk])).content.decode()
    assert reverse("generation-job-mask", args=[image.job.pk]) in html
    assert reverse("generation-job-source", args=[image.job.pk]) in html
