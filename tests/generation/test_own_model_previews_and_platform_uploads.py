"""Previews of members' models (owner-only until published) and staff uploads of catalogue
models through the same tus path and checks."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image, PngImagePlugin

from generation.job_messages import build_request
from generation.model_store import path_for
from generation.models import CatalogEntry, Job
from tests.generation.conftest import SMALL, api_client
from tests.generation.own_model_uploads import upload
from tests.model_file_builder import sd1_lora


@pytest.fixture(autouse=True)
def own_store(settings, tmp_path) -> None:
    settings.MODEL_STORE_DIR = tmp_path / "model-store"
    settings.MODEL_DELIVERY_BASE_URL = "http://web.internal:8000"


@pytest.fixture
def alices_lora(alice, alice_api) -> CatalogEntry:
    response = upload(alice_api, sd1_lora(), "alice-style")
    assert response.status_code == 200, response.content
    return CatalogEntry.objects.get(pk=response.json()["model"]["id"])


def png(width: int = 800, height: int = 600, text: str = "", mode: str = "RGB") -> bytes:
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("parameters", text)
    out = io.BytesIO()
    Image.new(mode, (width, height), "orange" if mode == "RGB" else 0).save(
        out, "PNG", pnginfo=info
    )
    return out.getvalue()


def put_preview(client, entry: CatalogEntry, data: bytes, name: str = "p.png"):
    return client.put(
        f"/api/v1/own-models/{entry.pk}/preview/",
        {"image": SimpleUploadedFile(name, data)},
        format="multipart",
    )


def test_alice_sets_a_re_encoded_preview_that_only_she_sees_until_staff_publish(
    alices_lora, alice, alice_api, bob, bob_api
):
    response = put_preview(alice_api, alices_lora, png(text="secret prompt"))
    assert response.status_code == 200, response.content
    url = response.json()["preview_url"]
    alice_browser, bob_browser = Client(), Client()
    alice_browser.force_login(alice)
    bob_browser.force_login(bob)
    served = alice_browser.get(url)
    assert served.status_code == 200
    data = served.getvalue()
    with Image.open(io.BytesIO(data)) as preview:
        assert preview.format == "WEBP" and max(preview.size) == 512
    assert b"secret prompt" not in data  # re-encoded: nothing of the file but its pixels
    # Shown on My models and in her generator's LoRA cards; bob gets 404 everywhere.
    assert url in alice_browser.get("/models/mine/").content.decode()
    assert url in alice_browser.get("/generate/").content.decode()
    assert bob_browser.get(url).status_code == 404
    assert put_preview(bob_api, alices_lora, png()).status_code == 404
    assert url not in bob_browser.get("/generate/").content.decode()
    # Staff publish the LoRA: now bob sees the preview too.
    CatalogEntry.objects.filter(pk=alices_lora.pk).update(published=True)
    assert bob_browser.get(url).status_code == 200
    # She removes it: the file is gone.
    removed = alice_api.delete(f"/api/v1/own-models/{alices_lora.pk}/preview/")
    assert removed.json()["preview_url"] is None
    assert alice_browser.get(url).status_code == 404


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"not an image at all", "preview is not a readable image"),
        (png(4200, 4200, mode="L"), "preview is 4200x4200; the limit is 16777216 pixels"),
    ],
)
def test_a_bad_preview_is_refused_naming_the_field_and_the_limit(
    alices_lora, alice_api, data, says
):
    response = put_preview(alice_api, alices_lora, data)
    assert response.status_code == 422
    assert response.json()["field"] == "preview" and says in response.json()["detail"]
    alices_lora.refresh_from_db()
    assert not alices_lora.preview


def test_my_models_page_edits_sets_a_preview_and_deletes(
    alices_lora, alice, bob, client, django_capture_on_commit_callbacks
):
    client.force_login(bob)
    assert client.post(f"/models/mine/{alices_lora.pk}/delete/").status_code == 404
    client.force_login(alice)
    edited = client.post(
        f"/models/mine/{alices_lora.pk}/",
        {
            "name": "ink-style",
            "trigger_words": "inky",
            "preview": SimpleUploadedFile("p.png", png()),
        },
    )
    assert edited.status_code == 302
    alices_lora.refresh_from_db()
    assert (alices_lora.name, alices_lora.trigger_words) == ("ink-style", "inky")
    assert alices_lora.preview.name.endswith(".webp")
    refused = client.post(f"/models/mine/{alices_lora.pk}/", {"name": "../x"}, follow=True)
    assert "name must be 1-100 letters" in refused.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/models/mine/{alices_lora.pk}/delete/")
    assert not CatalogEntry.objects.filter(pk=alices_lora.pk).exists()
    assert not path_for(alices_lora.sha256).exists()


def test_staff_upload_a_platform_model_through_the_same_path_and_members_can_use_it(
    carol, bob, bob_api, catalogue
):
    carol_api = api_client(carol)
    quota_before = carol_api.get("/api/v1/own-models/").json()["quota"]
    response = upload(carol_api, sd1_lora(), "house-style", platform="1")
    assert response.status_code == 200, response.content
    entry = CatalogEntry.objects.get(name="house-style")
    assert entry.owner is None and entry.stored_file is not None and entry.available
    assert carol_api.get("/api/v1/own-models/").json()["quota"] == quota_before  # no quota
    assert "house-style" in str(bob_api.get("/api/v1/loras/").json())
    job = bob_api.post(
        "/api/v1/jobs/", {**SMALL, "checkpoint": "model-a", "prompt": "x <lora:house-style:1>"}
    )
    assert job.status_code == 201, job.content
    [model] = build_request(Job.objects.get(pk=job.json()["id"]))["models"]
    assert (model["kind"], model["name"], model["sha256"]) == ("lora", "house-style", entry.sha256)
    # The same checks as any upload: a bad file is refused, a taken name too.
    bad = upload(carol_api, b"\x00" * 100, "broken", platform="1")
    assert bad.status_code == 400 and not CatalogEntry.objects.filter(name="broken").exists()
    again = upload(carol_api, sd1_lora(), "house-style", platform="1")
    assert again.status_code == 400 and "already has a lora named" in again.content.decode()


def test_a_member_cannot_upload_a_platform_model(bob_api):
    refused = upload(bob_api, sd1_lora(), "sneaky", platform="1")
    assert refused.status_code == 403 and refused.json()["field"] == "platform"
    assert not CatalogEntry.objects.filter(name="sneaky").exists()


def test_deleting_a_platform_upload_in_the_admin_frees_the_store(
    carol, django_capture_on_commit_callbacks
):
    from django.contrib.admin.sites import site
    from django.test import RequestFactory

    assert upload(api_client(carol), sd1_lora(), "house-style", platform="1").status_code == 200
    entry = CatalogEntry.objects.get(name="house-style")
    assert path_for(entry.sha256).exists()
    request = RequestFactory().post("/admin/")
    request.user = carol
    with django_capture_on_commit_callbacks(execute=True):
        site._registry[CatalogEntry].delete_model(request, entry)
    assert not path_for(entry.sha256).exists()
