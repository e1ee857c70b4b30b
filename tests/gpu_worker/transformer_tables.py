"""Key -> shape tables of SwinIR and HAT files as the released weights have them (written out
from the published layouts: JingyunLiang/SwinIR, XPixelGroup/HAT), independent of our modules."""

from __future__ import annotations

Table = dict[str, tuple[int, ...]]


def _conv(table: Table, name: str, cin: int, cout: int, k: int = 3) -> None:
    table[f"{name}.weight"] = (cout, cin, k, k)
    table[f"{name}.bias"] = (cout,)


def _linear(table: Table, name: str, cin: int, cout: int) -> None:
    table[f"{name}.weight"] = (cout, cin)
    table[f"{name}.bias"] = (cout,)


def _norm(table: Table, name: str, dim: int) -> None:
    table[f"{name}.weight"] = (dim,)
    table[f"{name}.bias"] = (dim,)


def _attention(table: Table, name: str, dim: int, heads: int, rows: int) -> None:
    table[f"{name}.relative_position_bias_table"] = (rows, heads)
    _linear(table, f"{name}.qkv", dim, 3 * dim)
    _linear(table, f"{name}.proj", dim, dim)


def _mlp(table: Table, name: str, dim: int, hidden: int) -> None:
    _linear(table, f"{name}.fc1", dim, hidden)
    _linear(table, f"{name}.fc2", hidden, dim)


