"""ControlNet units brought back into the generator: parsed from an infotext (ours and the
extension's older wording) and from a link's query string, matched to the member's catalogue,
and, for Reuse of her own job, her control image served to her and nobody else."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from django.urls import reverse
from PIL import Image

from generation.control_images import store_control_images
from generation.controlnet_prefill import match_model, typed_unit, unit_link_fields
from generation.controlnet_prefill import units_from_query as query_units
from generation.models import CatalogEntry, Job
from gpu_worker.infotext import (
    build_infotext,
    controlnet_unit_text,
    parse_controlnet_units,
    parse_infotext,
)
from tests.generation.conftest import GENERATOR_FORM
from tests.generation.test_controlnet_page import unit_fields
from tests.generation.test_pages import make_image

UNIT = {
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


def infotext_with(*unit_texts: str) -> str:
    fields = {"Steps": 7, "Seed": 1, "Size": "64x64"}
    fields |= {f"ControlNet {i}": text for i, text in enumerate(unit_texts)}
    return build_infotext("a lighthouse", "", fields)


# --- parsing ---------------------------------------------------------------------------------


def test_an_infotext_unit_as_the_worker_writes_it_comes_back_whole():
    text = infotext_with(controlnet_unit_text(UNIT, "canny-sd15 [63616e6e]"))
    [raw] = parse_controlnet_units(parse_infotext(text))
    assert typed_unit(raw) == {**UNIT, "model": "canny-sd15 [63616e6e]"}


def test_the_extensions_older_infotext_wording_is_understood():
    older = (
        "preprocessor: canny, model: control_sd15_canny [fef5e48e], weight: 0.5, "
        "starting/ending: (0.2, 0.7), resize mode: Just Resize, pixel perfect: False, "
        "control mode: ControlNet is more important, preprocessor params: (384, 80, 160)"
    )
    [raw] = parse_controlnet_units(parse_infotext(infotext_with(older)))
    assert typed_unit(raw) == {
        "module": "canny",
        "model": "control_sd15_canny [fef5e48e]",
        "weight": 0.5,
        "guidance_start": 0.2,
        "guidance_end": 0.7,
        "resize_mode": 0,
        "pixel_perfect": False,
        "control_mode": "controlnet",
        "processor_res": 384,
        "threshold_a": 80.0,
        "threshold_b": 160.0,
    }


def test_units_come_back_in_their_order_and_an_infotext_without_units_has_none():
    texts = [controlnet_unit_text({**UNIT, "module": m}, "x") for m in ("canny", "none")]
    parsed = parse_infotext(infotext_with(*texts))
    assert [unit["module"] for unit in parse_controlnet_units(parsed)] == ["canny", "none"]
    assert parse_controlnet_units(parse_infotext(infotext_with())) == []


def test_malformed_infotext_values_are_left_to_the_forms_defaults():
    text = (
        "Module: canny, Weight: heavy, Resize Mode: Stretch, Control Mode: Loud, "
        "Processor Res: 512.5, Guidance End: nan"
    )
    [raw] = parse_controlnet_units(parse_infotext(infotext_with(text)))
    assert typed_unit(raw) == {"module": "canny"}


def test_a_link_round_trips_its_units_and_skips_what_does_not_parse():
    fields = unit_link_fields([UNIT, {**UNIT, "pixel_perfect": False, "weight": 1.0}])
    assert fields["cn-0-pixel_perfect"] == "on" and "cn-1-pixel_perfect" not in fields
    assert fields["cn-1-weight"] == "1"
    assert query_units(fields) == [UNIT, {**UNIT, "pixel_perfect": False, "weight": 1.0}]
    broken = {
        **unit_link_fields([UNIT]),
        "cn-0-weight": "a lot",
        "cn-0-resize_mode": "7",
        "cn-0-control_mode": "shout",
        "cn-0-processor_res": "",
    }
    dropped = ("weight", "resize_mode", "control_mode", "processor_res")
    assert query_units(broken) == [{k: v for k, v in UNIT.items() if k not in dropped}]
    assert query_units({"prompt": "a cat", "cn-0-module": "canny"}) == []  # not enabled


@pytest.mark.django_db
def test_a_model_is_matched_by_name_by_infotext_title_or_by_its_files_hash(catalogue):
    models = CatalogEntry.objects.filter(kind="controlnet")
    digest = catalogue["controlnet"].sha256[:8]
    assert match_model(models, "canny-sd15") == "canny-sd15"
    assert match_model(models, "canny-sd15 [00000000]") == "canny-sd15"
    assert match_model(models, f"renamed-canny [{digest}]") == "canny-sd15"
    assert match_model(models, "depth-sd15 [0badcafe]") is None
    assert match_model(models, "depth-sd15") is None


# --- the generator page ----------------------------------------------------------------------


def control_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(out, "PNG")
    return out.getvalue()


def reused_image(owner, catalogue):
    png = control_png()
    sha = hashlib.sha256(png).hexdigest()
    store_control_images({sha: png})
    unit = {**UNIT, "image_sha256": sha}
    return make_image(owner, catalogue["a"], controlnet=[unit]), png


def selected(page: str, name: str) -> list[str]:
    select = re.search(rf'<select id="id_{name}".*?</select>', page, re.S)
    assert select, name
    return re.findall(r'<option value="([^"]*)"[^>]*\sselected', select.group(0))


@pytest.mark.django_db
def test_alices_reuse_fills_her_unit_and_gives_her_its_control_image(client, alice, catalogue):
    image, png = reused_image(alice, catalogue)
    client.force_login(alice)
    page = client.get(reverse("generate") + f"?from_image={image.pk}").content.decode()
    assert 'id="controlnet-options" class="options" open' in page
    assert 'name="cn-0-enabled" checked' in page and 'name="cn-1-enabled">' in page
    assert selected(page, "cn-0-module") == ["canny"]
    assert selected(page, "cn-0-model") == ["canny-sd15"]
    assert selected(page, "cn-0-control_mode") == ["prompt"]
    assert selected(page, "cn-0-resize_mode") == ["2"]
    assert 'name="cn-0-weight" type="number" min="0" max="2" step="0.05" value="0.8"' in page
    assert 'name="cn-0-pixel_perfect" checked' in page
    url = reverse("generation-job-control-image", args=[image.job.pk, 0])
    assert f'data-kept-image="{url}"' in page
    response = client.get(url)
    assert response.status_code == 200 and response.getvalue() == png


@pytest.mark.django_db
def test_bob_cannot_fetch_alices_control_image(client, alice, bob, carol, catalogue):
    image, _png = reused_image(alice, catalogue)
    url = reverse("generation-job-control-image", args=[image.job.pk, 0])
    for someone in (bob, carol):  # another member, and staff (the admin is theirs)
        client.force_login(someone)
        assert client.get(url).status_code == 404
    client.force_login(alice)
    missing = reverse("generation-job-control-image", args=[image.job.pk, 1])
    assert client.get(missing).status_code == 404  # the job has one unit


@pytest.mark.django_db
def test_a_reused_unit_without_a_kept_image_has_none_to_fetch(client, alice, catalogue):
    image = make_image(alice, catalogue["a"], controlnet=[{**UNIT, "image_sha256": None}])
    client.force_login(alice)
    page = client.get(reverse("generate") + f"?from_image={image.pk}").content.decode()
    assert selected(page, "cn-0-model") == ["canny-sd15"] and "data-kept-image" not in page


@pytest.mark.django_db
def test_a_linked_model_she_cannot_use_is_left_unselected_with_a_note(client, alice, catalogue):
    client.force_login(alice)
    link = unit_link_fields([{**UNIT, "model": "depth-sd15 [0badcafe]"}])
    page = client.get(reverse("generate"), {"prompt": "a fox", **link}).content.decode()
    assert selected(page, "cn-0-model") == [""]
    assert "The ControlNet model “depth-sd15 [0badcafe]” is not available to you" in page
    assert selected(page, "cn-0-module") == ["canny"]


@pytest.mark.django_db
def test_an_infotext_title_selects_her_model_of_that_name(client, alice, catalogue):
    client.force_login(alice)
    link = unit_link_fields([{**UNIT, "model": "canny-sd15 [63616e6e]"}])
    page = client.get(reverse("generate"), {"prompt": "a fox", **link}).content.decode()
    assert selected(page, "cn-0-model") == ["canny-sd15"] and "is not available" not in page


@pytest.mark.django_db
def test_units_beyond_her_tiers_limit_are_left_out_with_a_note(client, alice, catalogue):
    client.force_login(alice)
    link = unit_link_fields([UNIT, UNIT, UNIT])  # the default tier allows two
    page = client.get(reverse("generate"), {"prompt": "a fox", **link}).content.decode()
    assert page.count('class="cn-unit"') == 2 and "1 more ControlNet unit is left out" in page


@pytest.mark.django_db
def test_without_javascript_alices_reused_unit_sends_its_kept_image(client, alice, catalogue):
    image, png = reused_image(alice, catalogue)
    client.force_login(alice)
    page = client.get(reverse("generate") + f"?from_image={image.pk}").content.decode()
    kept_from = f"{image.job.pk}/0"
    assert f'name="cn-0-kept_from" value="{kept_from}"' in page
    form = {**GENERATOR_FORM, "checkpoint": "model-a", **unit_fields(), "cn-0-kept_from": kept_from}
    assert client.post(reverse("generate"), form).status_code == 302
    job = Job.objects.filter(owner=alice).latest("created_at")
    assert job.params["controlnet"][0]["image_sha256"] == hashlib.sha256(png).hexdigest()


@pytest.mark.django_db
def test_bob_cannot_send_alices_kept_image_by_naming_her_job(client, alice, bob, catalogue):
    image, _png = reused_image(alice, catalogue)
    client.force_login(bob)
    form = {
        **GENERATOR_FORM,
        "checkpoint": "model-a",
        **unit_fields(),
        "cn-0-kept_from": f"{image.job.pk}/0",
    }
    response = client.post(reverse("generate"), form)
    assert response.status_code == 200 and "image is needed" in response.content.decode()
    assert not Job.objects.filter(owner=bob).exists()
