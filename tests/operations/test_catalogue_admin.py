"""The model catalogue in the admin: Scan from real heartbeats, tiers and defaults edited on an
entry, and what members are refused at submission (generator form and REST API)."""

from __future__ import annotations

import io
import json
import time

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import MembershipTier
from accounts.tiers import set_tier
from generation.models import CatalogEntry, Job
from gpu_worker.protocol import HEARTBEAT_INDEX, HEARTBEAT_KEY
from tests.accounts.conftest import give
from tests.generation.conftest import GENERATOR_FORM
from tests.operations.test_ops_pages import heartbeat

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:generation_catalogentry_changelist"


@pytest.fixture
def catalogue_admin(client, carol):
    carol.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_catalogentry", "change_catalogentry"])
    )
    client.force_login(carol)
    return client


@pytest.fixture
def empty_models_dir(settings, tmp_path):
    settings.MODELS_DIR = tmp_path / "models"
    settings.VAR_DIR = tmp_path / "var"
    return settings.MODELS_DIR


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(buffer, format="PNG")
    return buffer.getvalue()


def inventory_item(name: str, kind: str, family: str = "sd1") -> dict:
    digest = (name.encode().hex() * 16)[:64]
    return {
        "name": name,
        "filename": f"{kind}/{name}.safetensors",
        "kind": kind,
        "family": family,
        "size_bytes": 2_000_000,
        "sha256": digest,
        "short_hash": digest[:10],
    }


def test_scan_imports_a_live_workers_inventory_and_marks_files_nobody_has_unavailable(
    catalogue_admin, redis_client, empty_models_dir
):
    CatalogEntry.objects.create(name="retired", kind="checkpoint", available=True)
    CatalogEntry.objects.create(
        name="juggernaut", kind="checkpoint", family="unknown", enabled=False
    )
    inventory = [
        inventory_item("juggernaut", "checkpoint", "sdxl"),
        inventory_item("dreamshaper", "checkpoint"),
        inventory_item("ink-style", "lora"),
    ]
    redis_client.sadd(HEARTBEAT_INDEX, "gpu-1")
    redis_client.set(
        HEARTBEAT_KEY.format(worker_id="gpu-1"),
        json.dumps(heartbeat("gpu-1", time.time(), inventory=inventory)),
        ex=15,
    )

    response = catalogue_admin.post(reverse("admin:generation_catalogentry_scan"), follow=True)

    assert "Scan done: 2 new, 1 updated, 1 marked unavailable." in response.content.decode()
    rows = {(e.kind, e.name): e for e in CatalogEntry.objects.all()}
    assert rows[("checkpoint", "dreamshaper")].available
    assert rows[("lora", "ink-style")].short_hash == inventory[2]["short_hash"]
    assert rows[("checkpoint", "juggernaut")].family == "sdxl"
    assert not rows[("checkpoint", "juggernaut")].enabled  # a scan never re-enables
    assert not rows[("checkpoint", "retired")].available


def test_the_catalogue_list_offers_the_scan_button(catalogue_admin):
    html = catalogue_admin.get(reverse(CHANGELIST)).content.decode()
    assert reverse("admin:generation_catalogentry_scan") in html


def test_a_scan_by_get_changes_nothing(catalogue_admin, redis_client, empty_models_dir):
    CatalogEntry.objects.create(name="retired", kind="checkpoint", available=True)
    response = catalogue_admin.get(reverse("admin:generation_catalogentry_scan"))
    assert response.status_code == 302
    assert CatalogEntry.objects.get(name="retired").available


