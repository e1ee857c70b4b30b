"""A1111-style prompt encoding (torch): 75-token chunks, emphasis weights, BREAK, clip skip.

Tokens and chunks come from prompt_chunks (torch-free, shared with the token counter).
Each chunk is BOS + 75 tokens (padded with EOS) + EOS, encoded separately and concatenated.
Weights multiply the token embeddings, then the chunk is rescaled to its original mean, which
is what A1111 does; a comma within the last 20 tokens is preferred as a chunk boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gpu_worker.prompt_chunks import CHUNK_LENGTH, Chunk, tokenize_prompt


@dataclass(frozen=True)
class Embedding:
    """A textual-inversion embedding: vectors per text encoder (SDXL: clip_l, clip_g)."""

    name: str
    vectors: tuple[torch.Tensor, ...]

    @property
    def length(self) -> int:
        return int(self.vectors[0].shape[0])


class embedding_hook:  # noqa: N801 - a context manager
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


def chunk_ids(chunk: Chunk, start: int, end: int, pad: int | None) -> list[int]:
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
    ids = torch.tensor([chunk_ids(c, start, end, None) for c in chunks], device=device)
    with torch.no_grad(), embedding_hook(text_encoder, chunks, embeddings or {}, 0):
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
            ids = torch.tensor(
                [chunk_ids(c, start, end, pad) for c in chunks], device=encoder.device
            )
            with embedding_hook(encoder, chunks, embeddings or {}, index):
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
