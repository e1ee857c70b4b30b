"""CodeFormer (sczhou/CodeFormer v0.1.0, S-Lab License 1.0: non-commercial, run only behind the
operator's opt-in, gpu_worker.face_licences), built from its published state-dict layout. Our own
code: we read the layout and the paper's method, not its code.

The network restores a 512 px aligned face in [-1, 1]:
- a VQGAN encoder (`encoder.blocks.N`: a 3x3 conv, per level two residual blocks and a stride-2
  downsample, self-attention at the lowest level, a middle res/attn/res, GroupNorm and a conv to
  the code width) turns the face into a 16x16 grid of features;
- a transformer (`feat_emb`, `position_emb`, `ft_layers.N`, pre-norm self-attention and a GELU
  MLP) reads that sequence and `idx_pred_layer` predicts, for every cell, a codebook entry;
- the entries of the codebook `quantize.embedding` (their colour statistics matched to the
  encoder's features: AdaIN, as A1111 runs it) go through the VQGAN decoder (`generator.blocks.N`,
  the encoder's mirror, nearest-neighbour upsampling);
- the controllable feature transformation (`fuse_convs_dict.<resolution>`) adds, at 32..256 px,
  `w * (decoder * scale + shift)` computed from the encoder's features of the same resolution:
  w = 0 is the codebook's face alone (A1111: maximum effect), w = 1 keeps most of the input.

Every size (channels per level, residual blocks, code width, codebook size, grid side, transformer
width/depth/MLP, fused resolutions) is read from the tensor shapes (`CodeFormerConfig.from_state`)
and the whole key set and every shape are then checked against the layout they imply, so a tiny
random-weight file (make-demo-model, the tests) builds and runs like the published one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual name

MARKER_KEYS = ("quantize.embedding.weight", "position_emb", "idx_pred_layer.1.weight")
HEADS = 8  # not recorded in the weights; the published model's


class CodeFormerLayoutError(ValueError):
    """A state dict that is not CodeFormer's layout (the message says where it departs)."""


@dataclass(frozen=True)
class CodeFormerConfig:
    channels: tuple[int, ...]  # per level, from the face's resolution down to the code grid's
    res_blocks: int  # residual blocks per level
    code_width: int  # width of a codebook entry (the encoder's output)
    codebook: int  # number of entries
    grid: int  # side of the code grid (16: 256 codes)
    width: int  # transformer width
    layers: int  # transformer layers
    mlp: int  # transformer MLP width
    fused: tuple[int, ...]  # resolutions with a fidelity transformation (32, 64, 128, 256)

    @property
    def size(self) -> int:
        """The side of the aligned face (512 for the published model)."""
        return self.grid * 2 ** (len(self.channels) - 1)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> CodeFormerConfig:
        for key in (*MARKER_KEYS, "encoder.blocks.0.weight", "ft_layers.0.linear1.weight"):
            if key not in state:
                raise CodeFormerLayoutError(f"no {key}: not CodeFormer's layout")
        codes, width = state["position_emb"].shape
        grid = math.isqrt(codes)
        if grid * grid != codes:
            raise CodeFormerLayoutError(f"position_emb has {codes} rows: not a square code grid")
        if width % HEADS:
            raise CodeFormerLayoutError(f"a transformer width of {width} is not {HEADS} heads")
        channels, res_blocks = _encoder_levels(state)
        codebook, code_width = state["quantize.embedding.weight"].shape
        fused = sorted(
            {int(m[1]) for k in state if (m := re.match(r"fuse_convs_dict\.(\d+)\.", k))}
        )
        return cls(
            channels=channels,
            res_blocks=res_blocks,
            code_width=code_width,
            codebook=codebook,
            grid=grid,
            width=width,
            layers=len({k.split(".")[1] for k in state if k.startswith("ft_layers.")}),
            mlp=state["ft_layers.0.linear1.weight"].shape[0],
            fused=tuple(fused),
        )


# The published v0.1.0 file (codeformer.pth, A1111's codeformer-v0.1.0.pth).
PUBLISHED = CodeFormerConfig(
    channels=(64, 128, 128, 256, 256, 512),
    res_blocks=2,
    code_width=256,
    codebook=1024,
    grid=16,
    width=512,
    layers=9,
    mlp=1024,
    fused=(32, 64, 128, 256),
)


