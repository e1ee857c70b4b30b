"""Our own upscaler loader against the published state-dict layouts (key names and shapes as the
released ESRGAN, Real-ESRGAN x4plus / x2plus and realesr-general-x4v3 files have them, written
out here from those layouts), and tiled upscaling."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.engine


def rrdb_keys(prefix_old: bool, blocks: int, feat: int, grow: int, in_ch: int) -> dict:
    """The key -> shape table of an RRDBNet file, in the old (ESRGAN) or new (BasicSR) names."""
    shapes: dict[str, tuple] = {}

    def conv(name: str, cin: int, cout: int) -> None:
        shapes[f"{name}.weight"] = (cout, cin, 3, 3)
        shapes[f"{name}.bias"] = (cout,)

    conv("model.0" if prefix_old else "conv_first", in_ch, feat)
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                cin = feat + (c - 1) * grow
                cout = feat if c == 5 else grow
                name = (
                    f"model.1.sub.{b}.RDB{r}.conv{c}.0"
                    if prefix_old
                    else f"body.{b}.rdb{r}.conv{c}"
                )
                conv(name, cin, cout)
    if prefix_old:
        conv(f"model.1.sub.{blocks}", feat, feat)
        for name in ("model.3", "model.6", "model.8"):
            conv(name, feat, feat)
        conv("model.10", feat, 3)
    else:
        for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
            conv(name, feat, feat)
        conv("conv_last", feat, 3)
    return shapes


def compact_keys(convs: int, feat: int, scale: int) -> dict:
    shapes: dict[str, tuple] = {"body.0.weight": (feat, 3, 3, 3), "body.0.bias": (feat,)}
    shapes["body.1.weight"] = (feat,)
    for i in range(convs):
        shapes[f"body.{2 * i + 2}.weight"] = (feat, feat, 3, 3)
        shapes[f"body.{2 * i + 2}.bias"] = (feat,)
        shapes[f"body.{2 * i + 3}.weight"] = (feat,)
    last = 2 * convs + 2
    shapes[f"body.{last}.weight"] = (3 * scale * scale, feat, 3, 3)
    shapes[f"body.{last}.bias"] = (3 * scale * scale,)
    return shapes


def random_weights(torch: Any, shapes: dict) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {k: torch.randn(s, generator=generator) * 0.02 for k, s in shapes.items()}


@pytest.mark.parametrize(
    ("layout", "shapes", "scale"),
    [
        ("ESRGAN 4x (old layout, 23 blocks)", rrdb_keys(True, 23, 64, 32, 3), 4),
        ("RealESRGAN_x4plus (new layout)", rrdb_keys(False, 23, 64, 32, 3), 4),
        ("RealESRGAN_x2plus (pixel-unshuffled input)", rrdb_keys(False, 23, 64, 32, 12), 2),
        ("realesr-general-x4v3 (compact)", compact_keys(32, 64, 4), 4),
        ("realesr-animevideov3 (compact)", compact_keys(16, 64, 4), 4),
    ],
)
def test_published_layouts_load_and_upscale(torch: Any, layout: str, shapes: dict, scale: int):
    from gpu_worker.upscalers import build_upscaler, model_scale, upscale_tensor

    model = build_upscaler(random_weights(torch, shapes))
    assert model_scale(model) == scale, layout
    image = torch.rand(1, 3, 12, 16)
    assert upscale_tensor(model, image).shape == (1, 3, 12 * scale, 16 * scale)


def test_a_basicsr_training_checkpoint_is_unwrapped(torch: Any) -> None:
    from gpu_worker.upscalers import build_upscaler

    state = random_weights(torch, compact_keys(2, 8, 4))
    assert build_upscaler({"params_ema": state}).scale == 4


def test_anything_else_is_refused_naming_what_it_is_not(torch: Any) -> None:
    from gpu_worker.upscalers import UpscalerLoadError, build_upscaler

    with pytest.raises(UpscalerLoadError, match="not an ESRGAN"):
        build_upscaler({"layers.0.attn.qkv.weight": torch.zeros(3, 3)})  # SwinIR-like
    broken = random_weights(torch, rrdb_keys(False, 1, 8, 4, 3))
    broken["conv_last.weight"] = torch.zeros(3, 9, 3, 3)
    with pytest.raises(UpscalerLoadError, match="do not fit"):
        build_upscaler(broken)


def test_tiles_with_overlap_give_the_whole_image_result(torch: Any) -> None:
    from gpu_worker.upscalers import TileSettings, build_upscaler, random_state, upscale_tensor

    model = build_upscaler(random_state("compact"))  # per-pixel enough: 3x3 convs, 3 deep
    image = torch.rand(1, 3, 40, 56)
    whole = upscale_tensor(model, image, TileSettings(size=0))
    tiled = upscale_tensor(model, image, TileSettings(size=24, overlap=8))
    assert tiled.shape == whole.shape == (1, 3, 160, 224)
    inner = (slice(None), slice(None), slice(16, -16), slice(16, -16))
    assert (tiled - whole)[inner].abs().mean() < 0.05 * whole.abs().mean()


@pytest.mark.parametrize("kind", ["esrgan-old", "esrgan-new", "esrgan-new-x2", "compact"])
def test_the_demo_layouts_round_trip_through_safetensors(torch: Any, tmp_path, kind: str) -> None:
    from PIL import Image
    from safetensors.torch import save_file

    from gpu_worker.upscalers import load_upscaler, random_state, upscale_image

    path = tmp_path / f"{kind}.safetensors"
    save_file(random_state(kind), str(path))
    model = load_upscaler(path)
    image = Image.new("RGB", (20, 12), "orange")
    assert upscale_image(model, image, (40, 24)).size == (40, 24)


def test_a_pickle_needs_allow_pickle(torch: Any, tmp_path) -> None:
    from gpu_worker.upscalers import UpscalerLoadError, load_upscaler, random_state

    path = tmp_path / "4x.pth"
    torch.save(random_state("compact"), str(path))
    with pytest.raises(UpscalerLoadError, match="allow-pickle"):
        load_upscaler(path)
    assert load_upscaler(path, allow_pickle=True).scale == 4


def test_the_demo_upscaler_is_in_the_catalogue_and_the_inventory(demo_models_dir, tmp_path):
    import shutil

    from gpu_worker.catalogue import scan_models

    (tmp_path / "RealESRGAN").mkdir()
    shutil.copy(
        demo_models_dir / "ESRGAN" / "atelier-demo-upscaler.safetensors",
        tmp_path / "RealESRGAN" / "R-ESRGAN-demo.safetensors",
    )
    shutil.copytree(demo_models_dir / "ESRGAN", tmp_path / "ESRGAN")
    entries = scan_models(tmp_path, hash_cache=tmp_path / "h.json").entries("upscaler")
    assert [(e["name"], e["filename"]) for e in entries] == [
        ("atelier-demo-upscaler", "ESRGAN/atelier-demo-upscaler.safetensors"),
        ("R-ESRGAN-demo", "RealESRGAN/R-ESRGAN-demo.safetensors"),
    ]


def test_hires_fix_upscales_with_a_model_by_name(engine: Any, torch: Any) -> None:
    from .conftest import demo_request

    hires = {
        "scale": 2.0,
        "resize_x": 0,
        "resize_y": 0,
        "upscaler": "atelier-demo-upscaler",
        "second_pass_steps": 2,
        "denoising_strength": 0.5,
    }
    result = engine.run(demo_request(hires=hires))
    image = result.images[0]
    assert (image["width"], image["height"]) == (128, 128)
    assert "Hires upscaler: atelier-demo-upscaler" in image["infotext"]
    lanczos = engine.run(demo_request(hires={**hires, "upscaler": "Lanczos"})).images[0]
    assert lanczos["png_b64"] != image["png_b64"]
    assert "Hires upscaler: Lanczos" in lanczos["infotext"]


def test_an_unknown_upscaler_fails_the_job_naming_it(engine: Any) -> None:
    from gpu_worker.engine import JobFailed

    from .conftest import demo_request

    hires = {"scale": 2.0, "resize_x": 0, "resize_y": 0, "upscaler": "4x-nope"}
    hires |= {"second_pass_steps": 2, "denoising_strength": 0.5}
    with pytest.raises(JobFailed, match="4x-nope"):
        engine.run(demo_request(hires=hires))