def entry_form(entry: CatalogEntry, **changes) -> dict:
    data = {
        "name": entry.name,
        "display_name": entry.display_name,
        "kind": entry.kind,
        "family": entry.family,
        "description": "",
        "enabled": "on",
        "cost_multiplier": "1",
        "trigger_words": "",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_the_tier_control_says_why_it_is_empty_when_every_tier_allows_every_model(
    catalogue_admin,
):
    entry = CatalogEntry.objects.create(name="flux-ish", kind="checkpoint")
    page = catalogue_admin.get(reverse("admin:generation_catalogentry_change", args=[entry.pk]))
    assert "Every tier allows every model (Free, Member, Pro)" in page.content.decode()
    MembershipTier.objects.create(name="Trial", slug="trial", rank=1, all_models=False)
    page = catalogue_admin.get(reverse("admin:generation_catalogentry_change", args=[entry.pk]))
    assert 'type="checkbox" name="tiers"' in page.content.decode()
    assert "Trial" in page.content.decode()


def test_carol_restricts_a_checkpoint_to_one_tier_and_sets_its_defaults(catalogue_admin):
    trial = MembershipTier.objects.create(name="Trial", slug="trial", rank=1, all_models=False)
    studio = MembershipTier.objects.create(
        name="Studio", slug="studio", rank=30, all_models=False, allowed_models=["other"]
    )
    entry = CatalogEntry.objects.create(name="flux-ish", kind="checkpoint")
    url = reverse("admin:generation_catalogentry_change", args=[entry.pk])
    response = catalogue_admin.post(
        url,
        entry_form(
            entry,
            display_name="Flux-ish",
            cost_multiplier="2.5",
            tiers=[str(studio.pk)],
            default_sampler="Euler a",
            default_steps="28",
            default_cfg_scale="4.5",
            default_width="768",
            default_height="512",
            default_clip_skip="2",
            preview=SimpleUploadedFile("p.png", png_bytes(), content_type="image/png"),
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    entry.refresh_from_db()
    assert entry.default_params == {
        "sampler": "Euler a",
        "steps": 28,
        "cfg_scale": 4.5,
        "width": 768,
        "height": 512,
        "clip_skip": 2,
    }
    assert (entry.label, str(entry.cost_multiplier)) == ("Flux-ish", "2.50")
    studio.refresh_from_db()
    trial.refresh_from_db()
    assert studio.allowed_models == ["other", "flux-ish"] and trial.allowed_models == []
    page = catalogue_admin.get(url).content.decode()
    preview_url = reverse("admin:generation_catalogentry_preview", args=[entry.pk])
    assert preview_url in page
    assert catalogue_admin.get(preview_url).status_code == 200


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"cost_multiplier": "-1"}, "cost_multiplier", "greater than or equal to 0"),
        ({"default_width": "770"}, "default_width", "multiple of step size 8"),
        ({"default_steps": "500"}, "default_steps", "less than or equal to 150"),
    ],
)
def test_bad_catalogue_values_are_refused_naming_the_field(
    catalogue_admin, changes, field, message
):
    entry = CatalogEntry.objects.create(name="m", kind="checkpoint")
    response = catalogue_admin.post(
        reverse("admin:generation_catalogentry_change", args=[entry.pk]),
        entry_form(entry, **changes),
    )
    assert response.status_code == 200  # the admin re-shows the form with the error
    errors = response.context["adminform"].form.errors
    assert message in errors[field][0]


# --- what members are refused -------------------------------------------------------------


@pytest.fixture
def models(db):
    return {
        "open": CatalogEntry.objects.create(name="open-model", kind="checkpoint"),
        "off": CatalogEntry.objects.create(name="switched-off", kind="checkpoint", enabled=False),
        "pro": CatalogEntry.objects.create(name="pro-only", kind="checkpoint"),
    }


@pytest.fixture
def alice_on_a_restricted_tier(alice, models):
    tier = MembershipTier.objects.create(
        name="Basic", slug="basic", rank=1, all_models=False, allowed_models=["open-model"]
    )
    set_tier(alice, tier)
    give(alice, 100)
    return alice


REFUSALS = [
    ("switched-off", 422, "unknown model 'switched-off'"),
    ("pro-only", 403, "your membership tier does not include the model 'pro-only'"),
]


# The page says the same to a person: the field's label, the model's name.
PAGE_REFUSALS = [
    ("switched-off", "Model: There is no model called “switched-off”."),
    ("pro-only", "Model: Your membership tier does not include “pro-only”."),
]


@pytest.mark.parametrize(("name", "message"), PAGE_REFUSALS)
def test_the_generator_form_refuses_a_disabled_or_tier_restricted_model_naming_it(
    client, alice_on_a_restricted_tier, name, message
):
    client.force_login(alice_on_a_restricted_tier)
    response = client.post(reverse("generate"), {**GENERATOR_FORM, "checkpoint": name})
    html = response.content.decode()
    assert message in html
    assert not Job.objects.exists()


@pytest.mark.parametrize(("name", "status", "message"), REFUSALS)
def test_the_rest_api_refuses_a_disabled_or_tier_restricted_model_naming_it(
    alice_on_a_restricted_tier, name, status, message, redis_client
):
    api = APIClient()
    api.force_authenticate(alice_on_a_restricted_tier)
    response = api.post(
        reverse("api-jobs"),
        {"prompt": "a cat", "checkpoint": name, "width": 64, "height": 64, "steps": 4},
        format="json",
    )
    assert response.status_code == status
    assert message in json.dumps(response.json())
    assert not Job.objects.exists()


def test_the_model_alices_tier_allows_is_accepted(alice_on_a_restricted_tier, redis_client):
    api = APIClient()
    api.force_authenticate(alice_on_a_restricted_tier)
    response = api.post(
        reverse("api-jobs"),
        {"prompt": "a cat", "checkpoint": "open-model", "width": 64, "height": 64, "steps": 4},
        format="json",
    )
    assert response.status_code == 201
    assert Job.objects.get().checkpoint.name == "open-model"


def test_the_lists_editable_cost_multiplier_refuses_a_negative_value(catalogue_admin):
    entry = CatalogEntry.objects.create(name="m", kind="checkpoint")

    def save_list(multiplier: str):
        return catalogue_admin.post(
            reverse(CHANGELIST),
            {
                "form-TOTAL_FORMS": "1",
                "form-INITIAL_FORMS": "1",
                "form-0-id": str(entry.pk),
                "form-0-enabled": "on",
                "form-0-cost_multiplier": multiplier,
                "_save": "Save",
            },
        )

    refused = save_list("-3")
    assert refused.status_code == 200
    assert "greater than or equal to 0" in refused.content.decode()
    entry.refresh_from_db()
    assert str(entry.cost_multiplier) == "1.00"
    assert save_list("1.5").status_code == 302
    entry.refresh_from_db()
    assert str(entry.cost_multiplier) == "1.50"
