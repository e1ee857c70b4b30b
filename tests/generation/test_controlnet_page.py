"""The generator page's ControlNet section as the server renders and takes it (the no-JavaScript
path; tests/e2e/test_controlnet_flow.py drives the script in a browser)."""

from __future__ import annotations

import hashlib
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image, ImageDraw

from accounts.models import MembershipTier
from generation.models import CatalogEntry, Job
from tests.generation.conftest import GENERATOR_FORM

pytestmark = pytest.mark.django_db


def square_png() -> bytes:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill="white")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def unit_fields(index: int = 0, **values: str) -> dict[str, object]:
    fields: dict[str, object] = {
        f"cn-{index}-enabled": "on",
        f"cn-{index}-module": "canny",
        f"cn-{index}-model": "canny-sd15",
        f"cn-{index}-weight": "0.8",
        f"cn-{index}-guidance_start": "0.1",
        f"cn-{index}-guidance_end": "0.9",
        f"cn-{index}-control_mode": "prompt",
        f"cn-{index}-resize_mode": "2",
        f"cn-{index}-processor_res": "256",
        f"cn-{index}-threshold_a": "50",
        f"cn-{index}-threshold_b": "150",
    }
    fields.update({f"cn-{index}-{k}": v for k, v in values.items()})
    return fields


def test_the_section_has_one_unit_per_tier_slot_and_the_usable_controlnets(
    client, alice, catalogue
):
    CatalogEntry.objects.create(
        name="depth-xl", kind="controlnet", family="sdxl", filename="ControlNet/depth-xl"
    )
    client.force_login(alice)
    page = client.get(reverse("generate")).content.decode()
    assert 'id="controlnet-options"' in page
    assert page.count('class="cn-unit"') == 2  # the default tier's max_controlnet_units
    assert 'value="canny-sd15" data-family="sd1"' in page
    assert 'value="depth-xl" data-family="sdxl"' in page  # the script hides it for SD1 models
    assert '"checkpoint_families": {"model-a": "sd1", "model-b": "sd1"}' in page
    assert '<option value="canny"' in page and '<option value="lineart_realistic"' not in page


def test_a_tier_without_units_has_no_controlnet_section(client, alice, catalogue):
    MembershipTier.objects.filter(is_default=True).update(max_controlnet_units=0)
    client.force_login(alice)
    assert 'id="controlnet-options"' not in client.get(reverse("generate")).content.decode()


def test_a_form_posted_without_javascript_makes_the_unit(client, alice, catalogue):
    client.force_login(alice)
    image = SimpleUploadedFile("map.png", square_png(), "image/png")
    form = {**GENERATOR_FORM, "checkpoint": "model-a", **unit_fields(), "cn-0-image": image}
    form["cn-0-pixel_perfect"] = "on"
    response = client.post(reverse("generate"), form)
    assert response.status_code == 302
    [unit] = Job.objects.get(owner=alice).params["controlnet"]
    assert unit == {
        "image_sha256": hashlib.sha256(_stored_png(square_png())).hexdigest(),
        "module": "canny",
        "model": "canny-sd15",
        "weight": 0.8,
        "guidance_start": 0.1,
        "guidance_end": 0.9,
        "control_mode": "prompt",
        "resize_mode": 2,
        "pixel_perfect": True,
        "processor_res": 256,
        "threshold_a": 50.0,
        "threshold_b": 150.0,
    }


def test_an_unticked_unit_is_not_sent(client, alice, catalogue):
    client.force_login(alice)
    form = {**GENERATOR_FORM, "checkpoint": "model-a", **unit_fields()}
    del form["cn-0-enabled"]
    assert client.post(reverse("generate"), form).status_code == 302
    assert Job.objects.get(owner=alice).params["controlnet"] == []


def test_a_refused_unit_names_the_unit_and_field_and_keeps_the_unit(client, alice, catalogue):
    client.force_login(alice)
    form = {**GENERATOR_FORM, "checkpoint": "model-a", **unit_fields(weight="5")}
    form["cn-0-image"] = SimpleUploadedFile("map.png", square_png(), "image/png")
    response = client.post(reverse("generate"), form)
    assert response.status_code == 200 and not Job.objects.exists()
    page = response.content.decode()
    assert "ControlNet unit 0: Control weight" in page and "between 0 and 2" in page
    assert 'name="cn-0-enabled" checked' in page and 'name="cn-0-weight"' in page
    assert 'value="5"' in page  # what alice typed, to correct


def test_a_txt2img_unit_without_an_image_is_refused_naming_it(client, alice, catalogue):
    client.force_login(alice)
    form = {**GENERATOR_FORM, "checkpoint": "model-a", **unit_fields()}
    page = client.post(reverse("generate"), form).content.decode()
    assert "ControlNet unit 0: Control image" in page and not Job.objects.exists()


def _stored_png(data: bytes) -> bytes:
    """The unit's image as submission stores it (RGB PNG, re-encoded)."""
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "PNG")
    return out.getvalue()


def test_a_form_with_a_painted_mask_sends_its_units_too(client, alice, catalogue):
    client.force_login(alice)
    form = {
        **GENERATOR_FORM,
        "checkpoint": "model-a",
        **unit_fields(module="inpaint_only"),  # no unit image: the source's
        "init_image": SimpleUploadedFile("source.png", square_png(), "image/png"),
        "mask": SimpleUploadedFile("mask.png", square_png(), "image/png"),
        "inpaint_inpaint_full_res": "on",
    }
    assert client.post(reverse("generate"), form).status_code == 302
    params = Job.objects.get(owner=alice).params
    assert params["inpaint"]["inpaint_full_res"] is True
    [unit] = params["controlnet"]
    assert unit["module"] == "inpaint_only" and unit["image_sha256"] is None
    assert '<option value="inpaint_only"' in client.get(reverse("generate")).content.decode()
