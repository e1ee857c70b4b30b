"""GFPGAN's "clean" generator (GFPGANv1Clean: GFPGANv1.3, v1.4), built from its published state-dict
layout, with no custom CUDA ops. Our own code (GFPGAN is Apache-2.0; we read its layout, not its
code): a U-Net encoder whose deepest features give the style codes and whose decoder levels give
per-level scale/shift maps, and a StyleGAN2 decoder whose features are modulated by them (SFT).

Key layout (prefixes of the released files, under `params_ema` in the .pth):
- `conv_body_first` (1x1, 3 -> C[out]), `conv_body_down.N.{conv1,conv2,skip}` (residual blocks,
  bilinear x0.5), `final_conv`, `final_linear` (C[4]*16 -> style codes, one per decoder layer
  with "different w"), `conv_body_up.N.{conv1,conv2,skip}` (bilinear x2), `toRGB.N`,
  `condition_scale.N.{0,2}` / `condition_shift.N.{0,2}` (conv, leaky ReLU, conv);
- `stylegan_decoder.`: `style_mlp.{1,3,..}` (unused: the codes are already latents),
  `constant_input.weight`, `style_conv1`, `to_rgb1`, `style_convs.N`, `to_rgbs.N`,
  `noises.noiseN` (fixed noise, used here so a face restores the same way every time). A style
  conv is `modulated_conv.{weight [1, out, in, k, k], modulation}` plus a noise `weight` and a
  `bias`.

Every size (output resolution, channels per level, style width, SFT on half the channels or all)
is read from the tensor shapes (`GfpganConfig.from_state`), so a tiny random-weight file in the
same layout (make-demo-model) builds and runs like the real 512 px one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual name

MARKER_KEYS = (
    "conv_body_first.weight",
    "condition_scale.0.0.weight",
    "stylegan_decoder.style_conv1.modulated_conv.weight",
)


def is_gfpgan_clean(keys: object) -> bool:
    return all(key in keys for key in MARKER_KEYS)  # type: ignore[operator]


@dataclass(frozen=True)
class GfpganConfig:
    log_size: int  # output side is 2**log_size (9: 512 px)
    unet: dict[int, int]  # encoder/decoder channels by resolution
    decoder: dict[int, int]  # StyleGAN2 channels by resolution
    style: int  # style feature width
    mlp: int  # style MLP layers (kept for a strict load; unused at inference)
    different_w: bool  # one style code per decoder layer
    sft_half: bool  # SFT modulates half of the channels

    @property
    def size(self) -> int:
        return 2**self.log_size

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> GfpganConfig:
        downs = {int(k.split(".")[1]) for k in state if k.startswith("conv_body_down.")}
        log_size = len(downs) + 2
        unet = {2**log_size: state["conv_body_first.weight"].shape[0]}
        for i in range(log_size - 2):  # down block i leaves resolution 2**(log_size - 1 - i)
            unet[2 ** (log_size - 1 - i)] = state[f"conv_body_down.{i}.conv2.weight"].shape[0]
        decoder = {4: state["stylegan_decoder.constant_input.weight"].shape[1]}
        for i in range(log_size - 2):
            decoder[2 ** (i + 3)] = state[
                f"stylegan_decoder.style_convs.{2 * i}.modulated_conv.weight"
            ].shape[1]
        style = state["stylegan_decoder.style_conv1.modulated_conv.modulation.weight"].shape[1]
        mlp = len({k for k in state if re.match(r"stylegan_decoder\.style_mlp\.\d+\.weight$", k)})
        codes = state["final_linear.weight"].shape[0] // style
        scale_out = state["condition_scale.0.2.weight"].shape[0]
        return cls(
            log_size=log_size,
            unet=unet,
            decoder=decoder,
            style=style,
            mlp=mlp,
            different_w=codes > 1,
            sft_half=scale_out == unet[8],
        )


class _ResBlock(nn.Module):
    """conv, leaky ReLU, bilinear resample, conv, leaky ReLU; plus a resampled 1x1 skip."""

    def __init__(self, inputs: int, outputs: int, factor: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, inputs, 3, 1, 1)
        self.conv2 = nn.Conv2d(inputs, outputs, 3, 1, 1)
        self.skip = nn.Conv2d(inputs, outputs, 1, bias=False)
        self.factor = factor

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._resample(F.leaky_relu(self.conv1(x), 0.2))
        out = F.leaky_relu(self.conv2(out), 0.2)
        return out + self.skip(self._resample(x))


class _ModulatedConv(nn.Module):
    """A convolution whose weights are scaled per input channel by the style (and, for the
    feature convs, renormalised per output channel: demodulation)."""

    def __init__(
        self, inputs: int, outputs: int, kernel: int, style: int, *, demodulate: bool, up: bool
    ) -> None:
        super().__init__()
        self.modulation = nn.Linear(style, inputs)
        self.weight = nn.Parameter(torch.zeros(1, outputs, inputs, kernel, kernel))
        self.demodulate, self.up = demodulate, up

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        weight = self.weight * self.modulation(style).view(batch, 1, channels, 1, 1)
        if self.demodulate:
            weight = (
                weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)[..., None, None, None]
            )
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        outputs, kernel = weight.shape[1], weight.shape[-1]
        grouped = weight.reshape(batch * outputs, channels, kernel, kernel)
        flat = x.reshape(1, batch * channels, *x.shape[2:])
        out = F.conv2d(flat, grouped, padding=kernel // 2, groups=batch)
        return out.view(batch, outputs, *out.shape[2:])


class _StyleConv(nn.Module):
    def __init__(self, inputs: int, outputs: int, style: int, *, up: bool) -> None:
        super().__init__()
        self.modulated_conv = _ModulatedConv(inputs, outputs, 3, style, demodulate=True, up=up)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, outputs, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.modulated_conv(x, style) * math.sqrt(2) + self.weight * noise
        return F.leaky_relu(out + self.bias, 0.2)


class _ToRGB(nn.Module):
    def __init__(self, inputs: int, style: int, *, up: bool) -> None:
        super().__init__()
        self.modulated_conv = _ModulatedConv(inputs, 3, 1, style, demodulate=False, up=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.up = up

    def forward(
        self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            if self.up:
                skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
            out = out + skip
        return out


class _ConstantInput(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 4, 4))


class _StyleDecoder(nn.Module):
    """StyleGAN2's synthesis network, its features modulated by the U-Net's SFT maps."""

    def __init__(self, config: GfpganConfig) -> None:
        super().__init__()
        c, style = config.decoder, config.style
        layers: list[nn.Module] = [nn.Identity()]  # index 0: the style norm (no weights)
        for _ in range(config.mlp):
            layers += [nn.Linear(style, style), nn.LeakyReLU(0.2)]
        self.style_mlp = nn.Sequential(*layers)
        self.constant_input = _ConstantInput(c[4])
        self.style_conv1 = _StyleConv(c[4], c[4], style, up=False)
        self.to_rgb1 = _ToRGB(c[4], style, up=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        inputs = c[4]
        for level in range(3, config.log_size + 1):
            outputs = c[2**level]
            self.style_convs.append(_StyleConv(inputs, outputs, style, up=True))
            self.style_convs.append(_StyleConv(outputs, outputs, style, up=False))
            self.to_rgbs.append(_ToRGB(outputs, style, up=True))
            inputs = outputs
        self.noises = nn.Module()
        for index in range((config.log_size - 2) * 2 + 1):
            side = 2 ** ((index + 5) // 2)
            self.noises.register_buffer(f"noise{index}", torch.zeros(1, 1, side, side))
        self.sft_half = config.sft_half

    def forward(self, latent: torch.Tensor, conditions: list[torch.Tensor]) -> torch.Tensor:
        noise = [getattr(self.noises, f"noise{i}") for i in range(len(self.style_convs) + 1)]
        out = self.constant_input.weight.repeat(latent.shape[0], 1, 1, 1)
        out = self.style_conv1(out, latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for level, to_rgb in enumerate(self.to_rgbs):
            out = self.style_convs[2 * level](out, latent[:, i], noise[i])
            if i < len(conditions):  # SFT: scale and shift by the U-Net's maps of this level
                scale, shift = conditions[i - 1], conditions[i]
                if self.sft_half:
                    same, modulated = torch.split(out, out.shape[1] // 2, dim=1)
                    out = torch.cat([same, modulated * scale + shift], dim=1)
                else:
                    out = out * scale + shift
            out = self.style_convs[2 * level + 1](out, latent[:, i + 1], noise[i + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip


def _sft_branch(channels: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(channels, outputs, 3, 1, 1),
    )


class GfpganClean(nn.Module):
    """Face in, face out: [B, 3, S, S] in -1..1 (RGB) at S = config.size."""

    def __init__(self, config: GfpganConfig) -> None:
        super().__init__()
        self.config = config
        u, log_size = config.unet, config.log_size
        self.conv_body_first = nn.Conv2d(3, u[2**log_size], 1)
        self.conv_body_down = nn.ModuleList(
            _ResBlock(u[2**level], u[2 ** (level - 1)], 0.5) for level in range(log_size, 2, -1)
        )
        self.final_conv = nn.Conv2d(u[4], u[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList(
            _ResBlock(u[2 ** (level - 1)], u[2**level], 2.0) for level in range(3, log_size + 1)
        )
        self.toRGB = nn.ModuleList(nn.Conv2d(u[2**level], 3, 1) for level in range(3, log_size + 1))
        codes = (log_size * 2 - 2) if config.different_w else 1
        self.final_linear = nn.Linear(u[4] * 16, codes * config.style)
        self.stylegan_decoder = _StyleDecoder(config)
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        for level in range(3, log_size + 1):
            channels = u[2**level]
            outputs = channels if config.sft_half else channels * 2
            self.condition_scale.append(_sft_branch(channels, outputs))
            self.condition_shift.append(_sft_branch(channels, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        config = self.config
        feat = F.leaky_relu(self.conv_body_first(x), 0.2)
        skips: list[torch.Tensor] = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.insert(0, feat)
        feat = F.leaky_relu(self.final_conv(feat), 0.2)
        codes = self.final_linear(feat.flatten(1)).view(feat.shape[0], -1, config.style)
        if codes.shape[1] == 1:  # one code for every layer
            codes = codes.repeat(1, config.log_size * 2 - 2, 1)
        conditions: list[torch.Tensor] = []
        for index, block in enumerate(self.conv_body_up):
            feat = block(feat + skips[index])
            conditions += [self.condition_scale[index](feat), self.condition_shift[index](feat)]
        return self.stylegan_decoder(codes, conditions)


def random_state(*, log_size: int = 5, channels: int = 8, style: int = 16) -> dict:
    """A tiny random-weight GFPGANv1Clean state dict in the published layout (make-demo-model and
    the tests): 2**log_size px faces, `channels` features at every level, SFT on half."""
    unet = {2**level: channels for level in range(2, log_size + 1)}
    decoder = {2**level: channels * 2 for level in range(2, log_size + 1)}
    config = GfpganConfig(log_size, unet, decoder, style, 2, different_w=True, sft_half=True)
    model = GfpganClean(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return model.state_dict()
