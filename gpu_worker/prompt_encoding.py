"""A1111-style prompt encoding (torch): 75-token chunks, emphasis weights, BREAK, clip skip.

Each chunk is BOS + 75 tokens (padded with EOS) + EOS, encoded separately and concatenated.
Weights multiply the token embeddings, then the chunk is rescaled to its original mean, which
is what A1111 does; a comma within the last 20 tokens is preferred as a chunk boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from gpu_worker.prompt_syntax import BREAK_WEIGHT, parse_prompt_attention

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


def tokenize_prompt(tokenizer: Any, prompt: str) -> list[Chunk]:
    """A1111's tokenize_line: weighted tokens split into 75-token chunks (without BOS/EOS)."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    end = tokenizer.eos_token_id
    chunks: list[Chunk] = []
    chunk = Chunk()
    last_comma = -1

    def next_chunk() -> None:
        nonlocal chunk, last_comma
        pad = CHUNK_LENGTH - len(chunk.tokens)
        chunk.tokens += [end] * pad
        chunk.multipliers += [1.0] * pad
        chunks.append(chunk)
        chunk = Chunk()
        last_comma = -1

    fragments = parse_prompt_attention(prompt)
    texts = [t for t, w in fragments if w != BREAK_WEIGHT]
    encoded = iter(tokenizer(texts, add_special_tokens=False, truncation=False).input_ids)
    for text, weight in fragments:
        if text == "BREAK" and weight == BREAK_WEIGHT:
            next_chunk()
            continue
        for token in next(encoded):
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (
                len(chunk.tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK
            ):
                split = last_comma + 1
                rest_tokens, rest_mult = chunk.tokens[split:], chunk.multipliers[split:]
                chunk.tokens, chunk.multipliers = chunk.tokens[:split], chunk.multipliers[:split]
                next_chunk()
                chunk.tokens, chunk.multipliers = rest_tokens, rest_mult
            if len(chunk.tokens) == CHUNK_LENGTH:
                next_chunk()
            chunk.tokens.append(token)
            chunk.multipliers.append(weight)
    if chunk.tokens or not chunks:
        next_chunk()
    return chunks


def encode_chunks(
    text_encoder: Any, tokenizer: Any, chunks: list[Chunk], *, clip_skip: int, device: Any
) -> torch.Tensor:
    """[1, 77 * len(chunks), hidden] conditioning, weighted with mean restoration."""
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = torch.tensor([[start, *c.tokens, end] for c in chunks], device=device)
    weights = torch.tensor([[1.0, *c.multipliers, 1.0] for c in chunks], device=device)
    with torch.no_grad():
        if clip_skip > 1:
            out = text_encoder(ids, output_hidden_states=True)
            inner = getattr(text_encoder, "text_model", text_encoder)
            z = inner.final_layer_norm(out.hidden_states[-clip_skip])
        else:
            z = text_encoder(ids)[0]
        original_mean = z.mean(dim=(1, 2), keepdim=True)
        weighted = z * weights.to(z.dtype).unsqueeze(-1)
        if not torch.all(weights == 1.0):
            new_mean = weighted.mean(dim=(1, 2), keepdim=True)
            # A1111 divides unguarded; a mean of ~0 (an untrained model's LayerNorm) would give
            # inf/NaN, so such chunks keep their weighted values as they are.
            scale = z.abs().mean(dim=(1, 2), keepdim=True)
            usable = new_mean.abs() > 1e-3 * scale
            ratio = torch.where(usable, original_mean / torch.where(usable, new_mean, 1.0), 1.0)
            weighted = weighted * ratio
    return weighted.reshape(1, -1, z.shape[-1])


def encode_prompt_pair(
    pipe: Any, prompt: str, negative_prompt: str, *, clip_skip: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, negative_prompt_embeds) with the same number of chunks each."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    positive = tokenize_prompt(tokenizer, prompt)
    negative = tokenize_prompt(tokenizer, negative_prompt)
    empty = tokenize_prompt(tokenizer, "")[0]
    while len(negative) < len(positive):
        negative.append(Chunk(list(empty.tokens), list(empty.multipliers)))
    while len(positive) < len(negative):
        positive.append(Chunk(list(empty.tokens), list(empty.multipliers)))
    device = encoder.device
    cond = encode_chunks(encoder, tokenizer, positive, clip_skip=clip_skip, device=device)
    uncond = encode_chunks(encoder, tokenizer, negative, clip_skip=clip_skip, device=device)
    return cond, uncond