def _encoder_levels(state: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], int]:
    """Channels per level and residual blocks per level, walking `encoder.blocks`: a level ends
    at each downsample (a block with only `conv`), the last one at the first attention."""
    indices = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.blocks.")})
    channels: list[int] = []
    res_in_first = 0
    last = 0
    for index in indices[1:]:
        prefix = f"encoder.blocks.{index}."
        if prefix + "conv1.weight" in state:  # a residual block
            last = state[prefix + "conv1.weight"].shape[0]
            res_in_first += not channels
        elif prefix + "conv.weight" in state:  # a downsample closes a level
            channels.append(last)
        elif prefix + "q.weight" in state:  # attention: the code grid's level
            channels.append(last)
            break
    if len(channels) < 2 or res_in_first < 1:
        raise CodeFormerLayoutError("encoder.blocks: not a VQGAN encoder's levels")
    return tuple(channels), res_in_first


def _norm(channels: int) -> nn.GroupNorm:
    # 32 groups as published; a tiny test model of fewer channels takes what divides them
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class _ResBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.norm1 = _norm(inputs)
        self.conv1 = nn.Conv2d(inputs, outputs, 3, padding=1)
        self.norm2 = _norm(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1)
        self.conv_out = nn.Conv2d(inputs, outputs, 1) if inputs != outputs else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.conv_out(x) if self.conv_out is not None else x)


class _Attention(nn.Module):
    """Single-head spatial self-attention with 1x1 projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (p(n).flatten(2).transpose(1, 2) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class _Down(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right/bottom: an even size halves


class _Up(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Coder(nn.Module):
    """The encoder's or the decoder's block list, noting at which block each resolution's
    features are taken (encoder: after a level's last residual block) or fused (decoder: after
    its first)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.marks: dict[int, int] = {}  # block index -> resolution

    def add(self, block: nn.Module, mark: int | None = None) -> None:
        if mark is not None:
            self.marks[len(self.blocks)] = mark
        self.blocks.append(block)


def _encoder(config: CodeFormerConfig) -> _Coder:
    coder = _Coder()
    coder.add(nn.Conv2d(3, config.channels[0], 3, padding=1))
    inputs, resolution, last = config.channels[0], config.size, len(config.channels) - 1
    for level, outputs in enumerate(config.channels):
        for index in range(config.res_blocks):
            final = index == config.res_blocks - 1
            coder.add(_ResBlock(inputs, outputs), resolution if final else None)
            inputs = outputs
            if level == last:
                coder.add(_Attention(outputs))
        if level != last:
            coder.add(_Down(outputs))
            resolution //= 2
    for block in (_ResBlock(inputs, inputs), _Attention(inputs), _ResBlock(inputs, inputs)):
        coder.add(block)
    coder.add(_norm(inputs))
    coder.add(nn.Conv2d(inputs, config.code_width, 3, padding=1))
    return coder


def _decoder(config: CodeFormerConfig) -> _Coder:
    coder = _Coder()
    inputs, resolution, last = config.channels[-1], config.grid, len(config.channels) - 1
    coder.add(nn.Conv2d(config.code_width, inputs, 3, padding=1))
    for block in (_ResBlock(inputs, inputs), _Attention(inputs), _ResBlock(inputs, inputs)):
        coder.add(block)
    for level in reversed(range(len(config.channels))):
        outputs = config.channels[level]
        for index in range(config.res_blocks):
            coder.add(_ResBlock(inputs, outputs), resolution if index == 0 else None)
            inputs = outputs
            if level == last:
                coder.add(_Attention(outputs))
        if level != 0:
            coder.add(_Up(outputs))
            resolution *= 2
    coder.add(_norm(inputs))
    coder.add(nn.Conv2d(inputs, 3, 3, padding=1))
    return coder


