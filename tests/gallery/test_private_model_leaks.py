"""alice publishes an image made with her private checkpoint, LoRA and embedding: bob (and
anyone but alice) finds no name of them anywhere the gallery reaches, and a platform LoRA in
the same image stays named."""

from __future__ import annotations

import base64
import io
import json

import pytest
from django.core.files.base import ContentFile
from PIL import Image

from gallery.publishing import publish_image
from generation.models import CatalogEntry, Job, JobImage
from gpu_worker.infotext import build_infotext, png_with_infotext, read_infotext
from gpu_worker.params import CONTROLNET_UNIT_DEFAULTS
from tests.gallery.factories import job_params, make_checkpoint
from tests.generation.a1111_support import token_for

CKPT_HASH = "c0ffee1234"
LORA_HASH = "5ec7e75ec7e7"
TI_HASH = "7e7e7e7e7e7e"
PUBLIC_LORA_HASH = "f0f0f0f0f0f0"
SECRETS = ("alice-ckpt", "alice-secret-style", "alicetok", CKPT_HASH, LORA_HASH, TI_HASH)
PROMPT = "a fox <lora:alice-secret-style:0.8> <lora:foxStyle:0.5>, alicetok, moonlight"


@pytest.fixture
def published(alice, db):
    """The image as the GPU worker writes it, with its PNG parameters chunk, published."""
    checkpoint = make_checkpoint("alice-ckpt", short_hash=CKPT_HASH)
    CatalogEntry.objects.filter(pk=checkpoint.pk).update(owner=alice)
    checkpoint.refresh_from_db()
    for name, kind, owner, sha256 in (
        ("alice-secret-style", "lora", alice, LORA_HASH + "0" * 52),
        ("alicetok", "embedding", alice, TI_HASH + "0" * 52),
        ("foxStyle", "lora", None, PUBLIC_LORA_HASH + "0" * 52),
    ):
        CatalogEntry.objects.create(name=name, kind=kind, owner=owner, sha256=sha256)
    params = job_params(checkpoint, prompt=PROMPT, loras=["alice-secret-style", "foxStyle"])
    job = Job.objects.create(
        owner=alice,
        status="succeeded",
        params=params,
        checkpoint=checkpoint,
        price=1,
        total_steps=4,
    )
    infotext = build_infotext(
        PROMPT,
        "blurry",
        {
            "Steps": 4,
            "Sampler": "Euler a",
            "CFG scale": 7.0,
            "Seed": 5,
            "Size": "64x64",
            "Model hash": CKPT_HASH,
            "Model": "alice-ckpt",
            "Lora hashes": f"alice-secret-style: {LORA_HASH}, foxStyle: {PUBLIC_LORA_HASH}",
            "TI hashes": f"alicetok: {TI_HASH}",
            "Version": "atelier",
        },
    )
    image = JobImage(job=job, owner=alice, index=0, seed=5, infotext=infotext, width=64, height=64)
    picture = Image.new("RGB", (64, 64), "teal")
    image.file.save("x.png", ContentFile(png_with_infotext(picture, infotext)), save=False)
    image.save()
    return publish_image(alice, image, title="Moon fox")


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


def test_bob_sees_private_where_alices_models_are_named_and_the_platform_lora_by_name(
    published, bob, client_for
):
    page = client_for(bob).get(f"/gallery/{published.pk}/").content.decode()
    assert_no_secret(page)
    assert "&lt;lora:private:0.8&gt;" in page and "a private model" in page
    assert "foxStyle" in page and PUBLIC_LORA_HASH in page  # public names stay
    # The author herself sees everything.
    own = client_for(published.owner).get(f"/gallery/{published.pk}/").content.decode()
    assert "alice-secret-style" in own and LORA_HASH in own and "alice-ckpt" in own


@pytest.mark.parametrize("path", ["image.png", "download.png"])
def test_the_png_others_download_carries_no_private_name_in_its_parameters(
    published, bob, client_for, path
):
    response = client_for(bob).get(f"/gallery/{published.pk}/{path}")
    data = response.content
    infotext = read_infotext(data) or ""
    assert_no_secret(infotext)
    assert "<lora:private:0.8>" in infotext and f"foxStyle: {PUBLIC_LORA_HASH}" in infotext
    assert "Steps: 4" in infotext and "Seed: 5" in infotext
    with Image.open(io.BytesIO(data)) as served, published.image.file.open("rb") as stored:
        assert served.tobytes() == Image.open(stored).tobytes()  # the same pixels
    # Anonymous visitors get the same; alice gets her file as stored.
    assert_no_secret(
        read_infotext(client_for(None).get(f"/gallery/{published.pk}/{path}").content) or ""
    )
    own = client_for(published.owner).get(f"/gallery/{published.pk}/{path}")
    assert "alice-secret-style" in (read_infotext(b"".join(own.streaming_content)) or "")


