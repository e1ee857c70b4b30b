"""The Merge page in a real browser: a refused merge comes back naming the field with the form as
it was; a virtual merge lands on its model page, which shows the recipe and offers Bake."""

from __future__ import annotations

import pytest

from generation.models import CatalogEntry
from tests.e2e.conftest import signed_in_page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_alice_saves_a_virtual_merge_from_the_merge_page(alice, live_server):
    for name in ("model-a", "model-b"):
        CatalogEntry.objects.create(
            name=name,
            kind="checkpoint",
            family="sd1",
            filename=f"Stable-diffusion/{name}.safetensors",
            sha256=name.encode().hex().ljust(64, "0"),
        )
    with signed_in_page(alice, live_server.url) as page:
        page.goto(f"{live_server.url}/models/merge/")
        page.select_option("#id_primary", "model-a")
        page.select_option("#id_secondary", "model-b")
        page.fill("#id_multiplier", "0.35")
        page.fill("#id_name", "../mix")
        page.check("input[name=virtual]")
        page.click("#merge-form button[type=submit]")
        assert "Name" in (page.text_content("#merge-error") or "")
        assert page.input_value("#id_multiplier") == "0.35"  # the form as it was
        page.fill("#id_name", "mix")
        page.check("input[name=virtual]")
        page.click("#merge-form button[type=submit]")
        page.wait_for_selector("#model-recipe", timeout=10000)
        recipe = page.text_content("#model-recipe") or ""
        assert "Weighted sum" in recipe and "model-b" in recipe and "0.35" in recipe
        assert page.is_visible("button:text('Bake')")
    entry = CatalogEntry.objects.get(owner=alice, name="mix")
    assert entry.stored_file is None and entry.enabled
