"""My models in a real browser: a chunked upload with its progress bar (bytes, speed, time
left), ending in the private model listed on the page."""

from __future__ import annotations

import pytest

from generation.models import CatalogEntry
from tests.e2e.conftest import signed_in_page
from tests.model_file_builder import safetensors_bytes

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_alice_uploads_a_model_and_watches_its_progress(alice, live_server, settings, tmp_path):
    settings.MODEL_STORE_DIR = tmp_path / "store"
    settings.MAX_REQUEST_BODY_BYTES = 64 * 1024 + 16 * 1024  # 16 KiB chunks: many of them
    model = tmp_path / "ink.safetensors"
    model.write_bytes(safetensors_bytes({"emb_params": ("F32", [64, 768])}))  # ~192 KiB
    with signed_in_page(alice, live_server.url) as page:
        page.goto(f"{live_server.url}/models/mine/")
        page.set_input_files("#id_model_file", str(model))
        page.fill("#id_model_name", "ink")
        statuses: list[str] = []
        page.expose_function("note", lambda text: statuses.append(text))
        page.evaluate(
            """() => new MutationObserver(() => window.note(
                document.getElementById('model-upload-status').textContent))
              .observe(document.getElementById('model-upload-status'),
                       {childList: true, characterData: true, subtree: true})"""
        )
        page.click("#model-upload button[type=submit]")
        page.wait_for_function(
            "document.getElementById('model-upload-status').textContent.startsWith('Uploaded')",
            timeout=30000,
        )
        assert page.eval_on_selector("#model-upload-progress", "e => e.value") == 100
        progress = [s for s in statuses if "MiB/s" in s]
        assert len(progress) > 3, statuses
        assert "/ 0.2 MiB" in progress[-1] and "s left" in progress[0]
        page.wait_for_selector("td a:text-is('ink')", timeout=10000)  # the page reloads with it
    entry = CatalogEntry.objects.get(owner=alice)
    assert (entry.name, entry.kind, entry.family) == ("ink", "embedding", "sd1")


def test_staff_upload_a_platform_model_from_the_same_page(carol, live_server, settings, tmp_path):
    settings.MODEL_STORE_DIR = tmp_path / "store"
    model = tmp_path / "house.safetensors"
    model.write_bytes(safetensors_bytes({"emb_params": ("F32", [2, 768])}))
    with signed_in_page(carol, live_server.url) as page:
        page.goto(f"{live_server.url}/models/mine/")
        page.set_input_files("#id_model_file", str(model))
        page.fill("#id_model_name", "house-words")
        page.check("#id_model_platform")
        page.click("#model-upload button[type=submit]")
        page.wait_for_function(
            "document.getElementById('model-upload-status').textContent.startsWith('Uploaded')",
            timeout=30000,
        )
    entry = CatalogEntry.objects.get(name="house-words")
    assert entry.owner is None and entry.stored_file is not None and entry.kind == "embedding"