def test_png_info_of_the_downloaded_png_names_nothing_private(published, bob, client, client_for):
    data = client_for(bob).get(f"/gallery/{published.pk}/download.png").content
    a1111 = client.post(
        "/sdapi/v1/png-info",
        json.dumps({"image": base64.b64encode(data).decode()}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token_for(bob)}",
    )
    assert a1111.status_code == 200 and "moonlight" in a1111.content.decode()
    assert_no_secret(a1111.content.decode())
    page = (
        client_for(bob)
        .post("/gallery/png-info/", {"image": ContentFile(data, name="fox.png")})
        .content.decode()
    )
    assert "moonlight" in page
    assert_no_secret(page)


def test_bobs_remix_link_drops_alices_private_lora_and_keeps_the_public_one(
    published, bob, client_for
):
    from gallery.remix import remix_published_image

    plan = remix_published_image(bob, published)
    assert_no_secret(plan.url + json.dumps(plan.fields))
    assert "<lora:foxStyle:0.5>" in plan.fields["prompt"] and "private" not in plan.fields["prompt"]
    assert "alice-secret-style" in remix_published_image(published.owner, published).url


def test_gallery_search_and_model_filter_do_not_confirm_a_guessed_private_name(
    published, bob, client_for
):
    browser = client_for(bob)
    for query in ("alice-secret", "lora:alice", "alicetok", "alice-ckpt"):
        assert "Moon fox" not in browser.get("/gallery/", {"q": query}).content.decode(), query
    assert "Moon fox" not in browser.get("/gallery/", {"model": "alice-ckpt"}).content.decode()
    assert "Moon fox" in browser.get("/gallery/", {"q": "moonlight"}).content.decode()
    assert "Moon fox" in browser.get("/gallery/", {"q": "foxStyle"}).content.decode()


def test_a_lora_renamed_after_the_image_was_made_stays_hidden(published, bob, client_for):
    CatalogEntry.objects.filter(name="alice-secret-style").update(name="renamed")
    page = client_for(bob).get(f"/gallery/{published.pk}/").content.decode()
    assert_no_secret(page)


def test_a_hash_listed_under_a_public_name_that_is_not_its_file_is_hidden(
    published, bob, client_for
):
    # Her own file once carried a public model's name: the name may show, her hash may not.
    CatalogEntry.objects.filter(name="foxStyle").update(sha256="ab" * 32)
    page = client_for(bob).get(f"/gallery/{published.pk}/").content.decode()
    assert "foxStyle" in page and PUBLIC_LORA_HASH not in page


CN_HASH = "cafe1234"
PUBLIC_CN_HASH = "0ddba11f"


def cn_unit(model: str) -> dict:
    return {**CONTROLNET_UNIT_DEFAULTS, "module": "canny", "model": model, "weight": 0.8}


@pytest.fixture
def with_controlnets(published, alice):
    """Alice's image also used her private ControlNet and a platform one (units 0 and 1)."""
    from gpu_worker.infotext import controlnet_unit_text, quote

    CatalogEntry.objects.create(
        name="alice-secret-cn", kind="controlnet", owner=alice, sha256=CN_HASH + "0" * 56
    )
    CatalogEntry.objects.create(
        name="control_v11p_sd15_canny", kind="controlnet", sha256=PUBLIC_CN_HASH + "0" * 56
    )
    image = published.image
    units = [cn_unit("alice-secret-cn"), cn_unit("control_v11p_sd15_canny")]
    job = image.job
    job.params = {**job.params, "controlnet": units}
    job.save(update_fields=["params"])
    titles = (f"alice-secret-cn [{CN_HASH}]", f"control_v11p_sd15_canny [{PUBLIC_CN_HASH}]")
    extra = ", ".join(
        f"ControlNet {i}: {quote(controlnet_unit_text(unit, title))}"
        for i, (unit, title) in enumerate(zip(units, titles, strict=True))
    )
    head, _sep, params = image.infotext.rpartition("\n")
    image.infotext = f"{head}\n{params.replace(', Version:', f', {extra}, Version:')}"
    picture = Image.new("RGB", (64, 64), "teal")
    image.file.save("cn.png", ContentFile(png_with_infotext(picture, image.infotext)), save=False)
    image.save()
    return published


def test_bob_never_learns_the_name_or_hash_of_alices_private_controlnet(
    with_controlnets, bob, client, client_for
):
    secrets = ("alice-secret-cn", CN_HASH)
    pk = with_controlnets.pk
    page = client_for(bob).get(f"/gallery/{pk}/").content.decode()
    downloaded = client_for(bob).get(f"/gallery/{pk}/download.png").content
    infotext = read_infotext(downloaded) or ""
    png_info = client.post(
        "/sdapi/v1/png-info",
        json.dumps({"image": base64.b64encode(downloaded).decode()}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token_for(bob)}",
    ).json()
    for text in (page, infotext, json.dumps(png_info)):
        for secret in secrets:
            assert secret not in text, secret
    # the unit itself stays (its settings are useful), its model says private; the platform's
    # ControlNet keeps its name and hash
    units = png_info["parameters"]
    assert "Module: canny, Model: private, Weight: 0.8" in units["ControlNet 0"]
    assert f"Model: control_v11p_sd15_canny [{PUBLIC_CN_HASH}]" in units["ControlNet 1"]
    # alice sees her own image as made
    own = client_for(with_controlnets.owner).get(f"/gallery/{pk}/").content.decode()
    assert f"alice-secret-cn [{CN_HASH}]" in own
