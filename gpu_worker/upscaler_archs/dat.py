"""DAT (Chen et al. 2023, "Dual Aggregation Transformer for Image Super-Resolution"): residual
groups whose blocks alternate spatial window attention (two halves of the channels, one in
split_size windows, one in the transposed windows, some shifted) and channel attention, each
with a depthwise-conv branch and an adaptive interaction between the two, and a spatial-gate
feed-forward. Module names follow the published state dicts; the index, bias-coordinate and mask
buffers are recomputed. Like the reference, any size works: the spatial attention pads with
zeros to a multiple of the larger window side."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual name

from gpu_worker.upscaler_archs.swinir import pixelshuffle_direct, residual_conv
from gpu_worker.upscaler_archs.windows import (
    MASKED,
    RGB_MEAN,
    image,
    pixelshuffle_upsample,
    tokens,
)
from gpu_worker.upscaler_layouts import DATConfig


def _windows(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """[b, c, h, w] -> [b x windows, wh x ww, c]"""
    b, c, h, w = x.shape
    x = x.view(b, c, h // wh, wh, w // ww, ww)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, wh * ww, c)


def _unwindows(x: torch.Tensor, wh: int, ww: int, h: int, w: int) -> torch.Tensor:
    """[b x windows, wh x ww, c] -> [b, h, w, c]"""
    x = x.view(-1, h // wh, w // ww, wh, ww, x.shape[-1])
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, x.shape[-1])


def rect_mask(h: int, w: int, wh: int, ww: int) -> torch.Tensor:
    """The shift mask for wh x ww windows shifted by half of each side."""
    region = torch.zeros(1, 1, h, w)
    label = 0
    for rows in (slice(0, -wh), slice(-wh, -(wh // 2)), slice(-(wh // 2), None)):
        for cols in (slice(0, -ww), slice(-ww, -(ww // 2)), slice(-(ww // 2), None)):
            region[:, :, rows, cols] = label
            label += 1
    labels = _windows(region, wh, ww).squeeze(-1)
    differs = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, MASKED)


def _bias_coordinates(wh: int, ww: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every relative offset as (dy, dx) floats, and each (query, key) pair's row among them."""
    dy, dx = torch.meshgrid(torch.arange(1 - wh, wh), torch.arange(1 - ww, ww), indexing="ij")
    offsets = torch.stack([dy.flatten(), dx.flatten()], 1).float()
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])
    rel = coords[:, :, None] - coords[:, None, :]
    return offsets, (rel[0] + wh - 1) * (2 * ww - 1) + rel[1] + ww - 1


def _mlp_step(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, out))


