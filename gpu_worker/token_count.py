"""Counting a prompt's CLIP tokens the way the engine chunks them, torch-free, for the
platform's live "n/75" counter.

The BPE runs on Hugging Face `tokenizers` (Rust, no torch) with CLIP's own vocabulary
(clip_vocab) and the normalisation and pre-tokenisation of transformers' fast CLIP tokenizer;
chunking is prompt_chunks.tokenize_prompt, the engine's own. What is counted follows A1111's
token counter (modules/ui.py: update_token_counter): LoRA tags removed, every text of the
prompt-editing schedule counted and the longest shown, an embedding as its vector count.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from gpu_worker.clip_vocab import EOS, build_vocab, read_merges
from gpu_worker.prompt_chunks import CHUNK_LENGTH, tokenize_prompt
from gpu_worker.prompt_syntax import extract_loras, prompt_schedule

# CLIP's word pattern (transformers' CLIPConverter)
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclass
class _Ids:
    input_ids: list[int]


class ClipTokens:
    """The slice of a CLIPTokenizer that prompt_chunks needs."""

    def __init__(self) -> None:
        merges = read_merges()
        self.vocab = build_vocab(merges)
        bpe = models.BPE(
            vocab=self.vocab,
            merges=[(left, right) for left, right in (m.split() for m in merges)],
            unk_token=EOS,
            end_of_word_suffix="</w>",
            continuing_subword_prefix="",
            fuse_unk=False,
        )
        self.tokenizer = Tokenizer(bpe)
        self.tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        self.tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        self.tokenizer.decoder = decoders.ByteLevel()
        self.eos_token_id = self.vocab[EOS]

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.vocab[token]

    def __call__(self, text: str, **_options: Any) -> _Ids:
        return _Ids(self.tokenizer.encode(text, add_special_tokens=False).ids)


@cache
def clip_tokens() -> ClipTokens:
    """Built once per process (~1 s: the vocabulary is read from open-clip's file)."""
    return ClipTokens()


@dataclass(frozen=True)
class EmbeddingSize:
    name: str
    length: int  # vectors the embedding takes in the prompt


@dataclass(frozen=True)
class TokenCount:
    tokens: int  # A1111's count: 75 per full chunk, plus the last chunk's tokens
    limit: int  # the chunks' capacity: 75, 150, ...
    chunks: list[int]  # real tokens in each chunk

    @property
    def label(self) -> str:
        return f"{self.tokens}/{self.limit}"


def count_tokens(
    prompt: str, embeddings: dict[str, EmbeddingSize] | None = None, steps: int = 20
) -> TokenCount:
    """The longest text of the prompt's schedule, counted as the engine will chunk it."""
    text, _ = extract_loras(prompt)
    try:
        texts = [t for _, t in prompt_schedule(text, steps)]
    except ValueError:  # malformed editing: count it as typed (the submission says why)
        texts = [text]
    counts = []
    for one in dict.fromkeys(texts):
        chunks = tokenize_prompt(clip_tokens(), one, embeddings)
        lengths = [c.length for c in chunks]
        total = CHUNK_LENGTH * (len(lengths) - 1) + lengths[-1]
        limit = math.ceil(max(total, 1) / CHUNK_LENGTH) * CHUNK_LENGTH
        counts.append(TokenCount(total, limit, lengths))
    return max(counts, key=lambda c: c.tokens)


def embedding_vectors(path: Path) -> int | None:
    """How many vectors an A1111 embedding file holds, from its safetensors header alone."""
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 1 << 24:
                return None
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error):
        return None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    entry = tensors.get("emb_params") or tensors.get("clip_l")
    if entry is None and len(tensors) == 1:
        entry = next(iter(tensors.values()))
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not shape:
        return None
    return math.prod(shape[:-1]) or 1
