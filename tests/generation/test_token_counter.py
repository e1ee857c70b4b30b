"""The token counter: CLIP tokens per 75-token chunk with the real vocabulary, torch-free, with
styles and embeddings counted as A1111 counts them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from generation.models import CatalogEntry, PromptStyle
from gpu_worker.token_count import count_tokens

pytestmark = pytest.mark.django_db


def test_a_short_prompt_is_n_of_75_and_break_or_length_opens_a_chunk():
    assert count_tokens("a photo of a cat").label == "5/75"  # 320 1125 539 320 2368
    assert count_tokens("a cat BREAK a dog").label == "77/150"  # A1111: a full chunk, then 2
    long = count_tokens(" ".join(["cat"] * 80))
    assert (long.label, long.chunks) == ("80/150", [75, 5])


def test_lora_tags_vanish_and_the_longest_text_of_an_edit_counts():
    assert count_tokens("a cat <lora:x:0.5>").label == "2/75"
    assert count_tokens("a [cat:big fluffy cat:5]").tokens == 4


def test_counting_needs_no_torch():
    code = (
        "import sys; from gpu_worker.token_count import count_tokens; "
        "print(count_tokens('a photo').label, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2/75", "False"]


def test_the_endpoint_counts_both_prompts_with_styles(alice_api, alice):
    PromptStyle.objects.create(owner=alice, name="grain", prompt="{prompt}, film grain")
    response = alice_api.post(
        "/api/v1/tokens/",
        {"prompt": "a photo of a cat", "negative_prompt": "blurry", "styles": ["grain"]},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["prompt"] == {"tokens": 8, "limit": 75, "chunks": [8], "label": "8/75"}
    assert body["negative_prompt"]["label"] == "1/75"


def test_a_style_of_someone_else_is_unknown_to_the_counter(alice, bob, bob_api):
    PromptStyle.objects.create(owner=alice, name="grain", prompt="{prompt}, film grain")
    response = bob_api.post("/api/v1/tokens/", {"prompt": "x", "styles": ["grain"]}, format="json")
    assert response.status_code == 422 and response.json()["field"] == "styles"


def test_an_embedding_counts_as_its_vectors(alice_api, settings, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    settings.MODELS_DIR = tmp_path
    (tmp_path / "embeddings").mkdir()
    save_file(
        {"emb_params": np.zeros((6, 768), dtype=np.float32)},
        str(tmp_path / "embeddings" / "easyneg.safetensors"),
    )
    CatalogEntry.objects.create(
        name="easyneg", kind="embedding", filename="embeddings/easyneg.safetensors"
    )
    response = alice_api.post(
        "/api/v1/tokens/", {"prompt": "", "negative_prompt": "EasyNeg, blurry"}, format="json"
    )
    assert response.json()["negative_prompt"]["tokens"] == 6 + 2  # 6 vectors, ",", "blurry"


def test_the_generator_page_carries_the_counter_and_alices_styles(client, alice, bob, catalogue):
    PromptStyle.objects.create(owner=alice, name="grain", prompt="{prompt}, film grain")
    PromptStyle.objects.create(owner=bob, name="bobs-secret", prompt="x")
    client.force_login(alice)
    page = client.get("/generate/").content.decode()
    assert 'data-tokens-url="/api/v1/tokens/"' in page and 'id="prompt-tokens"' in page
    assert "token_counter.js" in page
    assert '<option value="grain">' in page and "bobs-secret" not in page
