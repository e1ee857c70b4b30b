"""SwinIR and HAT upscalers: the published configurations detected from their key/shape tables
(built on the meta device: no memory), tiny random-weight files through the loader, padding for
odd sizes, blended tiles, and an Extras job on the real engine doubling / quadrupling a size."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gpu_worker import extras_plan
from gpu_worker.upscaler_layouts import DATConfig, HATConfig, SwinIRConfig
from tests.gpu_worker.test_extras import decoded, extras, extras_request
from tests.gpu_worker.transformer_tables import (
    dat_coordinates,
    dat_table,
    hat_table,
    swinir_table,
)

pytestmark = pytest.mark.engine

M: dict[str, Any] = {
    "embed": 180,
    "depths": [6] * 6,
    "heads": [6] * 6,
    "window": 8,
    "img": 64,
    "mlp_ratio": 2,
}
SWINIR_PUBLISHED: list[tuple[str, dict, Any]] = [
    (
        "001_classicalSR_DF2K_s64w8_SwinIR-M_x2",
        swinir_table(**M, upsampler="pixelshuffle", scale=2, resi="1conv"),
        SwinIRConfig(180, (6,) * 6, (6,) * 6, 8, 64, 360, 2, "pixelshuffle", "1conv", 64),
    ),
    (
        "001_classicalSR_DF2K_s64w8_SwinIR-M_x3",
        swinir_table(**M, upsampler="pixelshuffle", scale=3, resi="1conv"),
        SwinIRConfig(180, (6,) * 6, (6,) * 6, 8, 64, 360, 3, "pixelshuffle", "1conv", 64),
    ),
    (
        "001_classicalSR_DIV2K_s48w8_SwinIR-M_x4",
        swinir_table(**{**M, "img": 48}, upsampler="pixelshuffle", scale=4, resi="1conv"),
        SwinIRConfig(180, (6,) * 6, (6,) * 6, 8, 48, 360, 4, "pixelshuffle", "1conv", 64),
    ),
    (
        "002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4",
        swinir_table(
            embed=60,
            depths=[6] * 4,
            heads=[6] * 4,
            window=8,
            img=64,
            mlp_ratio=2,
            upsampler="pixelshuffledirect",
            scale=4,
            resi="1conv",
        ),
        SwinIRConfig(60, (6,) * 4, (6,) * 4, 8, 64, 120, 4, "pixelshuffledirect", "1conv", 0),
    ),
    (
        "003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN",
        swinir_table(**M, upsampler="nearest+conv", scale=4, resi="1conv"),
        SwinIRConfig(180, (6,) * 6, (6,) * 6, 8, 64, 360, 4, "nearest+conv", "1conv", 64),
    ),
    (
        "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN",
        swinir_table(
            embed=240,
            depths=[6] * 9,
            heads=[8] * 9,
            window=8,
            img=64,
            mlp_ratio=2,
            upsampler="nearest+conv",
            scale=4,
            resi="3conv",
        ),
        SwinIRConfig(240, (6,) * 9, (8,) * 9, 8, 64, 480, 4, "nearest+conv", "3conv", 64),
    ),
]
HAT_M: dict[str, Any] = {
    "embed": 180,
    "depths": [6] * 6,
    "heads": [6] * 6,
    "window": 16,
    "overlap_ratio": 0.5,
}
HAT_PUBLISHED: list[tuple[str, dict, Any]] = [
    (
        "HAT_SRx4",
        hat_table(**HAT_M, compress_ratio=3, squeeze_factor=30, mlp_ratio=2, scale=4),
        HATConfig(180, (6,) * 6, (6,) * 6, 16, 24, 60, 6, 360, 4, 64, "1conv"),
    ),
    (
        "HAT_SRx3",
        hat_table(**HAT_M, compress_ratio=3, squeeze_factor=30, mlp_ratio=2, scale=3),
        HATConfig(180, (6,) * 6, (6,) * 6, 16, 24, 60, 6, 360, 3, 64, "1conv"),
    ),
    (
        "HAT-L_SRx2",
        hat_table(
            **{**HAT_M, "depths": [6] * 12, "heads": [6] * 12},
            compress_ratio=3,
            squeeze_factor=30,
            mlp_ratio=2,
            scale=2,
        ),
        HATConfig(180, (6,) * 12, (6,) * 12, 16, 24, 60, 6, 360, 2, 64, "1conv"),
    ),
    (
        "HAT-S_SRx4",
        hat_table(
            **{**HAT_M, "embed": 144},
            compress_ratio=24,
            squeeze_factor=24,
            mlp_ratio=2,
            scale=4,
        ),
        HATConfig(144, (6,) * 6, (6,) * 6, 16, 24, 6, 6, 288, 4, 64, "1conv"),
    ),
]

DAT_M: dict[str, Any] = dict(embed=180, depths=[6] * 6, heads=[6] * 6, img=64)
DAT_PUBLISHED: list[tuple[str, dict, Any]] = [
    (
        "DAT_x4",
        dat_table(**DAT_M, split=(8, 32), expansion=4, scale=4),
        DATConfig(180, (6,) * 6, (6,) * 6, (8, 32), 720, 4, "pixelshuffle", "1conv", 64),
    ),
    (
        "DAT_S_x3",
        dat_table(**DAT_M, split=(8, 16), expansion=2, scale=3),
        DATConfig(180, (6,) * 6, (6,) * 6, (8, 16), 360, 3, "pixelshuffle", "1conv", 64),
    ),
    (
        "DAT_2_x2",
        dat_table(**DAT_M, split=(8, 32), expansion=2, scale=2),
        DATConfig(180, (6,) * 6, (6,) * 6, (8, 32), 360, 2, "pixelshuffle", "1conv", 64),
    ),
    (
        "DAT_light_x4",
        dat_table(
            embed=60,
            depths=[18],
            heads=[6],
            img=64,
            split=(8, 32),
            expansion=2,
            scale=4,
            resi="3conv",
            upsampler="pixelshuffledirect",
        ),
        DATConfig(60, (18,), (6,), (8, 32), 120, 4, "pixelshuffledirect", "3conv", 0),
    ),
]


def header(table: dict) -> dict:
    return {key: {"dtype": "F32", "shape": list(shape)} for key, shape in table.items()}


@pytest.mark.parametrize(("name", "table", "config"), SWINIR_PUBLISHED + HAT_PUBLISHED)
def test_published_configs_are_detected_with_their_hyper_parameters(
    torch: Any, name: str, table: dict, config: Any
) -> None:
    from gpu_worker.upscaler_files import upscaler_scale
    from gpu_worker.upscalers import build_upscaler

    with torch.device("meta"):  # the full-size network, without its memory
        weights = {k: torch.empty(s, dtype=torch.float32) for k, s in table.items()}
        model = build_upscaler(weights)  # strict: every published key has its module
    assert model.config == config, name
    assert model.scale == config.upscale == upscaler_scale(header(table))


@pytest.mark.parametrize(("name", "table", "config"), DAT_PUBLISHED)
def test_published_dat_configs_are_detected(torch: Any, name: str, table: dict, config: Any):
    from gpu_worker.upscaler_files import upscaler_scale
    from gpu_worker.upscalers import build_upscaler

    with torch.device("meta"):
        weights = {k: torch.empty(s, dtype=torch.float32) for k, s in table.items()}
        # which window side is the height only the bias coordinates' values say
        first = "layers.0.blocks.0.attn.attns.0.rpe_biases"
        weights[first] = torch.tensor(dat_coordinates(config.split_size), device="cpu")
        model: Any = build_upscaler(weights)
    assert model.config == config, name
    assert model.scale == config.upscale == upscaler_scale(header(table))
    assert model.config.expansion_factor == (4 if name == "DAT_x4" else 2)


def test_the_ratios_are_the_papers(torch: Any) -> None:
    hat_s = HAT_PUBLISHED[3][2]
    assert (hat_s.compress_ratio, hat_s.squeeze_factor, hat_s.overlap_ratio) == (24, 24, 0.5)
    assert hat_s.mlp_ratio == 2 and SWINIR_PUBLISHED[0][2].mlp_ratio == 2


def refusal(torch: Any, tmp_path: Path, table: dict) -> str:
    from safetensors.torch import save_file

    from gpu_worker.upscalers import UpscalerLoadError, load_upscaler

    path = tmp_path / "4x-broken.safetensors"
    save_file({k: torch.zeros(s) for k, s in table.items()}, str(path))
    with pytest.raises(UpscalerLoadError) as caught:
        load_upscaler(path)
    return str(caught.value)


SMALL: dict[str, Any] = {
    "embed": 8,
    "depths": [2],
    "heads": [2],
    "window": 4,
    "img": 8,
    "mlp_ratio": 2,
    "nf": 4,
}


def test_what_cannot_be_read_from_the_file_is_refused_naming_it(torch: Any, tmp_path: Path):
    table = swinir_table(**SMALL, upsampler="pixelshuffle", scale=2, resi="1conv")
    no_mask = {k: s for k, s in table.items() if not k.endswith("attn_mask")}
    message = refusal(torch, tmp_path, no_mask)
    assert message.startswith("4x-broken.safetensors: ") and "img_size" in message
    denoise = {k: s for k, s in table.items() if not k.startswith(("upsample", "conv_before"))}
    denoise["conv_last.weight"], denoise["conv_last.bias"] = (3, 8, 3, 3), (3,)
    assert "not an upscaler" in refusal(torch, tmp_path, denoise)
    grey = {**table, "conv_first.weight": (8, 1, 3, 3)}
    assert "RGB" in refusal(torch, tmp_path, grey)
    wrong = {**table, "layers.0.residual_group.blocks.1.mlp.fc1.weight": (8, 8)}
    assert "do not fit the detected SwinIR" in refusal(torch, tmp_path, wrong)


def test_an_unsupported_transformer_is_refused_naming_the_file(torch: Any, tmp_path: Path):
    from gpu_worker.upscaler_files import upscaler_scale

    other = {  # another transformer: a conv_first like ESRGAN's, but no RRDB trunk
        "conv_first.weight": (16, 3, 3, 3),
        "layers.0.blocks.0.attn.qkv.weight": (48, 16),
        "conv_last.weight": (3, 16, 3, 3),
    }
    message = refusal(torch, tmp_path, other)
    assert message.startswith("4x-broken.safetensors: not an ESRGAN")
    assert "SwinIR, HAT or DAT" in message
    assert upscaler_scale(header(other)) is None  # listed with the unknown scale, not 1


def test_dats_window_orientation_comes_from_its_bias_coordinates(torch: Any) -> None:
    from gpu_worker.upscalers import UpscalerLoadError, build_upscaler, random_state

    state = random_state("dat")
    model: Any = build_upscaler(state)
    assert model.config.split_size == (2, 4)
    first = "layers.0.blocks.0.attn.attns.0.rpe_biases"
    flipped = {**state, first: torch.tensor(dat_coordinates((4, 2)), dtype=torch.float32)}
    model = build_upscaler(flipped)
    assert model.config.split_size == (4, 2)
    del state[first]
    with pytest.raises(UpscalerLoadError, match="rpe_biases"):
        build_upscaler(state)


@pytest.mark.parametrize(("kind", "scale"), [("swinir", 2), ("hat", 4), ("dat", 2)])
def test_odd_sizes_are_padded_to_the_window_and_cropped_back(
    torch: Any, tmp_path: Path, kind: str, scale: int
) -> None:
    from safetensors.torch import save_file

    from gpu_worker.upscalers import load_upscaler, random_state, upscale_image

    path = tmp_path / f"{kind}.safetensors"
    save_file(random_state(kind), str(path))
    model = load_upscaler(path)
    assert model.scale == scale
    for size in ((13, 7), (3, 2), (16, 16)):  # not a window multiple, smaller than one, exact
        source = Image.effect_noise(size, 60).convert("RGB")
        out = upscale_image(model, source, (size[0] * scale, size[1] * scale))
        assert out.size == (size[0] * scale, size[1] * scale)
    x = torch.rand(1, 3, 9, 11)
    assert model(x).shape == (1, 3, 9 * scale, 11 * scale)


def test_tiles_are_blended_so_no_seam_shows(torch: Any) -> None:
    from gpu_worker.upscalers import TileSettings, build_upscaler, random_state, upscale_tensor

    model = build_upscaler(random_state("swinir"))
    x = torch.rand(1, 3, 40, 40)
    whole = upscale_tensor(model, x, TileSettings(size=0))

    def seam_error(overlap: int) -> float:
        tiled = upscale_tensor(model, x, TileSettings(size=24, overlap=overlap))
        assert tiled.shape == whole.shape == (1, 3, 80, 80)
        return float((tiled - whole).abs().mean())

    blended, butted = seam_error(8), seam_error(0)
    assert blended < 0.5 * butted  # overlapping tiles agree with the whole image far better
    assert blended < 0.02 * float(whole.abs().mean())


@pytest.fixture(scope="module")
def transformer_engine(
    tmp_path_factory: pytest.TempPathFactory,
    torch: Any,
    demo_models_dir: Path,
    atelier_cache_dir: Path,
) -> Any:
    """An engine whose models folder holds the demo checkpoint and a tiny SwinIR and HAT."""
    from safetensors.torch import save_file

    from gpu_worker.upscalers import random_state
    from tests.gpu_worker.conftest import make_engine

    models = tmp_path_factory.mktemp("transformer-models")
    (models / "Stable-diffusion").mkdir()
    checkpoint = "Stable-diffusion/atelier-demo-v1.safetensors"
    (models / checkpoint).symlink_to(demo_models_dir / checkpoint)
    for folder, kind, name in (
        ("SwinIR", "swinir", "SwinIR-tiny_x2"),
        ("HAT", "hat", "HAT-tiny"),
        ("DAT", "dat", "DAT-tiny_x2"),
    ):
        (models / folder).mkdir()
        save_file(random_state(kind), str(models / folder / f"{name}.safetensors"))
    return make_engine(models, atelier_cache_dir)


@pytest.mark.parametrize(
    ("name", "native", "scale"),
    [("SwinIR-tiny_x2", 2, 2), ("HAT-tiny", 4, 4), ("DAT-tiny_x2", 2, 4)],  # DAT: two passes
)
def test_an_extras_job_upscales_with_swinir_hat_and_dat(
    transformer_engine: Any, torch: Any, name: str, native: int, scale: int
) -> None:
    item = transformer_engine.catalogue.resolve("upscaler", name)
    assert item.inventory_entry()["scale"] == native  # /sdapi/v1/upscalers' `scale`
    block = extras(37, 21, upscaler_1=name, upscaler_1_scale=native, scale=scale)
    result = transformer_engine.run(extras_request(block))
    image = decoded(result)
    assert (
        image.size == extras_plan.upscaled_size(block) == (37 * scale // 8 * 8, 21 * scale // 8 * 8)
    )
    assert result.images[0]["infotext"] == (
        f"Postprocess upscale by: {scale}, Postprocess upscaler: {name}"
    )
    assert len(image.getcolors(1 << 20) or []) > 100  # a picture, not a flat fill


def test_hires_fix_upscales_with_swinir_by_name(transformer_engine: Any, torch: Any) -> None:
    from tests.gpu_worker.conftest import demo_request

    hires = {"scale": 2.0, "resize_x": 0, "resize_y": 0, "upscaler": "SwinIR-tiny_x2"}
    hires |= {"second_pass_steps": 1, "denoising_strength": 0.5}
    image = transformer_engine.run(demo_request(hires=hires, steps=2)).images[0]
    assert "Hires upscaler: SwinIR-tiny_x2" in image["infotext"]
    assert (image["width"], image["height"]) == (128, 128)


def test_the_catalogue_reads_the_folders_and_native_scales(tmp_path: Path, torch: Any) -> None:
    from safetensors.torch import save_file

    from gpu_worker.catalogue import scan_models
    from gpu_worker.upscalers import random_state

    for folder, kind in (("SwinIR", "swinir"), ("HAT", "hat"), ("DAT", "dat")):
        (tmp_path / folder).mkdir()
        save_file(random_state(kind), str(tmp_path / folder / f"{kind}.safetensors"))
    shutil.copytree(tmp_path / "HAT", tmp_path / "ESRGAN")  # any upscaler folder detects any
    (tmp_path / "ESRGAN" / "hat.safetensors").rename(tmp_path / "ESRGAN" / "4x-hat.safetensors")
    entries = scan_models(tmp_path, hash_cache=tmp_path / "h.json").entries("upscaler")
    assert {(e["filename"], e["scale"]) for e in entries} == {
        ("ESRGAN/4x-hat.safetensors", 4),
        ("HAT/hat.safetensors", 4),
        ("SwinIR/swinir.safetensors", 2),
        ("DAT/dat.safetensors", 2),
    }


def test_the_transformers_run_in_float32_whatever_the_engine_dtype(torch: Any) -> None:
    from gpu_worker.upscalers import build_upscaler, random_state, run_dtype

    assert run_dtype(build_upscaler(random_state("hat")), torch.float16) == torch.float32
    assert run_dtype(build_upscaler(random_state("compact")), torch.float16) == torch.float16
