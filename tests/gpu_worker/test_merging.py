"""The checkpoint merger on the worker, on the demo checkpoints: each method's output equals its
formula tensor by tensor; fp16, VAE bake and discard; the 9-channel inpaint A; per-block
weights; A1111's recipe metadata, nested; mismatched inputs refused before a byte is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpu_worker.merge_rules import (
    MergeMismatch,
    block_names,
    block_of,
    plan_merge,
    preset_weights,
    recipe_hash,
)
from gpu_worker.model_files import read_safetensors_header
from gpu_worker.params import MergeInput, MergeParams

V1 = "Stable-diffusion/atelier-demo-v1.safetensors"
V2 = "Stable-diffusion/atelier-demo-v2.safetensors"
INPAINT = "Stable-diffusion/atelier-demo-v1-inpainting.safetensors"
VAE = "VAE/atelier-demo-vae.safetensors"
FIRST_CONV = "model.diffusion_model.input_blocks.0.0.weight"


def pinned(name: str) -> MergeInput:
    return MergeInput(name=name, sha256=name.ljust(64, "0")[:64], size_bytes=1)


def merge_params(**changes: Any) -> MergeParams:
    params: dict[str, Any] = {
        "method": "Weighted sum",
        "primary": pinned("a"),
        "secondary": pinned("b"),
        "tertiary": None,
        "multiplier": 0.3,
        "block_weights": None,
        "save_as_half": False,
        "bake_in_vae": None,
        "discard_weights": "",
        "name": "merged",
    }
    params.update(changes)
    return params  # type: ignore[return-value]


def merge(models: Path, out: Path, params: MergeParams, **files: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    from gpu_worker.merging import write_merge

    paths = {role: models / rel for role, rel in files.items()}
    done: list[tuple[int, int]] = []
    made = write_merge(params, paths, {}, out, lambda d, t: done.append((d, t)))
    assert made["size_bytes"] == out.stat().st_size
    assert done[-1][0] == done[-1][1] == len(done)  # progress: tensors done of total
    return load_file(str(out))


def load(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_weighted_sum_is_the_formula_tensor_by_tensor(demo_models_dir, tmp_path, torch):
    out = merge(
        demo_models_dir, tmp_path / "m.safetensors", merge_params(), primary=V1, secondary=V2
    )
    a, b = load(demo_models_dir / V1), load(demo_models_dir / V2)
    assert set(out) == set(a)
    for key, tensor in out.items():
        if key.endswith("position_ids"):
            assert torch.equal(tensor, a[key])  # left alone, as A1111 does
            continue
        assert torch.equal(tensor, (0.7 * a[key].float() + 0.3 * b[key].float()).to(a[key].dtype))
    assert not torch.equal(out[FIRST_CONV], a[FIRST_CONV])


def test_add_difference_is_the_formula_tensor_by_tensor(demo_models_dir, tmp_path, torch):
    params = merge_params(method="Add difference", tertiary=pinned("c"), multiplier=0.8)
    out = merge(
        demo_models_dir, tmp_path / "m.safetensors", params, primary=V2, secondary=V1, tertiary=V2
    )
    a, b = load(demo_models_dir / V2), load(demo_models_dir / V1)
    for key, tensor in out.items():
        if not key.endswith("position_ids"):
            assert torch.equal(tensor, a[key] + 0.8 * (b[key] - a[key]))


def test_no_interpolation_converts_to_fp16_bakes_the_vae_and_discards(
    demo_models_dir, tmp_path, torch
):
    params = merge_params(
        method="No interpolation",
        secondary=None,
        save_as_half=True,
        bake_in_vae=pinned("vae"),
        discard_weights=r"^cond_stage_model\..*\.layers\.1\.",
    )
    out = merge(demo_models_dir, tmp_path / "m.safetensors", params, primary=V1, vae=VAE)
    a, vae = load(demo_models_dir / V1), load(demo_models_dir / VAE)
    dropped = {k for k in a if k.startswith("cond_stage_model.") and ".layers.1." in k}
    assert dropped and set(out) == set(a) - dropped
    for key, tensor in out.items():
        assert tensor.dtype == (torch.float16 if a[key].dtype == torch.float32 else a[key].dtype)
        if key.startswith("first_stage_model."):
            assert torch.equal(tensor, vae[key.removeprefix("first_stage_model.")].half())
        else:
            assert torch.equal(tensor, a[key].half() if a[key].is_floating_point() else a[key])
    assert not torch.equal(
        out["first_stage_model.decoder.conv_out.weight"],
        a["first_stage_model.decoder.conv_out.weight"].half(),
    )


def test_an_inpaint_a_mixes_only_the_first_four_input_channels(demo_models_dir, tmp_path, torch):
    target = tmp_path / "m.safetensors"
    out = merge(demo_models_dir, target, merge_params(), primary=INPAINT, secondary=V1)
    a, b = load(demo_models_dir / INPAINT), load(demo_models_dir / V1)
    assert out[FIRST_CONV].shape[1] == 9
    assert torch.equal(out[FIRST_CONV][:, :4], 0.7 * a[FIRST_CONV][:, :4] + 0.3 * b[FIRST_CONV])
    assert torch.equal(out[FIRST_CONV][:, 4:], a[FIRST_CONV][:, 4:])
    recipe = json.loads(read_safetensors_header(target)["__metadata__"]["sd_merge_recipe"])
    assert recipe["is_inpainting"] is True
    with pytest.raises(MergeMismatch, match="A must be the inpainting model"):
        merge(
            demo_models_dir,
            tmp_path / "x.safetensors",
            merge_params(),
            primary=V1,
            secondary=INPAINT,
        )


def test_per_block_weights_give_each_unet_block_its_own_multiplier(
    demo_models_dir, tmp_path, torch
):
    names = block_names("sd1")
    weights = [0.0] * len(names)
    weights[names.index("IN01")] = 1.0
    weights[names.index("BASE")] = 0.5
    out = merge(
        demo_models_dir,
        tmp_path / "m.safetensors",
        merge_params(block_weights=weights),
        primary=V1,
        secondary=V2,
    )
    a, b = load(demo_models_dir / V1), load(demo_models_dir / V2)
    for key, tensor in out.items():
        if key.endswith("position_ids"):
            continue
        m = weights[names.index(block_of(key, "sd1"))]
        assert torch.equal(tensor, (1 - m) * a[key] + m * b[key]), key
    assert block_of("model.diffusion_model.input_blocks.1.0.in_layers.0.weight", "sd1") == "IN01"
    assert block_of("model.diffusion_model.middle_block.1.norm.weight", "sd1") == "M00"
    assert block_of("model.diffusion_model.out.2.weight", "sd1") == "OUT11"
    assert block_of("model.diffusion_model.out.2.weight", "sdxl") == "OUT08"
    assert block_of("cond_stage_model.transformer.x", "sd1") == "BASE"
    assert len(block_names("sdxl")) == 20 and len(names) == 26
    grad = preset_weights("GRAD_V", "sd1", 0.4)
    assert grad[0] == 0.4 and grad[1] == grad[-1] == 1.0 and grad[names.index("M00")] == 0.0


def test_the_recipe_metadata_round_trips_and_nests(demo_models_dir, tmp_path, torch):
    first = tmp_path / "first.safetensors"
    merge(demo_models_dir, first, merge_params(name="first"), primary=V1, secondary=V2)
    meta = read_safetensors_header(first)["__metadata__"]
    recipe = json.loads(meta["sd_merge_recipe"])
    assert recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.3
    assert recipe["primary_model_hash"] == pinned("a")["sha256"]
    assert recipe["secondary_model_hash"] == pinned("b")["sha256"]
    assert recipe["custom_name"] == "first" and recipe["save_as_half"] is False
    models = json.loads(meta["sd_merge_models"])
    assert set(models) == {pinned("a")["sha256"], pinned("b")["sha256"]}
    assert len(models[pinned("a")["sha256"]]["legacy_hash"]) == 8
    assert meta["atelier.architecture"] == "tiny-sd1"  # A's own metadata is kept (loadable)

    # merging the merge again: provenance nests, as A1111's sd_merge_models does
    second = tmp_path / "second.safetensors"
    from gpu_worker.merging import write_merge

    write_merge(
        merge_params(primary=pinned("first"), name="second"),
        {"primary": first, "secondary": demo_models_dir / V1},
        {"primary": "first"},
        second,
    )
    nested = json.loads(read_safetensors_header(second)["__metadata__"]["sd_merge_models"])
    assert nested[pinned("first")["sha256"]]["sd_merge_recipe"] == recipe
    assert pinned("b")["sha256"] in nested  # the first merge's inputs, folded in


def test_mismatched_architectures_are_refused_naming_the_keys(demo_models_dir, tmp_path, torch):
    from safetensors.torch import save_file

    from gpu_worker.merging import write_merge

    b = load(demo_models_dir / V2)
    cut = sorted(k for k in b if ".input_blocks.1." in k)
    save_file({k: v for k, v in b.items() if k not in cut}, str(tmp_path / "b.safetensors"))
    out = tmp_path / "never.safetensors"
    with pytest.raises(MergeMismatch) as refused:
        write_merge(
            merge_params(),
            {"primary": demo_models_dir / V1, "secondary": tmp_path / "b.safetensors"},
            {},
            out,
        )
    assert cut[0] in str(refused.value) and refused.value.keys == cut
    assert not out.exists()  # refused before anything was written


def test_plan_refuses_sdxl_against_sd1_from_headers_alone():
    sd1 = {"model.diffusion_model.x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    sdxl = {
        "conditioner.embedders.1.model.y": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    }
    with pytest.raises(MergeMismatch, match="different architecture") as refused:
        plan_merge(merge_params(), {"primary": sd1, "secondary": sdxl}, "sd1")
    assert refused.value.keys == ["model.diffusion_model.x"]


def test_the_recipe_hash_changes_with_any_part_of_the_recipe():
    base = merge_params()
    assert recipe_hash(base) == recipe_hash(merge_params())
    assert recipe_hash(base) != recipe_hash(merge_params(multiplier=0.31))
    assert recipe_hash(base) != recipe_hash(merge_params(secondary=pinned("other")))
