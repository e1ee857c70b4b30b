"""A worker's optional speed-ups for the UNet, applied to each pipeline as it is loaded.

Off by default: what each costs is worker start-up and first-job time, not correctness.
- channels_last: the UNet's and VAE's convolution weights in NHWC. On the H200, alone, it gave
  1.05x the sampling speed but 0.84x for the UNet call itself: on its own it is not a gain.
- compile: `torch.compile` of the UNet in place (`module.compile`: the module, its state-dict
  keys and LoRA adapters stay as they are). "reduce-overhead" adds CUDA graphs, which remove the
  per-kernel launch cost that bounds a 512x512 UNet step on a fast GPU (4.2x the sampling speed
  on the H200). Each new shape (size, batch, a LoRA or ControlNet changing the graph) compiles
  once, 81 s for the first there: for workers that see mostly the same sizes. Figures from
  bench/bench_engine_gpu_unet.py (README, "On a GPU").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# torch is imported where it is used: the worker's command line reads COMPILE_MODES before
# its thread policy lets torch be imported
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class SpeedOptions:
    channels_last: bool = False
    compile_mode: str = "off"

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"compile mode {self.compile_mode!r}: expected one of {', '.join(COMPILE_MODES)}"
            )

    def apply(self, pipe: Any) -> None:
        import torch

        if self.channels_last:
            for module in (pipe.unet, getattr(pipe, "vae", None)):
                if module is not None:
                    module.to(memory_format=torch.channels_last)
        if self.compile_mode != "off":
            pipe.unet.compile(mode=None if self.compile_mode == "default" else self.compile_mode)

    def describe(self) -> str:
        parts = ["channels_last"] if self.channels_last else []
        if self.compile_mode != "off":
            parts.append(f"torch.compile {self.compile_mode}")
        return ", ".join(parts) or "eager"
