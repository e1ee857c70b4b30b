"""What the generator tells a person: the field's label, their language, once; and the form
remembers their own choices (bugs from issue 15)."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import translation

from generation.models import Job, UserGenerationSettings
from tests.generation.conftest import GENERATOR_FORM

pytestmark = pytest.mark.django_db


def post_form(client, headers=None, **changes):
    form = {**GENERATOR_FORM, "checkpoint": "model-a", **changes}
    return client.post(reverse("generate"), form, headers=headers)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_a_refused_value_is_named_by_its_label_not_its_key(client, alice, catalogue):
    client.force_login(alice)
    response = post_form(client, cfg_scale="99")
    [message] = messages_of(response)
    assert message.startswith("CFG scale must be between ")
    assert "cfg_scale" not in message


def test_an_unknown_lora_is_reported_once(client, alice, catalogue):
    client.force_login(alice)
    response = post_form(client, prompt="a fox <lora:nope:0.8>")
    html = response.content.decode()
    assert messages_of(response) == ["Prompt: There is no LoRA called “nope”."]
    assert html.count("There is no LoRA called") == 1


def test_errors_are_in_chinese_for_a_chinese_page(client, alice, catalogue):
    client.force_login(alice)
    with translation.override("zh-hans"):
        label = translation.gettext("CFG scale")
    response = post_form(client, cfg_scale="99", headers={"Accept-Language": "zh-hans"})
    [message] = messages_of(response)
    assert message.startswith(label) and "must be" not in message and "cfg_scale" not in message


def test_the_api_error_carries_a_message_for_people_in_the_callers_language(alice_api, catalogue):
    body = alice_api.post(
        reverse("api-job-quote"), {"checkpoint": "model-a", "steps": 0}, format="json"
    ).json()
    assert body["field"] == "steps"  # for programs, unchanged
    assert body["message"].startswith("Sampling steps must be between 1 and ")
    zh = alice_api.post(
        reverse("api-job-quote"),
        {"checkpoint": "model-a", "steps": 0},
        format="json",
        HTTP_ACCEPT_LANGUAGE="zh-hans",
    ).json()
    assert "Sampling steps" not in zh["message"] and "steps" not in zh["message"]


def test_an_empty_steps_field_is_refused_not_turned_into_a_default(client, alice, catalogue):
    client.force_login(alice)
    response = post_form(client, steps="")
    assert messages_of(response) == ["Sampling steps must be a whole number."]
    assert not Job.objects.filter(owner=alice).exists()


def test_schedule_type_automatic_stays_automatic_on_the_next_visit(client, alice, catalogue):
    client.force_login(alice)
    assert post_form(client, scheduler="Automatic", sampler="DPM++ 2M").status_code == 302
    assert UserGenerationSettings.objects.get(user=alice).last_params["scheduler"] == "Automatic"
    html = client.get(reverse("generate")).content.decode()
    assert '<option value="Automatic" selected>' in html
    # The job itself records what it ran with.
    assert Job.objects.get(owner=alice).params["scheduler"] != "Automatic"


def test_a_chosen_schedule_type_is_remembered_as_chosen(client, alice, catalogue):
    client.force_login(alice)
    post_form(client, scheduler="Karras")
    assert UserGenerationSettings.objects.get(user=alice).last_params["scheduler"] == "Karras"
