"""Members' own models: resumable uploads, privacy, shared bytes, quotas and edits."""

from __future__ import annotations

import os

import pytest

from accounts.tiers import tier_of
from generation.model_store import path_for
from generation.models import CatalogEntry, ModelFile
from tests.generation.a1111_support import token_for
from tests.generation.conftest import SMALL, api_client
from tests.generation.own_model_uploads import TUS, send_chunk, start_upload, upload
from tests.model_file_builder import safetensors_bytes, sd1_checkpoint, sd1_lora


@pytest.fixture(autouse=True)
def own_store(settings, tmp_path) -> None:
    settings.MODEL_STORE_DIR = tmp_path / "model-store"


@pytest.fixture
def alices_lora(alice, alice_api) -> CatalogEntry:
    response = upload(alice_api, sd1_lora(), "alice-style")
    assert response.status_code == 200, response.content
    return CatalogEntry.objects.get(pk=response.json()["model"]["id"])


def test_an_interrupted_upload_resumes_where_the_server_says(alice, alice_api):
    data = sd1_checkpoint()
    location = start_upload(alice_api, len(data), "alice-ckpt")["Location"]
    assert send_chunk(alice_api, location, 0, data[:100]).status_code == 204
    # The connection drops; the client asks where to resume, and a stale offset is refused.
    offset = int(alice_api.head(location, **TUS)["Upload-Offset"])
    assert offset == 100
    assert send_chunk(alice_api, location, 50, data[50:]).status_code == 409
    assert send_chunk(alice_api, location, offset, data[offset:]).status_code == 204
    model = alice_api.get(location).json()["model"]
    assert (model["name"], model["kind"], model["family"]) == ("alice-ckpt", "checkpoint", "sd1")
    assert path_for(model["sha256"]).read_bytes() == data


def test_bob_can_neither_see_nor_use_alices_model(alices_lora, bob, bob_api, client, catalogue):
    assert "alice-style" not in str(bob_api.get("/api/v1/loras/").json())
    assert bob_api.get(f"/api/v1/own-models/{alices_lora.pk}/").status_code == 404
    assert bob_api.delete(f"/api/v1/own-models/{alices_lora.pk}/").status_code == 404
    assert "alice-style" not in str(bob_api.get("/api/v1/own-models/").json())
    authorization = {"HTTP_AUTHORIZATION": f"Bearer {token_for(bob)}"}
    assert "alice-style" not in client.get("/sdapi/v1/loras", **authorization).content.decode()
    theirs = bob_api.post("/api/v1/jobs/", {**SMALL, "prompt": "x <lora:alice-style:1>"})
    nobodys = bob_api.post("/api/v1/jobs/", {**SMALL, "prompt": "x <lora:nobody-style:1>"})
    assert theirs.status_code == nobodys.status_code == 422
    assert theirs.json()["detail"].replace("alice-style", "?") == nobodys.json()["detail"].replace(
        "nobody-style", "?"
    )
    # alice sees it herself.
    assert "alice-style" in str(api_client(alices_lora.owner).get("/api/v1/loras/").json())


def test_bobs_upload_of_the_same_bytes_is_stored_once(
    alices_lora, bob, bob_api, django_capture_on_commit_callbacks
):
    response = upload(bob_api, sd1_lora(), "my-style")
    assert response.status_code == 200
    bobs = CatalogEntry.objects.get(owner=bob)
    assert bobs.stored_file == alices_lora.stored_file
    assert ModelFile.objects.count() == 1
    assert list(path_for(bobs.sha256).parent.glob("*.safetensors")) == [path_for(bobs.sha256)]
    # Deleting alice's entry keeps bob's bytes; deleting bob's too removes them.
    with django_capture_on_commit_callbacks(execute=True):
        api_client(alices_lora.owner).delete(f"/api/v1/own-models/{alices_lora.pk}/")
    assert path_for(bobs.sha256).exists()
    with django_capture_on_commit_callbacks(execute=True):
        bob_api.delete(f"/api/v1/own-models/{bobs.pk}/")
    assert not path_for(bobs.sha256).exists()
    assert ModelFile.objects.count() == 0


def test_a_refused_upload_names_the_quota_and_deleting_frees_it(alice, alice_api, alices_lora):
    tier = tier_of(alice)
    tier.model_count = 1
    tier.save()
    refused = start_upload(alice_api, 1000, "second")
    assert refused.status_code == 413
    assert "allows 1 uploaded models" in refused.json()["detail"]
    quota = alice_api.get("/api/v1/own-models/").json()["quota"]
    assert (quota["used_count"], quota["used_bytes"]) == (1, len(sd1_lora()))
    alice_api.delete(f"/api/v1/own-models/{alices_lora.pk}/")
    assert alice_api.get("/api/v1/own-models/").json()["quota"]["used_bytes"] == 0
    assert start_upload(alice_api, 1000, "second").status_code == 201
    tier.model_storage_mb = 1
    tier.save()
    too_big = start_upload(alice_api, 2 * 2**20, "big")
    assert too_big.status_code == 413
    assert "quota of 1 MiB" in too_big.json()["detail"]


def test_a_bad_file_is_refused_with_the_reason_and_nothing_is_kept(alice, alice_api):
    truncated = sd1_checkpoint()[:-10]
    response = upload(alice_api, truncated, "broken")
    assert response.status_code == 400
    assert "truncated" in response.json()
    pickle = upload(alice_api, b"PK\x03\x04" + b"\0" * 60, "pickled")
    assert "pickle formats" in pickle.json()
    assert not CatalogEntry.objects.filter(owner=alice).exists()


