"""HAT (Chen et al. 2023, "Activating More Pixels in Image Super-Resolution Transformer"):
SwinIR's trunk where each block adds a channel-attention conv branch (scaled by 0.01) and each
group ends in an overlapping cross-attention block, whose keys and values come from a window
larger than the queries'. Module names follow the published state dicts
(gpu_worker.upscaler_layouts); the index buffers are recomputed, the masks for each input."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual name

from gpu_worker.upscaler_archs.windows import (
    RGB_MEAN,
    Mlp,
    PatchNorm,
    ShiftedBlock,
    alternating_blocks,
    before_upsample,
    image,
    pad_to,
    partition,
    pixelshuffle_upsample,
    relative_index,
    tokens,
    trunk,
    unpartition,
)
from gpu_worker.upscaler_layouts import HATConfig

CONV_SCALE = 0.01  # the conv branch's weight in every published HAT (not in the state dict)
Size = tuple[int, int]


class _ChannelAttention(nn.Module):
    def __init__(self, dim: int, squeezed: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, squeezed, 1),
            nn.ReLU(),
            nn.Conv2d(squeezed, dim, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class _CAB(nn.Module):
    """Channel attention block: conv down, GELU, conv up, channel attention."""

    def __init__(self, config: HATConfig) -> None:
        super().__init__()
        dim, hidden = config.embed_dim, config.cab_channels
        self.cab = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 3, 1, 1),
            _ChannelAttention(dim, config.squeeze_channels),
        )


class HAB(ShiftedBlock):
    """Hybrid attention block: (shifted) window attention + 0.01 x conv branch, then the MLP."""

    conv_block: _CAB

    def __init__(self, config: HATConfig, layer: int, shift: int) -> None:
        c = config
        super().__init__(
            c.embed_dim,
            c.num_heads[layer],
            c.window_size,
            c.qkv_bias,
            c.mlp_hidden,
            shift,
            conv_block=_CAB(config),
        )

    def branch(self, y: torch.Tensor) -> torch.Tensor:
        return tokens(self.conv_block.cab(y.permute(0, 3, 1, 2))) * CONV_SCALE


class OCAB(nn.Module):
    """Overlapping cross-attention: queries from each window, keys and values from the larger
    overlapping window around it (nn.Unfold with the window as its stride)."""

    def __init__(self, config: HATConfig, layer: int) -> None:
        super().__init__()
        dim, self.heads = config.embed_dim, config.num_heads[layer]
        self.window, self.outer = config.window_size, config.overlap_window
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=config.qkv_bias)
        side = self.window + self.outer - 1
        self.relative_position_bias_table = nn.Parameter(torch.zeros(side * side, self.heads))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, config.mlp_hidden)

    def forward(self, x: torch.Tensor, size: Size, index: torch.Tensor) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, h, w, 3, c)
        q = partition(qkv[..., 0, :], self.window)  # [b x windows, window², c]
        kv = qkv[..., 1:, :].permute(0, 3, 4, 1, 2).reshape(b, 2 * c, h, w)
        pad = (self.outer - self.window) // 2
        kv = F.unfold(kv, self.outer, padding=pad, stride=self.window)  # b, 2c x outer², windows
        kv = kv.view(b, 2, c, self.outer, self.outer, -1).permute(1, 0, 5, 3, 4, 2)
        k, v = kv.reshape(2, -1, self.outer * self.outer, c)
        d = c // self.heads
        q = q.view(q.shape[0], -1, self.heads, d).transpose(1, 2)
        k = k.reshape(k.shape[0], -1, self.heads, d).transpose(1, 2)
        v = v.reshape(v.shape[0], -1, self.heads, d).transpose(1, 2)
        attn = (q * d**-0.5) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[index.reshape(-1)]
        attn = attn + bias.view(self.window**2, self.outer**2, -1).permute(2, 0, 1)[None]
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, self.window**2, c)
        x = self.proj(unpartition(y, self.window, h, w).reshape(b, h * w, c)) + x
        return x + self.mlp(self.norm2(x))


class _Group(nn.Module):
    def __init__(self, config: HATConfig, layer: int) -> None:
        super().__init__()
        self.blocks = alternating_blocks(
            lambda shift: HAB(config, layer, shift), config.depths[layer], config.window_size
        )
        self.overlap_attn = OCAB(config, layer)


class RHAG(nn.Module):
    """Residual hybrid attention group: blocks, overlapping attention, a conv, plus the input."""

    def __init__(self, config: HATConfig, layer: int) -> None:
        super().__init__()
        self.residual_group = _Group(config, layer)
        dim = config.embed_dim
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1) if config.resi_connection == "1conv" else None

    def forward(
        self, x: torch.Tensor, size: Size, indices: tuple[torch.Tensor, ...], mask: torch.Tensor
    ) -> torch.Tensor:
        y = x
        for block in self.residual_group.blocks:
            y = block(y, size, indices[0], mask)
        y = self.residual_group.overlap_attn(y, size, indices[1])
        if self.conv is not None:
            y = tokens(self.conv(image(y, *size)))
        return y + x


class HAT(nn.Module):
    half_safe = False  # gpu_worker.upscalers.run_dtype runs it in float32
    mean: torch.Tensor  # buffers, recomputed rather than loaded
    index_sa: torch.Tensor
    index_oca: torch.Tensor

    def __init__(self, config: HATConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = config.upscale
        dim, feat = config.embed_dim, config.num_feat
        window, outer = config.window_size, config.overlap_window
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("index_sa", relative_index(window), persistent=False)
        self.register_buffer("index_oca", relative_index(window, outer), persistent=False)
        self.conv_first = nn.Conv2d(3, dim, 3, 1, 1)
        self.patch_embed = PatchNorm(dim) if config.patch_norm else None
        self.layers = nn.ModuleList(RHAG(config, i) for i in range(len(config.depths)))
        self.norm = nn.LayerNorm(dim)
        one_conv = config.resi_connection == "1conv"
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1) if one_conv else None
        self.conv_before_upsample = before_upsample(dim, feat)
        self.upsample = pixelshuffle_upsample(config.upscale, feat)
        self.conv_last = nn.Conv2d(feat, 3, 3, 1, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        indices = (self.index_sa, self.index_oca)
        return trunk(x, self.config.window_size, self.patch_embed, self.layers, self.norm, indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        x = self.conv_first(pad_to(x, self.config.window_size) - self.mean)
        body = self.features(x)
        x = (self.conv_after_body(body) if self.conv_after_body is not None else body) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return (x + self.mean)[:, :, : h * self.scale, : w * self.scale]
