"""Prompt editing and alternation at the front doors: checked at submission by the shared
parser, so a malformed edit is a 422 naming the field on the REST API and the A1111 API."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from generation.models import Job
from tests.generation.a1111_support import post, sdapi_client
from tests.generation.conftest import SMALL

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_prompt_edit_and_an_alternation_are_accepted_over_rest(alice_api, catalogue):
    body = {**SMALL, "prompt": "a [cat:dog:0.5] on a [red|blue] mat", "negative_prompt": "[x::2]"}
    response = alice_api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["params"]["prompt"] == body["prompt"]


@pytest.mark.parametrize(
    ("field", "text"), [("prompt", "a [cat:dog:soon]"), ("negative_prompt", "[a|b:3]")]
)
def test_a_malformed_edit_is_422_naming_the_field_over_rest(alice_api, catalogue, field, text):
    response = alice_api.post("/api/v1/jobs/", {**SMALL, field: text}, format="json")
    assert response.status_code == 422
    assert response.json()["field"] == field and field in response.json()["detail"]
    assert Job.objects.count() == 0


async def test_a_malformed_edit_is_422_naming_the_field_over_a1111(alice, catalogue):
    client = await sync_to_async(sdapi_client)(alice)
    response = await post(client, "txt2img", {"prompt": "a [cat:dog:1:2:3]", "steps": 3})
    assert response.status_code == 422
    assert response.json()["field"] == "prompt" and "prompt editing" in response.json()["detail"]
    assert await Job.objects.acount() == 0
