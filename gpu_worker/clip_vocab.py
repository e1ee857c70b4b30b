"""The CLIP BPE tokenizer files, derived offline from the vocabulary that open-clip-torch ships.

diffusers' single-file loader needs a tokenizer folder, which it would normally download. The
real CLIP vocabulary lies in the open-clip-torch wheel (`bpe_simple_vocab_16e6.txt.gz`); we read
that file without importing the package (its import pulls torchvision, which breaks diffusers on
the CPU torch build) and write the Hugging Face `vocab.json` / `merges.txt` /
`tokenizer_config.json` trio. Torch-free.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from functools import cache
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES_USED = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file
MODEL_MAX_LENGTH = 77
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


class VocabularyMissing(RuntimeError):
    """open-clip-torch (installed with --no-deps) is needed for the CLIP vocabulary."""


def find_bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locates the package, imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise VocabularyMissing(
            "The CLIP vocabulary is missing: install it with "
            "`pip install --no-deps open-clip-torch==3.3.0` (never with its dependencies)."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BPE_FILE
        if candidate.is_file():
            return candidate
    raise VocabularyMissing(f"open_clip is installed but has no {BPE_FILE}")


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def read_merges(bpe_file: Path | None = None) -> list[str]:
    with gzip.open(bpe_file or find_bpe_file(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    return lines[1 : MERGES_USED + 1]


def build_vocab(merges: list[str]) -> dict[str, int]:
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens.extend("".join(m.split()) for m in merges)
    tokens.extend([BOS, EOS])
    return {t: i for i, t in enumerate(tokens)}


def write_tokenizer_folder(folder: Path, *, pad_token: str = EOS) -> Path:
    """Write a CLIPTokenizer folder (idempotent). SDXL's second tokenizer pads with "!"."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "tokenizer_config.json"
    if (
        config_path.exists()
        and (folder / "vocab.json").exists()
        and (folder / "merges.txt").exists()
    ):
        return folder
    merges = read_merges()
    vocab = build_vocab(merges)
    _atomic_write(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    _atomic_write(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    _atomic_write(
        folder / "special_tokens_map.json",
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}),
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,  # without it: 1e30 and an OverflowError later
        "do_lower_case": True,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "errors": "replace",
        "clean_up_tokenization_spaces": True,
    }
    _atomic_write(config_path, json.dumps(config, indent=2))
    return folder


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