class _Quantizer(nn.Module):
    def __init__(self, entries: int, width: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(entries, width)


class _TransformerLayer(nn.Module):
    def __init__(self, width: int, mlp: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, HEADS)  # (sequence, batch, width)
        self.linear1 = nn.Linear(width, mlp)
        self.linear2 = nn.Linear(mlp, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        n = self.norm1(x)
        query = n + position  # the position goes into queries and keys, not values
        x = x + self.self_attn(query, query, n, need_weights=False)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class _Fuse(nn.Module):
    """The controllable feature transformation at one resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encode_enc = _ResBlock(2 * channels, channels)
        self.scale = _conv_pair(channels)
        self.shift = _conv_pair(channels)

    def forward(self, encoded: torch.Tensor, decoded: torch.Tensor, w: float) -> torch.Tensor:
        condition = self.encode_enc(torch.cat([encoded, decoded], dim=1))
        return decoded + w * (decoded * self.scale(condition) + self.shift(condition))


def _conv_pair(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(channels, channels, 3, padding=1),
    )


def _adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """`content` with the per-channel mean and deviation of `style` (unbiased variance)."""

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(2)
        return flat.mean(2)[..., None, None], (flat.var(2) + 1e-5).sqrt()[..., None, None]

    content_mean, content_std = stats(content)
    style_mean, style_std = stats(style)
    return (content - content_mean) / content_std * style_std + style_mean


class CodeFormer(nn.Module):
    def __init__(self, config: CodeFormerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _encoder(config)
        self.quantize = _Quantizer(config.codebook, config.code_width)
        self.generator = _decoder(config)
        self.position_emb = nn.Parameter(torch.zeros(config.grid**2, config.width))
        self.feat_emb = nn.Linear(config.code_width, config.width)
        self.ft_layers = nn.Sequential(
            *(_TransformerLayer(config.width, config.mlp) for _ in range(config.layers))
        )
        self.idx_pred_layer = nn.Sequential(
            nn.LayerNorm(config.width), nn.Linear(config.width, config.codebook, bias=False)
        )
        channel_at = {config.size >> level: ch for level, ch in enumerate(config.channels)}
        self.fuse_convs_dict = nn.ModuleDict(
            {str(r): _Fuse(channel_at[r]) for r in config.fused if r in channel_at}
        )

    def forward(self, x: torch.Tensor, w: float = 0.5) -> torch.Tensor:
        """The restored face; `w` in [0, 1] is the fidelity to the input (0: codebook only)."""
        encoded: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.encoder.blocks):
            x = block(x)
            if self.encoder.marks.get(index) in self.config.fused:
                encoded[self.encoder.marks[index]] = x
        features = x
        sequence = self.feat_emb(features.flatten(2).permute(2, 0, 1))  # (codes, batch, width)
        position = self.position_emb[:, None, :].to(sequence.dtype)
        for layer in self.ft_layers:
            sequence = layer(sequence, position)
        choice = self.idx_pred_layer(sequence).argmax(-1).transpose(0, 1)  # (batch, codes)
        b, side = features.shape[0], self.config.grid
        quantized = self.quantize.embedding(choice).view(b, side, side, -1).permute(0, 3, 1, 2)
        x = _adain(quantized.to(features.dtype), features)
        for index, block in enumerate(self.generator.blocks):
            x = block(x)
            resolution = self.generator.marks.get(index)
            if w > 0 and resolution in encoded:
                x = self.fuse_convs_dict[str(resolution)](encoded[resolution], x, w)
        return x


def build_codeformer(state: dict[str, torch.Tensor]) -> CodeFormer:
    """The model of `state`'s sizes, its weights loaded; CodeFormerLayoutError when a key is
    missing or extra, or a shape differs from what those sizes imply."""
    config = CodeFormerConfig.from_state(state)
    unknown = [r for r in config.fused if r not in {config.size >> i for i in range(1, 5)}]
    if unknown:
        raise CodeFormerLayoutError(f"fuse_convs_dict.{unknown[0]}: not a fused resolution")
    model = CodeFormer(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    for label, keys in (("missing", missing), ("unexpected", extra)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise CodeFormerLayoutError(f"{label} {keys[0]}{more}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            shapes = f"{tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            raise CodeFormerLayoutError(f"{key} has shape {shapes}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def random_state(
    *, channels: int = 8, width: int = 16, codebook: int = 32, layers: int = 2, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A tiny random-weight CodeFormer state dict in the published layout and key names (512 px
    faces, 16x16 codes, the same levels and fused resolutions), narrower and shallower
    (make-demo-model and the tests)."""
    config = CodeFormerConfig(
        channels=(channels,) * len(PUBLISHED.channels),
        res_blocks=PUBLISHED.res_blocks,
        code_width=channels,
        codebook=codebook,
        grid=PUBLISHED.grid,
        width=width,
        layers=layers,
        mlp=width * 2,
        fused=PUBLISHED.fused,
    )
    model = CodeFormer(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return {k: v.clone() for k, v in model.state_dict().items()}
