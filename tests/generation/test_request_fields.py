"""Every front door carries every field of the request type (gpu_worker.params): the generator
page (its form, without and with JavaScript), REST and its OpenAPI schema, the A1111 API's
translation, the generator's prefill links and the gallery's remix links.

A new parameter added to GenerationParams fails here until each door carries it."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse
from rest_framework import serializers

from gallery.remix import GENERATOR_FIELDS
from generation.a1111.translation import translate
from generation.models import Job
from generation.prefill import QUERY_FIELDS, params_from_query
from generation.serializers import HiresRequestSerializer, JobRequestSerializer
from generation.submission import validate_params
from gpu_worker.params import (
    DERIVED_FIELDS,
    HIRES_FIELDS,
    INPAINT_FIELDS,
    OUTPAINT_SIDES,
    REQUEST_FIELDS,
)
from gpu_worker.passes import UPSCALERS
from tests.generation.conftest import GENERATOR_FORM, SMALL

pytestmark = pytest.mark.django_db

# The mode follows from the source image on the page and in links (a link cannot carry an image:
# the generator's img2img remix opens `?from_image=`); the inpaint options travel with the mask.
# Styles are merged into the prompts at submission, so a link carries the styled prompts instead.
# ControlNet units carry images too: they travel in REST and A1111 requests, not in links.
LINK_FIELDS = REQUEST_FIELDS - {"mode", "init_image", "mask", "inpaint", "styles", "controlnet"}
# The generator page's ControlNet section is not built yet (issue 22, "Page"): until it is, the
# units come through REST and the A1111 API only.
PAGE_FIELDS = REQUEST_FIELDS - {"mode", "controlnet"}


def form_names(fields: set[str] | frozenset[str]) -> set[str]:
    """The generator form's names for request fields: hires keys as hires_<key>, inpaint keys
    as inpaint_<key> (the mask editor's fields)."""
    names = (set(fields) - {"hires", "inpaint"}) | {"hires_enabled"}
    names |= {f"hires_{k}" for k in HIRES_FIELDS}
    if "inpaint" in fields:
        names |= {f"inpaint_{k}" for k in INPAINT_FIELDS}
    return names


class _Names(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"input", "select", "textarea"}:
            self.names.update(value for key, value in attrs if key == "name" and value)


def test_the_rest_serializer_names_every_request_field():
    serializer = JobRequestSerializer()
    assert set(serializer.fields) == REQUEST_FIELDS
    hires = serializer.fields["hires"]
    assert isinstance(hires, HiresRequestSerializer)
    assert set(hires.fields) == HIRES_FIELDS
    inpaint = serializer.fields["inpaint"]
    assert isinstance(inpaint, serializers.Serializer)
    assert set(inpaint.fields) == INPAINT_FIELDS | {"mask_blur"}


def test_the_openapi_schema_lists_every_request_field_with_its_bounds(alice_api):
    schemas = alice_api.get("/api/schema/?format=json").json()["components"]["schemas"]
    request, hires = schemas["JobRequest"]["properties"], schemas["HiresRequest"]["properties"]
    assert set(request) == REQUEST_FIELDS and set(hires) == HIRES_FIELDS
    for name in ("steps", "width", "height", "seed", "cfg_scale", "clip_skip", "resize_mode"):
        assert {"minimum", "maximum"} <= set(request[name]), name
    assert request["prompt"]["maxLength"] == 2000
    assert all(name in json.dumps(schemas) for name in UPSCALERS)  # the upscaler enum


def test_the_generator_page_form_has_every_request_field(client, alice, catalogue):
    client.force_login(alice)
    parser = _Names()
    parser.feed(client.get(reverse("generate")).content.decode())
    assert form_names(PAGE_FIELDS) <= parser.names


def test_the_generator_script_sends_every_form_field():
    scripts = Path(settings.BASE_DIR) / "static" / "js"
    script = (scripts / "generator.js").read_text() + (scripts / "mask_editor.js").read_text()
    # Read directly (fields.x.value) or through the number readers (intField("x")).
    direct = re.findall(r"fields\.(\w+)\.(?:value|files|checked)", script)
    numbers = re.findall(r"(?:int|float)Field\(\"(\w+)\"\)", script)
    sent = set(direct) | set(numbers)
    assert form_names(PAGE_FIELDS) <= sent | {"init_image"}


def test_the_form_without_javascript_carries_every_hires_field(client, alice, catalogue):
    client.force_login(alice)
    hires = {"scale": "1.5", "resize_x": "128", "resize_y": "0"}
    hires |= {"upscaler": "Lanczos", "second_pass_steps": "3", "denoising_strength": "0.5"}
    posted = {**GENERATOR_FORM, "checkpoint": "model-a", "hires_enabled": "on"}
    posted |= {f"hires_{key}": value for key, value in hires.items()}
    assert set(hires) == HIRES_FIELDS
    client.post(reverse("generate"), posted)
    job = Job.objects.get(owner=alice)
    assert job.params["hires"] == {
        "scale": 1.5,
        "resize_x": 128,
        "resize_y": 0,
        "upscaler": "Lanczos",
        "second_pass_steps": 3,
        "denoising_strength": 0.5,
    }


def test_the_a1111_translation_fills_every_request_field(alice, catalogue):
    common = {"override_settings": {"sd_model_checkpoint": "model-a"}}
    txt2img = translate(alice, {**common, "enable_hr": True}, "txt2img").params
    img2img = translate(
        alice, {**common, "init_images": ["aGk="], "mask": "aGk="}, "img2img"
    ).params
    assert set(txt2img) | set(img2img) == REQUEST_FIELDS
    assert set(img2img["inpaint"]) | set(OUTPAINT_SIDES) == INPAINT_FIELDS
    assert set(txt2img["hires"]) == HIRES_FIELDS


def test_prefill_and_remix_links_name_every_field_a_link_can_carry():
    assert set(QUERY_FIELDS) == form_names(LINK_FIELDS)
    assert set(GENERATOR_FIELDS) == set(QUERY_FIELDS)


def test_a_jobs_parameters_survive_a_remix_link_back_into_the_generator(alice, catalogue):
    hires = {"scale": 1.5, "resize_x": 128, "resize_y": 0, "upscaler": "Lanczos"}
    hires |= {"second_pass_steps": 3, "denoising_strength": 0.5}
    params = validate_params(alice, {**SMALL, "hires": hires}).params
    query = {
        **{name: str(value) for name, value in params.items() if name in QUERY_FIELDS},
        "hires_enabled": "on",
        **{f"hires_{key}": str(value) for key, value in hires.items()},
    }
    again = validate_params(alice, params_from_query(query)).params
    assert {k: v for k, v in again.items() if k not in DERIVED_FIELDS | {"mode"}} == {
        k: v for k, v in params.items() if k not in DERIVED_FIELDS | {"mode"}
    }


def test_a1111_spellings_live_only_in_the_a1111_package():
    root = Path(settings.BASE_DIR)
    spellings = re.compile(r"\b(enable_hr|hr_\w+|sampler_name|sampler_index|override_settings)\b")
    outside = [
        str(path.relative_to(root))
        for folder in ("generation", "gallery", "gpu_worker", "static/js", "templates")
        for path in (root / folder).rglob("*")
        if path.suffix in {".py", ".js", ".html"}
        and "a1111" not in path.parts
        and spellings.search(path.read_text())
    ]
    assert outside == []