class _PosBias(nn.Module):
    """A small MLP from each relative offset to a bias per head (the dynamic position bias)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.pos_proj = nn.Linear(2, width)
        self.pos1 = _mlp_step(width, width)
        self.pos2 = _mlp_step(width, width)
        self.pos3 = _mlp_step(width, heads)

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))


class _WindowBranch(nn.Module):
    """Attention over half the channels in wh x ww windows."""

    offsets: torch.Tensor  # buffers, recomputed rather than loaded
    index: torch.Tensor

    def __init__(self, dim: int, heads: int, wh: int, ww: int) -> None:
        super().__init__()
        self.heads, self.wh, self.ww = heads, wh, ww
        self.pos = _PosBias(dim // 4 // 4, heads)
        offsets, index = _bias_coordinates(wh, ww)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("index", index, persistent=False)

    def forward(self, qkv: torch.Tensor, h: int, w: int, mask: torch.Tensor | None) -> torch.Tensor:
        b, _, c = qkv[0].shape
        n, d = self.wh * self.ww, c // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            windows = _windows(image(t, h, w), self.wh, self.ww)
            return windows.reshape(-1, n, self.heads, d).transpose(1, 2)

        q, k, v = split(qkv[0]), split(qkv[1]), split(qkv[2])
        attn = (q * d**-0.5) @ k.transpose(-2, -1)
        bias = self.pos(self.offsets)[self.index.reshape(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1)[None]
        if mask is not None:
            attn = attn.view(b, mask.shape[0], self.heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.heads, n, n)
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
        return _unwindows(out, self.wh, self.ww, h, w)


def _interactions(dim: int) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """The conv branch, and the channel and spatial maps that gate one branch by the other."""
    conv = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.BatchNorm2d(dim), nn.GELU())
    channel = nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(dim, dim // 8, 1),
        nn.BatchNorm2d(dim // 8),
        nn.GELU(),
        nn.Conv2d(dim // 8, dim, 1),
    )
    spatial = nn.Sequential(
        nn.Conv2d(dim, dim // 16, 1),
        nn.BatchNorm2d(dim // 16),
        nn.GELU(),
        nn.Conv2d(dim // 16, 1, 1),
    )
    return conv, channel, spatial


class SpatialAttention(nn.Module):
    def __init__(self, config: DATConfig, layer: int, shifted: bool) -> None:
        super().__init__()
        dim, heads = config.embed_dim, config.num_heads[layer]
        self.split, self.shifted = config.split_size, shifted
        sh, sw = self.split
        self.qkv = nn.Linear(dim, dim * 3, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attns = nn.ModuleList(
            [
                _WindowBranch(dim // 2, heads // 2, sh, sw),
                _WindowBranch(dim // 2, heads // 2, sw, sh),
            ]
        )
        self.dwconv, self.channel_interaction, self.spatial_interaction = _interactions(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, -1, 3, c).permute(2, 0, 1, 3)
        v = image(qkv[2], h, w)
        side = max(self.split)
        ph, pw = -h % side, -w % side
        grid = F.pad(qkv.reshape(3 * b, h, w, c).permute(0, 3, 1, 2), (0, pw, 0, ph))
        hh, ww = h + ph, w + pw
        grid = grid.reshape(3, b, c, hh, ww).permute(0, 1, 3, 4, 2)  # 3, b, H, W, c
        (sh, sw), half = self.split, c // 2
        halves = []
        for i, (rows, cols) in enumerate(((sh, sw), (sw, sh))):
            part = grid[..., i * half : (i + 1) * half]
            mask = None
            if self.shifted:
                part = torch.roll(part, (-(rows // 2), -(cols // 2)), (2, 3))
                mask = rect_mask(hh, ww, rows, cols).to(x)
            out = self.attns[i](part.reshape(3, b, hh * ww, half), hh, ww, mask)
            if self.shifted:
                out = torch.roll(out, (rows // 2, cols // 2), (1, 2))
            halves.append(out[:, :h, :w, :].reshape(b, n, half))
        attended = torch.cat(halves, 2)
        conv = self.dwconv(v)
        channel_map = self.channel_interaction(conv).permute(0, 2, 3, 1).reshape(b, 1, c)
        spatial_map = self.spatial_interaction(image(attended, h, w))
        attended = attended * torch.sigmoid(channel_map)
        conv = tokens(torch.sigmoid(spatial_map) * conv)
        return self.proj(attended + conv)


class ChannelAttention(nn.Module):
    """Attention across channels (per head, over normalised features, with a learnt
    temperature), gated by a depthwise-conv branch and gating it back."""

    def __init__(self, config: DATConfig, layer: int) -> None:
        super().__init__()
        dim, self.heads = config.embed_dim, config.num_heads[layer]
        self.temperature = nn.Parameter(torch.ones(self.heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dwconv, self.channel_interaction, self.spatial_interaction = _interactions(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv[0], qkv[1], qkv[2]  # b, heads, c/heads, n
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attended = ((attn * self.temperature).softmax(-1) @ v).permute(0, 3, 1, 2).reshape(b, n, c)
        conv = self.dwconv(v.reshape(b, c, h, w))
        channel_map = self.channel_interaction(image(attended, h, w))
        spatial_map = self.spatial_interaction(conv).permute(0, 2, 3, 1).reshape(b, n, 1)
        attended = attended * torch.sigmoid(spatial_map)
        conv = tokens(conv * torch.sigmoid(channel_map))
        return self.proj(attended + conv)


class _SpatialGate(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)


class _GatedFFN(nn.Module):
    """SGFN: fc1, GELU, half the features gate the other half (norm + depthwise conv), fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.sg = _SpatialGate(hidden // 2)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x1, x2 = F.gelu(self.fc1(x)).chunk(2, dim=-1)
        x2 = tokens(self.sg.conv(image(self.sg.norm(x2), h, w)))
        return self.fc2(x1 * x2)


def shifted(layer: int, block: int) -> bool:
    """Which spatial blocks shift their windows (the reference's rule, by group and block)."""
    if layer % 2 == 0:
        return block > 0 and (block - 2) % 4 == 0
    return block % 4 == 0


class DATBlock(nn.Module):
    def __init__(self, config: DATConfig, layer: int, block: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn: nn.Module = (
            SpatialAttention(config, layer, shifted(layer, block))
            if block % 2 == 0
            else ChannelAttention(config, layer)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = _GatedFFN(dim, config.ffn_hidden)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.ffn(self.norm2(x), h, w)


class ResidualGroup(nn.Module):
    def __init__(self, config: DATConfig, layer: int) -> None:
        super().__init__()
        depth = config.depths[layer]
        self.blocks = nn.ModuleList(DATBlock(config, layer, j) for j in range(depth))
        self.conv = residual_conv(config.embed_dim, config.resi_connection)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        y = x
        for block in self.blocks:
            y = block(y, h, w)
        return tokens(self.conv(image(y, h, w))) + x


class DAT(nn.Module):
    mean: torch.Tensor  # a buffer
    half_safe = False  # gpu_worker.upscalers.run_dtype runs it in float32

    def __init__(self, config: DATConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = config.upscale
        dim, feat = config.embed_dim, config.num_feat
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, dim, 3, 1, 1)
        self.before_RG = nn.Sequential(nn.Identity(), nn.LayerNorm(dim))  # noqa: N815 - the key
        self.layers = nn.ModuleList(ResidualGroup(config, i) for i in range(len(config.depths)))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = residual_conv(dim, config.resi_connection)
        if config.upsampler == "pixelshuffledirect":
            self.upsample = pixelshuffle_direct(dim, config.upscale)
        else:
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, feat, 3, 1, 1), nn.LeakyReLU())
            self.upsample = pixelshuffle_upsample(config.upscale, feat)
            self.conv_last = nn.Conv2d(feat, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        x = self.conv_first(x - self.mean)
        y = self.before_RG(tokens(x))
        for layer in self.layers:
            y = layer(y, h, w)
        x = self.conv_after_body(image(self.norm(y), h, w)) + x
        if self.config.upsampler == "pixelshuffledirect":
            x = self.upsample(x)
        else:
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return x + self.mean
