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
