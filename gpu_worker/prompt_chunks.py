"""A1111's tokenize_line, torch-free: weighted tokens in 75-token chunks (prompt_encoding encodes
them; the platform's token counter counts them with the same rules).

A `tokenizer` here is anything with `convert_tokens_to_ids`, `eos_token_id` and a call returning
`.input_ids` (a transformers CLIPTokenizer, or token_count.ClipTokens); an embedding anything
with `name` and `length` (its vector count).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpu_worker.prompt_syntax import BREAK_WEIGHT, embedding_pattern, parse_prompt_attention

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    length: int = 0  # real tokens before the padding
    fixes: list[tuple[int, str]] = field(default_factory=list)  # (position, embedding name)


def _split_embeddings(text: str, pattern: re.Pattern[str] | None) -> list[tuple[str, bool]]:
    if pattern is None:
        return [(text, False)]
    parts: list[tuple[str, bool]] = []
    last = 0
    for match in pattern.finditer(text):
        parts.append((text[last : match.start()], False))
        parts.append((match.group(0), True))
        last = match.end()
    parts.append((text[last:], False))
    return [(t, is_emb) for t, is_emb in parts if t]


def tokenize_prompt(
    tokenizer: Any, prompt: str, embeddings: Mapping[str, Any] | None = None
) -> list[Chunk]:
    """A1111's tokenize_line: weighted tokens split into 75-token chunks (without BOS/EOS).

    An embedding's name becomes its vectors (placeholders here, filled in while encoding);
    an embedding never straddles two chunks.
    """
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    end = tokenizer.eos_token_id
    by_lower = {name.lower(): name for name in embeddings or {}}
    pattern = embedding_pattern(list(embeddings or {}))
    chunks: list[Chunk] = []
    chunk = Chunk()
    last_comma = -1

    def next_chunk() -> None:
        nonlocal chunk, last_comma
        pad = CHUNK_LENGTH - len(chunk.tokens)
        chunk.length = len(chunk.tokens)
        chunk.tokens += [end] * pad
        chunk.multipliers += [1.0] * pad
        chunks.append(chunk)
        chunk = Chunk()
        last_comma = -1

    def add_token(token: int, weight: float) -> None:
        nonlocal last_comma
        if token == comma:
            last_comma = len(chunk.tokens)
        elif (
            len(chunk.tokens) == CHUNK_LENGTH
            and last_comma != -1
            and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK
        ):
            split = last_comma + 1
            old = chunk
            rest_tokens, rest_mult = old.tokens[split:], old.multipliers[split:]
            moved = [(pos - split, name) for pos, name in old.fixes if pos >= split]
            old.fixes = [(pos, name) for pos, name in old.fixes if pos < split]
            old.tokens, old.multipliers = old.tokens[:split], old.multipliers[:split]
            next_chunk()
            chunk.tokens, chunk.multipliers, chunk.fixes = rest_tokens, rest_mult, moved
        if len(chunk.tokens) == CHUNK_LENGTH:
            next_chunk()
        chunk.tokens.append(token)
        chunk.multipliers.append(weight)

    for text, weight in parse_prompt_attention(prompt):
        if text == "BREAK" and weight == BREAK_WEIGHT:
            next_chunk()
            continue
        for part, is_embedding in _split_embeddings(text, pattern):
            if not is_embedding:
                ids = tokenizer(part, add_special_tokens=False, truncation=False).input_ids
                for token in ids:
                    add_token(token, weight)
                continue
            embedding = (embeddings or {})[by_lower[part.lower()]]
            if len(chunk.tokens) + embedding.length > CHUNK_LENGTH:
                next_chunk()
            chunk.fixes.append((len(chunk.tokens), embedding.name))
            chunk.tokens += [end] * embedding.length
            chunk.multipliers += [weight] * embedding.length
    if chunk.tokens or not chunks:
        next_chunk()
    return chunks
