"""A1111-style prompt encoding (torch): 75-token chunks, emphasis weights, BREAK, clip skip.

Each chunk is BOS + 75 tokens (padded with EOS) + EOS, encoded separately and concatenated.
Weights multiply the token embeddings, then the chunk is rescaled to its original mean, which
is what A1111 does; a comma within the last 20 tokens is preferred as a chunk boundary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from gpu_worker.prompt_syntax import BREAK_WEIGHT, embedding_pattern, parse_prompt_attention

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    length: int = 0  # real tokens before the padding
    fixes: list[tuple[int, str]] = field(default_factory=list)  # (position, embedding name)


@dataclass(frozen=True)
class Embedding:
    """A textual-inversion embedding: vectors per text encoder (SDXL: clip_l, clip_g)."""

    name: str
    vectors: tuple[torch.Tensor, ...]

    @property
    def length(self) -> int:
        return int(self.vectors[0].shape[0])


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
    tokenizer: Any, prompt: str, embeddings: dict[str, Embedding] | None = None
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


class _embedding_hook:  # noqa: N801 - a context manager
    """Write the embeddings' vectors over their placeholder rows of the token embeddings, as
    A1111 does, for one encoder call; the model itself is never changed."""

    def __init__(
        self, encoder: Any, chunks: list[Chunk], embeddings: dict[str, Embedding], index: int
    ) -> None:
        self.module = getattr(encoder, "text_model", encoder).embeddings.token_embedding
        self.chunks, self.embeddings, self.index = chunks, embeddings, index
        self.handle: Any = None

    def _patch(self, module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, chunk in enumerate(self.chunks):
            for position, name in chunk.fixes:
                vectors = self.embeddings[name].vectors[self.index].to(output)
                output[row, 1 + position : 1 + position + vectors.shape[0]] = vectors
        return output

    def __enter__(self) -> None:
        if any(c.fixes for c in self.chunks):
            self.handle = self.module.register_forward_hook(self._patch)

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()


def _ids(chunk: Chunk, start: int, end: int, pad: int | None) -> list[int]:
    if pad is None or pad == end:
        return [start, *chunk.tokens, end]
    # SDXL's second tokenizer: BOS, tokens, EOS, then its own pad token ("!")
    real = chunk.tokens[: chunk.length]
    return [start, *real, end] + [pad] * (CHUNK_LENGTH - chunk.length)


def apply_weights(z: torch.Tensor, chunks: list[Chunk]) -> torch.Tensor:
    """Multiply each token's embedding by its weight, then restore each chunk's mean (A1111)."""
    weights = torch.tensor([[1.0, *c.multipliers, 1.0] for c in chunks], device=z.device)
    if torch.all(weights == 1.0):
        return z
    original_mean = z.mean(dim=(1, 2), keepdim=True)
    weighted = z * weights.to(z.dtype).unsqueeze(-1)
    new_mean = weighted.mean(dim=(1, 2), keepdim=True)
    # A1111 divides unguarded; a mean of ~0 (an untrained model's LayerNorm) would give
    # inf/NaN, so such chunks keep their weighted values as they are.
    scale = z.abs().mean(dim=(1, 2), keepdim=True)
    usable = new_mean.abs() > 1e-3 * scale
    ratio = torch.where(usable, original_mean / torch.where(usable, new_mean, 1.0), 1.0)
    return weighted * ratio


def encode_chunks(
    text_encoder: Any,
    tokenizer: Any,
    chunks: list[Chunk],
    *,
    clip_skip: int,
    device: Any,
    embeddings: dict[str, Embedding] | None = None,
) -> torch.Tensor:
    """[1, 77 * len(chunks), hidden] conditioning, weighted with mean restoration."""
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = torch.tensor([_ids(c, start, end, None) for c in chunks], device=device)
    with torch.no_grad(), _embedding_hook(text_encoder, chunks, embeddings or {}, 0):
        if clip_skip > 1:
            out = text_encoder(ids, output_hidden_states=True)
            inner = getattr(text_encoder, "text_model", text_encoder)
            z = inner.final_layer_norm(out.hidden_states[-clip_skip])
        else:
            z = text_encoder(ids)[0]
        weighted = apply_weights(z, chunks)
    return weighted.reshape(1, -1, z.shape[-1])


def _matched_chunks(
    tokenizer: Any,
    prompt: str,
    negative_prompt: str,
    embeddings: dict[str, Embedding] | None,
    min_chunks: int = 0,
) -> tuple[list[Chunk], list[Chunk]]:
    """Both prompts' chunks, padded with empty chunks to the same count (at least
    `min_chunks`, so every text of a prompt-editing schedule has one shape)."""
    positive = tokenize_prompt(tokenizer, prompt, embeddings)
    negative = tokenize_prompt(tokenizer, negative_prompt, embeddings)
    empty = tokenize_prompt(tokenizer, "")[0]
    count = max(len(positive), len(negative), min_chunks)
    for chunks in (positive, negative):
        while len(chunks) < count:
            chunks.append(Chunk(list(empty.tokens), list(empty.multipliers), empty.length))
    return positive, negative


def chunk_count(tokenizer: Any, prompt: str, embeddings: dict[str, Embedding] | None) -> int:
    """How many 75-token chunks a prompt encodes to."""
    return len(tokenize_prompt(tokenizer, prompt, embeddings))


def encode_prompt_pair(
    pipe: Any,
    prompt: str,
    negative_prompt: str,
    *,
    clip_skip: int,
    embeddings: dict[str, Embedding] | None = None,
    min_chunks: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, negative_prompt_embeds) with the same number of chunks each."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    positive, negative = _matched_chunks(tokenizer, prompt, negative_prompt, embeddings, min_chunks)
    options = {"clip_skip": clip_skip, "device": encoder.device, "embeddings": embeddings}
    cond = encode_chunks(encoder, tokenizer, positive, **options)
    uncond = encode_chunks(encoder, tokenizer, negative, **options)
    return cond, uncond


def encode_prompt_pair_xl(
    pipe: Any,
    prompt: str,
    negative_prompt: str,
    *,
    clip_skip: int,
    embeddings: dict[str, Embedding] | None = None,
    min_chunks: int = 0,
) -> dict[str, torch.Tensor]:
    """SDXL: both encoders' penultimate layers side by side, weighted per chunk; pooled
    embeddings from the second encoder's first chunk (A1111 and diffusers agree on this)."""
    positive, negative = _matched_chunks(
        pipe.tokenizer, prompt, negative_prompt, embeddings, min_chunks
    )

    def encode(chunks: list[Chunk]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], None
        pairs = ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2))
        for index, (encoder, tokenizer) in enumerate(pairs):
            start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
            pad = tokenizer.pad_token_id
            ids = torch.tensor([_ids(c, start, end, pad) for c in chunks], device=encoder.device)
            with _embedding_hook(encoder, chunks, embeddings or {}, index):
                out = encoder(ids, output_hidden_states=True)
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
                pooled = out[0][:1]
            hidden.append(out.hidden_states[-(clip_skip + 1)])
        z = apply_weights(torch.cat(hidden, dim=-1), chunks)
        assert pooled is not None
        return z.reshape(1, -1, z.shape[-1]), pooled

    with torch.no_grad():
        cond, pooled = encode(positive)
        uncond, negative_pooled = encode(negative)
    return {
        "prompt_embeds": cond,
        "negative_prompt_embeds": uncond,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


def load_embedding(name: str, path: str, *, sdxl: bool, dims: tuple[int, ...]) -> Embedding | None:
    """An A1111 embedding file (safetensors: `emb_params`, or SDXL's `clip_l` + `clip_g`);
    None when it does not fit this model's text encoders (A1111 skips those too)."""
    from safetensors.torch import load_file

    state = load_file(path)
    if sdxl:
        if "clip_l" not in state or "clip_g" not in state:
            return None
        vectors: tuple[torch.Tensor, ...] = (state["clip_l"], state["clip_g"])
    else:
        tensor = state.get("emb_params")
        if tensor is None and len(state) == 1:
            tensor = next(iter(state.values()))
        if tensor is None:
            return None
        vectors = (tensor.reshape(-1, tensor.shape[-1]),)
    if tuple(v.shape[-1] for v in vectors) != dims:
        return None
    return Embedding(name=name, vectors=tuple(v.float() for v in vectors))
