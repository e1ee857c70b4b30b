"""Saved prompt styles: each user's own (never seen by another), staff-published shared ones,
applied at submission over REST and the A1111 API, and A1111's styles.csv in and out."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from generation.a1111.translation import translate
from generation.models import Job, PromptStyle
from generation.submission import validate_params
from tests.generation.a1111_support import get, sdapi_client
from tests.generation.conftest import SMALL, api_client

pytestmark = pytest.mark.django_db

CINEMATIC = {
    "name": "cinematic",
    "prompt": "cinematic still of {prompt}, film grain",
    "negative_prompt": "cartoon",
}


def test_alice_saves_a_style_and_a_job_uses_it(alice_api, catalogue):
    assert alice_api.post("/api/v1/styles/", CINEMATIC, format="json").status_code == 201
    alice_api.post("/api/v1/styles/", {"name": "warm", "prompt": "warm light"}, format="json")
    body = {**SMALL, "prompt": "a fox", "negative_prompt": "blurry"}
    body["styles"] = ["cinematic", "warm"]
    response = alice_api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.content
    params = response.json()["params"]
    # {prompt} takes the prompt; a style without it is appended after ", " (A1111's order)
    assert params["prompt"] == "cinematic still of a fox, film grain, warm light"
    assert params["negative_prompt"] == "blurry, cartoon"
    assert "styles" not in params


def test_bob_never_sees_nor_uses_alices_private_style(alice, bob, alice_api, catalogue):
    style_id = alice_api.post("/api/v1/styles/", CINEMATIC, format="json").json()["id"]
    bob_api = api_client(bob)
    assert bob_api.get("/api/v1/styles/").json() == []
    assert bob_api.get(f"/api/v1/styles/{style_id}/").status_code == 404
    assert bob_api.patch(f"/api/v1/styles/{style_id}/", {"prompt": "x"}).status_code == 404
    assert bob_api.delete(f"/api/v1/styles/{style_id}/").status_code == 404
    response = bob_api.post("/api/v1/jobs/", {**SMALL, "styles": ["cinematic"]}, format="json")
    assert response.status_code == 422 and response.json()["field"] == "styles"
    assert "cinematic" not in bob_api.get("/api/v1/styles/export/").content.decode()
    assert PromptStyle.objects.get(pk=style_id).prompt == CINEMATIC["prompt"]
    assert not Job.objects.filter(owner=bob).exists()


def test_alice_edits_and_deletes_her_style(alice_api):
    style_id = alice_api.post("/api/v1/styles/", CINEMATIC, format="json").json()["id"]
    response = alice_api.patch(f"/api/v1/styles/{style_id}/", {"prompt": "{prompt}, noir"})
    assert response.status_code == 200 and response.json()["prompt"] == "{prompt}, noir"
    duplicate = alice_api.post("/api/v1/styles/", {"name": "cinematic"}, format="json")
    assert duplicate.status_code == 409 and duplicate.json()["field"] == "name"
    assert alice_api.delete(f"/api/v1/styles/{style_id}/").status_code == 204
    assert alice_api.get("/api/v1/styles/").json() == []


def test_carol_publishes_a_shared_style_that_members_use_but_cannot_change(
    alice, bob, carol, catalogue
):
    carol_api, alice_api = api_client(carol), api_client(alice)
    forbidden = alice_api.post("/api/v1/styles/", {**CINEMATIC, "shared": True}, format="json")
    assert forbidden.status_code == 403
    shared = carol_api.post("/api/v1/styles/", {**CINEMATIC, "shared": True}, format="json")
    assert shared.status_code == 201 and shared.json()["shared"] is True
    for user in (alice, bob):
        names = [s["name"] for s in api_client(user).get("/api/v1/styles/").json()]
        assert names == ["cinematic"]
    style_id = shared.json()["id"]
    assert alice_api.delete(f"/api/v1/styles/{style_id}/").status_code == 403
    params = validate_params(bob, {**SMALL, "prompt": "a cat", "styles": ["cinematic"]}).params
    assert params["prompt"] == "cinematic still of a cat, film grain"
    # alice's own style of the same name wins for her
    alice_api.post("/api/v1/styles/", {"name": "cinematic", "prompt": "mine"}, format="json")
    mine = validate_params(alice, {**SMALL, "prompt": "a cat", "styles": ["cinematic"]}).params
    assert mine["prompt"] == "a cat, mine"


def test_a_style_round_trips_through_styles_csv(alice, bob, alice_api):
    alice_api.post("/api/v1/styles/", CINEMATIC, format="json")
    alice_api.post(
        "/api/v1/styles/",
        {"name": 'quote, "comma"', "prompt": "a, b\nc", "negative_prompt": ""},
        format="json",
    )
    exported = alice_api.get("/api/v1/styles/export/")
    assert exported["Content-Type"].startswith("text/csv")
    text = exported.content.decode()
    assert text.splitlines()[0] == "name,prompt,negative_prompt"
    bob_api = api_client(bob)
    response = bob_api.post("/api/v1/styles/import/", {"csv": text}, format="json")
    assert response.status_code == 200 and response.json() == {"imported": 2}
    strip = [
        {k: v for k, v in s.items() if k != "id"} for s in bob_api.get("/api/v1/styles/").json()
    ]
    assert strip == [
        {k: v for k, v in s.items() if k != "id"} for s in alice_api.get("/api/v1/styles/").json()
    ]
    # an A1111 file as uploaded, BOM and all; a second import replaces by name
    upload = "\ufeffname,prompt,negative_prompt\ncinematic,{prompt} on film,\n".encode()
    from django.core.files.uploadedfile import SimpleUploadedFile

    file = SimpleUploadedFile("styles.csv", upload, content_type="text/csv")
    assert bob_api.post("/api/v1/styles/import/", {"file": file}).json() == {"imported": 1}
    assert PromptStyle.objects.get(owner=bob, name="cinematic").prompt == "{prompt} on film"
    bad = bob_api.post("/api/v1/styles/import/", {"csv": "title,text\nx,y\n"}, format="json")
    assert bad.status_code == 422 and bad.json()["field"] == "file"


@pytest.mark.django_db(transaction=True)
async def test_the_a1111_api_lists_only_the_callers_styles_and_applies_them(alice, bob, catalogue):
    await PromptStyle.objects.acreate(owner=alice, **CINEMATIC)
    await PromptStyle.objects.acreate(owner=None, name="house", prompt="house style")
    alice_client = await sync_to_async(sdapi_client)(alice)
    bob_client = await sync_to_async(sdapi_client)(bob)
    listed = (await get(alice_client, "prompt-styles")).json()
    assert listed == [
        {**{k: v for k, v in CINEMATIC.items()}},
        {"name": "house", "prompt": "house style", "negative_prompt": ""},
    ]
    assert [s["name"] for s in (await get(bob_client, "prompt-styles")).json()] == ["house"]

    def styled(user, styles):
        body = {"prompt": "a fox", "styles": styles, "steps": 4, "width": 64, "height": 64}
        body["override_settings"] = {"sd_model_checkpoint": "model-a"}
        return validate_params(user, translate(user, body, "txt2img").params).params["prompt"]

    assert await sync_to_async(styled)(alice, ["cinematic", "house"]) == (
        "cinematic still of a fox, film grain, house style"
    )
    from generation.submission import SubmissionError

    with pytest.raises(SubmissionError) as refused:
        await sync_to_async(styled)(bob, ["cinematic"])
    assert refused.value.field == "styles" and refused.value.status == 422


def test_alice_manages_her_styles_on_the_page_and_bob_cannot_touch_them(client, alice, bob):
    client.force_login(alice)
    client.post("/styles/", {"name": "noir", "prompt": "{prompt}, film noir"})
    style = PromptStyle.objects.get(owner=alice, name="noir")
    client.post("/styles/", {"style_id": style.pk, "name": "noir", "prompt": "{prompt}, noir"})
    style.refresh_from_db()
    assert style.prompt == "{prompt}, noir"
    page = client.get("/styles/").content.decode()
    assert "{prompt}, noir" in page
    assert client.get("/styles/export/").content.decode().startswith("name,prompt,negative")
    client.force_login(bob)
    assert "noir" not in client.get("/styles/").content.decode()
    assert client.post(f"/styles/{style.pk}/delete/").status_code == 404
    changed = client.post("/styles/", {"style_id": style.pk, "name": "mine", "prompt": "x"})
    assert changed.status_code == 404
    client.force_login(alice)
    client.post(f"/styles/{style.pk}/delete/")
    assert not PromptStyle.objects.filter(pk=style.pk).exists()
