"""What SwinIR and HAT share: shifted-window attention with a relative position bias, the MLP,
the blocks alternating unshifted / shifted, the trunk from tokens to features, the patch norm,
the pixel-shuffle upsampler, and padding an image to a multiple of the window. Module names
here are the published state dicts' (`patch_embed.norm`, `attn.qkv`, `mlp.fc1`...)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual name

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K's mean, subtracted by every published model
MASKED = -100.0  # the shift mask's value between windows that were not neighbours


def partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[b, h, w, c] -> [b x windows, window², c], windows in row order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def unpartition(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """partition's inverse: [b x windows, window², c] -> [b, h, w, c]."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_index(window: int, outer: int | None = None) -> torch.Tensor:
    """Index into a bias table for each (query, key) pair: a window's positions against
    themselves ([window², window²], table side 2 x window - 1) or, for HAT's overlapping
    attention, against the `outer` window centred on it ([window², outer²], table side
    window + outer - 1)."""
    outer = outer or window
    inner = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    wide = torch.stack(torch.meshgrid(torch.arange(outer), torch.arange(outer), indexing="ij"))
    rel = wide.flatten(1)[:, None, :] - inner.flatten(1)[:, :, None]  # 2, window², outer²
    if outer == window:
        rel = -rel  # query minus key, as Swin counts it
    rel = rel + (outer - 1 if outer == window else window - outer + 1)
    return rel[0] * (window + outer - 1) + rel[1]


def shift_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """[windows, window², window²]: 0 between positions that were neighbours before the cyclic
    shift, MASKED between ones the roll brought together."""
    region = torch.zeros(1, h, w, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[:, rows, cols, :] = label
            label += 1
    labels = partition(region, window).squeeze(-1)
    differs = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, MASKED)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, plus a learnt relative position bias."""

    def __init__(self, dim: int, heads: int, window: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[index.reshape(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1)[None]
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(b_ // windows, windows, self.heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.heads, n, n)
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj(x)


def shifted_attention(
    attn: WindowAttention,
    y: torch.Tensor,
    window: int,
    shift: int,
    index: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """[b, h, w, c] -> attention inside each window, the windows moved by `shift` (0: unshifted,
    no mask), same shape."""
    h, w = y.shape[1], y.shape[2]
    if shift:
        y = torch.roll(y, (-shift, -shift), (1, 2))
    y = attn(partition(y, window), index, mask if shift else None)
    y = unpartition(y, window, h, w)
    if shift:
        y = torch.roll(y, (shift, shift), (1, 2))
    return y


class ShiftedBlock(nn.Module):
    """Window attention (shifted by `shift`), plus whatever branch() adds, then an MLP; both
    residual. HAT's conv branch is registered as `conv_block` between `attn` and `norm2`, as
    in its published files."""

    def __init__(
        self,
        dim: int,
        heads: int,
        window: int,
        qkv_bias: bool,
        mlp_hidden: int,
        shift: int,
        conv_block: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window, qkv_bias)
        if conv_block is not None:
            self.conv_block = conv_block
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)

    def branch(self, y: torch.Tensor) -> torch.Tensor | None:
        """Tokens added to the attention's output, from the normed [b, h, w, c] input."""
        return None

    def forward(
        self, x: torch.Tensor, size: tuple[int, int], index: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        extra = self.branch(y)
        y = shifted_attention(self.attn, y, self.window, self.shift, index, mask)
        x = x + y.reshape(b, h * w, c)
        if extra is not None:
            x = x + extra
        return x + self.mlp(self.norm2(x))


def alternating_blocks(make: Callable[[int], nn.Module], depth: int, window: int) -> nn.ModuleList:
    """`depth` blocks made by make(shift): unshifted, then shifted by half a window, in turn."""
    half = window // 2
    return nn.ModuleList(make(half if j % 2 else 0) for j in range(depth))


class PatchNorm(nn.Module):
    """The published `patch_embed`: only a LayerNorm over the tokens carries weights."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)


def trunk(
    x: torch.Tensor,
    window: int,
    patch_embed: PatchNorm | None,
    layers: nn.ModuleList,
    norm: nn.Module,
    index: torch.Tensor | tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """[b, c, h, w] features through every residual group (each called with the size, the
    position index(es) and the shift mask for this input), then the final norm."""
    h, w = x.shape[2], x.shape[3]
    mask = shift_mask(h, w, window, window // 2).to(x)
    y = tokens(x)
    if patch_embed is not None:
        y = patch_embed.norm(y)
    for layer in layers:
        y = layer(y, (h, w), index, mask)
    return image(norm(y), h, w)


def before_upsample(dim: int, features: int) -> nn.Sequential:
    """The published `conv_before_upsample`: conv to the upsampler's channels, LeakyReLU."""
    return nn.Sequential(nn.Conv2d(dim, features, 3, 1, 1), nn.LeakyReLU())


def pixelshuffle_upsample(scale: int, features: int) -> nn.Sequential:
    """Conv to 4 x features + shuffle by 2, per factor 2 (or one conv to 9 x features for 3)."""
    layers: list[nn.Module] = []
    if scale == 3:
        layers += [nn.Conv2d(features, 9 * features, 3, 1, 1), nn.PixelShuffle(3)]
    else:
        for _ in range(scale.bit_length() - 1):
            layers += [nn.Conv2d(features, 4 * features, 3, 1, 1), nn.PixelShuffle(2)]
    return nn.Sequential(*layers)


def pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad right and bottom up to a multiple of the window: reflected, as the published test
    scripts do, or repeated where the image is too small to reflect."""
    h, w = x.shape[2], x.shape[3]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def tokens(x: torch.Tensor) -> torch.Tensor:
    """[b, c, h, w] -> [b, h x w, c]"""
    return x.flatten(2).transpose(1, 2)


def image(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """tokens' inverse."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