def test_a_chunk_past_the_declared_length_or_a_malformed_offset_is_a_400(alice, alice_api):
    location = start_upload(alice_api, 10, "x")["Location"]
    assert send_chunk(alice_api, location, 0, b"\0" * 11).status_code == 400
    malformed = alice_api.patch(
        location,
        data=b"\0",
        content_type="application/offset+octet-stream",
        HTTP_UPLOAD_OFFSET="ten",
        **TUS,
    )
    assert malformed.status_code == 400
    assert "whole numbers" in malformed.json()["detail"]


def test_bob_cannot_resume_alices_upload(alice_api, bob_api):
    location = start_upload(alice_api, 10, "x")["Location"]
    assert bob_api.head(location, **TUS).status_code == 404
    assert send_chunk(bob_api, location, 0, b"\0" * 5).status_code == 404


def test_the_owner_renames_describes_and_sets_trigger_words(alice_api, alices_lora, catalogue):
    url = f"/api/v1/own-models/{alices_lora.pk}/"
    changed = alice_api.patch(
        url, {"name": "ink", "description": "inky", "trigger_words": "ink style"}, format="json"
    )
    assert changed.status_code == 200
    assert (changed.json()["name"], changed.json()["trigger_words"]) == ("ink", "ink style")
    clash = alice_api.patch(url, {"name": "style"}, format="json")  # a platform LoRA's name
    assert clash.status_code == 409 and clash.json()["field"] == "name"
    assert alice_api.patch(url, {"name": "../x"}, format="json").status_code == 400


def test_my_models_page_lists_only_your_own_with_your_quota(alices_lora, bob, client):
    client.force_login(alices_lora.owner)
    page = client.get("/models/mine/").content.decode()
    assert "alice-style" in page
    assert f"1 of {tier_of(alices_lora.owner).model_count} models" in page
    assert "js/model_upload.js" in page
    client.force_login(bob)
    assert "alice-style" not in client.get("/models/mine/").content.decode()
    assert "up to 10 models" in client.get("/accounts/credits/").content.decode()


def test_a_published_image_never_names_alices_private_model_to_others(alices_lora, bob):
    from django.test import Client

    from tests.gallery.factories import make_checkpoint, make_publication

    checkpoint = make_checkpoint()
    CatalogEntry.objects.filter(pk=checkpoint.pk).update(
        owner=alices_lora.owner, name="alice-secret"
    )
    checkpoint.refresh_from_db()
    publication = make_publication(alices_lora.owner, checkpoint=checkpoint)
    assert "Model: alice-secret" in publication.image.infotext
    browser = Client()
    browser.force_login(bob)
    page = browser.get(f"/gallery/{publication.pk}/").content.decode()
    feed = browser.get("/gallery/").content.decode()
    assert "a private model" in page
    for shown in (page, feed):
        assert "alice-secret" not in shown and checkpoint.short_hash not in shown
    filtered = browser.get("/gallery/?model=alice-secret").content.decode()
    assert "Fox" not in filtered  # the model filter knows no private name


def test_an_abandoned_upload_and_its_partial_file_go_after_it_expires(alice_api):
    from datetime import timedelta

    from django.utils import timezone

    from generation.models import ModelUpload
    from generation.own_models import drop_expired_uploads

    location = start_upload(alice_api, 1000, "abandoned")["Location"]
    send_chunk(alice_api, location, 0, b"\0" * 100)
    upload_row = ModelUpload.objects.get()
    partial = upload_row.temporary_file_path
    assert partial and os.path.exists(partial)
    assert drop_expired_uploads() == 0
    ModelUpload.objects.update(expires=timezone.now() - timedelta(seconds=1))
    assert drop_expired_uploads() == 1
    assert not os.path.exists(partial)
    assert alice_api.head(location, **TUS).status_code == 404


def test_an_upload_without_a_usable_name_is_refused_before_any_byte(alice_api):
    refused = start_upload(alice_api, 1000, "../etc/passwd")
    assert refused.status_code == 400 and refused.json()["field"] == "name"


def test_alices_uploaded_embedding_counts_as_its_vectors_in_her_token_counter(alice_api):
    embedding = safetensors_bytes({"emb_params": ("F32", [4, 768])})
    assert upload(alice_api, embedding, "ink", chunk=1 << 20).status_code == 200
    response = alice_api.post(
        "/api/v1/tokens/", {"prompt": "ink, cat", "negative_prompt": ""}, format="json"
    )
    assert response.json()["prompt"]["tokens"] == 4 + 2  # 4 vectors, ",", "cat"


def test_bob_naming_alices_checkpoint_anywhere_gets_the_error_of_a_name_nobody_has(
    alice_api, bob, bob_api, client, catalogue
):
    assert upload(alice_api, sd1_checkpoint(), "alice-ckpt").status_code == 200
    authorization = {"HTTP_AUTHORIZATION": f"Bearer {token_for(bob)}"}

    def answers(name: str) -> list[tuple[int, str]]:
        default = bob_api.post("/api/v1/settings/default-model/", {"checkpoint": name})
        options = client.post(
            "/sdapi/v1/options",
            {"sd_model_checkpoint": name},
            content_type="application/json",
            **authorization,
        )
        quote = bob_api.post("/api/v1/jobs/quote/", {**SMALL, "checkpoint": name})
        replies = (default, options, quote)
        return [(r.status_code, r.content.decode().replace(name, "?")) for r in replies]

    assert answers("alice-ckpt") == answers("nobody-ckpt")
    assert all(status >= 400 for status, _body in answers("alice-ckpt"))
