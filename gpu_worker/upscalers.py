"""Model upscalers (A1111's `models/ESRGAN/`, `models/RealESRGAN/`): our own small loader.

Why not spandrel: it is the well-kept architecture-detecting loader A1111 and ComfyUI use, but it
requires torchvision, and PyPI's torchvision does not load beside the CPU torch build we run on
(see README, "Upscalers"). So this module knows the architectures people actually use, detected
from their published state-dict layouts:

- ESRGAN / RRDBNet, "new" layout (BasicSR, Real-ESRGAN x4plus and x2plus): `conv_first`,
  `body.N.rdbK.convJ`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`; the x2 and x1
  models pixel-unshuffle their input first (12 or 48 input channels);
- ESRGAN / RRDBNet, "old" layout (the original ESRGAN, most community "4x-..." models):
  `model.0`, `model.1.sub.N.RDBK.convJ.0`, `model.1.sub.<last>`, upsampling convs at
  `model.3`, `model.6`, ..., then the HR and last convs;
- Real-ESRGAN compact (SRVGGNetCompact, realesr-general-x4v3, animevideo): `body.0` conv,
  `body.1` PReLU, ... ending in a conv to 3 x scale² channels and a pixel shuffle, plus the
  nearest-upscaled input;
- SwinIR (classical, lightweight and real-world SR), HAT (HAT, HAT-L, HAT-S) and DAT (DAT, DAT-S,
  DAT-2, DAT-light): transformer
  networks in gpu_worker.upscaler_archs, their hyper-parameters read from the state dict's shapes
  by gpu_worker.upscaler_layouts (which the catalogue also reads the native scale with).

Anything else is refused with a message naming the file. Safetensors load without pickle; a
`.pth` only with --allow-pickle, and then through torch's weights-only loader. Upscaling runs in
tiles with an overlap, blended, so a large image fits a GPU budget.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual name

from gpu_worker import upscaler_layouts
from gpu_worker.extras_plan import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    MAX_MODEL_PASSES,
    tile_starts,
)
from gpu_worker.weights_files import load_weights_file

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_TILE"]  # A1111's ESRGAN tile size and overlap
TileCallback = Callable[[], None]  # called after each tile: progress, and a cancel check


class UpscalerLoadError(ValueError):
    """A file that is not an upscaler we know how to build."""


# --- architectures ---------------------------------------------------------------------------


def _conv(inputs: int, outputs: int) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, 3, 1, 1)


class _DenseBlock(nn.Module):
    """Five convolutions, each seeing the input and every earlier output; residual x 0.2."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.conv1 = _conv(features, growth)
        self.conv2 = _conv(features + growth, growth)
        self.conv3 = _conv(features + 2 * growth, growth)
        self.conv4 = _conv(features + 3 * growth, growth)
        self.conv5 = _conv(features + 4 * growth, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            seen.append(F.leaky_relu(conv(torch.cat(seen, 1)), 0.2))
        return self.conv5(torch.cat(seen, 1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = _DenseBlock(features, growth)
        self.rdb2 = _DenseBlock(features, growth)
        self.rdb3 = _DenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator: RRDB trunk, nearest x2 upsampling convs, HR and output convs."""

    def __init__(
        self, *, in_channels: int, features: int, growth: int, blocks: int, upsamples: int
    ) -> None:
        super().__init__()
        unshuffle = {3: 1, 12: 2, 48: 4}.get(in_channels)
        if unshuffle is None:
            raise UpscalerLoadError(f"an RRDB net with {in_channels} input channels")
        self.unshuffle = unshuffle
        self.scale = 2**upsamples // self.unshuffle
        self.conv_first = _conv(in_channels, features)
        self.body = nn.ModuleList(_RRDB(features, growth) for _ in range(blocks))
        self.conv_body = _conv(features, features)
        self.ups = nn.ModuleList(_conv(features, features) for _ in range(upsamples))
        self.conv_hr = _conv(features, features)
        self.conv_last = _conv(features, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        trunk = feat
        for block in self.body:
            trunk = block(trunk)
        feat = feat + self.conv_body(trunk)
        for up in self.ups:
            feat = F.leaky_relu(up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


class SRVGGCompact(nn.Module):
    """Real-ESRGAN's compact net: plain conv + PReLU stack, pixel shuffle, plus the input."""

    def __init__(self, *, features: int, convs: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [_conv(3, features), nn.PReLU(features)]
        for _ in range(convs):
            layers += [_conv(features, features), nn.PReLU(features)]
        layers.append(_conv(features, 3 * scale * scale))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return F.pixel_shuffle(out, self.scale) + F.interpolate(x, scale_factor=self.scale)


# --- detecting and loading -------------------------------------------------------------------

RE_OLD_BODY = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
RE_OLD_LAYER = re.compile(r"^model\.(\d+)\.(weight|bias)$")


def _old_to_new(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ESRGAN keys -> this module's: upsampling convs every 3 indices from model.3,
    then model.<3n+2> (HR) and model.<3n+4> (last)."""
    layers = sorted({int(m.group(1)) for k in state if (m := RE_OLD_LAYER.match(k))} - {0})
    upsamples = len(layers) - 2
    names = {0: "conv_first", layers[-2]: "conv_hr", layers[-1]: "conv_last"}
    names.update({3 + 3 * u: f"ups.{u}" for u in range(upsamples)})
    if sorted(names) != [0, *layers]:
        raise UpscalerLoadError(f"an ESRGAN layout with layers {layers}")
    body = [int(m.group(1)) for k in state if (m := RE_OLD_BODY.match(k))]
    trunk_end = max(body) + 1 if body else 0
    converted = {}
    for key, value in state.items():
        if m := RE_OLD_BODY.match(key):
            block, rdb, conv, kind = m.groups()
            converted[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif key.startswith(f"model.1.sub.{trunk_end}."):
            converted["conv_body." + key.rsplit(".", 1)[1]] = value
        elif (m := RE_OLD_LAYER.match(key)) and int(m.group(1)) in names:
            converted[f"{names[int(m.group(1))]}.{m.group(2)}"] = value
        else:
            raise UpscalerLoadError(f"an unexpected ESRGAN key {key!r}")
    return converted


def build_upscaler(state: dict[str, Any]) -> nn.Module:
    """The network a state dict describes, its weights loaded (strictly: every key matches)."""
    if "params_ema" in state or "params" in state:  # BasicSR's training checkpoints
        inner = state.get("params_ema", state.get("params"))
        state = inner if isinstance(inner, dict) else state
    if (transformer := _transformer(state)) is not None:
        return transformer
    if "model.0.weight" in state:
        state = _old_to_new(state)
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:  # not DAT & co
        if "conv_up1.weight" in state:  # the new layout's names for the upsampling convs
            state = {
                re.sub(r"^conv_up(\d)\.", lambda m: f"ups.{int(m.group(1)) - 1}.", k): v
                for k, v in state.items()
            }
        blocks = len({k.split(".")[1] for k in state if k.startswith("body.")})
        model: nn.Module = RRDBNet(
            in_channels=state["conv_first.weight"].shape[1],
            features=state["conv_first.weight"].shape[0],
            growth=state["body.0.rdb1.conv1.weight"].shape[0],
            blocks=blocks,
            upsamples=len({k.split(".")[1] for k in state if k.startswith("ups.")}),
        )
    elif "body.0.weight" in state and state.get("body.1.weight", torch.zeros(0, 0)).ndim == 1:
        indices = sorted(int(k.split(".")[1]) for k in state if k.startswith("body."))
        last = state[f"body.{indices[-1]}.weight"]
        scale = math.isqrt(last.shape[0] // 3)
        if 3 * scale * scale != last.shape[0]:
            raise UpscalerLoadError("a compact net whose output is not 3 x scale² channels")
        model = SRVGGCompact(
            features=state["body.0.weight"].shape[0], convs=(indices[-1] - 2) // 2, scale=scale
        )
    else:
        raise UpscalerLoadError(
            "not an ESRGAN (old or new layout), Real-ESRGAN compact, SwinIR, HAT or DAT state dict"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UpscalerLoadError(f"the weights do not fit the detected layout: {exc}") from exc
    return model.eval()


# Buffers a SwinIR / HAT file carries that the modules recompute (the masks for each input size).
TRANSFORMER_BUFFERS = ("relative_position_index", "attn_mask", "rpe_biases")


def _transformer(state: dict[str, Any]) -> nn.Module | None:
    """A SwinIR, HAT or DAT network when the state dict has one's layout; None for another."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    kind = upscaler_layouts.detect(shapes)
    if kind is None:
        return None
    from gpu_worker.upscaler_archs.dat import DAT
    from gpu_worker.upscaler_archs.hat import HAT
    from gpu_worker.upscaler_archs.swinir import SwinIR

    try:
        if kind == upscaler_layouts.SWINIR:
            model: nn.Module = SwinIR(upscaler_layouts.infer_swinir(shapes))
        elif kind == upscaler_layouts.HAT:
            model = HAT(upscaler_layouts.infer_hat(shapes))
        else:
            model = DAT(upscaler_layouts.infer_dat(shapes, _dat_first_offset(state)))
    except upscaler_layouts.LayoutError as exc:
        raise UpscalerLoadError(f"a {kind} state dict that cannot be built: {exc}") from exc
    weights = {
        k: v for k, v in state.items() if not k.rsplit(".", 1)[-1].startswith(TRANSFORMER_BUFFERS)
    }
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise UpscalerLoadError(f"the weights do not fit the detected {kind}: {exc}") from exc
    return model.eval()


def _dat_first_offset(state: dict[str, Any]) -> tuple[int, int]:
    """The first row of DAT's first bias coordinates (1 - height, 1 - width of its window)."""
    coordinates = state.get("layers.0.blocks.0.attn.attns.0.rpe_biases")
    if not isinstance(coordinates, torch.Tensor) or coordinates.ndim != 2 or coordinates.is_meta:
        raise upscaler_layouts.LayoutError("no rpe_biases values to read split_size from")
    first = coordinates[0].tolist()
    return int(first[0]), int(first[1])


def load_upscaler(path: Path, *, allow_pickle: bool = False) -> nn.Module:
    """An upscaler file; UpscalerLoadError naming it when it is not one we can run."""
    return load_weights_file(path, build_upscaler, UpscalerLoadError, allow_pickle=allow_pickle)


def run_dtype(model: nn.Module, dtype: torch.dtype) -> torch.dtype:
    """The dtype to run an upscaler in: the engine's, except float32 for the transformers
    (SwinIR, HAT), whose attention is not reliable in half precision (spandrel marks them so)."""
    return dtype if getattr(model, "half_safe", True) else torch.float32


def model_scale(model: nn.Module) -> int:
    return int(getattr(model, "scale", 1))


# --- tiled upscaling -------------------------------------------------------------------------


def _ramp(size: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """A tile's blending weight along one axis: rising over the overlap where a neighbour is."""
    weight = torch.ones(size)
    if overlap > 0:
        ramp = torch.linspace(0, 1, overlap + 2)[1:-1]
        if not first:
            weight[:overlap] = ramp
        if not last:
            weight[-overlap:] = ramp.flip(0)
    return weight


@dataclass(frozen=True)
class TileSettings:
    size: int = DEFAULT_TILE  # input pixels per tile side; 0: the whole image at once
    overlap: int = DEFAULT_OVERLAP


def upscale_tensor(
    model: nn.Module,
    image: torch.Tensor,
    tiles: TileSettings = TileSettings(),
    on_tile: TileCallback | None = None,
) -> torch.Tensor:
    """[1, 3, H, W] in 0..1 -> [1, 3, H*s, W*s], tile by tile, overlaps blended linearly."""
    scale = model_scale(model)
    _, _, height, width = image.shape
    size = tiles.size or max(height, width)
    overlap = min(tiles.overlap, size // 2)
    out = torch.zeros(1, 3, height * scale, width * scale, dtype=image.dtype)
    total = torch.zeros(1, 1, height * scale, width * scale, dtype=image.dtype)
    ys, xs = tile_starts(height, size, overlap), tile_starts(width, size, overlap)
    for y in ys:
        for x in xs:
            piece = image[:, :, y : y + size, x : x + size]
            with torch.no_grad():
                result = model(piece).to(out.dtype).cpu()
            h, w = result.shape[2], result.shape[3]
            wy = _ramp(h, overlap * scale, y == ys[0], y == ys[-1])
            wx = _ramp(w, overlap * scale, x == xs[0], x == xs[-1])
            weight = (wy[:, None] * wx[None, :])[None, None]
            oy, ox = y * scale, x * scale
            out[:, :, oy : oy + h, ox : ox + w] += result * weight
            total[:, :, oy : oy + h, ox : ox + w] += weight
            if on_tile is not None:
                on_tile()
    return out / total.clamp_min(1e-8)


def upscale_image(
    model: nn.Module,
    image: Image.Image,
    size: tuple[int, int],
    tiles: TileSettings = TileSettings(),
    on_tile: TileCallback | None = None,
) -> Image.Image:
    """The image upscaled by the model (repeatedly while it falls short, at most 3 times, as
    A1111 does: extras_plan.model_passes), then resized to exactly `size` (width, height)
    with Lanczos."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    current = image.convert("RGB")
    scale = model_scale(model)
    for _ in range(MAX_MODEL_PASSES):
        if current.width >= size[0] and current.height >= size[1]:
            break
        array = np.asarray(current, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)[None].to(device, dtype)
        result = upscale_tensor(model, tensor, tiles, on_tile)[0].clamp(0, 1)
        pixels = (result.permute(1, 2, 0).float().numpy() * 255.0).round().astype(np.uint8)
        current = Image.fromarray(pixels)
        if scale <= 1:
            break
    if current.size != size:
        current = current.resize(size, Image.Resampling.LANCZOS)
    return current


def random_state(kind: str, *, features: int = 8, blocks: int = 1, growth: int = 4) -> dict:
    """A tiny random-weight upscaler's state dict in a published layout ("esrgan-old",
    "esrgan-new", "esrgan-new-x2", "compact", "swinir" (x2), "hat" (x4), "dat" (x2)), for the
    demo model and the tests."""
    if kind in ("swinir", "hat", "dat"):
        from gpu_worker.upscaler_archs import tiny

        if kind == "swinir":
            return tiny.swinir_state()
        return tiny.hat_state() if kind == "hat" else tiny.dat_state()
    generator = torch.Generator().manual_seed(0)
    if kind == "compact":
        model: nn.Module = SRVGGCompact(features=features, convs=2, scale=4)
    else:
        model = RRDBNet(
            in_channels=12 if kind == "esrgan-new-x2" else 3,
            features=features,
            growth=growth,
            blocks=blocks,
            upsamples=2,
        )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    state = model.state_dict()
    if kind.startswith("esrgan-new"):  # BasicSR's names for the two upsampling convs
        return {
            re.sub(r"^ups\.(\d)\.", lambda m: f"conv_up{int(m.group(1)) + 1}.", k): v
            for k, v in state.items()
        }
    if kind == "esrgan-old":
        names = {"conv_first": "model.0", "ups.0": "model.3", "ups.1": "model.6"}
        names |= {
            "conv_hr": "model.8",
            "conv_last": "model.10",
            "conv_body": f"model.1.sub.{blocks}",
        }
        old = {}
        for key, value in state.items():
            if key.startswith("body."):
                _, block, rdb, conv, kind_ = key.split(".")
                old[f"model.1.sub.{block}.RDB{rdb[-1]}.{conv}.0.{kind_}"] = value
            else:
                prefix, kind_ = key.rsplit(".", 1)
                old[f"{names[prefix]}.{kind_}"] = value
        return old
    return state
