"""Remix opens the generator with every parameter of the image, and nothing else."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qsl, urlsplit

from django.urls import reverse

from gallery.models import Publication
from generation.models import CatalogEntry
from tests.gallery.factories import make_checkpoint, make_publication


def _remix_link(client, publication: Publication) -> str:
    page = client.get(reverse("gallery:image", args=[publication.pk])).content.decode()
    match = re.search(r'<a class="button primary" href="([^"]+)">Remix</a>', page)
    assert match, "no Remix link"
    return html.unescape(match.group(1))


def _fields(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def test_bobs_remix_link_carries_exactly_the_images_parameters(bob, alices_public, client_for):
    url = _remix_link(client_for(bob), alices_public)
    assert urlsplit(url).path == reverse("generate")
    assert _fields(url) == {
        "prompt": "a watercolor fox in a misty forest, (soft light:1.2)",
        "negative_prompt": "blurry, lowres",
        "checkpoint": "dreamshaper-8",
        "sampler": "DPM++ 2M",
        "scheduler": "Karras",
        "steps": "24",
        "cfg_scale": "6.5",
        "width": "512",
        "height": "768",
        "seed": "1001",  # this image's own seed: the job's seed + its index in the batch
        "clip_skip": "2",
        "batch_size": "1",
        "n_iter": "1",
        "denoising_strength": "0.75",
    }


def test_remix_fills_the_hires_fix(alice, bob, client_for):
    hires = {
        "scale": 1.5,
        "resize_x": 0,
        "resize_y": 0,
        "upscaler": "Latent",
        "second_pass_steps": 10,
        "denoising_strength": 0.45,
    }
    publication = make_publication(alice, hires=hires)
    fields = _fields(_remix_link(client_for(bob), publication))
    assert {k: v for k, v in fields.items() if k.startswith("hires_")} == {
        "hires_enabled": "on",
        "hires_scale": "1.5",
        "hires_resize_x": "0",
        "hires_resize_y": "0",
        "hires_upscaler": "Latent",
        "hires_second_pass_steps": "10",
        "hires_denoising_strength": "0.45",
    }


def test_remix_leaves_out_a_model_bob_may_not_use(alice, bob, client_for):
    secret = make_checkpoint("in-house-v2", short_hash="abcdef0123", enabled=False)
    publication = make_publication(alice, checkpoint=secret)
    response = client_for(bob).get(reverse("gallery:image", args=[publication.pk]))
    fields = _fields(_remix_link(client_for(bob), publication))
    assert "checkpoint" not in fields
    assert fields["seed"] == "1001"
    assert "is not available to you" in response.content.decode()


def test_remix_keeps_an_empty_negative_prompt(alice, bob, client_for):
    publication = make_publication(alice, negative_prompt="")
    assert _fields(_remix_link(client_for(bob), publication))["negative_prompt"] == ""


def test_the_generator_understands_the_remix_link(alice, bob, client_for):
    publication = make_publication(alice, prompt="an origami heron on a teal lake")
    page = client_for(bob).get(_remix_link(client_for(bob), publication)).content.decode()
    assert "an origami heron on a teal lake</textarea>" in page
    assert 'name="seed" type="number" value="1001"' in page


# --- ControlNet units: their settings, never their images ------------------------------------

CANNY_UNIT = {
    "image_sha256": "c0" * 32,  # alice's own control image: stays with her job
    "module": "canny",
    "model": "canny-sd15",
    "weight": 0.8,
    "guidance_start": 0.1,
    "guidance_end": 0.9,
    "control_mode": "prompt",
    "resize_mode": 2,
    "pixel_perfect": False,
    "processor_res": 256,
    "threshold_a": 50.0,
    "threshold_b": 150.0,
}


def _controlnet(name: str, **extra) -> CatalogEntry:
    return CatalogEntry.objects.create(
        name=name, kind="controlnet", family="sd1", sha256="c1" * 32, **extra
    )


def test_bobs_remix_brings_alices_unit_settings_but_never_her_control_image(alice, bob, client_for):
    _controlnet("canny-sd15")
    publication = make_publication(alice, controlnet=[CANNY_UNIT])
    url = _remix_link(client_for(bob), publication)
    assert {k: v for k, v in _fields(url).items() if k.startswith("cn-")} == {
        "cn-0-enabled": "on",
        "cn-0-module": "canny",
        "cn-0-model": "canny-sd15",
        "cn-0-weight": "0.8",
        "cn-0-guidance_start": "0.1",
        "cn-0-guidance_end": "0.9",
        "cn-0-control_mode": "prompt",
        "cn-0-resize_mode": "2",
        "cn-0-processor_res": "256",
        "cn-0-threshold_a": "50",
        "cn-0-threshold_b": "150",
    }
    page = client_for(bob).get(url).content.decode()
    assert 'name="cn-0-enabled" checked' in page
    assert 'value="canny-sd15" data-family="sd1" selected' in page
    assert "data-kept-image" not in page and CANNY_UNIT["image_sha256"] not in page


def test_remix_never_names_alices_private_controlnet(alice, bob, client_for):
    _controlnet("alices-lineart", owner=alice)
    unit = {**CANNY_UNIT, "model": "alices-lineart"}
    publication = make_publication(alice, controlnet=[unit])
    url = _remix_link(client_for(bob), publication)
    assert "alices-lineart" not in url
    assert _fields(url)["cn-0-unavailable_model"] == "a private model"
    page = client_for(bob).get(url).content.decode()
    assert "The ControlNet model “a private model” is not available to you" in page
    # Alice's own remix names it (and selects it: it is hers).
    own = _fields(_remix_link(client_for(alice), publication))
    assert own["cn-0-model"] == "alices-lineart" and "cn-0-unavailable_model" not in own
