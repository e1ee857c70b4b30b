"""Seamless, tileable images: circular padding in every convolution of the UNet and the VAE for
one run, as A1111's `tiling` does, so the image's left edge continues its right edge and its top
its bottom. The cached pipeline is shared by jobs, so the padding is put back afterwards."""

from __future__ import annotations

from typing import Any

import torch


class circular_padding:  # noqa: N801 - a context manager
    def __init__(self, pipe: Any, enabled: bool) -> None:
        self.convs: list[tuple[torch.nn.Conv2d, Any]] = []  # (conv, its padding mode)
        if enabled:
            for model in (pipe.unet, pipe.vae):
                for module in model.modules():
                    if isinstance(module, torch.nn.Conv2d):
                        self.convs.append((module, module.padding_mode))

    def __enter__(self) -> None:
        # torch pads with padding_mode before the convolution when it is not "zeros"; the
        # amounts it pads by were fixed at construction from `padding`
        for conv, _ in self.convs:
            conv.padding_mode = "circular"

    def __exit__(self, *exc: object) -> None:
        for conv, mode in self.convs:
            conv.padding_mode = mode
