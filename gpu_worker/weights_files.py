"""Reading a small model's weights file (upscaler, face restorer) into a ready module.

Safetensors always; a pickle (.pth/.pt) only when the worker was started with --allow-pickle, and
then with `weights_only=True`. Whatever goes wrong is raised as the caller's error class, naming
the file, so the job fails with a message the member can act on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def load_weights_file(
    path: Path,
    build: Callable[[dict[str, Any]], T],
    error: type[Exception],
    *,
    allow_pickle: bool = False,
) -> T:
    """`build` on the file's state dict; `error` naming the file when it cannot be run."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: dict[str, Any] = load_file(str(path))
        elif allow_pickle:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise error("a pickle file (start the worker with --allow-pickle)")
        return build(state)
    except error as exc:
        raise error(f"{path.name}: {exc}") from exc
    except Exception as exc:  # a corrupt file: say which
        raise error(f"{path.name}: cannot be read ({exc})") from exc
