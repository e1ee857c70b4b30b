"""The generator and "My images" pages: who sees what, what the form starts from."""

from __future__ import annotations

import io
import json

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import translation
from PIL import Image

from generation.models import CatalogEntry, Job, JobImage, UserGenerationSettings
from tests.generation.conftest import GENERATOR_FORM

pytestmark = pytest.mark.django_db


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(out, "PNG")
    return out.getvalue()


def make_image(owner, checkpoint: CatalogEntry, seed: int = 1234, **params) -> JobImage:
    job = Job.objects.create(
        owner=owner,
        status=Job.Status.SUCCEEDED,
        checkpoint=checkpoint,
        params={
            "prompt": "a lighthouse at dusk",
            "negative_prompt": "fog",
            "steps": 7,
            "cfg_scale": 5.5,
            "width": 64,
            "height": 64,
            "seed": seed,
            "batch_size": 1,
            "n_iter": 1,
            "sampler": "Euler a",
            "scheduler": "Karras",
            "clip_skip": 1,
            "checkpoint": checkpoint.name,
            "mode": "txt2img",
            "hires": None,
            **params,
        },
    )
    image = JobImage(
        job=job,
        owner=owner,
        index=0,
        seed=seed,
        width=64,
        height=64,
        infotext="a lighthouse at dusk\nSteps: 7, Seed: 1234",
    )
    image.file.save("x.png", ContentFile(png_bytes()), save=False)
    image.save()
    return image


def page_data(response) -> dict:
    html = response.content.decode()
    start = html.index('id="generator-data"')
    start = html.index(">", start) + 1
    return json.loads(html[start : html.index("</script>", start)])


