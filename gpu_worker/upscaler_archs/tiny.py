"""Tiny random-weight SwinIR and HAT state dicts in the published layout (buffers included, as
the released files carry them), for the demo folder and the tests."""

from __future__ import annotations

import torch
from torch import nn

from gpu_worker.upscaler_archs.dat import DAT, _bias_coordinates, rect_mask, shifted
from gpu_worker.upscaler_archs.hat import HAT
from gpu_worker.upscaler_archs.swinir import SwinIR
from gpu_worker.upscaler_archs.windows import relative_index, shift_mask
from gpu_worker.upscaler_layouts import DATConfig, HATConfig, SwinIRConfig

TINY_SWINIR = SwinIRConfig(
    embed_dim=12,
    depths=(2, 2),
    num_heads=(2, 3),
    window_size=4,
    img_size=16,
    mlp_hidden=24,
    upscale=2,
    upsampler="pixelshuffle",
    resi_connection="1conv",
    num_feat=8,
)
TINY_HAT = HATConfig(
    embed_dim=12,
    depths=(2,),
    num_heads=(3,),
    window_size=4,
    overlap_window=6,
    cab_channels=4,
    squeeze_channels=2,
    mlp_hidden=24,
    upscale=4,
    num_feat=8,
    resi_connection="1conv",
)
TINY_DAT = DATConfig(
    embed_dim=32,  # the position-bias MLP is embed_dim / 32 wide
    depths=(3,),
    num_heads=(2,),
    split_size=(2, 4),
    ffn_hidden=64,
    upscale=2,
    upsampler="pixelshuffle",
    resi_connection="1conv",
    num_feat=8,
)
TINY_DAT_IMG = 16  # the img_size its attn_mask buffers are made for


def _randomised(model: nn.Module) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                parameter.fill_(1.0)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return dict(model.state_dict())


def swinir_state(config: SwinIRConfig = TINY_SWINIR) -> dict[str, torch.Tensor]:
    state = _randomised(SwinIR(config))
    window, side = config.window_size, config.img_size
    for i, depth in enumerate(config.depths):
        for j in range(depth):
            prefix = f"layers.{i}.residual_group.blocks.{j}.attn"
            state[f"{prefix}.relative_position_index"] = relative_index(window)
            if j % 2:
                mask = shift_mask(side, side, window, window // 2)
                state[f"layers.{i}.residual_group.blocks.{j}.attn_mask"] = mask
    return state


def hat_state(config: HATConfig = TINY_HAT) -> dict[str, torch.Tensor]:
    state = _randomised(HAT(config))
    state["relative_position_index_SA"] = relative_index(config.window_size)
    state["relative_position_index_OCA"] = relative_index(config.window_size, config.overlap_window)
    return state


def dat_state(config: DATConfig = TINY_DAT) -> dict[str, torch.Tensor]:
    state = _randomised(DAT(config))
    sh, sw = config.split_size
    for i, depth in enumerate(config.depths):
        for j in range(0, depth, 2):  # the spatial blocks
            attn = f"layers.{i}.blocks.{j}.attn"
            for b, (rows, cols) in enumerate(((sh, sw), (sw, sh))):
                offsets, index = _bias_coordinates(rows, cols)
                state[f"{attn}.attns.{b}.rpe_biases"] = offsets
                state[f"{attn}.attns.{b}.relative_position_index"] = index
                if shifted(i, j):
                    mask = rect_mask(TINY_DAT_IMG, TINY_DAT_IMG, rows, cols)
                    state[f"{attn}.attn_mask_{b}"] = mask
    return state
