"""The generator's live token counter: both prompts, with the request's styles applied and the
user's embeddings counted by their vectors, as A1111's counter does (gpu_worker.token_count).

Embedding sizes come from the file's safetensors header where the web can read it (the local
models folder), or from what the model store noted of a member's upload; an embedding only a
remote worker holds counts as one vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from generation.models import CatalogEntry
from generation.styles import apply_styles
from gpu_worker.prompt_syntax import embedding_pattern
from gpu_worker.token_count import EmbeddingSize, TokenCount, count_tokens, embedding_vectors


def _embeddings(user: Any, text: str) -> dict[str, EmbeddingSize]:
    entries = list(
        CatalogEntry.objects.visible_to(user)
        .filter(kind=CatalogEntry.Kind.EMBEDDING)
        .values_list("name", "filename", "stored_file__detail")
    )
    pattern = embedding_pattern([name for name, _, _ in entries])
    if pattern is None:
        return {}
    named = {m.group(0).lower() for m in pattern.finditer(text)}
    sizes = {}
    for name, filename, stored in entries:
        if name.lower() in named:
            if stored is not None:  # a member's upload: its vectors were counted when stored
                vectors = stored.get("tokens")
            else:
                vectors = embedding_vectors(Path(settings.MODELS_DIR) / filename)
            sizes[name] = EmbeddingSize(name, vectors or 1)
    return sizes


def _payload(count: TokenCount) -> dict[str, Any]:
    return {
        "tokens": count.tokens,
        "limit": count.limit,
        "chunks": count.chunks,
        "label": count.label,
    }


def count_prompt_tokens(
    user: Any, prompt: str, negative_prompt: str, styles: Any = None, steps: int = 20
) -> dict[str, Any]:
    """{"prompt": {...}, "negative_prompt": {...}}; StyleError for a style the user lacks."""
    prompt, negative_prompt = apply_styles(user, styles, prompt, negative_prompt)
    embeddings = _embeddings(user, prompt + "\n" + negative_prompt)
    return {
        "prompt": _payload(count_tokens(prompt, embeddings, steps)),
        "negative_prompt": _payload(count_tokens(negative_prompt, embeddings, steps)),
    }