@pytest.mark.parametrize("name", ["generate", "my_images"])
def test_anonymous_visitors_are_sent_to_log_in(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_generator_renders_for_alice_with_her_script_and_strings(client, alice, catalogue):
    client.force_login(alice)
    response = client.get(reverse("generate"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="generator-form"' in html
    assert "js/generator.js" in html
    data = page_data(response)
    assert data["strings"]["status_cancelled"] == "Cancelled"
    assert data["urls"]["jobs"] == "/api/v1/jobs/"
    assert data["urls"]["ws"] == "/ws/jobs/"


def test_the_model_picker_lists_only_models_alice_may_use(client, alice, catalogue):
    client.force_login(alice)
    checkpoints = [m.name for m in client.get(reverse("generate")).context["checkpoints"]]
    assert set(checkpoints) == {"model-a", "model-b"}
    assert "model-off" not in checkpoints  # disabled by an admin
    assert "model-gone" not in checkpoints  # on no worker


def test_demo_models_are_labelled_as_noise(client, alice, catalogue):
    CatalogEntry.objects.create(name="atelier-demo-v1", kind="checkpoint", is_demo=True)
    client.force_login(alice)
    html = client.get(reverse("generate")).content.decode()
    assert "atelier-demo-v1 (demo: images are noise)" in html


def test_the_lora_picker_lists_loras(client, alice, catalogue):
    client.force_login(alice)
    html = client.get(reverse("generate")).content.decode()
    assert '<option value="style">style</option>' in html
    assert 'id="lora-insert"' in html


def test_alices_last_parameters_are_restored_on_her_next_visit(client, alice, catalogue):
    UserGenerationSettings.objects.create(
        user=alice,
        default_checkpoint=catalogue["b"],
        last_params={
            "prompt": "a red bicycle",
            "negative_prompt": "blurry",
            "steps": 33,
            "cfg_scale": 4.5,
            "width": 768,
            "height": 512,
            "seed": 42,
            "sampler": "Euler a",
            "scheduler": "Karras",
            "batch_size": 2,
            "n_iter": 3,
            "hires": {
                "scale": 1.5,
                "upscaler": "Latent",
                "second_pass_steps": 5,
                "denoising_strength": 0.4,
            },
        },
    )
    client.force_login(alice)
    response = client.get(reverse("generate"))
    html = response.content.decode()
    assert ">a red bicycle</textarea>" in html
    assert ">blurry</textarea>" in html
    assert (
        'name="steps" type="number" min="1" max="{}" value="33"'.format(
            response.context["limits"].max_steps
        )
        in html
    )
    assert '<option value="Euler a" selected>' in html
    assert '<option value="Karras" selected>' in html
    assert '<option value="model-b" selected>' in html
    initial = response.context["initial"]
    assert (initial["width"], initial["height"], initial["batch_size"], initial["n_iter"]) == (
        768,
        512,
        2,
        3,
    )
    assert initial["hires_scale"] == 1.5
    # A new visit starts from a random seed; the last one is one click away.
    assert initial["seed"] == -1
    assert page_data(response)["last_seed"] == 42


def test_bobs_model_choice_does_not_change_alices(client, alice, bob, catalogue):
    UserGenerationSettings.objects.create(user=bob, default_checkpoint=catalogue["b"])
    client.force_login(alice)
    assert client.get(reverse("generate")).context["initial"]["checkpoint"] == "model-a"


def test_reuse_parameters_prefills_the_form_from_alices_image(client, alice, catalogue):
    image = make_image(alice, catalogue["b"], seed=777)
    client.force_login(alice)
    response = client.get(reverse("generate"), {"from_image": image.pk})
    initial = response.context["initial"]
    assert initial["prompt"] == "a lighthouse at dusk"
    assert initial["seed"] == 777
    assert initial["checkpoint"] == "model-b"
    assert page_data(response)["init_image_url"] is None


def test_send_to_img2img_hands_the_image_to_the_script(client, alice, catalogue):
    image = make_image(alice, catalogue["a"])
    client.force_login(alice)
    response = client.get(reverse("generate"), {"from_image": image.pk, "img2img": "1"})
    url = page_data(response)["init_image_url"]
    assert url == reverse("generation-image-file", args=[image.pk])


def test_bob_cannot_reuse_alices_image(client, alice, bob, catalogue):
    image = make_image(alice, catalogue["a"])
    client.force_login(bob)
    assert client.get(reverse("generate"), {"from_image": image.pk}).status_code == 404
    assert client.get(reverse("generate"), {"from_image": "../etc"}).status_code == 404


def test_my_images_shows_alices_images_newest_first_and_not_bobs(client, alice, bob, catalogue):
    first = make_image(alice, catalogue["a"], seed=1)
    second = make_image(alice, catalogue["b"], seed=2)
    bobs = make_image(bob, catalogue["a"], seed=3)
    client.force_login(alice)
    response = client.get(reverse("my_images"))
    shown = [image.pk for image, _payload, _publication in response.context["images"]]
    assert shown == [second.pk, first.pk]
    assert str(bobs.pk) not in response.content.decode()


def test_my_images_filters_by_model(client, alice, catalogue):
    make_image(alice, catalogue["a"], seed=1)
    only_b = make_image(alice, catalogue["b"], seed=2)
    client.force_login(alice)
    response = client.get(reverse("my_images"), {"model": "model-b"})
    assert [image.pk for image, _payload, _publication in response.context["images"]] == [only_b.pk]
    assert list(response.context["models_used"]) == ["model-a", "model-b"]


def test_my_images_is_paginated(client, alice, catalogue):
    for seed in range(26):
        make_image(alice, catalogue["a"], seed=seed)
    client.force_login(alice)
    assert len(client.get(reverse("my_images")).context["images"]) == 24
    second = client.get(reverse("my_images"), {"page": 2})
    assert len(second.context["images"]) == 2
    assert "Page 2 of 2" in second.content.decode()


def test_alice_sees_her_image_page(client, alice, catalogue):
    image = make_image(alice, catalogue["a"])
    client.force_login(alice)
    response = client.get(reverse("image_detail", args=[image.pk]))
    assert response.status_code == 200
    assert "Steps: 7, Seed: 1234" in response.content.decode()


def test_bob_gets_404_for_alices_image_page(client, alice, bob, catalogue):
    image = make_image(alice, catalogue["a"])
    client.force_login(bob)
    assert client.get(reverse("image_detail", args=[image.pk])).status_code == 404
    assert client.get(reverse("image_delete", args=[image.pk])).status_code == 404
    assert client.post(reverse("image_delete", args=[image.pk])).status_code == 404
    assert JobImage.objects.filter(pk=image.pk).exists()


def test_alice_deletes_her_image_after_confirming(client, alice, catalogue):
    image = make_image(alice, catalogue["a"])
    client.force_login(alice)
    confirm = client.get(reverse("image_delete", args=[image.pk]))
    assert confirm.status_code == 200
    assert JobImage.objects.filter(pk=image.pk).exists()  # asking deletes nothing
    response = client.post(reverse("image_delete", args=[image.pk]))
    assert response.status_code == 302
    assert not JobImage.objects.filter(pk=image.pk).exists()


@pytest.mark.parametrize("name", ["generate", "my_images"])
def test_pages_render_in_simplified_chinese(client, alice, catalogue, name):
    make_image(alice, catalogue["a"])
    client.force_login(alice)
    with translation.override("zh-hans"):
        response = client.get(reverse(name), HTTP_ACCEPT_LANGUAGE="zh-hans")
        # Whatever the compiled catalogue says, the page shows it (English until compiled).
        expected = [translation.gettext(text) for text in ("Model", "Download PNG")]
    html = response.content.decode()
    assert response.status_code == 200
    assert '<html lang="zh-hans">' in html
    assert all(text in html for text in expected)


@pytest.mark.parametrize(
    ("name", "texts"),
    [
        # the mask editor, the token counter's title, tiling
        ("generate", ["蒙版模糊", "每段 {chunks} 个 token", "平铺（无缝纹理）"]),
        # the page and its upload script's messages
        ("own-models", ["我的模型", "已上传：{name}（{kind}，{family}）", "剩余 {s} 秒"]),
        ("my_styles", ["我的风格", "新建风格"]),
    ],
)
def test_the_new_tools_speak_simplified_chinese(client, alice, catalogue, name, texts):
    client.force_login(alice)
    response = client.get(reverse(name), HTTP_ACCEPT_LANGUAGE="zh-hans")
    html = response.content.decode()
    assert response.status_code == 200
    assert [text for text in texts if text not in html] == []


def test_the_nav_links_to_both_pages(client, alice):
    client.force_login(alice)
    html = client.get(reverse("home")).content.decode()
    assert f'href="{reverse("generate")}"' in html
    assert f'href="{reverse("my_images")}"' in html


def test_without_javascript_the_form_submits_a_job_for_alice(client, alice, catalogue):
    client.force_login(alice)
    response = client.post(
        reverse("generate"),
        {
            **GENERATOR_FORM,
            "checkpoint": "model-b",
            "hires_enabled": "on",
            "hires_scale": "1.5",
            "hires_upscaler": "Latent",
            "hires_second_pass_steps": "0",
            "hires_denoising_strength": "0.5",
        },
    )
    assert response.status_code == 302
    job = Job.objects.get(owner=alice)
    assert (job.checkpoint.name, job.params["steps"], job.params["hires"]["scale"]) == (
        "model-b",
        6,
        1.5,
    )


def test_a_refused_form_names_the_field_and_keeps_what_alice_typed(client, alice, catalogue):
    client.force_login(alice)
    response = client.post(
        reverse("generate"),
        {
            "prompt": "a red bicycle",
            "checkpoint": "model-a",
            "steps": "999",
            "width": "64",
            "height": "64",
        },
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "Sampling steps must be between 1 and " in html
    assert ">a red bicycle</textarea>" in html
    assert not Job.objects.filter(owner=alice).exists()
