"""Where a GPU worker keeps what it makes once and reuses: model configs and tokenizers, file
hashes, fetched models and, with --compile, inductor's compiled kernels. Torch-free: the
command line decides it before torch is imported."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$ATELIER_CACHE_DIR, else atelier/ under $XDG_CACHE_HOME or ~/.cache."""
    base = os.environ.get("ATELIER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "atelier"
    )
    return Path(base)


def keep_compiled_kernels(cache_dir: Path) -> None:
    """Point inductor's cache (by default under /tmp, lost with a container) into `cache_dir`,
    unless the operator set TORCHINDUCTOR_CACHE_DIR: a restarted worker then compiles from it.
    Before torch is imported: inductor fixes the variable the first time it reads it."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