def _resi(table: Table, name: str, dim: int, kind: str) -> None:
    if kind == "1conv":
        _conv(table, name, dim, dim)
    elif kind == "3conv":
        _conv(table, f"{name}.0", dim, dim // 4)
        _conv(table, f"{name}.2", dim // 4, dim // 4, 1)
        _conv(table, f"{name}.4", dim // 4, dim)


def _pixelshuffle(table: Table, nf: int, scale: int) -> None:
    if scale == 3:
        _conv(table, "upsample.0", nf, 9 * nf)
    else:
        for i in range(scale.bit_length() - 1):
            _conv(table, f"upsample.{2 * i}", nf, 4 * nf)


def swinir_table(
    *,
    embed: int,
    depths: list[int],
    heads: list[int],
    window: int,
    img: int,
    mlp_ratio: float,
    upsampler: str,
    scale: int,
    resi: str,
    nf: int = 64,
) -> Table:
    t: Table = {}
    _conv(t, "conv_first", 3, embed)
    _norm(t, "patch_embed.norm", embed)
    n = window * window
    for i, depth in enumerate(depths):
        for j in range(depth):
            block = f"layers.{i}.residual_group.blocks.{j}"
            _norm(t, f"{block}.norm1", embed)
            _attention(t, f"{block}.attn", embed, heads[i], (2 * window - 1) ** 2)
            t[f"{block}.attn.relative_position_index"] = (n, n)
            _norm(t, f"{block}.norm2", embed)
            _mlp(t, f"{block}.mlp", embed, int(embed * mlp_ratio))
            if j % 2:
                t[f"{block}.attn_mask"] = ((img // window) ** 2, n, n)
        _resi(t, f"layers.{i}.conv", embed, resi)
    _norm(t, "norm", embed)
    _resi(t, "conv_after_body", embed, resi)
    if upsampler == "pixelshuffledirect":
        _conv(t, "upsample.0", embed, 3 * scale * scale)
        return t
    _conv(t, "conv_before_upsample.0", embed, nf)
    if upsampler == "pixelshuffle":
        _pixelshuffle(t, nf, scale)
    else:
        _conv(t, "conv_up1", nf, nf)
        if scale == 4:
            _conv(t, "conv_up2", nf, nf)
        _conv(t, "conv_hr", nf, nf)
    _conv(t, "conv_last", nf, 3)
    return t


def hat_table(
    *,
    embed: int,
    depths: list[int],
    heads: list[int],
    window: int,
    overlap_ratio: float,
    compress_ratio: int,
    squeeze_factor: int,
    mlp_ratio: float,
    scale: int,
    nf: int = 64,
) -> Table:
    t: Table = {}
    outer = int(window * overlap_ratio) + window
    t["relative_position_index_SA"] = (window * window, window * window)
    t["relative_position_index_OCA"] = (window * window, outer * outer)
    _conv(t, "conv_first", 3, embed)
    _norm(t, "patch_embed.norm", embed)
    hidden = int(embed * mlp_ratio)
    for i, depth in enumerate(depths):
        group = f"layers.{i}.residual_group"
        for j in range(depth):
            block = f"{group}.blocks.{j}"
            _norm(t, f"{block}.norm1", embed)
            _attention(t, f"{block}.attn", embed, heads[i], (2 * window - 1) ** 2)
            _conv(t, f"{block}.conv_block.cab.0", embed, embed // compress_ratio)
            _conv(t, f"{block}.conv_block.cab.2", embed // compress_ratio, embed)
            squeezed = embed // squeeze_factor
            _conv(t, f"{block}.conv_block.cab.3.attention.1", embed, squeezed, 1)
            _conv(t, f"{block}.conv_block.cab.3.attention.3", squeezed, embed, 1)
            _norm(t, f"{block}.norm2", embed)
            _mlp(t, f"{block}.mlp", embed, hidden)
        oca = f"{group}.overlap_attn"
        _norm(t, f"{oca}.norm1", embed)
        _attention(t, oca, embed, heads[i], (window + outer - 1) ** 2)
        _norm(t, f"{oca}.norm2", embed)
        _mlp(t, f"{oca}.mlp", embed, hidden)
        _conv(t, f"layers.{i}.conv", embed, embed)
    _norm(t, "norm", embed)
    _conv(t, "conv_after_body", embed, embed)
    _conv(t, "conv_before_upsample.0", embed, nf)
    _pixelshuffle(t, nf, scale)
    _conv(t, "conv_last", nf, 3)
    return t


def _batch_norm(table: Table, name: str, dim: int) -> None:
    _norm(table, name, dim)
    table[f"{name}.running_mean"] = (dim,)
    table[f"{name}.running_var"] = (dim,)
    table[f"{name}.num_batches_tracked"] = ()


def _dat_interactions(t: Table, attn: str, dim: int) -> None:
    t[f"{attn}.dwconv.0.weight"], t[f"{attn}.dwconv.0.bias"] = (dim, 1, 3, 3), (dim,)
    _batch_norm(t, f"{attn}.dwconv.1", dim)
    _conv(t, f"{attn}.channel_interaction.1", dim, dim // 8, 1)
    _batch_norm(t, f"{attn}.channel_interaction.2", dim // 8)
    _conv(t, f"{attn}.channel_interaction.4", dim // 8, dim, 1)
    _conv(t, f"{attn}.spatial_interaction.0", dim, dim // 16, 1)
    _batch_norm(t, f"{attn}.spatial_interaction.1", dim // 16)
    _conv(t, f"{attn}.spatial_interaction.3", dim // 16, 1, 1)


def dat_table(
    *,
    embed: int,
    depths: list[int],
    heads: list[int],
    split: tuple[int, int],
    img: int,
    expansion: float,
    scale: int,
    resi: str = "1conv",
    upsampler: str = "pixelshuffle",
    nf: int = 64,
) -> Table:
    t: Table = {}
    _conv(t, "conv_first", 3, embed)
    _norm(t, "before_RG.1", embed)
    hidden = int(embed * expansion)
    pos = embed // 2 // 4 // 4
    area = split[0] * split[1]
    for i, depth in enumerate(depths):
        for j in range(depth):
            block = f"layers.{i}.blocks.{j}"
            _norm(t, f"{block}.norm1", embed)
            _linear(t, f"{block}.attn.qkv", embed, 3 * embed)
            _linear(t, f"{block}.attn.proj", embed, embed)
            if j % 2:
                t[f"{block}.attn.temperature"] = (heads[i], 1, 1)
            else:
                for b in (0, 1):
                    branch = f"{block}.attn.attns.{b}"
                    _linear(t, f"{branch}.pos.pos_proj", 2, pos)
                    for step, out in (("pos1", pos), ("pos2", pos), ("pos3", heads[i] // 2)):
                        _norm(t, f"{branch}.pos.{step}.0", pos)
                        _linear(t, f"{branch}.pos.{step}.2", pos, out)
                    t[f"{branch}.rpe_biases"] = ((2 * split[0] - 1) * (2 * split[1] - 1), 2)
                    t[f"{branch}.relative_position_index"] = (area, area)
                if (i % 2 == 0 and j > 0 and (j - 2) % 4 == 0) or (i % 2 and j % 4 == 0):
                    for b in (0, 1):
                        windows = (img // split[0]) * (img // split[1])
                        t[f"{block}.attn.attn_mask_{b}"] = (windows, area, area)
            _dat_interactions(t, f"{block}.attn", embed)
            _norm(t, f"{block}.norm2", embed)
            _linear(t, f"{block}.ffn.fc1", embed, hidden)
            _norm(t, f"{block}.ffn.sg.norm", hidden // 2)
            t[f"{block}.ffn.sg.conv.weight"] = (hidden // 2, 1, 3, 3)
            t[f"{block}.ffn.sg.conv.bias"] = (hidden // 2,)
            _linear(t, f"{block}.ffn.fc2", hidden // 2, embed)
        _resi(t, f"layers.{i}.conv", embed, resi)
    _norm(t, "norm", embed)
    _resi(t, "conv_after_body", embed, resi)
    if upsampler == "pixelshuffledirect":
        _conv(t, "upsample.0", embed, 3 * scale * scale)
        return t
    _conv(t, "conv_before_upsample.0", embed, nf)
    _pixelshuffle(t, nf, scale)
    _conv(t, "conv_last", nf, 3)
    return t


def dat_coordinates(split: tuple[int, int]) -> list[tuple[int, int]]:
    """The first branch's rpe_biases values: every (dy, dx) offset of the window, row-major."""
    h, w = split
    return [(dy, dx) for dy in range(1 - h, h) for dx in range(1 - w, w)]
