"""Our CodeFormer loader against the published v0.1.0 layout (key names and shapes written out here
from that layout), what a malformed file is told, the fidelity weight, and CodeFormer in Extras
(after GFPGAN, as A1111 orders them) and in txt2img's `restore_faces` on the real engine."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from gpu_worker.face_licences import CODEFORMER, architecture_of
from tests.gpu_worker.test_extras import extras, extras_request

pytestmark = pytest.mark.engine


def codeformer_v010_shapes() -> dict[str, tuple[int, ...]]:
    """codeformer.pth v0.1.0 (`params_ema`): 512 px faces, levels of 64, 128, 128, 256, 256 and
    512 channels (two residual blocks each, attention at 16 px), 1024 codes of 256, a 9-layer
    transformer of width 512 (MLP 1024) and the fidelity transformation at 32..256 px."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int = 3) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name: str, c: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def res(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout)
        if cin != cout:
            conv(f"{name}.conv_out", cin, cout, 1)

    def attn(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    channels = [64, 128, 128, 256, 256, 512]
    blocks: list[tuple[str, int, int]] = [("conv", 3, 64)]  # kind, in, out
    previous = 64
    for level, c in enumerate(channels):
        for _ in range(2):
            blocks.append(("res", previous, c))
            previous = c
            if level == 5:
                blocks.append(("attn", c, c))
        if level < 5:
            blocks.append(("down", c, c))
    blocks += [("res", 512, 512), ("attn", 512, 512), ("res", 512, 512), ("norm", 512, 512)]
    blocks.append(("conv", 512, 256))
    generator: list[tuple[str, int, int]] = [("conv", 256, 512), ("res", 512, 512)]
    generator += [("attn", 512, 512), ("res", 512, 512)]
    for level in reversed(range(6)):
        for _ in range(2):
            generator.append(("res", previous, channels[level]))
            previous = channels[level]
            if level == 5:
                generator.append(("attn", previous, previous))
        if level > 0:
            generator.append(("down", previous, previous))  # an upsample: the same conv
    generator += [("norm", 64, 64), ("conv", 64, 3)]
    for part, listed in (("encoder", blocks), ("generator", generator)):
        for index, (kind, cin, cout) in enumerate(listed):
            name = f"{part}.blocks.{index}"
            if kind == "res":
                res(name, cin, cout)
            elif kind == "attn":
                attn(name, cin)
            elif kind == "norm":
                norm(name, cin)
            else:  # a plain conv, or a resampler's
                conv(f"{name}.conv" if kind == "down" else name, cin, cout)
    shapes["quantize.embedding.weight"] = (1024, 256)
    shapes["position_emb"] = (256, 512)
    shapes["feat_emb.weight"], shapes["feat_emb.bias"] = (512, 256), (512,)
    for i in range(9):
        layer = f"ft_layers.{i}"
        shapes[f"{layer}.self_attn.in_proj_weight"] = (1536, 512)
        shapes[f"{layer}.self_attn.in_proj_bias"] = (1536,)
        shapes[f"{layer}.self_attn.out_proj.weight"] = (512, 512)
        shapes[f"{layer}.self_attn.out_proj.bias"] = (512,)
        shapes[f"{layer}.linear1.weight"], shapes[f"{layer}.linear1.bias"] = (1024, 512), (1024,)
        shapes[f"{layer}.linear2.weight"], shapes[f"{layer}.linear2.bias"] = (512, 1024), (512,)
        norm(f"{layer}.norm1", 512)
        norm(f"{layer}.norm2", 512)
    norm("idx_pred_layer.0", 512)
    shapes["idx_pred_layer.1.weight"] = (1024, 512)
    for resolution, c in ((32, 256), (64, 256), (128, 128), (256, 128)):
        res(f"fuse_convs_dict.{resolution}.encode_enc", 2 * c, c)
        for branch in ("scale", "shift"):
            conv(f"fuse_convs_dict.{resolution}.{branch}.0", c, c)
            conv(f"fuse_convs_dict.{resolution}.{branch}.2", c, c)
    return shapes


def test_the_published_codeformer_layout_is_read_and_built_exactly(torch: Any):
    from gpu_worker.codeformer_arch import PUBLISHED, CodeFormer, CodeFormerConfig

    expected = codeformer_v010_shapes()
    with torch.device("meta"):  # shapes only: the real model is 94 M parameters
        config = CodeFormerConfig.from_state({k: torch.empty(s) for k, s in expected.items()})
        model = CodeFormer(config)
    assert config == PUBLISHED and config.size == 512
    built = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert built == expected
    assert sum(p.numel() for p in model.parameters()) == 94_112_707
    assert architecture_of(expected) == CODEFORMER


def test_a_tiny_file_of_the_published_layout_loads_and_a_malformed_one_is_told_why(torch: Any):
    from gpu_worker.codeformer_arch import CodeFormer, random_state
    from gpu_worker.face_restoration import FaceModelError, build_face_restorer

    state = random_state()
    model = build_face_restorer(dict(state))
    assert isinstance(model, CodeFormer)
    assert model.config.size == 512 and model.config.fused == (32, 64, 128, 256)
    assert set(model.state_dict()) == set(state)
    wrapped = build_face_restorer({"params_ema": dict(state)})  # BasicSR's .pth wrapper
    assert wrapped.config == model.config

    broken = {k: v for k, v in state.items() if k != "generator.blocks.4.conv1.weight"}
    with pytest.raises(FaceModelError, match="CodeFormer's layout: missing generator.blocks.4"):
        build_face_restorer(broken)
    narrowed = {**state, "feat_emb.weight": torch.zeros(16, 4)}
    with pytest.raises(FaceModelError, match=r"feat_emb.weight has shape \(16, 4\), expected"):
        build_face_restorer(narrowed)
    with pytest.raises(FaceModelError, match="not a square code grid"):
        build_face_restorer({**state, "position_emb": torch.zeros(250, 16)})
    with pytest.raises(FaceModelError, match="unexpected ft_layers.0.gate.weight"):
        build_face_restorer({**state, "ft_layers.0.gate.weight": torch.zeros(1)})


def test_the_fidelity_weight_changes_the_face_and_each_weight_is_repeatable(torch: Any):
    from gpu_worker.codeformer_arch import random_state
    from gpu_worker.face_restoration import build_face_restorer, restore

    model = build_face_restorer(random_state())
    image = Image.effect_noise((96, 80), 40).convert("RGB")
    strongest = restore(model, image, 1.0, weight=0.0)  # A1111: 0 = maximum effect
    faithful = restore(model, image, 1.0, weight=1.0)
    assert strongest.size == faithful.size == image.size
    assert strongest.tobytes() != faithful.tobytes() != image.tobytes()
    assert restore(model, image, 1.0, weight=1.0).tobytes() == faithful.tobytes()
    assert restore(model, image, 0.0, weight=0.0) is image


def test_extras_runs_gfpgan_then_codeformer_and_writes_both_as_a1111(engine: Any, torch: Any):
    request = extras_request(extras(scale=2))
    both = extras(
        scale=2,
        gfpgan_visibility=1.0,
        face_restorer="atelier-demo-gfpgan",
        codeformer_visibility=0.5,
        codeformer_weight=0.25,
        codeformer="atelier-demo-codeformer",
    )
    gfpgan_only = {**both, "codeformer_visibility": 0.0, "codeformer": ""}
    after = engine.run({**request, "extras": both}).images[0]
    assert after["infotext"].endswith(
        "GFPGAN visibility: 1, CodeFormer visibility: 0.5, CodeFormer weight: 0.25"
    )
    assert (after["width"], after["height"]) == (128, 192)
    gfpgan = engine.run({**request, "extras": gfpgan_only}).images[0]
    assert after["png_b64"] != gfpgan["png_b64"]


def test_restore_faces_with_codeformer_names_it_in_the_infotext(engine: Any, torch: Any):
    from tests.gpu_worker.conftest import demo_request

    faced = demo_request(
        seed=7, restore_faces=True, face_restorer="atelier-demo-codeformer", code_former_weight=1.0
    )
    first = engine.run(faced).images[0]
    assert "Face restoration: CodeFormer" in first["infotext"]
    strongest = engine.run({**faced, "code_former_weight": 0.0}).images[0]
    assert strongest["png_b64"] != first["png_b64"]
