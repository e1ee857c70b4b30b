"""Remix opens the generator with every parameter of the image, and nothing else."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qsl, urlsplit

from django.urls import reverse

from gallery.models import Publication
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
