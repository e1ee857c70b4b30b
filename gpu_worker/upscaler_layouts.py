"""SwinIR, HAT and DAT upscalers: their hyper-parameters read from a state dict's key names and
shapes.

Torch-free (a name -> shape table), so the catalogue scan reads a file's native scale from its
safetensors header with the same rules the worker builds the network by
(gpu_worker.upscaler_archs). Written from the published layouts (JingyunLiang/SwinIR's
network_swinir.py, XPixelGroup/HAT's hat_arch.py) and their released weights:

- SwinIR: `conv_first`, `patch_embed.norm`, `layers.<i>.residual_group.blocks.<j>.{norm1, attn.
  {relative_position_bias_table, relative_position_index, qkv, proj}, norm2, mlp.{fc1, fc2}}`,
  the odd blocks' `attn_mask` buffer, `layers.<i>.conv` ("1conv") or `.conv.{0,2,4}` ("3conv"),
  `norm`, `conv_after_body`, then the upsampler: "pixelshuffle" (`conv_before_upsample.0`,
  `upsample.<2k>`, `conv_last`), "pixelshuffledirect" (`upsample.0` only, the lightweight
  models) or "nearest+conv" (`conv_up1`, `conv_up2` at x4, `conv_hr`, `conv_last`, real-world).
- HAT (HAT, HAT-L, HAT-S, Real_HAT_GAN): SwinIR's trunk where each block also has a channel
  attention conv branch (`conv_block.cab.{0, 2, 3.attention.1, 3.attention.3}`) and each group
  ends in an overlapping cross-attention block (`residual_group.overlap_attn`); the relative
  position indices are top-level buffers (`relative_position_index_SA`, `..._OCA`).
- DAT (DAT, DAT-S, DAT-2, DAT-light): `conv_first`, `before_RG.1` (a norm), `layers.<i>.blocks.<j>`
  alternating spatial attention (`attn.attns.{0,1}` with a dynamic position bias `pos.*` and the
  `rpe_biases` / `relative_position_index` buffers, `attn_mask_{0,1}` where shifted) and channel
  attention (`attn.temperature`), each with `dwconv`, `channel_interaction`,
  `spatial_interaction`, and a gated FFN (`ffn.fc1`, `ffn.sg`, `ffn.fc2`); then SwinIR's
  `conv_after_body` and upsamplers.

Every hyper-parameter that changes the computation comes from a shape; a file that lacks one is
refused (LayoutError says what is missing). What no state dict stores and every published model
shares is fixed in the architecture: the RGB mean (0.4488, 0.4371, 0.4040), img_range 1 and HAT's
conv_scale 0.01. HAT and DAT compute their shift masks for each input, so their img_size never
enters the computation and is not needed; SwinIR's is read from the `attn_mask` buffer (nW
windows of window_size²).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Shapes = Mapping[str, Sequence[int]]

SWINIR = "SwinIR"
HAT = "HAT"
DAT = "DAT"
RE_LAYER = re.compile(r"^layers\.(\d+)\.")
RE_UPSAMPLE = re.compile(r"^upsample\.(\d+)\.weight$")


class LayoutError(ValueError):
    """A state dict that looks like SwinIR or HAT but lacks (or contradicts) a needed shape."""


@dataclass(frozen=True)
class SwinIRConfig:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    img_size: int
    mlp_hidden: int  # mlp_ratio x embed_dim
    upscale: int
    upsampler: str  # "pixelshuffle", "pixelshuffledirect" or "nearest+conv"
    resi_connection: str  # "1conv" or "3conv"
    num_feat: int  # channels before the upsampler (0 for pixelshuffledirect)
    qkv_bias: bool = True
    patch_norm: bool = True

    @property
    def mlp_ratio(self) -> float:
        return self.mlp_hidden / self.embed_dim


@dataclass(frozen=True)
class HATConfig:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    overlap_window: int  # int(window_size x overlap_ratio) + window_size
    cab_channels: int  # embed_dim / compress_ratio
    squeeze_channels: int  # embed_dim / squeeze_factor
    mlp_hidden: int
    upscale: int
    num_feat: int
    resi_connection: str  # "1conv" or "identity"
    qkv_bias: bool = True
    patch_norm: bool = True

    @property
    def mlp_ratio(self) -> float:
        return self.mlp_hidden / self.embed_dim

    @property
    def overlap_ratio(self) -> float:
        return (self.overlap_window - self.window_size) / self.window_size

    @property
    def compress_ratio(self) -> float:
        return self.embed_dim / self.cab_channels

    @property
    def squeeze_factor(self) -> float:
        return self.embed_dim / self.squeeze_channels


@dataclass(frozen=True)
class DATConfig:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    split_size: tuple[int, int]  # the spatial windows' height and width (the other branch's w, h)
    ffn_hidden: int  # expansion_factor x embed_dim
    upscale: int
    upsampler: str  # "pixelshuffle" or "pixelshuffledirect"
    resi_connection: str  # "1conv" or "3conv"
    num_feat: int
    qkv_bias: bool = True

    @property
    def expansion_factor(self) -> float:
        return self.ffn_hidden / self.embed_dim


def detect(shapes: Shapes) -> str | None:
    """SWINIR, HAT, DAT, or None for another layout (ESRGAN and the rest)."""
    if "before_RG.1.weight" in shapes:
        return DAT
    if "relative_position_index_SA" in shapes or any(
        k.startswith("layers.0.residual_group.overlap_attn.") for k in shapes
    ):
        return HAT
    if "layers.0.residual_group.blocks.0.attn.relative_position_bias_table" in shapes:
        return SWINIR
    return None


def native_scale(shapes: Shapes) -> int | None:
    """The factor of a SwinIR or HAT layout; None for another layout or a refused one."""
    try:
        kind = detect(shapes)
        if kind == SWINIR:
            return infer_swinir(shapes).upscale
        if kind == HAT:
            return infer_hat(shapes).upscale
        if kind == DAT:
            return infer_dat(shapes).upscale
    except LayoutError:
        return None
    return None


# --- shared reading --------------------------------------------------------------------------


def _shape(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise LayoutError(f"no {key!r} to read {what} from")
    return tuple(int(n) for n in shapes[key])


def _trunk(
    shapes: Shapes, arch: str, blocks_at: str = "residual_group.blocks"
) -> tuple[int, tuple[int, ...]]:
    """embed_dim (conv_first's outputs) and the blocks in each layer (0..n-1, none missing)."""
    first = _shape(shapes, "conv_first.weight", "the input channels and embed_dim")
    if len(first) != 4 or first[1] != 3:
        raise LayoutError(f"a {arch} whose first conv takes {first[1:2]} channels, not RGB's 3")
    if "absolute_pos_embed" in shapes:
        raise LayoutError(f"a {arch} with an absolute position embedding (one fixed input size)")
    layers = sorted({int(m.group(1)) for k in shapes if (m := RE_LAYER.match(k))})
    blocks: dict[int, set[int]] = {i: set() for i in layers}
    pattern = re.compile(rf"^layers\.(\d+)\.{re.escape(blocks_at)}\.(\d+)\.")
    for key in shapes:
        if m := pattern.match(key):
            blocks[int(m.group(1))].add(int(m.group(2)))
    if not layers or layers != list(range(len(layers))):
        raise LayoutError(f"a {arch} whose layers are numbered {layers}")
    depths = []
    for i in layers:
        if not blocks[i] or sorted(blocks[i]) != list(range(len(blocks[i]))):
            raise LayoutError(f"a {arch} whose layer {i} has blocks {sorted(blocks[i])}")
        depths.append(len(blocks[i]))
    return first[0], tuple(depths)


def _window_from_table(rows: int, what: str) -> int:
    """A window attention's size from its bias table: (2 x window - 1)² rows."""
    side = math.isqrt(rows)
    if side * side != rows or side % 2 == 0:
        raise LayoutError(f"a relative position bias table of {rows} rows ({what})")
    return (side + 1) // 2


def _heads(shapes: Shapes, depths: tuple[int, ...], window: int) -> tuple[int, ...]:
    """Heads per layer, from the bias tables; every block of a layer must agree."""
    heads = []
    for i, depth in enumerate(depths):
        found = set()
        for j in range(depth):
            key = f"layers.{i}.residual_group.blocks.{j}.attn.relative_position_bias_table"
            table = _shape(shapes, key, "num_heads")
            if table[0] != (2 * window - 1) ** 2:
                raise LayoutError(f"{key} does not fit window_size {window}")
            found.add(table[1])
        if len(found) != 1:
            raise LayoutError(f"layer {i}'s blocks disagree on num_heads ({sorted(found)})")
        heads.append(found.pop())
    return tuple(heads)


def _mlp_hidden(shapes: Shapes, embed_dim: int) -> int:
    fc1 = _shape(shapes, "layers.0.residual_group.blocks.0.mlp.fc1.weight", "mlp_ratio")
    if fc1[1:] != (embed_dim,):
        raise LayoutError(f"an MLP taking {fc1[1:]} features, not embed_dim {embed_dim}")
    return fc1[0]


def _pixelshuffle(shapes: Shapes, num_feat: int) -> int:
    """The scale of an `upsample` of convs + pixel shuffles (2 per conv to 4 x num_feat, 3 for
    one conv to 9 x num_feat), as both SwinIR and HAT build it."""
    convs = sorted(int(m.group(1)) for k in shapes if (m := RE_UPSAMPLE.match(k)))
    if not convs or convs != list(range(0, 2 * len(convs), 2)):
        raise LayoutError(f"upsampling convs at {convs}")
    scale = 1
    for index in convs:
        out = _shape(shapes, f"upsample.{index}.weight", "the scale")[0]
        if out == 4 * num_feat:
            scale *= 2
        elif out == 9 * num_feat and len(convs) == 1:
            scale = 3
        else:
            raise LayoutError(f"upsample.{index} makes {out} channels from {num_feat}")
    return scale


def _resi(shapes: Shapes, third: str) -> str:
    """resi_connection: "1conv", else `third` ("3conv" for SwinIR and DAT, "identity" for HAT,
    which has no conv there)."""
    if "conv_after_body.weight" in shapes:
        return "1conv"
    if "conv_after_body.0.weight" in shapes and third == "3conv":
        return "3conv"
    if any(k.startswith("conv_after_body.") for k in shapes):
        raise LayoutError(f"a conv_after_body that is neither one conv nor {third}")
    if third == "identity":
        return third
    raise LayoutError("no conv_after_body to read resi_connection from")


def _upsampler(shapes: Shapes) -> tuple[str, int, int]:
    """SwinIR's and DAT's classical and lightweight upsamplers: (upsampler, scale, num_feat)."""
    if "conv_before_upsample.0.weight" in shapes:
        num_feat = _shape(shapes, "conv_before_upsample.0.weight", "num_feat")[0]
        _rgb_out(shapes, "conv_last.weight")
        return "pixelshuffle", _pixelshuffle(shapes, num_feat), num_feat
    out = _shape(shapes, "upsample.0.weight", "the upsampler")[0]
    scale = math.isqrt(out // 3)
    if out % 3 or scale * scale * 3 != out or scale < 2:
        raise LayoutError(f"upsample.0 makes {out} channels, not 3 x scale²")
    return "pixelshuffledirect", scale, 0


def _rgb_out(shapes: Shapes, key: str) -> None:
    if _shape(shapes, key, "the output channels")[0] != 3:
        raise LayoutError(f"{key} does not make RGB's 3 channels")


# --- SwinIR ----------------------------------------------------------------------------------


def infer_swinir(shapes: Shapes) -> SwinIRConfig:
    embed_dim, depths = _trunk(shapes, SWINIR)
    table = _shape(
        shapes, "layers.0.residual_group.blocks.0.attn.relative_position_bias_table", "windows"
    )
    window = _window_from_table(table[0], "SwinIR's window_size")
    heads = _heads(shapes, depths, window)
    masks = [k for k in shapes if k.endswith(".attn_mask")]
    if not masks:
        raise LayoutError("no attn_mask buffer to read img_size from (its windows)")
    windows = _shape(shapes, masks[0], "img_size")[0]
    side = math.isqrt(windows)
    if side * side != windows or side < 2:
        raise LayoutError(f"{masks[0]} has {windows} windows, not a square over img_size")
    resi = _resi(shapes, "3conv")
    num_feat = 0
    if "conv_before_upsample.0.weight" in shapes:
        num_feat = _shape(shapes, "conv_before_upsample.0.weight", "num_feat")[0]
        _rgb_out(shapes, "conv_last.weight")
        if "conv_up1.weight" in shapes:
            upsampler, upscale = "nearest+conv", 4 if "conv_up2.weight" in shapes else 2
        else:
            upsampler, upscale = "pixelshuffle", _pixelshuffle(shapes, num_feat)
    elif "upsample.0.weight" in shapes:
        out = _shape(shapes, "upsample.0.weight", "the scale")[0]
        upscale = math.isqrt(out // 3)
        if out % 3 or upscale * upscale * 3 != out or upscale < 2:
            raise LayoutError(f"upsample.0 makes {out} channels, not 3 x scale²")
        upsampler = "pixelshuffledirect"
    else:
        raise LayoutError("a SwinIR with no upsampler (denoising or JPEG), not an upscaler")
    return SwinIRConfig(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=heads,
        window_size=window,
        img_size=side * window,
        mlp_hidden=_mlp_hidden(shapes, embed_dim),
        upscale=upscale,
        upsampler=upsampler,
        resi_connection=resi,
        num_feat=num_feat,
        qkv_bias="layers.0.residual_group.blocks.0.attn.qkv.bias" in shapes,
        patch_norm="patch_embed.norm.weight" in shapes,
    )


# --- HAT -------------------------------------------------------------------------------------


def infer_hat(shapes: Shapes) -> HATConfig:
    embed_dim, depths = _trunk(shapes, HAT)
    table = _shape(
        shapes, "layers.0.residual_group.blocks.0.attn.relative_position_bias_table", "windows"
    )
    window = _window_from_table(table[0], "HAT's window_size")
    heads = _heads(shapes, depths, window)
    oca = _shape(
        shapes, "layers.0.residual_group.overlap_attn.relative_position_bias_table", "overlap"
    )
    side = math.isqrt(oca[0])
    overlap_window = side - window + 1
    if side * side != oca[0] or overlap_window <= window:
        raise LayoutError(f"an overlapping attention table of {oca[0]} rows")
    for i, count in enumerate(heads):
        key = f"layers.{i}.residual_group.overlap_attn.relative_position_bias_table"
        if _shape(shapes, key, "num_heads") != (oca[0], count):
            raise LayoutError(f"{key} disagrees with the blocks' num_heads {count}")
    cab = "layers.0.residual_group.blocks.0.conv_block.cab"
    resi = _resi(shapes, "identity")
    if "conv_before_upsample.0.weight" not in shapes:
        raise LayoutError("no conv_before_upsample: HAT's only upsampler is pixelshuffle")
    num_feat = _shape(shapes, "conv_before_upsample.0.weight", "num_feat")[0]
    _rgb_out(shapes, "conv_last.weight")
    return HATConfig(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=heads,
        window_size=window,
        overlap_window=overlap_window,
        cab_channels=_shape(shapes, f"{cab}.0.weight", "compress_ratio")[0],
        squeeze_channels=_shape(shapes, f"{cab}.3.attention.1.weight", "squeeze_factor")[0],
        mlp_hidden=_mlp_hidden(shapes, embed_dim),
        upscale=_pixelshuffle(shapes, num_feat),
        num_feat=num_feat,
        resi_connection=resi,
        qkv_bias="layers.0.residual_group.blocks.0.attn.qkv.bias" in shapes,
        patch_norm="patch_embed.norm.weight" in shapes,
    )


# --- DAT -------------------------------------------------------------------------------------


def infer_dat(shapes: Shapes, first_offset: tuple[int, int] | None = None) -> DATConfig:
    """DAT's layout. The window's two sides come from the first spatial branch's bias
    coordinates (rows (2h - 1)(2w - 1)) and index (h x w square); which side is the height only
    the coordinates' values say (`first_offset`, their first row: 1 - h, 1 - w). Without it
    (a header) the sides are reported shorter first, which is all the scale needs."""
    embed_dim, depths = _trunk(shapes, DAT, "blocks")
    branch = "layers.0.blocks.0.attn.attns.0"
    rows = _shape(shapes, f"{branch}.rpe_biases", "split_size")[0]
    area = _shape(shapes, f"{branch}.relative_position_index", "split_size")[0]
    total = (4 * area + 1 - rows) // 2  # h + w, from (2h - 1)(2w - 1) = 4hw - 2(h + w) + 1
    root = math.isqrt(max(0, total * total - 4 * area))
    short, long = (total - root) // 2, (total + root) // 2
    if short < 1 or short * long != area or (2 * short - 1) * (2 * long - 1) != rows:
        raise LayoutError(f"{branch}'s bias coordinates do not describe a window")
    split = (short, long)
    if first_offset is not None:
        split = (1 - first_offset[0], 1 - first_offset[1])
        if sorted(split) != [short, long]:
            raise LayoutError(f"{branch}'s bias coordinates start at {first_offset}")
    heads = []
    for i, depth in enumerate(depths):
        if depth > 1:
            count = _shape(shapes, f"layers.{i}.blocks.1.attn.temperature", "num_heads")[0]
        else:
            pos = f"layers.{i}.blocks.0.attn.attns.0.pos.pos3.2.weight"
            count = 2 * _shape(shapes, pos, "num_heads")[0]
        heads.append(count)
    upsampler, upscale, num_feat = _upsampler(shapes)
    fc1 = _shape(shapes, "layers.0.blocks.0.ffn.fc1.weight", "expansion_factor")
    return DATConfig(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=tuple(heads),
        split_size=split,
        ffn_hidden=fc1[0],
        upscale=upscale,
        upsampler=upsampler,
        resi_connection=_resi(shapes, "3conv"),
        num_feat=num_feat,
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in shapes,
    )
