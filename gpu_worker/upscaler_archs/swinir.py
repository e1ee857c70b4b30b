"""SwinIR (Liang et al. 2021, "SwinIR: Image Restoration Using Swin Transformer"): residual Swin
transformer groups between a conv in and an upsampler out. Module names follow the published
state dicts (gpu_worker.upscaler_layouts lists them); the `relative_position_index` and
`attn_mask` buffers of a file are not loaded but recomputed, the masks for each input size."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual name

from gpu_worker.upscaler_archs.windows import (
    RGB_MEAN,
    PatchNorm,
    ShiftedBlock,
    alternating_blocks,
    before_upsample,
    image,
    pad_to,
    pixelshuffle_upsample,
    relative_index,
    tokens,
    trunk,
)
from gpu_worker.upscaler_layouts import SwinIRConfig

Size = tuple[int, int]


class SwinBlock(ShiftedBlock):
    """Window attention (shifted by half a window in odd blocks), then an MLP; both residual."""

    def __init__(self, config: SwinIRConfig, layer: int, shift: int) -> None:
        c = config
        super().__init__(
            c.embed_dim, c.num_heads[layer], c.window_size, c.qkv_bias, c.mlp_hidden, shift
        )


class _Group(nn.Module):
    def __init__(self, config: SwinIRConfig, layer: int) -> None:
        super().__init__()
        self.blocks = alternating_blocks(
            lambda shift: SwinBlock(config, layer, shift), config.depths[layer], config.window_size
        )


def residual_conv(dim: int, kind: str) -> nn.Module:
    """ "1conv": one 3x3 conv; "3conv": 3x3 to dim/4, 1x1, 3x3 back (the large models)."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    quarter = dim // 4
    return nn.Sequential(
        nn.Conv2d(dim, quarter, 3, 1, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(quarter, quarter, 1, 1, 0),
        nn.LeakyReLU(0.2),
        nn.Conv2d(quarter, dim, 3, 1, 1),
    )


class RSTB(nn.Module):
    """Residual Swin Transformer Block: a group of blocks, a conv, and the group's input added."""

    def __init__(self, config: SwinIRConfig, layer: int) -> None:
        super().__init__()
        self.residual_group = _Group(config, layer)
        self.conv = residual_conv(config.embed_dim, config.resi_connection)

    def forward(
        self, x: torch.Tensor, size: Size, index: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        y = x
        for block in self.residual_group.blocks:
            y = block(y, size, index, mask)
        return tokens(self.conv(image(y, *size))) + x


class SwinIR(nn.Module):
    half_safe = False  # gpu_worker.upscalers.run_dtype runs it in float32
    mean: torch.Tensor  # buffers, recomputed rather than loaded
    index: torch.Tensor

    def __init__(self, config: SwinIRConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = config.upscale
        dim = config.embed_dim
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("index", relative_index(config.window_size), persistent=False)
        self.conv_first = nn.Conv2d(3, dim, 3, 1, 1)
        self.patch_embed = PatchNorm(dim) if config.patch_norm else None
        self.layers = nn.ModuleList(RSTB(config, i) for i in range(len(config.depths)))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = residual_conv(dim, config.resi_connection)
        feat = config.num_feat
        if config.upsampler == "pixelshuffledirect":
            self.upsample = pixelshuffle_direct(dim, config.upscale)
            return
        self.conv_before_upsample = before_upsample(dim, feat)
        if config.upsampler == "pixelshuffle":
            self.upsample = pixelshuffle_upsample(config.upscale, feat)
        else:  # nearest+conv
            self.conv_up1 = nn.Conv2d(feat, feat, 3, 1, 1)
            if config.upscale == 4:
                self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat, 3, 3, 1, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        window = self.config.window_size
        return trunk(x, window, self.patch_embed, self.layers, self.norm, self.index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        x = pad_to(x, self.config.window_size) - self.mean
        x = self.conv_first(x)
        x = self.conv_after_body(self.features(x)) + x
        upsampler = self.config.upsampler
        if upsampler == "pixelshuffledirect":
            x = self.upsample(x)
        elif upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.conv_before_upsample(x)
            x = F.leaky_relu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
            if self.scale == 4:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
                x = F.leaky_relu(self.conv_up2(x), 0.2)
            x = self.conv_last(F.leaky_relu(self.conv_hr(x), 0.2))
        return (x + self.mean)[:, :, : h * self.scale, : w * self.scale]


def pixelshuffle_direct(dim: int, scale: int) -> nn.Sequential:
    """The lightweight models' upsampler: one conv straight to 3 x scale² channels, shuffled."""
    return nn.Sequential(nn.Conv2d(dim, 3 * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))
