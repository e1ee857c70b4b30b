"""The platform's model store: uploaded model files on disk under content-addressed names.

Bytes are streamed to a temporary file beside the store while their sha256 is computed, so no
file is ever held in memory; the header is then checked (`gpu_worker.model_files`, tensors are
never loaded) and the file moved to `<sha[:2]>/<sha>.safetensors`. The same bytes uploaded twice
are kept once. The store knows files, not owners: `ModelFile` rows and catalogue entries say who
refers to what.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from gpu_worker.model_files import ModelFacts, UnreadableModel, inspect_file

BLOCK_BYTES = 1 << 20
SHA256_LENGTH = 64


@dataclass(frozen=True)
class StoredBytes:
    sha256: str
    size_bytes: int
    facts: ModelFacts
    path: Path


def store_root() -> Path:
    return Path(settings.MODEL_STORE_DIR)


def path_for(sha256: str) -> Path:
    """Where a hash lives; the name is the hash alone, checked so it can never be a path."""
    if len(sha256) != SHA256_LENGTH or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("not a sha256")
    return store_root() / sha256[:2] / f"{sha256}.safetensors"


def incoming_dir() -> Path:
    folder = store_root() / "incoming"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def store_stream(blocks: Iterable[bytes], label: str = "file") -> StoredBytes:
    """Write blocks to the store, hashing as they pass; check and keep the file, or raise
    UnreadableModel (nothing is kept)."""
    digest = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(dir=incoming_dir(), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for block in blocks:
                digest.update(block)
                out.write(block)
                size += len(block)
        return _keep(Path(name), digest.hexdigest(), size, label)
    finally:
        Path(name).unlink(missing_ok=True)


def store_file(path: Path, label: str = "file") -> StoredBytes:
    """Adopt a finished upload lying in the store's own disk (a tus upload): hash it by streaming
    it once, check it and move it into place. The source is gone afterwards either way."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(BLOCK_BYTES):
                digest.update(block)
        return _keep(path, digest.hexdigest(), path.stat().st_size, label)
    finally:
        path.unlink(missing_ok=True)


def _keep(source: Path, sha256: str, size: int, label: str) -> StoredBytes:
    with open(source, "rb") as fh:
        facts = inspect_file(fh, size, label)
    target = path_for(sha256)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)  # same file system: a rename, no copy
    return StoredBytes(sha256=sha256, size_bytes=size, facts=facts, path=target)


def delete_bytes(sha256: str) -> None:
    path_for(sha256).unlink(missing_ok=True)


__all__ = [
    "StoredBytes",
    "UnreadableModel",
    "delete_bytes",
    "path_for",
    "store_file",
    "store_stream",
]
